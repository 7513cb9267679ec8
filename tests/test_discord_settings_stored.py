"""Settings store what was asked and say what is in force, end to end through the Discord
emulator as admins and members use them: the first /pintor-admin command on a new server,
the first /settings change of a new member, the channels and models a server may choose, and
who may press buttons when Pintor's operator decides for every server.

Most tests run on a server of their own (`new_server`: a fresh guild id and its channels in
the emulator), so that no stored rules of another test are in the way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from generation.request import Request
from storage.models import ServerRules
from tests.discord_harness import Harness, acked, is_result, job_id_of
from tests.test_discord_admin import admin, jobs_of, refusal, stored_jobs

pytestmark = pytest.mark.asyncio(loop_scope="session")

MESSAGE, DEFERRED, DEFERRED_UPDATE, UPDATE = 4, 5, 6, 7
EPHEMERAL = 64
TEXT, CATEGORY, PUBLIC_THREAD, FORUM = 0, 4, 11, 15


@dataclass
class Server:
    guild_id: int
    channels: dict[str, int] = field(default_factory=dict)  # name → id


def add_channel(pintor: Harness, guild_id: int, name: str, kind: int = TEXT, parent_id: int | None = None) -> int:
    """A channel of `guild_id` in the emulator, as Discord would return it."""
    emu = pintor.emu
    cid = emu._snowflake()
    channel = {"id": str(cid), "type": kind, "guild_id": str(guild_id), "name": name, "position": 0,
               "permission_overwrites": [], "nsfw": False, "topic": None, "rate_limit_per_user": 0,
               "parent_id": str(parent_id) if parent_id else None, "last_message_id": None}
    if kind == PUBLIC_THREAD:
        channel.update(owner_id=str(emu.user_id), member_count=1, message_count=0, thread_metadata={
            "archived": False, "auto_archive_duration": 1440, "archive_timestamp": "2026-11-29T00:00:00+00:00",
            "locked": False})
    emu.channels[cid] = channel
    return cid


@contextlib.contextmanager
def inside(pintor: Harness, guild_id: int, channel_id: int) -> Iterator[None]:
    """Commands (and clicks) of the block come from this server and channel."""
    emu = pintor.emu
    saved = emu.guild_id, emu.channel_id
    emu.guild_id, emu.channel_id = guild_id, channel_id
    try:
        yield
    finally:
        emu.guild_id, emu.channel_id = saved


def make_server(pintor: Harness, *names: str) -> Server:
    guild_id = pintor.emu._snowflake()
    return Server(guild_id, {name: add_channel(pintor, guild_id, name) for name in ("general", *names)})


@pytest.fixture
def new_server(pintor: Harness) -> Iterator[Server]:
    """A server Pintor has never stored rules for; commands come from its #general."""
    server = make_server(pintor, "art", "bots")
    with inside(pintor, server.guild_id, server.channels["general"]):
        yield server


async def stored(pintor: Harness, guild_id: int):
    return await pintor.studio.preferences_and_rules.guild(guild_id)


async def cancel_all(pintor: Harness, member: int) -> None:
    for job in await jobs_of(pintor, member):
        await pintor.studio.cancel(job.id)


# -- 7: the first command on a new server -----------------------------------------------------------


@pytest.mark.parametrize("subcommand, options, column, value, says", [
    ("limits", {"max_queued": 0}, "max_queued_per_member", None, "jobs one member may have queued: no limit"),
    ("limits", {"daily_quota": 0}, "daily_quota", None, "jobs per member per day: no limit"),
    ("limits", {"max_steps": 0}, "max_steps", None, "max steps: no limit"),
    ("limits", {"max_side": 0}, "max_side", None, "max side: no limit"),
    ("limits", {"max_queued": 1}, "max_queued_per_member", 1, "jobs one member may have queued: 1"),
    ("limits", {"max_queued": 1000}, "max_queued_per_member", 1000, "jobs one member may have queued: 1000"),
    ("limits", {"daily_quota": 100000}, "daily_quota", 100000, "jobs per member per day: 100000"),
    ("buttons", {"author_only": False}, "buttons_author_only", False, "buttons: everyone (this server's choice)"),
    ("buttons", {"author_only": True}, "buttons_author_only", True, "buttons: only the author (this server's choice)"),
    ("nsfw-check", {"on": False}, "nsfw_check", False, "NSFW check: off"),
    ("nsfw-check", {"on": True}, "nsfw_check", True, "NSFW check: on"),
    ("remote-models", {"allowed": True}, "remote_models", True,
     "remote models (each picture costs money): allowed (none are configured)"),
    ("remote-models", {"allowed": False}, "remote_models", False,
     "remote models (each picture costs money): not allowed (none are configured)"),
    ("pause", None, "paused", True, "⏸ **paused**"),
    ("resume", None, "paused", False, "**Pintor on this server**\n"),
    ("models", {"names": "tiny-sdxl"}, "allowed_models", "tiny-sdxl", "models allowed: tiny-sdxl ·"),
    ("models", {"names": "all"}, "allowed_models", None, "models allowed: all ·"),
    ("channels", {"channels": "all"}, "channel_ids", None, "answers in: all channels"),
])
async def test_the_first_command_on_a_new_server_stores_what_was_asked(
        pintor: Harness, new_server: Server, subcommand: str, options, column: str, value, says: str):
    async with pintor.studio.store.session() as session:
        assert await session.get(ServerRules, new_server.guild_id) is None  # nothing stored yet
    first = (await admin(pintor, subcommand, options))["content"]
    assert getattr(await stored(pintor, new_server.guild_id), column) == value
    assert says in first
    # the answer is the rules as stored: what /pintor-admin show says, and what the same command says again
    assert first == (await admin(pintor, "show"))["content"]
    assert first == (await admin(pintor, subcommand, options))["content"]


async def test_limits_all_zero_at_once_on_a_new_server(pintor: Harness, new_server: Server):
    content = (await admin(pintor, "limits", {"max_queued": 0, "daily_quota": 0, "max_steps": 0, "max_side": 0}))[
        "content"]
    assert content.count("no limit") == 4
    rules = await stored(pintor, new_server.guild_id)
    assert (rules.max_queued_per_member, rules.daily_quota, rules.max_steps, rules.max_side) == (None,) * 4


async def test_no_limit_set_first_lets_a_member_queue_more_than_the_default(pintor: Harness, new_server: Server):
    """The example of the issue: `limits max_queued:0` as the first command, then a member with
    seven jobs at once (the default limit is five): all seven are queued."""
    assert "jobs one member may have queued: no limit" in (await admin(pintor, "limits", {"max_queued": 0}))["content"]
    emu, member = pintor.emu, pintor.emu._snowflake()
    inters = await asyncio.gather(*(emu.slash("imagine", {"prompt": f"a long queue, place {n} --steps 150"},
                                              user_id=member) for n in range(7)))
    try:
        for inter in inters:
            await acked(inter, kind=DEFERRED)
        jobs = await stored_jobs(pintor, member, 7)
        assert len(jobs) == 7 and not any(inter.followups for inter in inters)
    finally:
        await cancel_all(pintor, member)


async def test_the_other_servers_rules_are_untouched(pintor: Harness, new_server: Server):
    other = make_server(pintor)
    with inside(pintor, other.guild_id, other.channels["general"]):
        await admin(pintor, "limits", {"max_queued": 2, "daily_quota": 9})
    await admin(pintor, "limits", {"max_queued": 0})
    assert (await stored(pintor, new_server.guild_id)).max_queued_per_member is None
    rules = await stored(pintor, other.guild_id)
    assert (rules.max_queued_per_member, rules.daily_quota) == (2, 9)


# -- 7: the first /settings change of a new member --------------------------------------------------


def component(message: dict, *, label: str | None = None, placeholder: str | None = None) -> dict:
    for row in message["components"]:
        for c in row["components"]:
            if (label is not None and c.get("label") == label) or (placeholder and c.get("placeholder") == placeholder):
                return c
    raise LookupError(f"no component {label or placeholder!r}")


async def open_settings(pintor: Harness, member: int, *, guild: bool = True) -> tuple[int, str]:
    inter = await pintor.emu.slash("settings", user_id=member, guild=guild)
    callback = await acked(inter, kind=MESSAGE)
    return inter.original_id, callback["data"]["content"]


@pytest.mark.parametrize("control, value, column, expected", [
    ("model", "default", "model", None), ("model", "tiny-sdxl", "model", "tiny-sdxl"),
    ("aspect ratio", "default", "aspect", None), ("aspect ratio", "21:9", "aspect", "21:9"),
    ("quality", "default", "quality", None), ("quality", "0.5", "quality", 0.5),
    ("stylize", "0", "stylize", 0), ("stylize", "default", "stylize", None), ("stylize", "1000", "stylize", 1000),
    ("Private mode on/off", None, "private", True), ("Reset all", None, "private", False),
    ("Remix mode on/off", None, "remix", True), ("Reset all", None, "remix", False),
])
async def test_a_new_members_first_settings_change_stores_what_was_chosen(
        pintor: Harness, control: str, value: str | None, column: str, expected):
    emu, member = pintor.emu, pintor.emu._snowflake()
    message_id, _ = await open_settings(pintor, member)
    if value is None:  # a button
        click = await emu.click(message_id, component(emu.messages[message_id], label=control)["custom_id"],
                                user_id=member)
    else:
        click = await emu.click(message_id, component(emu.messages[message_id], placeholder=control)["custom_id"],
                                values=[value], user_id=member)
    await acked(click, kind=UPDATE)
    assert getattr(await pintor.studio.preferences_and_rules.member(member), column) == expected
    # the message says what is stored: the same as a fresh /settings
    assert emu.messages[message_id]["content"] == (await open_settings(pintor, member))[1]


# -- 8: channels --------------------------------------------------------------------------------------


async def test_channels_accepts_only_this_servers_channels_and_names_the_rest(pintor: Harness, new_server: Server):
    emu = pintor.emu
    art, bots = new_server.channels["art"], new_server.channels["bots"]
    elsewhere = make_server(pintor, "memes")
    memes = elsewhere.channels["memes"]
    category = add_channel(pintor, new_server.guild_id, "Studios", CATEGORY)
    forum = add_channel(pintor, new_server.guild_id, "showcase", FORUM)
    role, someone, nothing = emu._snowflake(), emu._snowflake(), emu._snowflake()
    dm = int(emu._dm_channel(someone)["id"])

    cases = {
        f"<@&{role}>": f"<@&{role}> (a role)",
        f"<@{someone}>": f"<@{someone}> (a member)",
        f"<@!{someone}>": f"<@!{someone}> (a member)",
        f"<#{memes}>": "#memes (on another server)",
        str(memes): "#memes (on another server)",
        f"<#{dm}>": "(a direct message)",
        f"<#{nothing}>": f"<#{nothing}> (no channel Pintor can see)",
        f"<#{category}>": "#Studios (a category: name the channels in it)",
        f"<#{forum}>": "#showcase (a forum: name the channels in it)",
        "#art": "`#art` (not a channel mention)",
        "@everyone": "`@everyone` (not a channel mention)",
    }
    for written, named in cases.items():
        # alone, and beside a channel of this server: either way nothing is stored
        for text in (written, f"<#{art}> {written}"):
            content = (await admin(pintor, "channels", {"channels": text}))["content"]
            assert content.startswith("Not changed: Pintor can answer only in this server's channels"), content
            assert named in content, (text, content)
            assert (await stored(pintor, new_server.guild_id)).channel_ids is None

    # several faults at once are all named
    content = (await admin(pintor, "channels", {"channels": f"<#{art}>, <@&{role}>, <#{memes}>"}))["content"]
    assert f"<@&{role}> (a role), #memes (on another server)" in content
    assert "Mention the channels" in (await admin(pintor, "channels", {"channels": " , "}))["content"]

    # this server's channels, mentions or ids, any separators, once each
    content = (await admin(pintor, "channels", {"channels": f"<#{art}>,<#{bots}> {art}"}))["content"]
    assert f"answers in: <#{art}>, <#{bots}>" in content
    assert (await stored(pintor, new_server.guild_id)).channel_ids == f"{art},{bots}"

    # Pintor answers there and not elsewhere
    member = emu._snowflake()
    inter = await emu.slash("imagine", {"prompt": "a fox in general"}, user_id=member)
    assert f"Use one of: <#{art}>, <#{bots}>." in await refusal(pintor, inter)
    with inside(pintor, new_server.guild_id, art):
        accepted = await emu.slash("imagine", {"prompt": "a fox in art --steps 150"}, user_id=member)
        await acked(accepted, kind=DEFERRED)
    try:
        [job] = await stored_jobs(pintor, member, 1)
        assert job.channel_id == art and not accepted.followups
    finally:
        await cancel_all(pintor, member)


async def test_a_thread_of_this_server_is_a_channel_pintor_answers_in(pintor: Harness, new_server: Server):
    thread = add_channel(pintor, new_server.guild_id, "fox ideas", PUBLIC_THREAD, parent_id=new_server.channels["art"])
    content = (await admin(pintor, "channels", {"channels": f"<#{thread}>"}))["content"]
    assert f"answers in: <#{thread}>" in content


async def test_too_many_channels_are_refused(pintor: Harness, new_server: Server):
    many = [add_channel(pintor, new_server.guild_id, f"room-{n}") for n in range(26)]
    content = (await admin(pintor, "channels", {"channels": " ".join(f"<#{c}>" for c in many)}))["content"]
    assert "26 channels (at most 25)" in content
    assert (await stored(pintor, new_server.guild_id)).channel_ids is None
    content = (await admin(pintor, "channels", {"channels": " ".join(f"<#{c}>" for c in many[:25])}))["content"]
    assert len(content) < 2000 and (await stored(pintor, new_server.guild_id)).channel_ids.count(",") == 24


async def test_a_long_text_of_non_channels_gets_an_answer_discord_accepts(pintor: Harness, new_server: Server):
    text = " ".join(f"<@&{pintor.emu._snowflake()}>" for _ in range(200))  # 6,000 characters of role mentions
    content = (await admin(pintor, "channels", {"channels": text[:6000]}))["content"]
    assert len(content) <= 2000 and " more. Mention the channels" in content
    assert (await stored(pintor, new_server.guild_id)).channel_ids is None


# -- 9: models ----------------------------------------------------------------------------------------


async def test_an_allow_list_must_hold_a_model_that_makes_pictures(pintor: Harness, new_server: Server):
    content = (await admin(pintor, "models", {"names": "tiny-upscaler"}))["content"]
    assert content == ("Not changed: tiny-upscaler cannot make pictures from text, so every /imagine would be "
                       "refused. Allow at least one of: tiny-sd, tiny-sdxl, tiny-kandinsky.")
    assert (await stored(pintor, new_server.guild_id)).allowed_models is None
    content = (await admin(pintor, "models", {"names": "tiny-upscaler, nope"}))["content"]
    assert "Unknown model(s): nope" in content
    # names as the registry spells them, once each; the upscaler beside a generator is fine
    await admin(pintor, "models", {"names": "TINY-SDXL, tiny-upscaler, tiny-sdxl"})
    assert (await stored(pintor, new_server.guild_id)).allowed_models == "tiny-sdxl,tiny-upscaler"


async def test_without_the_default_the_first_allowed_model_is_the_servers_default(pintor: Harness, new_server: Server):
    emu = pintor.emu
    content = (await admin(pintor, "models", {"names": "tiny-upscaler, tiny-sdxl"}))["content"]
    assert ("models allowed: tiny-upscaler, tiny-sdxl · prompts without --model use tiny-sdxl (the first allowed "
            "that makes pictures; Pintor's default tiny-sd is not allowed)") in content
    assert content == (await admin(pintor, "show"))["content"]

    # a prompt that names no model runs with the server's default, and is done
    member = emu._snowflake()
    inter = await emu.slash("imagine", {"prompt": "a fox on a server without tiny-sd --seed 5"}, user_id=member)
    await acked(inter, kind=DEFERRED)
    result = await inter.wait_original(is_result, timeout=90)
    job = await pintor.job(job_id_of(result))
    assert job.model == "tiny-sdxl" and job.status == "done"

    # /settings and /info of a member here say so
    _, settings = await open_settings(pintor, member)
    assert "model: `tiny-sdxl (server default)`" in settings
    info = await emu.slash("info", user_id=member)
    embed = (await acked(info, kind=MESSAGE))["data"]["embeds"][0]
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["default model"] == "tiny-sdxl (this server's: Pintor's default is not allowed here)"

    # elsewhere the registry's default stays: another server, and DMs
    other = make_server(pintor)
    with inside(pintor, other.guild_id, other.channels["general"]):
        assert "model: `tiny-sd (server default)`" in (await open_settings(pintor, member))[1]
        info = await emu.slash("info", user_id=member)
        embed = (await acked(info, kind=MESSAGE))["data"]["embeds"][0]
        assert {f["name"]: f["value"] for f in embed["fields"]}["default model"] == "tiny-sd"
    assert "model: `tiny-sd (default)`" in (await open_settings(pintor, member, guild=False))[1]


async def test_a_members_own_default_model_that_the_server_forbids(pintor: Harness, new_server: Server):
    """A member who chose tiny-sd in /settings, on a server that allows only tiny-sdxl: their
    prompts without --model use the server's default there (and /settings says so); naming
    tiny-sd is refused by the rule."""
    emu, studio = pintor.emu, pintor.studio
    member = emu._snowflake()
    await studio.preferences_and_rules.update_member(member, "chooser", model="tiny-sd")
    await admin(pintor, "models", {"names": "tiny-sdxl"})
    _, settings = await open_settings(pintor, member)
    assert "model: `tiny-sd` — ⚠️ not allowed on this server: `tiny-sdxl` is used instead." in settings
    inter = await emu.slash("imagine", {"prompt": "a fox, my way --steps 150"}, user_id=member)
    await acked(inter, kind=DEFERRED)
    try:
        [job] = await stored_jobs(pintor, member, 1)
        assert job.model == "tiny-sdxl"
    finally:
        await cancel_all(pintor, member)
    named = await emu.slash("imagine", {"prompt": "a fox --model tiny-sd"}, user_id=member)
    assert "The model 'tiny-sd' is not allowed on this server. Allowed: tiny-sdxl." in await refusal(pintor, named)


async def test_jobs_queued_before_the_models_change_still_run(pintor: Harness, new_server: Server):
    """Rules apply when a job is submitted: one queued under the old allow-list runs to the end;
    the next prompt without --model takes the new default."""
    emu = pintor.emu
    member = emu._snowflake()
    first = await emu.slash("imagine", {"prompt": "a fox before the change --seed 1"}, user_id=member)
    await acked(first, kind=DEFERRED)
    [before] = await stored_jobs(pintor, member, 1)
    await admin(pintor, "models", {"names": "tiny-sdxl"})
    second = await emu.slash("imagine", {"prompt": "a fox after the change --seed 2"}, user_id=member)
    await acked(second, kind=DEFERRED)
    for inter in (first, second):
        await inter.wait_original(is_result, timeout=90)
    jobs = await jobs_of(pintor, member)
    assert [(job.id == before.id, job.model, job.status) for job in jobs] == [
        (True, "tiny-sd", "done"), (False, "tiny-sdxl", "done")]


async def test_vary_of_an_upscale_uses_the_servers_default(pintor: Harness, new_server: Server):
    """Vary on an upscaled picture makes pictures with a default model: the server's."""
    emu = pintor.emu
    member = emu._snowflake()
    await admin(pintor, "models", {"names": "tiny-sdxl"})
    inter = await emu.slash("imagine", {"prompt": "a fox to enlarge --seed 8"}, user_id=member)
    await acked(inter, kind=DEFERRED)
    grid = await inter.wait_original(is_result, timeout=90)
    pick = await emu.click(int(grid["id"]), f"pintor:u:{job_id_of(grid)}:1", user_id=member)
    await acked(pick, kind=DEFERRED_UPDATE)
    await pintor.until(lambda: any(is_result(m) for m in pick.followups), timeout=90)
    picked = await pintor.posted((await stored_jobs(pintor, member, 2))[1].id)
    upscale = await emu.click(picked.message_id, f"pintor:x:{picked.id}:1:s", user_id=member)
    await acked(upscale, kind=DEFERRED_UPDATE)
    await pintor.until(lambda: any(is_result(m) for m in upscale.followups), timeout=90)
    jobs = await stored_jobs(pintor, member, 3)
    upscaled = await pintor.posted(jobs[2].id)
    vary = await emu.click(upscaled.message_id, f"pintor:v:{upscaled.id}:1:s", user_id=member)
    await acked(vary, kind=DEFERRED_UPDATE)
    try:
        jobs = await stored_jobs(pintor, member, 4)
        request = Request.from_json(jobs[3].request)
        assert (jobs[3].kind, request.model) == ("variation", "tiny-sdxl")
        assert not [f for f in vary.followups if f["flags"] & EPHEMERAL]
    finally:
        await cancel_all(pintor, member)


# -- 10: buttons under the operator's rule ------------------------------------------------------------


@contextlib.contextmanager
def operator_author_only(pintor: Harness) -> Iterator[None]:
    """As if Pintor ran with PINTOR_BUTTONS_AUTHOR_ONLY=true (the bot reads it on each use)."""
    settings = pintor.bot.settings
    settings.pintor_buttons_author_only = True
    try:
        yield
    finally:
        settings.pintor_buttons_author_only = False


async def test_show_says_who_imposes_author_only_buttons(pintor: Harness, new_server: Server):
    emu = pintor.emu
    operator = ("buttons: only the author, set for every server by Pintor's operator "
                "(PINTOR_BUTTONS_AUTHOR_ONLY)")
    author, other = emu._snowflake(), emu._snowflake()
    inter = await emu.slash("imagine", {"prompt": "a fox with buttons --seed 9"}, user_id=author)
    await acked(inter, kind=DEFERRED)
    grid = await inter.wait_original(is_result, timeout=90)
    with operator_author_only(pintor):
        shown = (await admin(pintor, "show"))["content"]
        assert operator + " — this server's own choice (everyone) applies once that is off" in shown
        assert "buttons: everyone" not in shown
        answer = (await admin(pintor, "buttons", {"author_only": False}))["content"]
        assert answer.startswith("⚠️ Stored, but not in force: buttons answer only the author, set for every "
                                 "server by Pintor's operator (PINTOR_BUTTONS_AUTHOR_ONLY).")
        assert "buttons: everyone" not in answer
        assert (await stored(pintor, new_server.guild_id)).buttons_author_only is False
        # and that is the rule in force: another member's press is refused
        before = await pintor.job_count()
        click = await emu.click(int(grid["id"]), f"pintor:r:{job_id_of(grid)}", user_id=other)
        await acked(click, kind=DEFERRED_UPDATE)
        await pintor.until(lambda: click.followups)
        assert f"Only <@{author}>" in click.followups[0]["content"]
        assert await pintor.job_count() == before
        # the server's own choice of author-only: in force twice over, said once
        answer = (await admin(pintor, "buttons", {"author_only": True}))["content"]
        assert operator + "\n" in answer and "⚠️" not in answer
    # once the operator's rule is off, the server's choice is what /pintor-admin says
    assert "buttons: only the author (this server's choice)" in (await admin(pintor, "show"))["content"]
    assert "buttons: everyone (this server's choice)" in (
        await admin(pintor, "buttons", {"author_only": False}))["content"]
    click = await emu.click(int(grid["id"]), f"pintor:r:{job_id_of(grid)}", user_id=other)
    await acked(click, kind=DEFERRED_UPDATE)
    try:
        jobs = await stored_jobs(pintor, other, 1)
        assert jobs[0].kind == "reroll"
    finally:
        await cancel_all(pintor, other)

