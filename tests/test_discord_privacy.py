"""Privacy and server rules across servers and DMs, end to end through the emulator: who can
/show what, where results sent privately link to, buttons pressed in a DM, /show and the
channel list, and what a server's daily quota and queue limit count.

Each test works on servers and members of its own (fresh ids), so the shared bot's default
server keeps its rules.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from bot.cogs.imagine import DM_REFUSAL
from bot.intake import Member
from storage.jobs import NewImage
from storage.models import Job, JobStatus
from tests.discord_harness import Harness, acked, custom_ids, is_result, job_id_of
from tests.test_discord_members import fields, png

pytestmark = pytest.mark.asyncio(loop_scope="session")

MESSAGE, DEFERRED, DEFERRED_UPDATE = 4, 5, 6
EPHEMERAL = 64


async def done_job(pintor: Harness, member: int, folder: Path, *, prompt: str, guild_id: int | None,
                   channel_id: int | None = None, private: bool = False, status: str = JobStatus.DONE) -> int:
    """A job stored directly (none runs), with a grid and four tiles on disk when done."""
    store = pintor.studio.store
    request = pintor.studio.prepare(prompt)
    job = await store.create_job(user_id=member, user_name=f"member{member % 1000}", kind="imagine",
                                 model=request.model, prompt=request.prompt, request=request.to_json(),
                                 guild_id=guild_id, channel_id=channel_id, private=private)
    if status == JobStatus.DONE:
        tiles = [png(folder / f"tile{job.id}-{n}.png", (128, 128)) for n in range(1, 5)]
        await store.complete(job.id, [NewImage(p, 128, 128, n, "0" * 64) for n, p in enumerate(tiles)],
                             png(folder / f"grid{job.id}.png"))
    else:
        async with store.session.begin() as session:
            await session.execute(update(Job).where(Job.id == job.id).values(status=status))
    return job.id


def in_channel(pintor: Harness, channel_id: int) -> list[dict]:
    return [m for m in pintor.emu.messages.values() if m["channel_id"] == str(channel_id)]


def dm_of(pintor: Harness, member: int) -> int:
    return int(pintor.emu._dm_channel(member)["id"])


async def refused_press(pintor: Harness, message: dict, custom_id: str, member: int) -> str:
    """Press a button; the private refusal it gets (and no job is stored)."""
    before = await pintor.job_count()
    click = await pintor.emu.click(int(message["id"]), custom_id, user_id=member)
    await acked(click, kind=DEFERRED_UPDATE)
    await pintor.until(lambda: click.followups)
    [refusal] = click.followups
    assert refusal["flags"] & EPHEMERAL
    assert await pintor.job_count() == before
    return refusal["content"]


# -- 1, 2: a privately delivered result ------------------------------------------------------------


async def test_a_private_result_exists_only_for_its_author(pintor: Harness):
    emu, studio = pintor.emu, pintor.studio
    author, other = emu._snowflake(), emu._snowflake()
    await studio.preferences_and_rules.update_member(author, "author", private=True)
    inter = await emu.slash("imagine", {"prompt": "my secret garden --steps 1 --seed 5"}, user_id=author)
    await acked(inter, kind=DEFERRED)
    result = await inter.wait_original(is_result, timeout=90)
    assert result["flags"] & EPHEMERAL
    job_id = job_id_of(result)
    assert (await pintor.posted(job_id)).private

    # Anyone else, in the same server or another one: no such job (as for a number never used).
    _, elsewhere = emu.add_guild()
    never_used = job_id + 10_000
    for asked, where in ((job_id, {}), (job_id, {"channel_id": elsewhere}), (never_used, {})):
        show = await emu.slash("show", {"job_id": asked}, user_id=other, **where)
        answer = (await acked(show, kind=MESSAGE))["data"]
        assert answer["flags"] & EPHEMERAL and answer["content"] == f"There is no job {asked} here."
    # Private mode off later: what was delivered privately stays private.
    await studio.preferences_and_rules.update_member(author, private=False)
    show = await emu.slash("show", {"job_id": job_id}, user_id=other)
    assert (await acked(show, kind=MESSAGE))["data"]["content"] == f"There is no job {job_id} here."
    assert not [m for m in emu.messages.values() if "my secret garden" in m["content"] and not m["flags"] & EPHEMERAL]

    # Its author can (publicly now: private mode is off).
    show = await emu.slash("show", {"job_id": job_id}, user_id=author)
    again = await show.wait_original(is_result)
    assert "my secret garden" in again["content"] and not again["flags"] & EPHEMERAL

    # /history points the author to /show: an ephemeral message has no link anyone can open.
    history = await emu.slash("history", user_id=author)
    page = await history.wait_original(lambda m: m["embeds"])
    assert fields(page["embeds"][0])["message"] == f"private: see it again with `/show job_id:{job_id}`"
    assert "discord.com/channels" not in str(page["embeds"])


async def test_a_private_members_button_job_is_private_too(pintor: Harness, tmp_path: Path):
    """U/V/🔄 pressed by a member in private mode, on a public grid: the new job is theirs only."""
    emu, studio = pintor.emu, pintor.studio
    owner, presser, other = emu._snowflake(), emu._snowflake(), emu._snowflake()
    grid_id = await done_job(pintor, owner, tmp_path, prompt="a public lighthouse --steps 1",
                             guild_id=emu.guild_id, channel_id=emu.channel_id)
    show = await emu.slash("show", {"job_id": grid_id}, user_id=owner)
    grid = await show.wait_original(is_result)
    await studio.preferences_and_rules.update_member(presser, "presser", private=True)
    click = await emu.click(int(grid["id"]), f"pintor:r:{grid_id}", user_id=presser)
    await acked(click, kind=DEFERRED_UPDATE)
    await pintor.until(lambda: click.followups and is_result(click.followups[0]))
    [result] = click.followups
    assert result["flags"] & EPHEMERAL
    reroll_id = job_id_of(result)
    assert (await pintor.posted(reroll_id)).private
    show = await emu.slash("show", {"job_id": reroll_id}, user_id=other)
    assert (await acked(show, kind=MESSAGE))["data"]["content"] == f"There is no job {reroll_id} here."
    # the public grid stays showable by others
    show = await emu.slash("show", {"job_id": grid_id}, user_id=other)
    assert job_id_of(await show.wait_original(is_result)) == grid_id


# -- 3: buttons pressed in a DM ------------------------------------------------------------------


async def test_buttons_in_a_dm_follow_the_rules_of_the_jobs_server(pintor: Harness):
    emu, studio, bot = pintor.emu, pintor.studio, pintor.bot
    guild, channel = emu.add_guild()
    member = emu._snowflake()
    await studio.preferences_and_rules.update_member(member, "dreamer", private=True)
    bot.interaction_ttl_s = 0  # the token is gone before the result: a private result goes by DM
    try:
        inter = await emu.slash("imagine", {"prompt": "a night ferry --steps 1 --seed 9"}, user_id=member,
                                channel_id=channel)
        await acked(inter, kind=DEFERRED)
        dm = dm_of(pintor, member)
        await pintor.until(lambda: any(is_result(m) for m in in_channel(pintor, dm)))
        [result] = [m for m in in_channel(pintor, dm) if is_result(m)]
        job_id = job_id_of(result)
        assert (await pintor.job(job_id)).guild_id == guild
        reroll = f"pintor:r:{job_id}"
        assert reroll in custom_ids(result)[0]

        # Each of the server's rules applies to a press in the DM.
        for rules, says in ((dict(paused=True), "paused"),
                            (dict(daily_quota=1), "used your 1 jobs for today"),
                            (dict(allowed_models="tiny-sdxl"), "not allowed on this server"),
                            (dict(max_side=64), "limit of 64 pixels"),
                            (dict(max_queued_per_member=0), "allows 0"),
                            (dict(buttons_author_only=True), None)):
            await studio.preferences_and_rules.update_guild(guild, **(dict(
                paused=False, daily_quota=None, allowed_models=None, max_side=None, max_queued_per_member=5) | rules))
            if says is not None:
                assert says in await refused_press(pintor, result, reroll, member)
        # the server's author-only rule: another member's press in a DM is refused as well
        dm_copy = emu._new_message(dm_of(pintor, stranger := emu._snowflake()),
                                   {"content": result["content"], "components": result["components"]}, [])
        assert "Only <@" in await refused_press(pintor, dm_copy, reroll, stranger)

        # A press the rules allow: the job counts on that server (its quota, its rules); the
        # channel list does not apply, as nothing is posted in the server.
        await studio.preferences_and_rules.update_guild(guild, buttons_author_only=False, daily_quota=2,
                                           channel_ids=str(emu.add_channel(guild)))
        click = await emu.click(int(result["id"]), reroll, user_id=member)
        await acked(click, kind=DEFERRED_UPDATE)
        await pintor.until(lambda: len([m for m in in_channel(pintor, dm) if is_result(m)]) == 2)
        [second] = [m for m in in_channel(pintor, dm) if is_result(m) and m["id"] != result["id"]]
        job = await pintor.job(job_id_of(second))
        assert (job.guild_id, job.private, job.parent_id, job.status) == (guild, True, job_id, JobStatus.DONE)
        midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        assert await studio.store.count_since(member, midnight, guild_id=guild) == 2
        assert "used your 2 jobs" in await refused_press(pintor, second, f"pintor:r:{job.id}", member)
    finally:
        del bot.interaction_ttl_s  # back to the class's


async def test_a_dm_press_that_belongs_to_no_server_needs_dms_allowed(pintor: Harness, tmp_path: Path):
    emu, bot = pintor.emu, pintor.bot
    member = emu._snowflake()
    job_id = await done_job(pintor, member, tmp_path, prompt="a letter --steps 1", guild_id=None,
                            channel_id=dm_of(pintor, member))
    show = await emu.slash("show", {"job_id": job_id}, user_id=member)  # in the server: a message with buttons
    grid = await show.wait_original(is_result)
    dm_copy = emu._new_message(dm_of(pintor, member), {"content": grid["content"],
                                                       "components": grid["components"]}, [])
    assert bot.settings.pintor_allow_dms is False
    for custom_id in (f"pintor:r:{job_id}", f"pintor:u:{job_id}:1", f"pintor:v:{job_id}:2:h"):
        assert await refused_press(pintor, dm_copy, custom_id, member) == DM_REFUSAL

    bot.settings.pintor_allow_dms = True
    try:
        before = await pintor.job_count()
        click = await emu.click(int(dm_copy["id"]), f"pintor:r:{job_id}", user_id=member)
        await acked(click, kind=DEFERRED_UPDATE)
        await pintor.until(lambda: click.followups and is_result(click.followups[0]))
        job = await pintor.job(job_id_of(click.followups[0]))
        assert await pintor.job_count() == before + 1 and job.guild_id is None and job.status == JobStatus.DONE
    finally:
        bot.settings.pintor_allow_dms = False


# -- 4, 17: /show where Pintor does not answer, and of unfinished jobs -----------------------------


async def test_show_follows_the_servers_channel_list(pintor: Harness, tmp_path: Path):
    emu, studio = pintor.emu, pintor.studio
    guild, quiet = emu.add_guild()
    listed = emu.add_channel(guild)
    member = emu._snowflake()
    job_id = await done_job(pintor, member, tmp_path, prompt="a quiet pond", guild_id=guild, channel_id=listed)
    await studio.preferences_and_rules.update_guild(guild, channel_ids=str(listed))

    show = await emu.slash("show", {"job_id": job_id}, user_id=member, channel_id=quiet)
    answer = (await acked(show, kind=MESSAGE))["data"]
    assert answer["flags"] & EPHEMERAL and "does not answer in this channel" in answer["content"]
    assert f"<#{listed}>" in answer["content"]
    assert not [m for m in in_channel(pintor, quiet) if not m["flags"] & EPHEMERAL]

    show = await emu.slash("show", {"job_id": job_id}, user_id=member, channel_id=listed)
    posted = await show.wait_original(is_result)
    assert posted["channel_id"] == str(listed) and job_id_of(posted) == job_id


@pytest.mark.parametrize("status, says", [
    (JobStatus.CANCELLED, "Job {id} was cancelled: it has no pictures."),
    ("queued", "Job {id} is queued; its pictures are posted when it is done."),
    ("running", "Job {id} is running; its pictures are posted when it is done."),
])
async def test_show_of_a_job_without_pictures_says_why(pintor: Harness, tmp_path: Path, status: str, says: str):
    member = pintor.emu._snowflake()
    job_id = await done_job(pintor, member, tmp_path, prompt="a stopped train", guild_id=pintor.emu.guild_id,
                            status=status)
    try:
        show = await pintor.emu.slash("show", {"job_id": job_id}, user_id=member)
        answer = (await acked(show, kind=MESSAGE))["data"]
        assert answer["flags"] & EPHEMERAL and answer["content"] == says.format(id=job_id)
    finally:  # never left unfinished: a later restart would run it
        await pintor.studio.store.mark_cancelled(job_id)


# -- 5: what a server's quota and queue limit count ------------------------------------------------


async def info_today(pintor: Harness, member: int, **where) -> str:
    info = await pintor.emu.slash("info", user_id=member, **where)
    [embed] = (await acked(info, kind=MESSAGE))["data"]["embeds"]
    return fields(embed)["your jobs today"]


async def test_a_servers_daily_quota_counts_that_servers_jobs(pintor: Harness, tmp_path: Path):
    emu, studio = pintor.emu, pintor.studio
    (guild_a, channel_a), (guild_b, channel_b) = emu.add_guild(), emu.add_guild()
    member = emu._snowflake()
    for n in range(3):  # today on server B, and in DMs
        await done_job(pintor, member, tmp_path, prompt=f"a harbour on B {n}", guild_id=guild_b, channel_id=channel_b)
    await done_job(pintor, member, tmp_path, prompt="a harbour in DMs", guild_id=None)
    # on server A: one cancelled before it ran (costs nothing), one cancelled while it ran (counts)
    await done_job(pintor, member, tmp_path, prompt="never ran", guild_id=guild_a, status=JobStatus.CANCELLED)
    ran = await done_job(pintor, member, tmp_path, prompt="ran a while", guild_id=guild_a, status=JobStatus.CANCELLED)
    async with studio.store.session.begin() as session:
        await session.execute(update(Job).where(Job.id == ran).values(started_at=datetime.now(UTC)))
    # yesterday's do not count
    old = await done_job(pintor, member, tmp_path, prompt="yesterday", guild_id=guild_a)
    async with studio.store.session.begin() as session:
        await session.execute(update(Job).where(Job.id == old).values(created_at=datetime.now(UTC) - timedelta(days=1)))
    await studio.preferences_and_rules.update_guild(guild_a, daily_quota=3)

    assert await info_today(pintor, member, channel_id=channel_a) == "1 of 3"
    assert await info_today(pintor, member, channel_id=channel_b) == "3"
    assert await info_today(pintor, member, guild=False) == "5 (all servers and DMs)"
    for n in (1, 2):
        inter = await emu.slash("imagine", {"prompt": f"a harbour on A {n} --steps 1"}, user_id=member,
                                channel_id=channel_a)
        await acked(inter, kind=DEFERRED)
        await inter.wait_original(is_result, timeout=90)
    assert await info_today(pintor, member, channel_id=channel_a) == "3 of 3"
    inter = await emu.slash("imagine", {"prompt": "one too many --steps 1"}, user_id=member, channel_id=channel_a)
    await acked(inter, kind=DEFERRED)
    await pintor.until(lambda: inter.followups)
    assert "used your 3 jobs for today" in inter.followups[0]["content"]
    # server B has no quota; the member's jobs on A do not change that
    inter = await emu.slash("imagine", {"prompt": "a harbour on B again --steps 1"}, user_id=member,
                            channel_id=channel_b)
    await acked(inter, kind=DEFERRED)
    assert job_id_of(await inter.wait_original(is_result, timeout=90))


async def test_the_queue_limit_counts_a_members_unfinished_jobs_everywhere(pintor: Harness, tmp_path: Path):
    emu, studio = pintor.emu, pintor.studio
    (guild_a, channel_a), (guild_b, channel_b) = emu.add_guild(), emu.add_guild()
    member = emu._snowflake()
    waiting = [await done_job(pintor, member, tmp_path, prompt=f"waiting on B {n}", guild_id=guild_b,
                              channel_id=channel_b, status="queued") for n in range(2)]
    try:
        await studio.preferences_and_rules.update_guild(guild_a, max_queued_per_member=2)
        inter = await emu.slash("imagine", {"prompt": "one more on A"}, user_id=member, channel_id=channel_a)
        await acked(inter, kind=DEFERRED)
        await pintor.until(lambda: inter.followups)
        assert re.search(r"already have 2 jobs queued or running; this server allows 2", inter.followups[0]["content"])
    finally:
        for job_id in waiting:
            await studio.store.mark_cancelled(job_id)


async def test_buttons_on_a_show_repost_belong_to_the_jobs_author_under_author_only(pintor: Harness, tmp_path: Path):
    emu, studio = pintor.emu, pintor.studio
    guild, channel = emu.add_guild()
    author, reposter = emu._snowflake(), emu._snowflake()
    job_id = await done_job(pintor, author, tmp_path, prompt="a shared sunset", guild_id=guild, channel_id=channel)
    await studio.preferences_and_rules.update_guild(guild, buttons_author_only=True)
    show = await emu.slash("show", {"job_id": job_id}, user_id=reposter, channel_id=channel)
    repost = await show.wait_original(is_result)
    says = await refused_press(pintor, repost, f"pintor:u:{job_id}:1", reposter)
    assert f"Only <@{author}>, who asked for job {job_id}" in says


async def test_a_private_job_posted_later_goes_by_dm_even_after_private_mode_is_off(pintor: Harness):
    """Results nobody follows any more (re-queued after a restart, or the token gone) are posted
    as the member chose when they asked: a private job by DM, never in the channel."""
    emu, studio = pintor.emu, pintor.studio
    member = emu._snowflake()
    await studio.preferences_and_rules.update_member(member, "changer", private=False)  # off by now
    submitted = await studio.submit(Member(member, "changer"), studio.prepare("a diary --steps 1"),
                                    guild_id=emu.guild_id, channel_id=emu.channel_id, private=True)
    dm = dm_of(pintor, member)
    await pintor.until(lambda: any(is_result(m) and job_id_of(m) == submitted.job_id for m in in_channel(pintor, dm)))
    assert not [m for m in in_channel(pintor, emu.channel_id) if "a diary" in m["content"]]


async def test_a_job_made_in_a_dm_is_private_whatever_the_members_settings(pintor: Harness, tmp_path: Path):
    emu = pintor.emu
    member, other = emu._snowflake(), emu._snowflake()
    job_id = await done_job(pintor, member, tmp_path, prompt="a postcard --steps 1", guild_id=emu.guild_id,
                            channel_id=emu.channel_id)
    show = await emu.slash("show", {"job_id": job_id}, user_id=member)
    grid = await show.wait_original(is_result)
    dm_copy = emu._new_message(dm_of(pintor, member), {"content": grid["content"],
                                                       "components": grid["components"]}, [])
    click = await emu.click(int(dm_copy["id"]), f"pintor:r:{job_id}", user_id=member)
    await acked(click, kind=DEFERRED_UPDATE)
    await pintor.until(lambda: click.followups and is_result(click.followups[0]))
    job = await pintor.posted(job_id_of(click.followups[0]))
    assert (job.guild_id, job.private) == (emu.guild_id, True)
    show = await emu.slash("show", {"job_id": job.id}, user_id=other)
    assert (await acked(show, kind=MESSAGE))["data"]["content"] == f"There is no job {job.id} here."
