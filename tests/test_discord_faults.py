"""Discord misbehaving, through the emulator's faults (`DiscordEmulator.fault`, `drop_gateway`):
rate limits on edits and uploads are waited out, server errors and time-outs are retried a
bounded number of times and then the member is told, a refused token sends the result to the
channel, a dropped gateway loses nothing — and every job's result is posted exactly once."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from generation.events import Event
from tests.discord_emulator import RecordedRequest
from tests.discord_harness import Harness, acked, held, is_result, job_id_in, job_id_of, until_idle

pytestmark = pytest.mark.asyncio(loop_scope="session")

EDIT_ORIGINAL = r"/webhooks/\d+/{token}/messages/@original"
CHANNEL_POST = r"/channels/{channel}/messages"
DISCORD_PY_TRIES = 5  # discord.py's tries of a webhook request answered 5xx (discord/webhook/async_.py)


def is_result_request(rec: RecordedRequest) -> bool:
    """A result being sent: a picture and buttons (progress has no buttons)."""
    return bool(rec.files) and bool((rec.json or {}).get("components"))


def results_of(pintor: Harness, job_id: int) -> list[dict]:
    return [m for m in pintor.emu.messages.values() if job_id_in(m) == job_id and is_result(m)]


@contextmanager
def faults(pintor: Harness) -> Iterator[None]:
    """Faults added in the block are removed at its end (the emulator is shared)."""
    before = list(pintor.emu.faults)
    try:
        yield
    finally:
        pintor.emu.faults[:] = before


@contextmanager
def send_timeout(pintor: Harness, seconds: float) -> Iterator[None]:
    old = pintor.bot.send_timeout_s
    pintor.bot.send_timeout_s = seconds
    try:
        yield
    finally:
        pintor.bot.send_timeout_s = old


async def job_of(pintor: Harness, inter) -> int:
    """The job an /imagine made (its result names it)."""
    final = await inter.wait_original(lambda m: job_id_in(m) is not None, timeout=90)
    return job_id_in(final)  # type: ignore[return-value]


async def test_a_429_on_the_result_edit_is_waited_out_and_the_result_arrives_once(pintor: Harness):
    emu = pintor.emu
    with faults(pintor):
        inter = await emu.slash("imagine", {"prompt": "a rate-limited lighthouse --seed 11"})
        await acked(inter, kind=5)
        limit = emu.fault("PATCH", EDIT_ORIGINAL.format(token=inter.token), status=429, retry_after=0.6, times=2,
                          when=is_result_request)
        job_id = await job_of(pintor, inter)
        await pintor.posted(job_id)
    edits = [r for r in pintor.requests(lambda r: r.method == "PATCH" and inter.token in r.path)
             if is_result_request(r)]
    assert [r.status for r in edits] == [429, 429, 200]
    waits = [later.at - earlier.at for earlier, later in zip(edits, edits[1:], strict=False)]
    assert len(limit.hits) == 2 and all(wait >= 0.6 for wait in waits), waits  # retry_after honoured
    [result] = results_of(pintor, job_id)
    assert "seed 11" in result["content"]


async def test_a_refused_token_sends_the_result_to_the_channel_through_a_429_once(pintor: Harness):
    emu = pintor.emu
    channel = emu.add_channel()
    with faults(pintor):
        inter = await emu.slash("imagine", {"prompt": "a refused token --seed 12"}, channel_id=channel)
        await acked(inter, kind=5)
        emu.fault("PATCH", EDIT_ORIGINAL.format(token=inter.token), status=401, code=50027, times=100)
        limit = emu.fault("POST", CHANNEL_POST.format(channel=channel), status=429, retry_after=0.5,
                          when=is_result_request)
        await pintor.until(lambda: any(is_result(m) and m["channel_id"] == str(channel)
                                       for m in emu.messages.values()))
    [result] = [m for m in emu.messages.values() if is_result(m) and m["channel_id"] == str(channel)]
    job = await pintor.posted(job_id_of(result))
    assert job.message_id == int(result["id"]) and "seed 12" in result["content"]
    posts = pintor.requests(lambda r: r.method == "POST" and r.path == f"/channels/{channel}/messages")
    assert [r.status for r in posts] == [429, 200] and posts[1].at - limit.hits[0] >= 0.5
    # the token, refused at the first edit, was never tried again (Discord bans retried 401s)
    assert len(pintor.requests(lambda r: inter.token in r.path and r.method == "PATCH")) == 1


async def test_server_errors_on_the_upload_are_retried_a_bounded_number_of_times_then_the_member_is_told(
        pintor: Harness):
    emu = pintor.emu
    with faults(pintor):
        inter = await emu.slash("imagine", {"prompt": "a harbour in a storm --seed 13"})
        await acked(inter, kind=5)
        broken = emu.fault("PATCH", EDIT_ORIGINAL.format(token=inter.token), status=503, times=100,
                           when=is_result_request)
        told = await inter.wait_original(lambda m: "did not take its picture" in m["content"], timeout=90)
        named = re.search(r"Job (\d+) is done", told["content"])
        assert named is not None, told["content"]
        job_id = int(named[1])
        job = await pintor.posted(job_id)
    assert len(broken.hits) == DISCORD_PY_TRIES  # bounded: discord.py's tries, none more of Pintor's
    assert f"/show job_id:{job_id}" in told["content"] and not told["attachments"]
    assert job.message_id == int(told["id"]) and job.status == "done"  # told once; not posted again later


async def test_an_upload_that_times_out_is_sent_again_and_shows_once(pintor: Harness):
    emu = pintor.emu
    with faults(pintor), send_timeout(pintor, 1.0):
        inter = await emu.slash("imagine", {"prompt": "a slow upload --seed 14"})
        await acked(inter, kind=5)
        slow = emu.fault("PATCH", EDIT_ORIGINAL.format(token=inter.token), delay_s=2.0, when=is_result_request)
        job_id = await job_of(pintor, inter)
        await pintor.posted(job_id)
    assert len(slow.hits) == 1
    assert len([r for r in pintor.requests(lambda r: inter.token in r.path) if is_result_request(r)]) == 2
    assert len(results_of(pintor, job_id)) == 1


async def test_a_channel_upload_that_times_out_is_sent_again_with_its_nonce_and_posted_once(pintor: Harness):
    emu = pintor.emu
    channel = emu.add_channel()
    with faults(pintor), send_timeout(pintor, 1.0):
        inter = await emu.slash("imagine", {"prompt": "a slow channel --seed 15"}, channel_id=channel)
        await acked(inter, kind=5)
        emu.fault("PATCH", EDIT_ORIGINAL.format(token=inter.token), status=401, code=50027, times=100)
        slow = emu.fault("POST", CHANNEL_POST.format(channel=channel), delay_s=2.0, when=is_result_request)
        await pintor.until(lambda: len(pintor.requests(
            lambda r: r.path == f"/channels/{channel}/messages" and is_result_request(r))) >= 2)
        results = [m for m in emu.messages.values() if is_result(m) and m["channel_id"] == str(channel)]
        job = await pintor.posted(job_id_of(results[0]))
    assert len(slow.hits) == 1 and len(results) == 1  # Discord made the message once (nonce)
    assert job.message_id == int(results[0]["id"])


async def test_a_dropped_gateway_mid_job_loses_nothing(pintor: Harness):
    emu = pintor.emu
    inter = await emu.slash("imagine", {"prompt": "a lighthouse in the fog --seed 16"})
    await acked(inter, kind=5)
    await inter.wait_original(lambda m: "queued" in m["content"] or "step" in m["content"]
                              or "starting" in m["content"], timeout=30)
    frames = len(emu.gateway_received)
    await emu.drop_gateway()
    job_id = await job_of(pintor, inter)
    await pintor.posted(job_id)
    await emu.wait_ready(timeout=30)
    assert any(f["op"] in (2, 6) for f in emu.gateway_received[frames:])  # resumed or identified anew
    assert len(results_of(pintor, job_id)) == 1
    after = await emu.slash("imagine", {"prompt": "after the drop --seed 17"})  # it still answers
    await acked(after, kind=5)
    await pintor.posted(await job_of(pintor, after))


async def test_a_database_locked_for_two_seconds_delays_the_job_and_the_bot_keeps_answering(pintor: Harness):
    url = pintor.settings.database_url
    if not url.startswith("sqlite"):
        pytest.skip("SQLite's write lock")
    path = url.split(":///", 1)[1]
    emu = pintor.emu
    member = emu._snowflake()
    before = await pintor.job_count()

    def hold_the_write_lock(locked: threading.Event, seconds: float) -> None:
        with sqlite3.connect(path, timeout=30) as db:
            db.execute("BEGIN IMMEDIATE")  # another process writing: every other writer waits
            locked.set()
            time.sleep(seconds)
            db.rollback()

    locked = threading.Event()
    holder = asyncio.get_running_loop().run_in_executor(None, hold_the_write_lock, locked, 2.0)
    await asyncio.to_thread(locked.wait, 10)
    inter = await emu.slash("imagine", {"prompt": "a locked database --seed 18"}, user_id=member)
    await acked(inter, kind=5)  # within 3 s, while the database is locked
    info = await emu.slash("info", user_id=member)  # another command is answered meanwhile
    await acked(info)
    await holder
    job_id = await job_of(pintor, inter)
    await pintor.posted(job_id)
    assert await pintor.job_count() == before + 1 and len(results_of(pintor, job_id)) == 1


async def test_a_job_marked_cancelled_in_the_store_while_its_result_is_on_the_way_ends_its_message(pintor: Harness):
    """The job's row is marked cancelled (another front end's /cancel, the load benchmark's clean-up)
    after the worker finished it but before the Studio stored its result: the result is not
    stored, and the member's message says "Cancelled" — the bot waits for nothing more (once,
    a report task waited forever, and every later test of the shared bot failed its teardown)."""
    emu, studio = pintor.emu, pintor.studio
    member = emu._snowflake()

    async def started(job_id: int, event: Event) -> bool:
        return type(event).__name__ == "Started" and (await pintor.job(job_id)).user_id == member

    async with held(pintor, started) as reached:  # the Studio stores nothing after the job's start
        inter = await emu.slash("imagine", {"prompt": "cancelled on the way --seed 21"}, user_id=member)
        await acked(inter, kind=5)
        await asyncio.wait_for(reached.wait(), 60)
        [job] = (await studio.history(member, offset=0, limit=1))[0]
        grid = studio.files.path(f"jobs/{job.id}/grid.png")
        deadline = time.monotonic() + 60
        while not grid.exists():  # the worker finished it: its Done is on the way
            assert time.monotonic() < deadline, "the worker did not finish the job"
            await asyncio.sleep(0.05)
        await studio.store.mark_cancelled(job.id)
    await inter.wait_original(lambda m: f"Cancelled (job {job.id})" in m["content"], timeout=30)
    await until_idle(pintor, timeout=30)  # no report task left waiting
    assert (await pintor.job(job.id)).status == "cancelled" and not results_of(pintor, job.id)
