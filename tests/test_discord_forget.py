"""/forget and /settings as members really use them, end to end through the emulator: another
member's job waiting on a forgotten picture, jobs forgotten while they run, double clicks,
and controls that outlive their time-out or a restart.
"""

from __future__ import annotations

import asyncio

import pytest

from bot.discord_bot import FORGOTTEN
from bot.intake import Member
from generation.events import Progress
from tests.discord_harness import Harness, acked, held, is_result, job_id_of
from tests.test_discord_members import (
    DEFERRED,
    DEFERRED_UPDATE,
    EPHEMERAL,
    MESSAGE,
    MODAL,
    UPDATE,
    choose,
    component,
    eventually,
    newest_job,
    press,
    until_status,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def grid_of(pintor: Harness, member: int, prompt: str) -> dict:
    inter = await pintor.emu.slash("imagine", {"prompt": prompt}, user_id=member)
    await acked(inter, kind=DEFERRED)
    return await inter.wait_original(is_result, timeout=90)


async def forget(pintor: Harness, member: int) -> str:
    """/forget, "Delete everything"; the answer."""
    ask = await pintor.emu.slash("forget", user_id=member)
    await acked(ask, kind=MESSAGE)
    await press(pintor, ask.original_id, member, "Delete everything", kind=DEFERRED_UPDATE)
    done = await ask.wait_original(lambda m: m["content"].startswith("Done"))
    assert not done["components"]
    return done["content"]


def done_text(count: int) -> str:
    return f"Done: your jobs, settings and {count} picture files are deleted."


# -- 6: a picture another member's job starts from ---------------------------------------------------


async def test_forget_keeps_a_picture_another_members_queued_job_needs(pintor: Harness):
    emu, studio = pintor.emu, pintor.studio
    owner, other = emu._snowflake(), emu._snowflake()
    grid = await grid_of(pintor, owner, "a tide pool --steps 1 --seed 4")
    grid_job = await pintor.job(job_id_of(grid))
    tiles = [studio.picture(i.path) for i in grid_job.images]
    folder = studio.picture(grid_job.grid_path).parent

    # Two long jobs of the other member keep the worker busy: their V1 waits behind them.
    long = [await studio.submit(Member(other, "other"), studio.prepare(f"a long wait {n} --steps 150"))
            for n in range(2)]
    try:
        await until_status(pintor, long[0].job_id, "running")
        click = await emu.click(int(grid["id"]), f"pintor:v:{grid_job.id}:1:h", user_id=other)
        await acked(click, kind=DEFERRED_UPDATE)
        vary_id = await newest_job(pintor, other, newer_than=long[-1].job_id)

        # The owner forgets everything: their rows go, and the pictures nobody waits for.
        assert await forget(pintor, owner) == done_text(4)  # the grid and tiles 2–4
        assert (await pintor.job(vary_id)).status == "queued"  # the premise: it has not started
        assert tiles[0].is_file() and not any(t.exists() for t in tiles[1:])
        assert not studio.picture(grid_job.grid_path).exists() and await studio.job(grid_job.id) is None
    finally:
        for submitted in long:
            await studio.cancel(submitted.job_id)

    # The other member's variation runs from the kept picture, then the picture goes too.
    await pintor.until(lambda: click.followups and is_result(click.followups[-1]))
    vary = await pintor.job(vary_id)
    assert vary.status == "done" and job_id_of(click.followups[-1]) == vary_id

    async def released() -> bool:
        return not tiles[0].exists() and not folder.exists()

    await eventually(released, timeout=10)
    assert all(studio.picture(i.path).is_file() for i in vary.images)  # the variation's own pictures stay


async def test_a_kept_picture_goes_when_the_job_that_needs_it_is_cancelled(pintor: Harness):
    emu, studio = pintor.emu, pintor.studio
    owner, other = emu._snowflake(), emu._snowflake()
    grid = await grid_of(pintor, owner, "a red kite --steps 1 --seed 6")
    grid_job = await pintor.job(job_id_of(grid))
    tile = studio.picture(grid_job.images[2].path)
    long = await studio.submit(Member(other, "other"), studio.prepare("a long wait --steps 150"))
    try:
        await until_status(pintor, long.job_id, "running")
        click = await emu.click(int(grid["id"]), f"pintor:u:{grid_job.id}:3", user_id=other)  # the picture alone
        await acked(click, kind=DEFERRED_UPDATE)
        await pintor.until(lambda: click.followups and is_result(click.followups[0]))
        pick_id = job_id_of(click.followups[0])
        click = await emu.click(int(click.followups[0]["id"]), f"pintor:x:{pick_id}:1:s", user_id=other)
        await acked(click, kind=DEFERRED_UPDATE)
        upscale_id = await newest_job(pintor, other, newer_than=pick_id)
        assert await forget(pintor, owner) == done_text(4)
        assert tile.is_file()
        assert await studio.cancel(upscale_id, member=Member(other))
        await until_status(pintor, upscale_id, "cancelled")
    finally:
        await studio.cancel(long.job_id)
    assert tile.is_file()  # the other member's picture alone (U3, theirs) still shows it
    await forget(pintor, other)

    async def released() -> bool:
        return not tile.exists()

    await eventually(released, timeout=10)


# -- 15: a double click on "Delete everything" -----------------------------------------------------


async def test_a_double_click_on_delete_everything_deletes_once_and_says_what(pintor: Harness):
    emu = pintor.emu
    member = emu._snowflake()
    grid = await grid_of(pintor, member, "a snow globe --steps 1 --seed 2")
    files = [pintor.studio.picture(i.path) for i in (await pintor.job(job_id_of(grid))).images]
    ask = await emu.slash("forget", user_id=member)
    await acked(ask, kind=MESSAGE)
    question = dict(emu.messages[ask.original_id])
    yes = component(question, label="Delete everything")["custom_id"]
    first = await emu.click(ask.original_id, yes, user_id=member)
    second = await emu.click(ask.original_id, yes, user_id=member)  # before the first is answered
    for click in (first, second):
        await acked(click, kind=DEFERRED_UPDATE)
    edits = lambda: [r for r in emu.requests if r.method == "PATCH" and r.json  # noqa: E731
                     and r.json.get("content", "").startswith("Done")
                     and r.path.split("/")[3] in (first.token, second.token)]
    await pintor.until(lambda: len(edits()) == 2)
    assert [r.json["content"] for r in edits()] == [done_text(5)] * 2  # the grid and its four tiles
    assert not any(f.exists() for f in files)

    # a click that comes after the answer (Discord sent the message as it was) says the same
    late = emu._new_message(int(question["channel_id"]), {"content": question["content"],
                                                          "components": question["components"],
                                                          "flags": EPHEMERAL}, [])
    again = await emu.click(int(late["id"]), yes, user_id=member)
    await acked(again, kind=DEFERRED_UPDATE)
    await pintor.until(lambda: emu.messages[int(late["id"])]["content"].startswith("Done"))
    assert emu.messages[int(late["id"])]["content"] == done_text(5)


# -- 16: a job forgotten while it runs or waits ----------------------------------------------------


async def test_forget_settles_the_messages_of_running_and_queued_jobs(pintor: Harness):
    emu, studio = pintor.emu, pintor.studio
    member = emu._snowflake()

    async def a_preview_of_theirs(job_id: int, event) -> bool:
        return isinstance(event, Progress) and bool(event.preview) and (await pintor.job(job_id)).user_id == member

    async with held(pintor, a_preview_of_theirs) as shown:
        running = await emu.slash("imagine", {"prompt": "a forgotten lighthouse --steps 150"}, user_id=member)
        await acked(running, kind=DEFERRED)
        waiting = await emu.slash("imagine", {"prompt": "a forgotten harbour --steps 150"}, user_id=member)
        await acked(waiting, kind=DEFERRED)
        await asyncio.wait_for(shown.wait(), 60)
        await running.wait_original(lambda m: "generating" in m["content"] and m["attachments"])
        await waiting.wait_original(lambda m: "queued" in m["content"])
        assert await forget(pintor, member) == done_text(0)

    for inter in (running, waiting):
        settled = await inter.wait_original(lambda m: m["content"] == FORGOTTEN, timeout=30)
        assert not settled["attachments"] and not settled["components"]  # the preview is gone
        assert "forgotten" not in settled["content"]  # nor the prompt
    assert (await studio.store.history(member, offset=0, limit=5)) == ([], 0)


# -- 14: controls after their time-out and after a restart -----------------------------------------


async def test_settings_and_forget_controls_keep_answering_after_a_restart(pintor: Harness):
    emu = pintor.emu
    member = emu._snowflake()
    settings = await emu.slash("settings", user_id=member)
    await acked(settings, kind=MESSAGE)
    opened_before = await press(pintor, settings.original_id, member, "Always append…", kind=MODAL)
    ask = await emu.slash("forget", user_id=member)
    await acked(ask, kind=MESSAGE)

    await pintor.restart()

    message = await choose(pintor, settings.original_id, member, "aspect ratio", "3:2")
    assert "aspect ratio: `3:2`" in message["content"]
    await press(pintor, settings.original_id, member, "Private mode on/off")
    assert "private mode: on" in emu.messages[settings.original_id]["content"]
    # a modal opened before the restart, submitted after it
    saved = await emu.submit_modal(opened_before, {"Added to every prompt: words, --parameters": "--no clouds"})
    await acked(saved, kind=UPDATE)
    assert "always append: --no clouds" in emu.messages[settings.original_id]["content"]
    # and one opened after it
    opened = await press(pintor, settings.original_id, member, "Always append…", kind=MODAL)
    bad = await emu.submit_modal(opened, {"Added to every prompt: words, --parameters": "--ar banana"})
    refusal = await acked(bad, kind=MESSAGE)
    assert refusal["data"]["flags"] & EPHEMERAL and "Not saved" in refusal["data"]["content"]
    stored = await pintor.studio.preferences_and_rules.member(member)  # the restarted bot's studio
    assert (stored.aspect, stored.private, stored.append) == ("3:2", True, "--no clouds")

    await press(pintor, ask.original_id, member, "Keep my data")
    assert emu.messages[ask.original_id]["content"] == "Nothing was deleted."
    assert not emu.messages[ask.original_id]["components"]
    assert (await pintor.studio.preferences_and_rules.member(member)).aspect == "3:2"


async def test_an_expired_forget_question_says_so_and_deletes_nothing(pintor: Harness):
    emu, studio = pintor.emu, pintor.studio
    member = emu._snowflake()
    await studio.preferences_and_rules.update_member(member, "slow", aspect="2:3")
    account = pintor.bot.get_cog("Account")
    account.forget_timeout_s = -1  # every question has expired
    try:
        for label in ("Delete everything", "Keep my data"):
            ask = await emu.slash("forget", user_id=member)
            await acked(ask, kind=MESSAGE)
            await press(pintor, ask.original_id, member, label)
            answer = emu.messages[ask.original_id]
            assert answer["content"] == "This question expired: nothing was deleted. Run /forget again."
            assert not answer["components"]
    finally:
        del account.forget_timeout_s
    assert (await studio.preferences_and_rules.member(member)).aspect == "2:3"


async def test_someone_elses_settings_controls_are_refused(pintor: Harness):
    emu, studio = pintor.emu, pintor.studio
    member, other = emu._snowflake(), emu._snowflake()
    settings = await emu.slash("settings", user_id=member)
    await acked(settings, kind=MESSAGE)
    select = component(emu.messages[settings.original_id], placeholder="aspect ratio")
    click = await emu.click(settings.original_id, select["custom_id"], values=["16:9"], user_id=other)
    answer = await acked(click, kind=MESSAGE)
    assert answer["data"]["flags"] & EPHEMERAL and "someone else's settings" in answer["data"]["content"]
    assert (await studio.preferences_and_rules.member(member)).aspect is None
    assert (await studio.preferences_and_rules.member(other)).aspect is None
