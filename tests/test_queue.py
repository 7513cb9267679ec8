"""generation.queue.LocalQueue with a real worker process (spawned; the tiny models on the CPU):
what only a queue with its own worker process does (a killed worker restarted, a worker that
cannot start). What every queue does is in test_queue_contract.py.

One worker serves the whole module (it takes seconds to start): the tests run in file order
and the last one closes it.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import pytest
import pytest_asyncio

from generation.events import Cancelled, Done, Failed, Interrupted, Progress, Queued, Started
from generation.queue import LocalQueue
from generation.request import JobKind, Request
from tests.studio_helpers import local_queue
from tests.waiting import EventLog

pytestmark = pytest.mark.asyncio(loop_scope="module")

_ids = itertools.count(1)


def make_request(steps: int = 2, seed: int = 7, prompt: str = "a red fox", **changes) -> Request:
    return Request(kind=JobKind.IMAGINE, model="tiny-sd", prompt=prompt, parts=((prompt, 1.0),), negative="",
                   width=64, height=64, steps=steps, guidance=5.0, seed=seed).replace(**changes)


def file_sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def env(small_registry_file: Path, tmp_path_factory: pytest.TempPathFactory):
    output = tmp_path_factory.mktemp("queue-output")
    queue = local_queue(output, small_registry_file, preview_interval_s=0.0)
    await queue.start()
    log = EventLog(queue.events())
    yield queue, log, output
    await queue.close()


async def submit(queue: LocalQueue, request: Request, user: int = 1) -> int:
    job_id = next(_ids)
    await queue.submit(job_id, user, request)
    return job_id


async def test_a_killed_worker_restarts_and_the_job_completes_with_the_same_pictures(env):
    queue, log, output = env
    request = make_request(steps=20, seed=123_456, guidance=0.0)  # no guidance: half the work per step
    reference = await log.wait_for(await submit(queue, request), Done)

    job = await submit(queue, request)
    await log.wait_for(job, Progress)
    old_pid, restarts = queue.worker_pid, queue.state.restarts
    assert queue.state.running_job == job
    queue.kill_worker()  # SIGKILL in the middle of the job

    done = await log.wait_for(job, Done)
    assert queue.state.restarts == restarts + 1 and queue.worker_pid != old_pid
    assert sum(isinstance(e, Started) for e in log.of(job)) == 2  # really run a second time
    assert not any(isinstance(e, Failed) for e in log.of(job))
    assert [image.seed for image in done.images] == request.seeds()
    assert [image.sha256 for image in done.images] == [image.sha256 for image in reference.images]
    assert done.grid.sha256 == reference.grid.sha256
    assert [file_sha256(str(output / image.key)) for image in done.images] == [image.sha256 for image in done.images]


async def test_close_during_a_job_reports_it_interrupted(small_registry_file: Path, tmp_path: Path):
    # A queue of its own: closing the module's queue would leave the other tests, in whatever
    # order they run, waiting for events that never come.
    queue = local_queue(tmp_path, small_registry_file, preview_interval_s=0.0)
    await queue.start()
    log = EventLog(queue.events())
    try:
        job = await submit(queue, make_request(steps=150))
        waiting = await submit(queue, make_request(), user=99)
        await log.wait_for(job, Progress)
        await queue.close()
        interrupted = await log.wait_for(job, Interrupted)
        assert interrupted == Interrupted(job)
        assert log.task.done()  # the event stream ends once the queue is closed
        assert not any(isinstance(e, (Done, Cancelled, Failed)) for e in log.of(job))
        assert all(isinstance(e, Queued) for e in log.of(waiting))  # still waiting, for the next start
        assert queue._process is not None and not queue._process.is_alive()
    finally:
        await queue.close()  # the worker stops even if an assertion failed (a second close does nothing)


async def test_a_worker_that_cannot_start_fails_jobs_with_the_reason(tmp_path: Path):
    queue = local_queue(tmp_path, tmp_path / "missing.toml")
    await queue.start()
    log = EventLog(queue.events())
    job = await submit(queue, make_request())
    failed = await log.wait_for(job, Failed)
    assert isinstance(failed, Failed)
    assert "could not start" in failed.reason and "missing.toml" in failed.reason
    assert queue.state.error and not queue.state.ready
    later = await submit(queue, make_request())
    failed = await log.wait_for(later, Failed)
    assert isinstance(failed, Failed) and "could not start" in failed.reason
    await queue.close()
