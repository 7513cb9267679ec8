"""generation.queue.LocalQueue with a real worker process (spawned; the tiny models on the CPU).

One worker serves the whole module (it takes seconds to start): the tests run in file order
and the last one closes it.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import pytest
import pytest_asyncio
from PIL import Image

from generation.events import Cancelled, Done, Failed, Interrupted, Progress, Queued, Started
from generation.queue import LocalQueue
from generation.request import JobKind, Request
from generation.worker import job_dir
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


async def test_a_job_runs_to_done_with_files_that_match(env):
    queue, log, output = env
    request = make_request(steps=3)
    job = await submit(queue, request)
    done = await log.wait_for(job, Done)

    events = log.of(job)
    assert isinstance(events[0], Queued) and events[0].position == 1
    assert isinstance(events[1], Started)
    progress = [e for e in events if isinstance(e, Progress)]
    assert events[2:] == [*progress, done]
    assert [(p.step, p.total) for p in progress] == [(1, 3), (2, 3), (3, 3)]
    assert progress[0].preview is not None  # a PNG of the grid forming
    assert progress[0].preview.startswith(b"\x89PNG")

    assert len(done.images) == 4
    assert [image.seed for image in done.images] == request.seeds()
    for n, image in enumerate(done.images, start=1):
        assert Path(image.path) == job_dir(output, job) / f"{n}.png"
        assert file_sha256(image.path) == image.sha256
        with Image.open(image.path) as picture:
            assert picture.size == (image.width, image.height) == (64, 64)
    assert file_sha256(done.grid.path) == done.grid.sha256
    assert (done.grid.width, done.grid.height) == (128, 128)
    assert not list(job_dir(output, job).glob(".*"))  # no temp files left
    assert queue.position(job) is None and queue.state.running_job is None
    assert queue.state.ready and queue.state.device["device"] == "cpu"


async def test_a_failing_job_is_reported_and_the_worker_goes_on(env):
    queue, log, _ = env
    bad = await submit(queue, make_request(model="not-configured"))
    good = await submit(queue, make_request())
    failed = await log.wait_for(bad, Failed)
    assert "Unknown model 'not-configured'" in failed.reason
    await log.wait_for(good, Done)


async def test_cancel_a_waiting_job_and_a_running_one(env):
    queue, log, _ = env
    running = await submit(queue, make_request(steps=40), user=1)
    waiting = await submit(queue, make_request(), user=2)
    after = await submit(queue, make_request(), user=3)
    await log.wait_for(running, Progress)
    assert queue.position(running) == 0 and queue.position(waiting) == 1 and queue.position(after) == 2

    assert await queue.cancel(waiting)
    await log.wait_for(waiting, Cancelled, timeout=5)  # at once: it never reached the worker
    assert queue.position(waiting) is None and queue.position(after) == 1
    assert not await queue.cancel(waiting)

    assert await queue.cancel(running)
    await log.wait_for(running, Cancelled)
    await log.wait_for(after, Done)  # the worker went on to the next job
    assert not any(isinstance(e, (Started, Progress, Done)) for e in log.of(waiting))
    assert not any(isinstance(e, Done) for e in log.of(running))
    progress = [e for e in log.of(running) if isinstance(e, Progress)]
    assert progress[-1].step < 40
    assert not await queue.cancel(running) and not await queue.cancel(999_999)


async def test_places_in_line_are_fair_between_members(env):
    queue, log, _ = env
    ann, bob = 10, 20
    first = await submit(queue, make_request(steps=40), user=ann)  # runs at once
    await log.wait_for(first, Started)
    second = await submit(queue, make_request(), user=ann)
    third = await submit(queue, make_request(), user=ann)
    bobs = await submit(queue, make_request(), user=bob)
    assert await log.wait_for(second, Queued) == Queued(second, 1)
    assert await log.wait_for(third, Queued) == Queued(third, 2)
    # ann's job is running: bob's, arriving now, is next, before ann's second
    assert await log.wait_for(bobs, Queued) == Queued(bobs, 1)
    assert queue.waiting() == [bobs, second, third]
    assert queue.position(first) == 0

    assert await queue.cancel(bobs)  # the others move up, and are told so
    await log.wait_for(bobs, Cancelled, timeout=5)
    assert log.of(second)[-1] == Queued(second, 1) and log.of(third)[-1] == Queued(third, 2)

    for job in (third, second, first):
        assert await queue.cancel(job)
    await log.wait_for(first, Cancelled)
    assert queue.waiting() == [] and queue.state.running_job is None


async def test_a_killed_worker_restarts_and_the_job_completes_with_the_same_pictures(env):
    queue, log, _ = env
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
    assert [file_sha256(image.path) for image in done.images] == [image.sha256 for image in done.images]


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
