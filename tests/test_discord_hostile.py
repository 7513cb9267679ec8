"""Hostile input through the emulator: /imagine prompts of any text (random, huge, empty,
unicode, control characters) drawn by hypothesis, and so every other command's options (/blend,
/describe, /show, /history, /cancel, the /settings "Always append" form, /pintor-admin by members
without Manage Server and by admins), forged button custom_ids of every template (jobs that do
not exist, other members' jobs), replayed interactions — each answered within 3 seconds, none
with an unhandled error, nothing stored for a refusal.

Hypothesis draws the values (`drawn`); the test sends them one by one on the shared bot's event
loop (hypothesis cannot drive an async test on a session loop): what it finds is not shrunk."""

from __future__ import annotations

import asyncio
import json
import re
from functools import partial
from typing import Any

import discord
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.load import cancel_all, outcome
from bot.buttons import BUTTONS, REMIX_FORM, ZOOM_FORM
from bot.delivery import NOT_DONE
from bot.limits import clean
from tests.discord_harness import Harness, acked, is_result, job_id_of
from tests.properties import examples as scaled
from tests.test_blend import png

pytestmark = pytest.mark.asyncio(loop_scope="session")

BROKEN = "Something went wrong on Pintor's side"  # what an unhandled error says


def drawn(strategy: st.SearchStrategy[Any], examples: int) -> list[Any]:
    """Values hypothesis draws from `strategy` (derandomized: the same every run): `examples`
    scaled by the profile (tests/properties.py)."""
    values: list[Any] = []

    @settings(max_examples=scaled(examples), database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def draw(value: Any) -> None:
        values.append(value)

    draw()
    return values


ANY_TEXT = st.one_of(
    st.text(max_size=200),  # any unicode, control characters and surrogates' neighbours included
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1000, max_size=6000),  # huge
    st.just(""), st.just("\x00\x07\x1b[31m\u202e\ufeff"),
    st.from_regex(r"[a-z ]{1,20}( --[a-z]{1,8}( [^\s]{0,12})?){1,6}", fullmatch=True),  # parameter soup
)


def answered(inter: Any, callback: dict) -> bool:
    """The bot said what it does: a message at once, or after "thinking…" an edit, a follow-up
    or the reply deleted (a refusal's private follow-up)."""
    loading = inter.original is not None and inter.original["flags"] & 128
    return callback["type"] not in (5, 6) or bool(inter.followups) or outcome(inter) is not None or (
        inter.original_id is not None and inter.original is None) or (inter.original is not None and not loading)


def said(inter) -> str:
    texts = [inter.original["content"] if inter.original else ""] + [m["content"] for m in inter.followups]
    return "\n".join(texts)


async def test_imagine_answers_any_prompt_in_time_and_stores_nothing_for_a_refusal(pintor: Harness):
    emu = pintor.emu
    guild_id, channel_id = emu.add_guild()
    await pintor.studio.update_rules(guild_id, max_queued_per_member=100)
    member = emu._snowflake()
    outcomes = []
    try:
        for prompt in drawn(ANY_TEXT, 30):
            before = await pintor.job_count()
            inter = await emu.slash("imagine", {"prompt": prompt}, user_id=member, channel_id=channel_id)
            callback = await acked(inter)  # within 3 s
            await emu._wait(partial(answered, inter, callback), 30)
            assert BROKEN not in said(inter), (prompt, said(inter))
            outcomes.append(outcome(inter) == "queued")
            if not outcomes[-1]:  # refused: with a message, nothing stored
                assert await pintor.job_count() == before, prompt
    finally:
        await cancel_all(pintor.studio, [member])
    print(f"{sum(outcomes)} of {len(outcomes)} drawn prompts queued")
    assert any(outcomes) and not all(outcomes)  # the drawn prompts met both ways


def item_templates() -> list[str]:
    """The custom_id template of every persistent button Pintor registers."""
    items = [*BUTTONS]
    for cog in ("bot.cogs.account", "bot.cogs.history", "bot.cogs.preferences"):
        module = __import__(cog, fromlist=["x"])
        items += [v for v in vars(module).values()
                  if isinstance(v, type) and issubclass(v, discord.ui.DynamicItem) and v is not discord.ui.DynamicItem]
    return sorted({item.__discord_ui_compiled_template__.pattern for item in items})  # type: ignore[attr-defined]


async def forged_click(emu, custom_id: str, *, user_id: int) -> Any:
    """A click on a message that carries a button `custom_id` no message of the bot carried."""
    message = emu._new_message(emu.channel_id, {"content": "forged", "components": [
        {"type": 1, "components": [{"type": 2, "style": 1, "label": "x", "custom_id": custom_id}]}]}, [])
    payload = emu._base_interaction(3, {"custom_id": custom_id, "component_type": 2},
                                    emu.channels[emu.channel_id], user_id, 10 * 1024 * 1024, "0")
    payload["message"] = json.loads(json.dumps(message))
    return await emu._dispatch_interaction(payload, original_id=int(message["id"]))


async def test_forged_buttons_of_every_template_are_refused_in_time_and_store_nothing(pintor: Harness):
    emu = pintor.emu
    member = emu._snowflake()
    ids = drawn(st.sampled_from(item_templates()).flatmap(lambda t: st.from_regex(t, fullmatch=True))
                .filter(lambda s: len(s) <= 100), 25)
    try:
        unknown = 10**15  # above every job earlier tests made: the forged ids name no job
        for n, drawn_id in enumerate(ids):
            custom_id = re.sub(r"^(pintor:[a-z]+:)[0-9]{1,18}", rf"\g<1>{unknown + n}", drawn_id)
            before = await pintor.job_count()
            inter = await forged_click(emu, custom_id, user_id=member)
            await acked(inter)  # within 3 s
            await emu._wait(partial(answered, inter, inter.callbacks[0]), 30)
            assert BROKEN not in said(inter) + json.dumps(inter.callbacks[0].get("data") or {}), custom_id
            assert await pintor.job_count() == before, custom_id  # no job for an unknown one
    finally:
        await cancel_all(pintor.studio, [member])


async def test_a_replayed_interaction_makes_no_second_job(pintor: Harness):
    emu = pintor.emu
    member = emu._snowflake()
    before = await pintor.job_count()
    inter = await emu.slash("imagine", {"prompt": "a replayed request --seed 5"}, user_id=member)
    await acked(inter, kind=5)
    await emu._wait(lambda: outcome(inter) is not None, 30)
    await emu.dispatch("INTERACTION_CREATE", inter.payload)  # the same interaction again
    await emu.wait_for(lambda r: r.path.startswith(f"/interactions/{inter.id}/") and r.status == 400, 10)
    try:
        assert await pintor.job_count() == before + 1
    finally:
        await cancel_all(pintor.studio, [member])


# ---- every other command's options ------------------------------------------------------

NAMES = st.one_of(st.text(max_size=120), st.just(""), st.just("../../etc/passwd"), st.just("a\x00b.png"),
                  st.just("\u202egnp.exe"), st.text(alphabet=st.characters(codec="utf-8"), min_size=300, max_size=1000))
CONTENT_TYPES = st.sampled_from(["image/png", "text/html", "application/octet-stream", "", "image/png; x=\x01",
                                 "image/" + "x" * 500])
NUMBERS = st.one_of(st.integers(min_value=-2**63, max_value=2**63 - 1), st.sampled_from([0, -1, 1, 2**53, 2**63 - 1]))
PNG = png((200, 120, 40))


async def answer(emu, inter: Any) -> str:
    """Wait for the bot's answer to `inter` (acknowledged within 3 s); what it said, checked not broken."""
    callback = await acked(inter)  # within 3 s
    await emu._wait(partial(answered, inter, callback), 30)
    if callback["type"] == 5 and inter.original is not None and inter.original["content"] == NOT_DONE:
        await emu._wait(lambda: inter.followups, 30)  # the refusal's private follow-up, right after
    text = said(inter) + json.dumps([c.get("data") or {} for c in inter.callbacks])
    assert BROKEN not in text, text
    return text


async def statuses(pintor: Harness) -> dict[int, str]:
    """Every job's status: what a refused command must leave as it was."""
    return {job.id: job.status for job in await pintor.studio.store.unfinished()} | {
        0: str(await pintor.job_count())}


GOING_ON = {"queued": {"queued", "running", "done"}, "running": {"running", "done"}}


async def left_alone(pintor: Harness, before: dict[int, str]) -> bool:
    """No job was added, and each unfinished job of `before` (statuses()) is as it was or went
    on by itself (queued → running → done, as the worker takes it), never cancelled or failed by
    someone else's command."""
    if str(await pintor.job_count()) != before[0]:
        return False
    now = {job_id: (await pintor.job(job_id)).status for job_id in before if job_id != 0}
    return all(now[job_id] in GOING_ON.get(status, {status}) for job_id, status in before.items() if job_id != 0)


async def test_blend_answers_any_prompt_weights_dimensions_and_file_in_time(pintor: Harness):
    emu = pintor.emu
    member = emu._snowflake()
    guild_id, channel_id = emu.add_guild()
    await pintor.studio.update_rules(guild_id, max_queued_per_member=100)
    weights = st.one_of(st.just(""), st.text(max_size=40), st.lists(st.floats(), max_size=7).map(
        lambda ws: ",".join(map(str, ws))), st.sampled_from(["2,1", "1,2,3,4,5,6,7", "-1,nan", "1e309,0", "0,0"]))
    dimensions = st.one_of(st.none(), st.sampled_from(["square", "portrait", "landscape"]), st.text(max_size=20))
    cases = drawn(st.tuples(ANY_TEXT, weights, dimensions, NAMES, CONTENT_TYPES), 14)
    queued = 0
    try:
        for prompt, weights, dimensions, name, content_type in cases:
            before = await pintor.job_count()
            options: dict[str, Any] = {"image1": emu.add_attachment("cat.png", PNG),
                                       "image2": emu.add_attachment(name, PNG, content_type),
                                       "prompt": prompt, "weights": weights}
            if dimensions is not None:
                options["dimensions"] = dimensions
            inter = await emu.slash("blend", options, user_id=member, channel_id=channel_id)
            await answer(emu, inter)
            if outcome(inter) == "queued":
                queued += 1
            else:
                assert await pintor.job_count() == before, (prompt, weights, dimensions, name)
    finally:
        await cancel_all(pintor.studio, [member])
    print(f"{queued} of {len(cases)} drawn blends queued")
    assert queued and queued < len(cases)  # the drawn blends met both ways


async def test_describe_answers_any_filename_and_content_type_in_time(pintor: Harness):
    emu = pintor.emu
    member = emu._snowflake()
    try:
        for name, content_type in drawn(st.tuples(NAMES, CONTENT_TYPES), 10):
            inter = await emu.slash("describe", {"image": emu.add_attachment(name, PNG, content_type)}, user_id=member)
            await answer(emu, inter)
    finally:
        await cancel_all(pintor.studio, [member])


async def test_show_history_and_cancel_answer_any_number_and_touch_no_one_elses_job(pintor: Harness):
    emu = pintor.emu
    owner, stranger = emu._snowflake(), emu._snowflake()
    first = await emu.slash("imagine", {"prompt": "someone else's fox --seed 3"}, user_id=owner)
    await acked(first, kind=5)
    await emu._wait(lambda: outcome(first) is not None, 30)
    [theirs] = [job.id for job in await pintor.studio.store.unfinished() if job.user_id == owner] or [0]
    numbers = drawn(NUMBERS, 10) + [theirs]
    try:
        for number in numbers:
            for command, option in (("show", "job_id"), ("history", "page"), ("cancel", "job")):
                before = await statuses(pintor)
                inter = await emu.slash(command, {option: number}, user_id=stranger)
                await answer(emu, inter)
                # the owner's job may go on meanwhile; the stranger changes nothing
                assert await left_alone(pintor, before), (command, number, before, await statuses(pintor))
    finally:
        await cancel_all(pintor.studio, [owner, stranger])


async def test_the_always_append_text_is_saved_or_refused_whatever_it_is(pintor: Harness):
    emu = pintor.emu
    member = emu._snowflake()
    texts = drawn(ANY_TEXT, 12) + ["\x00\x01\x02", "film\x00grain\r\n--no text", "a" * 5000, "b" * 201,
                                   "--ar 99999:1 --steps -5 --seed 99999999999999"]
    saved = 0
    for text in texts:
        opened = await emu.slash("settings", user_id=member)
        await acked(opened)
        assert opened.original is not None and opened.original_id is not None
        button = next(c["custom_id"] for row in opened.original["components"] for c in row["components"]
                      if c.get("label") == "Always append…")
        clicked = await emu.click(opened.original_id, button, user_id=member)
        await acked(clicked, kind=9)
        before = (await pintor.studio.preferences(member)).append
        inter = await emu.submit_modal(clicked, {"append": text}, user_id=member)
        reply = await answer(emu, inter)
        after = (await pintor.studio.preferences(member)).append
        if "Not saved" in reply:
            assert after == before, text
        else:
            assert len(after) <= 200, "longer than the form allows"
            assert after == clean(text).strip(), text  # control characters as spaces
            saved += 1
    print(f"{saved} of {len(texts)} drawn append texts saved")
    assert saved and saved < len(texts)


ADMIN_OPTIONS = {
    "show": st.just({}), "pause": st.just({}), "resume": st.just({}),
    "models": st.fixed_dictionaries({"names": NAMES}),
    "loras": st.fixed_dictionaries({"names": NAMES}, optional={"max_per_job": NUMBERS}),
    "channels": st.fixed_dictionaries({"channels": st.one_of(NAMES, st.lists(NUMBERS, max_size=5).map(
        lambda ids: " ".join(f"<#{abs(i)}>" for i in ids)))}),
    "limits": st.fixed_dictionaries({}, optional={"max_queued": NUMBERS, "daily_quota": NUMBERS,
                                                  "max_steps": NUMBERS, "max_side": NUMBERS}),
    **{name: st.fixed_dictionaries({option: st.booleans()}) for name, option in (
        ("buttons", "author_only"), ("nsfw-check", "on"), ("remote-models", "allowed"),
        ("strict-parameters", "on"), ("controlnet", "on"), ("clip-guidance", "on"))},
}
ADMIN_CALLS = st.sampled_from(sorted(ADMIN_OPTIONS)).flatmap(lambda sub: st.tuples(st.just(sub), ADMIN_OPTIONS[sub]))


async def rules_of(pintor: Harness, guild_id: int) -> dict[str, Any]:
    rules = await pintor.studio.rules(guild_id)
    return {column: getattr(rules, column) for column in rules.__table__.columns.keys()}


async def test_admin_commands_by_a_member_without_manage_server_change_nothing(pintor: Harness):
    emu = pintor.emu
    before = await rules_of(pintor, emu.guild_id)
    for subcommand, options in drawn(ADMIN_CALLS, 15):
        inter = await emu.slash("pintor-admin", options, subcommand=subcommand, user_id=emu._snowflake())
        reply = await answer(emu, inter)
        assert "Manage Server" in reply or "nothing was done" in reply, (subcommand, reply)
        assert await rules_of(pintor, emu.guild_id) == before, (subcommand, options)


async def test_admin_commands_answer_any_value_in_time_and_store_only_sane_rules(pintor: Harness):
    emu = pintor.emu
    guild_id, channel_id = emu.add_guild()  # its own server: the shared one's rules stay as they are
    for subcommand, options in drawn(ADMIN_CALLS, 15):
        inter = await emu.slash("pintor-admin", options, subcommand=subcommand, permissions=str(1 << 5),
                                user_id=emu._snowflake(), channel_id=channel_id)
        await answer(emu, inter)
        rules = await pintor.studio.preferences_and_rules.guild(guild_id)  # as stored
        for limit in ("max_queued_per_member", "daily_quota", "max_steps", "max_side", "max_loras"):
            assert getattr(rules, limit) is None or getattr(rules, limit) > 0, (subcommand, options, limit)


@pytest.mark.parametrize("command, options, subcommand, told", [
    ("history", {"page": 2**62}, None, "page must be a number from 1 to 100000"),
    ("history", {"page": 0}, None, "page must be a number from 1 to 100000"),
    ("show", {"job_id": -7}, None, "job_id must be a number from 1"),
    ("show", {"job_id": 2**31}, None, "job_id must be a number from 1 to 2147483647"),  # PostgreSQL's INTEGER
    ("cancel", {"job": 2**53}, None, "job must be a number from 1 to 2147483647"),
    ("pintor-admin", {"max_queued": -5}, "limits", "max_queued must be a number from 0 to 1000"),
    ("pintor-admin", {"names": "all", "max_per_job": 10**12}, "loras", "max_per_job must be a number from 0"),
])
async def test_a_number_outside_its_declared_range_is_refused_with_its_range(
        pintor: Harness, command: str, options: dict, subcommand: str | None, told: str):
    """Discord's client keeps numbers within an option's min/max, discord.py does not: a forged
    interaction's page overflowed SQLite ("Something went wrong") and a negative limit was stored."""
    emu = pintor.emu
    guild_id, channel_id = emu.add_guild()
    before = await rules_of(pintor, guild_id)
    inter = await emu.slash(command, options, subcommand=subcommand, permissions=str(1 << 5), channel_id=channel_id)
    assert told in await answer(emu, inter)
    assert await rules_of(pintor, guild_id) == before


async def test_a_value_that_is_not_one_of_the_choices_is_the_members_not_pintors_fault(pintor: Harness):
    emu = pintor.emu
    before = await pintor.job_count()
    inter = await emu.slash("blend", {"image1": emu.add_attachment("a.png", PNG),
                                      "image2": emu.add_attachment("b.png", PNG), "dimensions": "gòc"})
    assert "gòc is not a value this command takes" in await answer(emu, inter)
    assert await pintor.job_count() == before


# ---- /imagine's attachments, and the Remix and Custom Zoom forms ------------------------------

JUNK = st.one_of(st.just(PNG), st.just(b""), st.just(PNG[:40]), st.just(b"<html>not a picture</html>"),
                 st.binary(min_size=1, max_size=2000), st.just(b"GIF89a" + b"\x00" * 30))
SIZES = st.one_of(st.none(), st.sampled_from([0, -1, 2**31, 2**63 - 1, 25 * 1024**2 + 1]))  # None: the real size
URLS = st.one_of(st.none(), st.sampled_from([  # None: the emulator's own, which serves the data
    "https://evil.example/cat.png", "http://127.0.0.1:1/nothing-listens.png", "file:///etc/passwd", "",
    "javascript:alert(1)", "http://169.254.169.254/latest/meta-data/", "https://" + "a" * 300 + ".png",
    "gopher://127.0.0.1/x", "http://[::1]:1/x.png"]))
ATTACHMENTS = st.fixed_dictionaries({"name": NAMES, "content_type": CONTENT_TYPES, "data": JUNK, "size": SIZES,
                                     "url": URLS})


def hostile_attachment(emu, drawn_attachment: dict[str, Any]) -> dict:
    """An attachment object as a forged interaction may carry it: any name, content type, bytes,
    declared size and URL."""
    attachment = emu.add_attachment(drawn_attachment["name"], drawn_attachment["data"],
                                    drawn_attachment["content_type"])
    if drawn_attachment["size"] is not None:
        attachment["size"] = drawn_attachment["size"]
    if drawn_attachment["url"] is not None:
        attachment["url"] = attachment["proxy_url"] = drawn_attachment["url"]
    return attachment


async def test_imagine_answers_any_image_and_control_attachment_in_time(pintor: Harness):
    emu = pintor.emu
    member = emu._snowflake()
    guild_id, channel_id = emu.add_guild()
    await pintor.studio.update_rules(guild_id, max_queued_per_member=100)
    cases = drawn(st.tuples(st.one_of(st.none(), ATTACHMENTS), st.one_of(st.none(), ATTACHMENTS),
                            st.sampled_from(["a hostile upload --seed 2", "a fox --cn canny --seed 2",
                                             "a fox --iw 3 --cn depth --cw 2 --seed 2"])), 24)
    cases += [({"name": "cat.png", "content_type": "image/png", "data": PNG, "size": None, "url": None}, None,
               "a fox from a real picture --seed 2")]  # and one that is fine
    queued = 0
    try:
        for image, control, prompt in cases:
            before = await pintor.job_count()
            options: dict[str, Any] = {"prompt": prompt}
            if image is not None:
                options["image"] = hostile_attachment(emu, image)
            if control is not None:
                options["control"] = hostile_attachment(emu, control)
            inter = await emu.slash("imagine", options, user_id=member, channel_id=channel_id)
            await answer(emu, inter)
            if outcome(inter) == "queued":
                queued += 1
            else:
                assert await pintor.job_count() == before, (image, control, prompt)
    finally:
        await cancel_all(pintor.studio, [member])
    print(f"{queued} of {len(cases)} drawn /imagine uploads queued")
    assert queued and queued < len(cases)


async def modal_submission(emu, custom_id: str, values: dict[str, str], *, message: dict, user_id: int) -> Any:
    """A modal submitted with `custom_id` (a form Pintor opened, or a forged one) and `values`
    by text input custom_id, from a button on `message`."""
    rows = [{"type": 1, "components": [{"type": 4, "custom_id": cid, "value": value}]}
            for cid, value in values.items()]
    payload = emu._base_interaction(5, {"custom_id": custom_id, "components": rows},
                                    emu.channels[int(message["channel_id"])], user_id, 10 * 1024 * 1024, "0")
    payload["message"] = json.loads(json.dumps(message))
    return await emu._dispatch_interaction(payload, original_id=int(message["id"]))


def form_answered(inter: Any, callback: dict) -> bool:
    return callback["type"] == 4 or bool(inter.followups)


FACTORS = st.one_of(ANY_TEXT, st.sampled_from(["1.5", "2", "1,5x", "2×", "1", "0", "nan", "inf", "-2", "1e309",
                                               " 1.25 ", "1.0000000000000002", "2.0000001", "１.５"]))
FORM_IDS = st.one_of(
    st.from_regex(r"pintor:zm:[0-9]{1,25}:[0-9]", fullmatch=True),
    st.from_regex(r"pintor:rm:[0-9]{1,25}:[0-9]:(v[sh]|r|z[0-9]{2}|p[lrudx])", fullmatch=True),
    st.text(max_size=100), st.from_regex(r"pintor:[a-z]{1,3}:.{0,80}", fullmatch=True))


async def test_remix_and_custom_zoom_forms_answer_any_text_and_forged_ids_in_time(pintor: Harness):
    emu = pintor.emu
    member = emu._snowflake()
    guild_id, channel_id = emu.add_guild()
    await pintor.studio.update_rules(guild_id, max_queued_per_member=100)
    first = await emu.slash("imagine", {"prompt": "a grid to remix --seed 8"}, user_id=member, channel_id=channel_id)
    await acked(first, kind=5)
    message = await first.wait_original(is_result, timeout=90)
    job_id = job_id_of(message)
    zooms = drawn(st.tuples(st.integers(1, 4), FACTORS, ANY_TEXT), 14)
    remixes = drawn(st.tuples(st.from_regex(r"[0-4]:(v[sh]|r|z(1[1-9]|20)|p[lrud])", fullmatch=True), ANY_TEXT), 12)
    forged = drawn(st.tuples(FORM_IDS, ANY_TEXT, ANY_TEXT), 14)
    cases = ([(f"pintor:zm:{job_id}:{n}", {"factor": factor, "prompt": prompt}) for n, factor, prompt in zooms]
             + [(f"pintor:rm:{job_id}:{what}", {"prompt": prompt}) for what, prompt in remixes]
             + [(custom_id, {"factor": factor, "prompt": prompt}) for custom_id, factor, prompt in forged])
    queued = 0
    try:
        for custom_id, values in cases:
            before = await pintor.job_count()
            inter = await modal_submission(emu, custom_id, values, message=message, user_id=member)
            if not (ZOOM_FORM.fullmatch(custom_id) or REMIX_FORM.fullmatch(custom_id)):
                # not a form Pintor opens: discord.py leaves it unanswered, as Discord then says itself
                await asyncio.sleep(0.05)
                assert await pintor.job_count() == before, custom_id
                continue
            callback = await acked(inter)  # within 3 s
            # a refusal at once (type 4), or after the deferral a follow-up: the job's message or why not
            await emu._wait(partial(form_answered, inter, callback), 30)
            reply = json.dumps(callback.get("data") or {}, ensure_ascii=False) + "\n".join(
                m["content"] for m in inter.followups)
            assert BROKEN not in reply, (custom_id, values, reply)
            if "⚠️" in reply:  # refused: nothing stored
                assert await pintor.job_count() == before, (custom_id, values, reply)
            elif await pintor.job_count() > before:
                queued += 1
            else:
                assert "⚠️" in reply or "queued" in reply or "Job" in reply, (custom_id, values, reply)
    finally:
        await cancel_all(pintor.studio, [member])
    print(f"{queued} of {len(cases)} drawn form submissions queued a job")
    assert queued and queued < len(cases)
