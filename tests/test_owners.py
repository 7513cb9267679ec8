"""Job ownership (storage/owners.py, Studio.start): a front end queues again only the jobs
whose owner is gone, never those of a front end still running on the same database; beside a
live front end, an embedded queue refuses new jobs with a clear message; a second `pintor
run` on one database is refused. The Studio here runs on the MemoryQueue (no worker needed)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.intake import Member, RequestError
from bot.studio import OwnerBusy, Studio
from generation.events import Done, ImageFile
from generation.files import FileStore
from generation.memory_queue import MemoryQueue
from generation.registry import load_registry
from storage.db import open_engine, upgrade
from storage.jobs import JobStore
from storage.models import Job, JobStatus, Owner, utcnow
from storage.owners import LEASE_S, OwnerStore, this_host
from tests.studio_helpers import db_url

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def db(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = open_engine(db_url(tmp_path / "pintor.db"))
    await upgrade(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def other_process() -> Iterator[int]:
    """The pid of another live process on this host (a front end running beside us)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process.pid
    process.terminate()
    process.wait(10)


def memory_studio(db: AsyncEngine, root: Path, registry_file: Path, **options) -> Studio:
    files = FileStore(root / "images")
    return Studio(registry=load_registry(registry_file), store=JobStore(db), queue=MemoryQueue(files, step_s=60),
                  files=files, **options)


async def add_owner(db: AsyncEngine, name: str, pid: int, *, age_s: float = 0.0, queue: str = "embedded") -> None:
    store = OwnerStore(db)
    async with store.session.begin() as session:
        session.add(Owner(name=name, queue=queue, host=this_host(), pid=pid,
                          heartbeat_at=utcnow() - timedelta(seconds=age_s)))


async def add_job(db: AsyncEngine, studio: Studio, owner: str | None, status: str = JobStatus.RUNNING) -> int:
    request = studio.prepare("a lighthouse --steps 1")
    job = await studio.store.create_job(user_id=7, user_name="m", kind="imagine", model=request.model,
                                        prompt=request.prompt, request=request.to_json(), owner=owner)
    async with studio.store.session.begin() as session:
        await session.execute(update(Job).where(Job.id == job.id).values(status=status))
    return job.id


async def test_a_start_queues_again_only_the_jobs_whose_owner_is_gone(db, tmp_path, small_registry_file,
                                                                      other_process):
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait(30)
    await add_owner(db, "cli-alive", other_process, queue="redis")  # running beside: keeps its jobs
    await add_owner(db, "cli-stale", other_process, age_s=LEASE_S + 5)  # lease ran out: gone
    await add_owner(db, "cli-exited", exited.pid)  # lease runs, but its process ended: gone
    studio = memory_studio(db, tmp_path, small_registry_file, owner="bot", queue_kind="redis")
    kept = await add_job(db, studio, "cli-alive")
    taken = [await add_job(db, studio, owner) for owner in ("cli-stale", "cli-exited", "nobody", None)]
    taken.append(await add_job(db, studio, "bot", status=JobStatus.QUEUED))  # its own, from before a restart

    await studio.start()
    try:
        assert await studio.queue.waiting() == taken[1:] and await studio.queue_position(taken[0]) == 0
        assert await studio.queue_position(kept) is None
        for job_id in taken:
            job = await studio.job(job_id)
            assert job is not None and job.owner == "bot"
        job = await studio.job(kept)
        assert job is not None and job.owner == "cli-alive" and job.status == JobStatus.RUNNING
        made = await studio.imagine(Member(8, "n"), "a new one --steps 1")
        assert (await studio.job(made.job_id)).owner == "bot"  # type: ignore[union-attr]
        assert studio.refusal is None  # on Redis, front ends share the workers
    finally:
        await studio.close()
    assert [o.name for o in await OwnerStore(db).alive()] == ["cli-alive"]  # closed: its lease is given up


async def test_an_embedded_queue_beside_a_live_front_end_refuses_jobs_and_runs_none_of_its(
        db, tmp_path, small_registry_file, other_process):
    await add_owner(db, "bot", other_process)
    studio = memory_studio(db, tmp_path, small_registry_file)  # a `pintor` verb's studio
    bots = await add_job(db, studio, "bot", status=JobStatus.QUEUED)
    orphan = await add_job(db, studio, None, status=JobStatus.QUEUED)
    started: list[bool] = []

    async def start() -> None:  # the queue's start: an embedded queue's spawns its worker
        started.append(True)

    studio.queue.start = start  # type: ignore[method-assign]
    await studio.start()
    try:
        assert started == []  # no worker for jobs it will never get (it cost a refused `pintor` ~11 s)
        with pytest.raises(RequestError, match="Pintor is running on this database") as refused:
            await studio.imagine(Member(0, "operator"), "a red fox --steps 1")
        assert f"process {other_process}" in str(refused.value) and "PINTOR_QUEUE_URL=redis://" in str(refused.value)
        assert await studio.queue.waiting() == [] and await studio.unfinished_jobs(0) == []
        for job_id in (bots, orphan):  # left alone: the running front end resumes what it must
            job = await studio.job(job_id)
            assert job is not None and job.status == JobStatus.QUEUED and job.owner in ("bot", None)
    finally:
        await studio.close()


async def test_a_second_bot_on_one_database_is_refused(db, tmp_path, small_registry_file, other_process):
    await add_owner(db, "bot", other_process)
    studio = memory_studio(db, tmp_path, small_registry_file, owner="bot")
    with pytest.raises(OwnerBusy, match=f"already running on this database \\(process {other_process}"):
        await studio.start()


async def test_a_bot_restarted_after_a_crash_takes_its_jobs_back(db, tmp_path, small_registry_file):
    # the process that crashed is gone (its pid ended): no need to wait for its lease to run out
    crashed = subprocess.Popen([sys.executable, "-c", "pass"])
    crashed.wait(30)
    await add_owner(db, "bot", crashed.pid)
    studio = memory_studio(db, tmp_path, small_registry_file, owner="bot")
    job_id = await add_job(db, studio, "bot")
    await studio.start()
    try:
        assert await studio.queue_position(job_id) == 0
    finally:
        await studio.close()


class ResultWhileStopped(MemoryQueue):
    """A queue that, as it starts, hands over what the Redis queue hands over at a restart: the
    result of job `done_id`, which ended on a worker while the front end was stopped (its event
    waits in the events stream), its pictures written into the store through temp files, one of
    them still being written when start returns."""

    def __init__(self, files: FileStore, done_id: int):
        super().__init__(files, step_s=60)
        self.done_id = done_id
        self.writing = files.path(f"jobs/{done_id}/.2.png.being-written.tmp")

    async def start(self) -> None:
        key = f"jobs/{self.done_id}/1.png"
        self.files.put(key, b"png")
        picture = ImageFile(key, 64, 64, 1, "0" * 64)
        self.writing.write_bytes(b"half a picture")  # RedisQueue._store_pictures at work
        self._events.put_nowait(Done(self.done_id, (picture,), picture))


async def test_a_result_that_came_while_stopped_is_kept_and_not_run_again(db, tmp_path, small_registry_file):
    """The bot restarted while a worker finished a job: the start neither removes the files the
    queue is writing for it (only what was left half-written before it started) nor turns its
    stored result back to "queued" (which would run it and post it again)."""
    files = FileStore(tmp_path / "images")
    probe = memory_studio(db, tmp_path, small_registry_file)
    job_id = await add_job(db, probe, "a-front-end-gone-since")
    left = files.put(f"jobs/{job_id}/.3.png.left-by-a-killed-worker.tmp", b"half")
    queue = ResultWhileStopped(files, job_id)
    studio = Studio(registry=load_registry(small_registry_file), store=JobStore(db), queue=queue, files=files,
                    owner="bot")
    watcher = studio.watch(job_id)
    await studio.start()
    try:
        async with asyncio.timeout(30):
            async for event in watcher:
                if isinstance(event, Done):
                    break
        job = await studio.job(job_id)
        assert job is not None and job.status == JobStatus.DONE and [i.path for i in job.images] == [
            f"jobs/{job_id}/1.png"]
        assert queue.writing.is_file() and not left.exists()
    finally:
        await studio.close()
