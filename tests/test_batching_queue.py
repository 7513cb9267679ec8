"""Batching across members through LocalQueue and a real worker process (tiny SD, CPU), with
room for three jobs of four images in one call (PINTOR_BATCH_IMAGES=12).

One worker serves the module; each test first occupies it with a long job from another member,
so that the jobs it submits are all waiting when the worker becomes free, as on a busy server.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from generation.events import Cancelled, Done, Failed, Progress, Started
from generation.files import FileStore
from generation.queue import LocalQueue
from generation.request import JobKind, Request
from tests.engine_helpers import picture_maker
from tests.studio_helpers import local_queue
from tests.waiting import EventLog

pytestmark = pytest.mark.asyncio(loop_scope="module")

_ids = itertools.count(1)
BLOCKER_USER = 99


def make_request(steps: int = 2, seed: int = 7, prompt: str = "a red fox", **changes) -> Request:
    return Request(kind=JobKind.IMAGINE, model="tiny-sd", prompt=prompt, parts=((prompt, 1.0),), negative="",
                   width=64, height=64, steps=steps, guidance=5.0, seed=seed).replace(**changes)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def env(small_registry_file: Path, tmp_path_factory: pytest.TempPathFactory):
    queue = local_queue(tmp_path_factory.mktemp("batch-output"), small_registry_file,
                        preview_interval_s=0.0, batch_images=12)
    await queue.start()
    log = EventLog(queue.events())
    yield queue, log
    await queue.close()


async def submit(queue: LocalQueue, request: Request, user: int) -> int:
    job_id = next(_ids)
    await queue.submit(job_id, user, request)
    return job_id


async def occupy(queue: LocalQueue, log: EventLog) -> int:
    """A long job that runs now; cancel it to let the waiting jobs go."""
    blocker = await submit(queue, make_request(steps=500), BLOCKER_USER)
    await log.wait_for(blocker, Progress)
    return blocker


def ran_together(log: EventLog, jobs: list[int]) -> bool:
    """Whether the jobs started one after another, before any of them made a step."""
    mine = [e for e in log.events if e.job_id in jobs and isinstance(e, Started | Progress)]
    return all(isinstance(e, Started) for e in mine[:len(jobs)]) and {e.job_id for e in mine[:len(jobs)]} == set(jobs)


def pixels_of(done: Done, queue: LocalQueue) -> np.ndarray:
    arrays = []
    for image in done.images:
        with Image.open(FileStore(queue.config.output_dir).path(image.key)) as opened:
            arrays.append(np.asarray(opened, dtype=np.int16))
    return np.stack(arrays)


async def test_waiting_jobs_that_share_a_call_run_as_one_batch_in_fair_order(env):
    queue, log = env
    blocker = await occupy(queue, log)
    a = await submit(queue, make_request(seed=1), user=1)
    b = await submit(queue, make_request(steps=3), user=2)  # other steps: it cannot join
    c = await submit(queue, make_request(seed=3, prompt="a blue whale", chaos=60), user=3)
    d = await submit(queue, make_request(seed=4), user=1)  # 4th in line: beyond the window of 3
    assert await queue.waiting() == [a, b, c, d]
    await queue.cancel(blocker)

    done = {job: await log.wait_for(job, Done) for job in (a, c, b, d)}
    assert ran_together(log, [a, c])
    starts = [e.job_id for e in log.events if isinstance(e, Started) and e.job_id in (a, b, c, d)]
    assert starts == [a, c, b, d]  # b keeps its place first in line after the batch; then d
    seeds = {a: 1, b: 7, c: 3, d: 4}
    for job in (a, b, c, d):  # each job has its own steps, previews and files
        progress = [e for e in log.of(job) if isinstance(e, Progress)]
        steps = 3 if job == b else 2
        assert [(p.step, p.total) for p in progress] == [(s, steps) for s in range(1, steps + 1)]
        assert progress[0].preview is not None
        assert [image.seed for image in done[job].images] == make_request(seed=seeds[job]).seeds()
    assert queue.state.running_jobs == () and queue.state.running_job is None

    # the same requests alone make the same pictures, up to the CPU kernels' last bit
    alone_a = await log.wait_for(await submit(queue, make_request(seed=1), user=1), Done)
    alone_c = await log.wait_for(await submit(queue, make_request(seed=3, prompt="a blue whale", chaos=60), user=3),
                                 Done)
    assert np.abs(pixels_of(alone_a, queue) - pixels_of(done[a], queue)).max() <= 2
    assert np.abs(pixels_of(alone_c, queue) - pixels_of(done[c], queue)).max() <= 2
    assert np.abs(pixels_of(done[a], queue) - pixels_of(done[c], queue)).mean() > 1  # and not one job twice


async def test_cancelling_one_job_of_a_batch_leaves_the_others_running(env):
    queue, log = env
    blocker = await occupy(queue, log)
    x, y, z = [await submit(queue, make_request(steps=30, seed=seed), user) for seed, user in ((1, 1), (2, 2), (3, 3))]
    await queue.cancel(blocker)
    await log.wait_for(y, Progress, where=lambda e: e.step >= 2)
    assert queue.state.running_jobs == (x, y, z) and await queue.position(y) == 0

    assert await queue.cancel(y)
    cancelled = await log.wait_for(y, Cancelled)
    assert await queue.position(y) is None and await queue.position(x) == 0
    first_done = await log.wait_for(x, Done)
    await log.wait_for(z, Done)
    assert log.events.index(cancelled) < log.events.index(first_done)  # at once, not at the batch's end
    y_steps = [e.step for e in log.of(y) if isinstance(e, Progress)]
    assert max(y_steps) < 30 and not any(isinstance(e, Done) for e in log.of(y))
    for job in (x, z):
        assert [e.step for e in log.of(job) if isinstance(e, Progress)] == list(range(1, 31))
    assert not (Path(queue.config.output_dir) / "jobs" / str(y)).exists()  # its images dropped


async def test_a_job_that_fails_in_a_batch_fails_alone(env, tmp_path: Path):
    queue, log = env
    picture = picture_maker(tmp_path)(64, 64)
    variation = make_request(kind=JobKind.VARIATION, init_image=picture, strength=0.5, steps=4)
    blocker = await occupy(queue, log)
    good = await submit(queue, variation, user=1)
    bad = await submit(queue, variation.replace(init_image=str(tmp_path / "gone.png")), user=2)
    await queue.cancel(blocker)
    failed = await log.wait_for(bad, Failed)
    assert "gone from Pintor's file store" in failed.reason
    done = await log.wait_for(good, Done)
    assert len(done.images) == 4 and ran_together(log, [good, bad])


async def test_the_jobs_of_a_batch_whose_worker_dies_run_again_alone_in_their_order(env):
    queue, log = env
    blocker = await occupy(queue, log)
    p = await submit(queue, make_request(steps=30, seed=11), user=1)
    q = await submit(queue, make_request(steps=30, seed=12), user=2)
    await queue.cancel(blocker)
    await log.wait_for(q, Progress)
    assert queue.state.running_jobs == (p, q)
    queue.kill_worker()  # SIGKILL in the middle of the batch
    for job in (p, q):
        await log.wait_for(job, Done)
        assert sum(isinstance(e, Started) for e in log.of(job)) == 2  # really run a second time
        assert not any(isinstance(e, Failed) for e in log.of(job))
    second_run = [e for e in log.events if isinstance(e, Started | Progress) and e.job_id in (p, q)]
    second_run = second_run[next(i for i, e in enumerate(second_run) if isinstance(e, Started) and e.job_id == p
                                 and i > 1):]
    assert [e.job_id for e in second_run] == [p] * 31 + [q] * 31  # p alone, then q alone
