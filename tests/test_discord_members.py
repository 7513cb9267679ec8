"""A member's own commands end to end, with the real bot, studio and worker, through the
Discord emulator: /history, /settings, /info, /cancel and /forget.

The bot is shared by the whole session: each test works for members of its own (fresh ids),
and stores jobs directly where running them is not the point.
"""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select, update

from bot.cogs.account import pintor_version
from bot.intake import Member
from generation.events import Started
from generation.request import Request
from storage.jobs import NewImage
from storage.models import Job, JobStatus, MemberPreferences, User
from tests.discord_harness import Harness, acked, held, is_result, job_id_of

pytestmark = pytest.mark.asyncio(loop_scope="session")

MESSAGE, DEFERRED, DEFERRED_UPDATE, UPDATE, MODAL = 4, 5, 6, 7, 9
EPHEMERAL = 64


async def eventually(check, timeout: float = 30.0) -> None:
    """Wait until the (async) check holds: for database states no request announces."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, "the condition never held"
        await asyncio.sleep(0.05)


async def store_jobs(pintor: Harness, user_id: int, prompts: list[str]) -> list[Job]:
    """Jobs stored directly as done (none runs), oldest first."""
    studio = pintor.studio
    jobs = []
    for prompt in prompts:
        request = studio.prepare(prompt)
        jobs.append(await studio.store.create_job(
            user_id=user_id, user_name=f"member{user_id % 1000}", kind="imagine", model=request.model,
            prompt=request.prompt, request=request.to_json()))  # no channel: nothing to post after a restart
    async with studio.store.session.begin() as session:  # never left queued: a restart would run them
        await session.execute(update(Job).where(Job.user_id == user_id).values(status=JobStatus.DONE))
    return jobs


def png(path: Path, size=(256, 256), color="teal") -> str:
    Image.new("RGB", size, color).save(path)
    return str(path)


def component(message: dict, *, label: str | None = None, placeholder: str | None = None) -> dict:
    for row in message["components"]:
        for c in row["components"]:
            if (label is not None and c.get("label") == label) or (placeholder and c.get("placeholder") == placeholder):
                return c
    raise LookupError(f"no component {label or placeholder!r} in {message['components']}")


def fields(embed: dict) -> dict[str, str]:
    return {f["name"]: f["value"] for f in embed.get("fields", [])}


# -- /history --------------------------------------------------------------------------------------


async def test_history_pages_through_a_members_jobs_newest_first(pintor: Harness, tmp_path: Path):
    emu, store = pintor.emu, pintor.studio.store
    member = emu._snowflake()
    jobs = await store_jobs(pintor, member, [f"old lighthouse number {n} --ar 3:2 --seed {n}" for n in range(1, 251)])
    newest, second = jobs[-1], jobs[-2]
    for job, color in ((newest, "navy"), (second, "orange")):  # two with pictures on disk
        await store.complete(job.id, [], png(tmp_path / f"grid{job.id}.png", color=color))
        async with store.session.begin() as session:  # posted in the server's channel
            await session.execute(update(Job).where(Job.id == job.id).values(
                guild_id=emu.guild_id, channel_id=emu.channel_id, message_id=4242))
    await store.mark_failed(jobs[-3].id, "out of memory")
    await store_jobs(pintor, emu._snowflake(), ["someone else's lighthouse"])

    inter = await emu.slash("history", user_id=member)
    callback = await acked(inter, kind=DEFERRED)
    assert callback["data"]["flags"] & EPHEMERAL
    page = await inter.wait_original(lambda m: m["embeds"])
    assert page["flags"] & EPHEMERAL
    embeds = page["embeds"]
    assert [e["title"] for e in embeds] == [f"old lighthouse number {n}" for n in range(250, 245, -1)]
    first = fields(embeds[0])
    assert first["job"] == f"`/show job_id:{newest.id}`"
    assert (first["kind"], first["model"], first["status"]) == ("imagine", "tiny-sd", "done")
    assert first["message"] == f"[jump to it](https://discord.com/channels/{emu.guild_id}/{emu.channel_id}/4242)"
    assert "--ar 3:2" in embeds[0]["description"] and "--seed 250" in embeds[0]["description"]
    assert embeds[0]["timestamp"].startswith(str(newest.created_at.date()))
    assert fields(embeds[2])["status"] == "failed: out of memory" and "message" not in fields(embeds[2])
    # thumbnails of the two jobs with pictures, small JPEGs
    assert [e.get("thumbnail", {}).get("url") for e in embeds[:3]] == [
        f"attachment://job{newest.id}.jpg", f"attachment://job{second.id}.jpg", None]
    assert sorted(a["filename"] for a in page["attachments"]) == sorted([f"job{newest.id}.jpg", f"job{second.id}.jpg"])
    with Image.open(io.BytesIO(await pintor.fetch(page["attachments"][0]))) as thumb:
        assert thumb.format == "JPEG" and max(thumb.size) <= 160
    assert embeds[-1]["footer"]["text"] == "page 1 of 50 · 250 jobs"
    [buttons] = page["components"]
    assert [(b["custom_id"], b.get("disabled", False)) for b in buttons["components"]] == [
        (f"pintor:h:{member}:0", True), (f"pintor:h:{member}:2", False)]

    # ▶: the next page, in place
    click = await emu.click(int(page["id"]), f"pintor:h:{member}:2", user_id=member)
    await acked(click, kind=UPDATE)
    page2 = emu.messages[int(page["id"])]
    assert [e["title"] for e in page2["embeds"]] == [f"old lighthouse number {n}" for n in range(245, 240, -1)]
    assert page2["embeds"][-1]["footer"]["text"] == "page 2 of 50 · 250 jobs"
    assert not page2["attachments"]  # page 1's thumbnails are gone with it
    assert [b["custom_id"] for b in page2["components"][0]["components"]] == [
        f"pintor:h:{member}:1", f"pintor:h:{member}:3"]

    # a forged ◀ of page 1 (it is disabled there) shows page 1
    forged = emu._new_message(emu.channel_id, {"content": "", "components": [{"type": 1, "components": [
        {"type": 2, "style": 2, "label": "◀ newer", "custom_id": f"pintor:h:{member}:0"}]}]}, [])
    click = await emu.click(int(forged["id"]), f"pintor:h:{member}:0", user_id=member)
    await acked(click, kind=UPDATE)
    assert emu.messages[int(forged["id"])]["embeds"][-1]["footer"]["text"] == "page 1 of 50 · 250 jobs"

    # another member cannot turn the pages of this history
    intruder = await emu.click(int(page["id"]), f"pintor:h:{member}:3", user_id=emu._snowflake())
    refusal = await acked(intruder, kind=MESSAGE)
    assert refusal["data"]["flags"] & EPHEMERAL and "someone else's history" in refusal["data"]["content"]
    assert emu.messages[int(page["id"])]["embeds"][-1]["footer"]["text"] == "page 2 of 50 · 250 jobs"

    # the last page, and a page past the end shows the last one
    for asked in (50, 9999):
        last = await emu.slash("history", {"page": asked}, user_id=member)
        await acked(last, kind=DEFERRED)
        message = await last.wait_original(lambda m: m["embeds"])
        assert [e["title"] for e in message["embeds"]] == [f"old lighthouse number {n}" for n in range(5, 0, -1)]
        assert message["embeds"][-1]["footer"]["text"] == "page 50 of 50 · 250 jobs"
        assert [(b["custom_id"], b.get("disabled", False)) for b in message["components"][0]["components"]] == [
            (f"pintor:h:{member}:49", False), (f"pintor:h:{member}:51", True)]


async def test_history_of_a_member_without_jobs(pintor: Harness):
    inter = await pintor.emu.slash("history", user_id=pintor.emu._snowflake())
    await acked(inter, kind=DEFERRED)
    message = await inter.wait_original(lambda m: m["content"])
    assert message["flags"] & EPHEMERAL and "no jobs yet" in message["content"] and not message["components"]


# -- /settings ------------------------------------------------------------------------------------


async def choose(pintor: Harness, message_id: int, member: int, placeholder: str, value: str) -> dict:
    select = component(pintor.emu.messages[message_id], placeholder=placeholder)
    click = await pintor.emu.click(message_id, select["custom_id"], values=[value], user_id=member)
    await acked(click, kind=UPDATE)
    return pintor.emu.messages[message_id]


async def press(pintor: Harness, message_id: int, member: int, label: str, kind: int = UPDATE):
    button = component(pintor.emu.messages[message_id], label=label)
    click = await pintor.emu.click(message_id, button["custom_id"], user_id=member)
    await acked(click, kind=kind)
    return click


async def test_settings_menus_store_defaults_that_imagine_uses(pintor: Harness):
    emu, studio = pintor.emu, pintor.studio
    member = emu._snowflake()
    inter = await emu.slash("settings", user_id=member)
    callback = await acked(inter, kind=MESSAGE)
    assert callback["data"]["flags"] & EPHEMERAL and "**Your defaults**" in callback["data"]["content"]
    message_id = inter.original_id
    menus = [c.get("placeholder") for row in emu.messages[message_id]["components"] for c in row["components"]]
    assert menus == ["model", "aspect ratio", "quality", "stylize", None, None, None, None]

    await choose(pintor, message_id, member, "model", "tiny-sd")
    await choose(pintor, message_id, member, "aspect ratio", "16:9")
    await choose(pintor, message_id, member, "quality", "0.5")
    message = await choose(pintor, message_id, member, "stylize", "250")
    assert "model: `tiny-sd`" in message["content"] and "aspect ratio: `16:9`" in message["content"]
    assert "quality: `0.5`" in message["content"] and "stylize: `250`" in message["content"]
    chosen = {o["value"] for row in message["components"] for c in row["components"]
              for o in c.get("options", []) if o.get("default")}
    assert chosen == {"tiny-sd", "16:9", "0.5", "250"}
    await press(pintor, message_id, member, "Private mode on/off")
    assert "private mode: on" in emu.messages[message_id]["content"]
    stored = await studio.preferences_and_rules.member(member)
    assert (stored.model, stored.aspect, stored.quality, stored.stylize, stored.private) == (
        "tiny-sd", "16:9", 0.5, 250, True)

    # "Always append…": a modal; a bad parameter is not saved
    opened = await press(pintor, message_id, member, "Always append…", kind=MODAL)
    bad = await emu.submit_modal(opened, {"Added to every prompt: words, --parameters": "--bogus 3"})
    refusal = await acked(bad, kind=MESSAGE)
    assert refusal["data"]["flags"] & EPHEMERAL and "Not saved" in refusal["data"]["content"]
    assert "“--bogus”" in refusal["data"]["content"]
    opened = await press(pintor, message_id, member, "Always append…", kind=MODAL)
    unknown = await emu.submit_modal(opened, {"Added to every prompt: words, --parameters": "--model nope"})
    refusal = await acked(unknown, kind=MESSAGE)
    assert "Not saved" in refusal["data"]["content"] and "Unknown model 'nope'" in refusal["data"]["content"]
    assert (await studio.preferences_and_rules.member(member)).append == ""
    opened = await press(pintor, message_id, member, "Always append…", kind=MODAL)
    saved = await emu.submit_modal(opened, {"Added to every prompt: words, --parameters": "film grain --no fog"})
    await acked(saved, kind=UPDATE)
    assert "always append: film grain --no fog" in emu.messages[message_id]["content"]
    assert (await studio.preferences_and_rules.member(member)).append == "film grain --no fog"

    # /imagine by this member: the defaults fill in; private mode makes the reply ephemeral
    with_defaults = await emu.slash("imagine", {"prompt": "a harbour at dawn --seed 3"}, user_id=member)
    assert (await acked(with_defaults, kind=DEFERRED))["data"]["flags"] & EPHEMERAL
    # explicit parameters win over the defaults
    explicit = await emu.slash("imagine", {"prompt": "a harbour at dusk --ar 1:1 --q 1 --no rain --seed 4"},
                               user_id=member)
    await acked(explicit, kind=DEFERRED)
    for inter in (with_defaults, explicit):
        final = await inter.wait_original(is_result, timeout=90)
        assert final["flags"] & EPHEMERAL
    job = await pintor.job(job_id_of(with_defaults.original))
    request = Request.from_json(job.request)
    assert (request.model, request.steps, request.negative) == ("tiny-sd", 1, "fog")  # q 0.5 of 2 steps
    assert request.prompt == "a harbour at dawn, film grain"  # the words of "always append" too
    assert request.guidance > 5.0  # stylize 250 of the model's 5.0
    assert "--ar 16:9" in with_defaults.original["content"]
    tile = job.images[0]
    assert tile.width > tile.height and (await pintor.picture(with_defaults.original)).size == (
        2 * tile.width, 2 * tile.height)
    other = Request.from_json((await pintor.job(job_id_of(explicit.original))).request)
    assert (other.width, other.height, other.steps, other.negative) == (128, 128, 2, "rain")

    # Reset all: the defaults are gone
    await press(pintor, message_id, member, "Reset all")
    assert "(server default)" in emu.messages[message_id]["content"]
    stored = await studio.preferences_and_rules.member(member)
    assert (stored.model, stored.aspect, stored.quality, stored.stylize, stored.private, stored.append) == (
        None, None, None, None, False, "")


# -- /info and /cancel ----------------------------------------------------------------------------


async def until_status(pintor: Harness, job_id: int, *statuses: str, timeout: float = 60.0) -> Job:
    async def check() -> bool:
        return (await pintor.job(job_id)).status in statuses

    await eventually(check, timeout)
    return await pintor.job(job_id)


async def newest_job(pintor: Harness, member: int, newer_than: int = 0) -> int:
    """The id of a member's newest job, once it is stored."""
    async def stored() -> bool:
        jobs, _ = await pintor.studio.store.history(member, offset=0, limit=1)
        return bool(jobs) and jobs[0].id > newer_than

    await eventually(stored)
    return (await pintor.studio.store.history(member, offset=0, limit=1))[0][0].id


async def test_info_and_cancel_of_running_and_queued_jobs(pintor: Harness):
    emu, studio = pintor.emu, pintor.studio
    member, other = emu._snowflake(), emu._snowflake()
    running = await emu.slash("imagine", {"prompt": "a very long night --steps 150"}, user_id=member)
    await acked(running, kind=DEFERRED)
    running_id = await newest_job(pintor, member)
    waiting = await emu.slash("imagine", {"prompt": "a short morning --steps 1"}, user_id=member)
    await acked(waiting, kind=DEFERRED)
    waiting_id = await newest_job(pintor, member, newer_than=running_id)
    try:
        await until_status(pintor, running_id, "running")

        info = await emu.slash("info", user_id=member)
        answer = (await acked(info, kind=MESSAGE))["data"]
        assert answer["flags"] & EPHEMERAL
        [embed] = answer["embeds"]
        values = fields(embed)
        assert re.fullmatch(r"\d+ waiting", values["queue"]) and int(values["queue"].split()[0]) >= 1
        assert values["your jobs today"] == "2"
        assert re.fullmatch(rf"job {running_id} \(imagine\): running\njob {waiting_id} \(imagine\): position \d+",
                            values["your jobs in the queue"])
        assert re.match(rf"running job {running_id} with tiny-sd, step \d+/(150|\?) · ", values["worker"])
        assert embed["footer"]["text"] == f"Pintor {pintor_version()}"

        # someone else's job is not theirs to cancel
        refused = await emu.slash("cancel", {"job": running_id}, user_id=other)
        answer = (await acked(refused, kind=MESSAGE))["data"]
        assert answer["flags"] & EPHEMERAL and f"Job {running_id} is not one of your" in answer["content"]
        assert (await pintor.job(running_id)).status == "running"

        # the queued one by its id, then (no id) the newest unfinished: the running one
        for asked, job_id in (({"job": waiting_id}, waiting_id), ({}, running_id)):
            cancel = await emu.slash("cancel", asked, user_id=member)
            answer = (await acked(cancel, kind=MESSAGE))["data"]
            assert answer["flags"] & EPHEMERAL and answer["content"] == f"Job {job_id} is cancelled."
            assert (await until_status(pintor, job_id, "cancelled", "done", "failed")).status == "cancelled"
        nothing = await emu.slash("cancel", user_id=member)
        assert "no queued or running jobs" in (await acked(nothing, kind=MESSAGE))["data"]["content"]
    finally:
        for job_id in (running_id, waiting_id):
            await studio.cancel(job_id)
    await running.wait_original(lambda m: "cancelled" in m["content"].lower())

    # the worker is still healthy: the next job runs to the end
    after = await emu.slash("imagine", {"prompt": "the morning after --seed 8"}, user_id=member)
    await acked(after, kind=DEFERRED)
    final = await after.wait_original(is_result, timeout=90)
    assert (await pintor.job(job_id_of(final))).status == "done"


# -- /forget --------------------------------------------------------------------------------------


async def test_forget_deletes_a_members_jobs_files_and_settings_after_confirming(pintor: Harness, tmp_path: Path):
    emu, studio = pintor.emu, pintor.studio
    member, other = emu._snowflake(), emu._snowflake()
    jobs = await store_jobs(pintor, member, ["a diary page", "a diary cover"])
    files = []
    for job in jobs:
        grid = png(tmp_path / f"grid{job.id}.png")
        tiles = [png(tmp_path / f"tile{job.id}-{n}.png", (128, 128)) for n in (1, 2)]
        await studio.store.complete(job.id, [NewImage(p, 128, 128, n, "0" * 64) for n, p in enumerate(tiles)], grid)
        files += [grid, *tiles]
    await studio.preferences_and_rules.update_member(member, "diarist", aspect="2:3")
    [theirs] = await store_jobs(pintor, other, ["a copy of a diary page"])
    async with studio.store.session.begin() as session:  # made from the member's grid, as V/U would
        await session.execute(update(Job).where(Job.id == theirs.id).values(parent_id=jobs[0].id))

    # "Keep my data": nothing is deleted
    ask = await emu.slash("forget", user_id=member)
    callback = await acked(ask, kind=MESSAGE)
    assert callback["data"]["flags"] & EPHEMERAL and "cannot be undone" in callback["data"]["content"]
    await press(pintor, ask.original_id, member, "Keep my data")
    assert emu.messages[ask.original_id]["content"] == "Nothing was deleted." and not emu.messages[
        ask.original_id]["components"]
    assert all(Path(f).exists() for f in files)
    assert len((await studio.store.history(member, offset=0, limit=10))[0]) == 2
    assert (await studio.preferences_and_rules.member(member)).aspect == "2:3"

    # "Delete everything"
    ask = await emu.slash("forget", user_id=member)
    await acked(ask, kind=MESSAGE)
    await press(pintor, ask.original_id, member, "Delete everything", kind=DEFERRED_UPDATE)
    done = await ask.wait_original(lambda m: m["content"].startswith("Done"))
    assert done["content"] == f"Done: your jobs, settings and {len(files)} picture files are deleted."
    assert not done["components"]
    assert not any(Path(f).exists() for f in files)
    assert (await studio.store.history(member, offset=0, limit=10)) == ([], 0)
    async with studio.store.session() as session:
        assert await session.get(MemberPreferences, member) is None
        assert await session.get(User, member) is None
        assert (await session.scalars(select(Job).where(Job.id.in_([j.id for j in jobs])))).all() == []
    kept = await pintor.job(theirs.id)
    assert kept.parent_id is None and kept.user_id == other
    assert await studio.cancel(theirs.id, member=Member(member)) is False


async def test_forget_while_a_result_is_being_stored_keeps_no_picture(pintor: Harness):
    """The worker finished the member's job; /forget runs before its result is stored: the
    pictures, which no row refers to any more, must not stay on disk."""
    emu, studio = pintor.emu, pintor.studio
    member = emu._snowflake()

    async def their_start(job_id: int, event) -> bool:  # holds the results back: stored after it
        return isinstance(event, Started) and (await pintor.job(job_id)).user_id == member

    async with held(pintor, their_start) as started:
        inter = await emu.slash("imagine", {"prompt": "a secret drawing --steps 1 --seed 2"}, user_id=member)
        await acked(inter, kind=DEFERRED)
        await asyncio.wait_for(started.wait(), 60)
        job_id = await newest_job(pintor, member)
        folder = pintor.settings.pintor_data_dir / "images" / "jobs" / str(job_id)

        async def finished() -> bool:
            return (folder / "grid.png").exists() and (await studio.queue.position(job_id)) is None

        await eventually(finished)
        ask = await emu.slash("forget", user_id=member)
        await acked(ask, kind=MESSAGE)
        await press(pintor, ask.original_id, member, "Delete everything", kind=DEFERRED_UPDATE)
        await ask.wait_original(lambda m: m["content"].startswith("Done"))

    async def no_pictures_left() -> bool:
        return not list(folder.glob("*.png"))

    await eventually(no_pictures_left, timeout=10)
    assert await studio.job(job_id) is None
