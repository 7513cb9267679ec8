"""--repeat N and --tile through the Discord emulator: the real bot, studio, worker and SQLite."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from generation.request import Request
from storage.models import Job
from tests.discord_harness import Harness, acked, custom_ids, is_result, job_id_of

pytestmark = pytest.mark.asyncio(loop_scope="session")

DEFERRED, EPHEMERAL = 5, 64


async def jobs_of(pintor: Harness, member: int) -> list[Job]:
    async with pintor.studio.store.session() as session:
        return list((await session.scalars(select(Job).where(Job.user_id == member).order_by(Job.id))).all())


async def test_repeat_3_posts_3_grids_each_a_job(pintor: Harness):
    emu = pintor.emu
    member = emu._snowflake()
    inter = await emu.slash("imagine", {"prompt": "a moss texture --tile --repeat 3 --seed 5"}, user_id=member)
    await acked(inter, kind=DEFERRED)
    first = await inter.wait_original(is_result, timeout=90)
    await pintor.until(lambda: len(inter.followups) == 2
                       and all(is_result(emu.messages[int(m["id"])]) for m in inter.followups), timeout=90)
    grids = [first, *(emu.messages[int(m["id"])] for m in inter.followups)]
    job_ids = [job_id_of(grid) for grid in grids]
    jobs = await jobs_of(pintor, member)
    assert sorted(job_ids) == [job.id for job in jobs] and len(jobs) == 3
    requests = [Request.from_json(job.request) for job in jobs]
    # each its own grid: seeds 5, 9, 13 (a given seed steps by the grid's four), the same prompt, tiled
    assert [r.seed for r in requests] == [5, 9, 13]
    assert all(r.tile and r.prompt == "a moss texture" and "--repeat" not in r.parameters for r in requests)
    assert all(job.status == "done" and not grid["flags"] & EPHEMERAL for job, grid in zip(jobs, grids, strict=True))
    for grid, job_id in zip(grids, job_ids, strict=True):
        assert custom_ids(grid)[0][-1] == f"pintor:r:{job_id}"  # each grid its own buttons
        assert "--tile" in grid["content"]


async def test_repeat_beyond_the_queue_limit_is_refused_and_nothing_is_stored(pintor: Harness):
    emu, studio = pintor.emu, pintor.studio
    before = (await studio.rules(emu.guild_id)).max_queued_per_member
    await studio.update_rules(emu.guild_id, max_queued_per_member=2)
    member = emu._snowflake()
    try:
        count = await pintor.job_count()
        inter = await emu.slash("imagine", {"prompt": "a moss texture --repeat 3"}, user_id=member)
        await acked(inter, kind=DEFERRED)
        await pintor.until(lambda: inter.followups and inter.original is None)
        [answer] = inter.followups
        assert answer["flags"] & EPHEMERAL
        assert ("--repeat 3 makes 3 jobs; with the 0 you have queued or running that is over this server's "
                "limit of 2. Nothing was queued") in answer["content"]
        assert await pintor.job_count() == count and await jobs_of(pintor, member) == []
        # within the limit, the same command is made
        inter = await emu.slash("imagine", {"prompt": "a moss texture --repeat 2"}, user_id=member)
        await acked(inter, kind=DEFERRED)
        await inter.wait_original(is_result, timeout=90)
        await pintor.until(lambda: len(inter.followups) == 1 and is_result(emu.messages[int(inter.followups[0]["id"])]),
                           timeout=90)
        assert len(await jobs_of(pintor, member)) == 2
    finally:
        await studio.update_rules(emu.guild_id, max_queued_per_member=before)
