"""The database gone for a moment: the PostgreSQL server stopped and started again while the
bot runs (a server of its own: tests/postgres_server.py). While it is down every command is
still answered within 3 s, with a clear "try again" and nothing stored; the jobs queued before
it went finish in the worker meanwhile and are stored and posted exactly once when it is back.
(SQLite's "database locked" is tests/test_discord_faults.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from benchmarks.load import QUEUED
from bot.results import DATABASE_DOWN
from generation.files import job_folder
from tests.discord_emulator import Interaction
from tests.discord_harness import Harness, bot_of_its_own, is_result, job_id_in, job_id_of, until_idle
from tests.postgres_server import PostgresServer, postgres_server

pytestmark = pytest.mark.asyncio(loop_scope="session")

DOWN_TEXT = DATABASE_DOWN.split(";")[0]  # "⚠️ Pintor cannot reach its database just now"


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server this module stops and starts (the session's is shared)."""
    with postgres_server() as server:
        yield server


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def bot(own_postgres: PostgresServer, small_registry_file: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("pintor-postgres-restart")
    async with bot_of_its_own(tmp, small_registry_file, database_url=own_postgres.create_database()) as harness:
        yield harness


def answer(inter: Interaction) -> str:
    """What the member was told: the callback's text, or the follow-ups' and the original's."""
    texts = [str((c.get("data") or {}).get("content", "")) for c in inter.callbacks]
    texts += [m["content"] for m in inter.followups]
    if inter.original is not None:
        texts.append(inter.original["content"])
    return "\n".join(texts)


async def told(inter: Interaction, what: str, timeout: float = 10) -> str:
    await inter._emu._wait(lambda: what in answer(inter), timeout)
    return answer(inter)


def results_of(harness: Harness, job_id: int) -> list[dict]:
    return [m for m in harness.emu.messages.values() if job_id_in(m) == job_id and is_result(m)]


async def test_postgresql_stopped_and_started_again_while_jobs_run(bot: Harness, own_postgres: PostgresServer):
    emu, studio = bot.emu, bot.studio
    member, other = emu._snowflake(), emu._snowflake()
    queued = [await emu.slash("imagine", {"prompt": f"before the restart #{i} --seed {40 + i}"}, user_id=member)
              for i in range(2)]
    for inter in queued:  # told "queued": the job is stored
        await inter.wait_original(lambda m: QUEUED.search(m["content"]) is not None or is_result(m), timeout=30)
    jobs, _ = await studio.history(member, offset=0, limit=10)
    job_ids = sorted(job.id for job in jobs)
    assert len(job_ids) == 2
    before = await bot.job_count()

    await asyncio.to_thread(own_postgres.stop)  # connections ended, as in a restart
    try:
        # the jobs queued before go on in the worker: their pictures are written meanwhile
        grids = [studio.files.path(f"{job_folder(job_id)}/grid.png") for job_id in job_ids]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while not all(grid.exists() for grid in grids):
            assert loop.time() < deadline, "the worker did not finish the queued jobs"
            await asyncio.sleep(0.1)
        # the bot keeps answering, each command within 3 s, with "try again"
        for name, options in (("imagine", {"prompt": "while it is down --seed 3"}), ("info", None),
                              ("history", None), ("settings", None)):
            inter = await emu.slash(name, options, user_id=other)
            callback = await inter.wait_callback(timeout=5)
            assert callback["at"] - inter.dispatched_at < 3, name
            text = await told(inter, DOWN_TEXT)
            assert "Something went wrong" not in text, (name, text)
        again = await emu.slash("imagine", {"prompt": "a known member while it is down --seed 4"}, user_id=member)
        assert (await again.wait_callback(timeout=5))["at"] - again.dispatched_at < 3
        await told(again, DOWN_TEXT)  # read from what is kept, acknowledged, then refused: nothing stored
        await asyncio.sleep(2)  # down a while longer: the Studio keeps trying to store the results
        assert not any(results_of(bot, job_id) for job_id in job_ids)  # not posted before they are stored
    finally:
        await asyncio.to_thread(own_postgres.start)

    for job_id in job_ids:  # stored and posted once it is back, exactly once
        posted = await bot.posted(job_id, timeout=60)
        assert posted.status == "done" and len(posted.images) == 4
    await until_idle(bot)
    assert all(len(results_of(bot, job_id)) == 1 for job_id in job_ids)
    assert await bot.job_count() == before  # nothing stored for the commands refused while down
    assert await studio.unfinished_jobs(other) == []
    after = await emu.slash("imagine", {"prompt": "after the restart --seed 5"}, user_id=other)
    await after.wait_callback(timeout=5)
    final = await after.wait_original(is_result, timeout=90)
    assert len(results_of(bot, job_id_of(final))) == 1
    await until_idle(bot)
