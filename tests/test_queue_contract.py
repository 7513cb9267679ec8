"""The JobQueue contract: the same tests against every implementation of the seam.

- "memory": generation.memory_queue.MemoryQueue (no worker; pictures drawn flat);
- "local": generation.queue.LocalQueue with its spawned worker process (tiny models, CPU);
- "redis": generation.redis_queue.RedisQueue over a throwaway redis-server, with a
  `pintor worker` process (generation.redis_worker) on the tiny models.

Each implementation is started once for the module (a worker takes seconds to start); the tests
submit jobs with fresh ids and wait on their events (tests/waiting.py), never on sleeps.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from PIL import Image

from generation.events import Cancelled, Done, Failed, Progress, Queued, Started, event_from_json, event_to_json
from generation.files import FileStore
from generation.memory_queue import MemoryQueue
from generation.queue import JobQueue
from generation.request import JobKind, Request
from tests.studio_helpers import local_queue
from tests.waiting import EventLog

pytestmark = pytest.mark.asyncio(loop_scope="module")

_ids = itertools.count(1000)
IMPLEMENTATIONS = ["memory", "local", "redis"]


@dataclass
class Env:
    kind: str
    queue: JobQueue
    log: EventLog
    files: FileStore  # the front end's: where Done's keys are


def make_request(steps: int = 2, seed: int = 7, prompt: str = "a red fox", **changes) -> Request:
    return Request(kind=JobKind.IMAGINE, model="tiny-sd", prompt=prompt, parts=((prompt, 1.0),), negative="",
                   width=64, height=64, steps=steps, guidance=5.0, seed=seed).replace(**changes)


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=IMPLEMENTATIONS)
async def env(request: pytest.FixtureRequest, small_registry_file: Path,
              tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    root = tmp_path_factory.mktemp(f"contract-{request.param}")
    files = FileStore(root / "images")
    async with AsyncExitStack() as stack:
        queue: JobQueue
        if request.param == "memory":
            queue = MemoryQueue(files, step_s=0.02, failing_models=frozenset({"not-configured"}))
        elif request.param == "local":
            queue = local_queue(files.root, small_registry_file, preview_interval_s=0.0)
        else:
            from tests.redis_server import redis_queue_with_worker

            queue = await stack.enter_async_context(
                redis_queue_with_worker(root, files, small_registry_file, preview_interval_s=0.0))
        await queue.start()
        stack.push_async_callback(queue.close)
        yield Env(request.param, queue, EventLog(queue.events()), files)


async def submit(env: Env, request: Request, user: int = 1) -> int:
    job_id = next(_ids)
    await env.queue.submit(job_id, user, request)
    return job_id


async def settle(env: Env, job_id: int, kind: type) -> object:
    """The job's final event of `kind`, acknowledged as the Studio does once it is stored."""
    event = await env.log.wait_for(job_id, kind)
    await env.queue.acknowledge(job_id)
    return event


async def test_a_job_runs_to_done_with_pictures_by_key(env: Env):
    request = make_request(steps=3)
    job = await submit(env, request)
    done = await settle(env, job, Done)
    assert isinstance(done, Done)

    events = env.log.of(job)
    assert isinstance(events[0], Queued) and events[0].position == 1
    assert isinstance(events[1], Started)
    progress = [e for e in events if isinstance(e, Progress)]
    assert [(p.step, p.total) for p in progress] == [(1, 3), (2, 3), (3, 3)]
    assert progress[0].preview is not None and progress[0].preview.startswith(b"\x89PNG")
    assert events[-1] == done

    assert [image.seed for image in done.images] == request.seeds()
    assert [image.key for image in done.images] == [f"jobs/{job}/{n}.png" for n in range(1, 5)]
    assert done.grid.key == f"jobs/{job}/grid.png"
    for image in (*done.images, done.grid):
        data = env.files.get(image.key)  # in the front end's store, whatever machine made it
        assert hashlib.sha256(data).hexdigest() == image.sha256
        with Image.open(env.files.path(image.key)) as picture:
            assert picture.size == (image.width, image.height)
    assert (done.images[0].width, done.images[0].height, done.grid.width) == (64, 64, 128)
    assert not list(env.files.path(f"jobs/{job}/1.png").parent.glob(".*"))  # no temp files left
    assert await env.queue.position(job) is None
    workers = await env.queue.workers()
    assert workers and all(w.ready for w in workers) and "tiny-sd" in workers[0].models
    # every event, previews included, crosses a network as JSON and comes back the same
    for event in events:
        again = event_from_json(event_to_json(event))
        assert again == event and type(again) is type(event)
    assert event_from_json(event_to_json(progress[0])) == progress[0]  # its preview's bytes too


async def test_a_failing_job_is_reported_and_the_next_one_runs(env: Env):
    bad = await submit(env, make_request(model="not-configured"))
    good = await submit(env, make_request())
    failed = await settle(env, bad, Failed)
    assert isinstance(failed, Failed) and "Unknown model 'not-configured'" in failed.reason
    await settle(env, good, Done)


async def test_cancel_a_waiting_job_and_a_running_one(env: Env):
    queue, log = env.queue, env.log
    running = await submit(env, make_request(steps=60), user=1)
    waiting = await submit(env, make_request(), user=2)
    after = await submit(env, make_request(), user=3)
    await log.wait_for(running, Progress)
    assert await queue.position(running) == 0
    assert await queue.position(waiting) == 1 and await queue.position(after) == 2

    assert await queue.cancel(waiting)
    await settle(env, waiting, Cancelled)
    assert await queue.position(waiting) is None and await queue.position(after) == 1

    assert await queue.cancel(running)  # at its next step, wherever it runs
    await settle(env, running, Cancelled)
    await settle(env, after, Done)  # the worker went on to the next job
    assert not any(isinstance(e, (Started, Progress, Done)) for e in log.of(waiting))
    assert not any(isinstance(e, Done) for e in log.of(running))
    assert [e for e in log.of(running) if isinstance(e, Progress)][-1].step < 60
    assert not await queue.cancel(999_999)


async def test_jobs_run_in_fair_order_between_members(env: Env):
    queue, log = env.queue, env.log
    ann, bob, cat = 10, 20, 30
    first = await submit(env, make_request(steps=30), user=ann)  # runs at once
    await log.wait_for(first, Started)
    anns = [await submit(env, make_request(), user=ann) for _ in range(3)]
    bobs = [await submit(env, make_request(), user=bob) for _ in range(2)]
    cats = await submit(env, make_request(), user=cat)
    # ann's job runs: bob's and cat's first ones go before ann's second
    expected = [bobs[0], cats, anns[0], bobs[1], anns[1], anns[2]]
    assert await queue.waiting() == expected
    assert [await queue.position(j) for j in expected] == [1, 2, 3, 4, 5, 6]
    told = await log.wait_for(cats, Queued)
    assert isinstance(told, Queued) and told.position in (2, 3)  # told its place (announced as it changes)

    for job in [first, *expected]:
        await settle(env, job, Done)
    started = [e.job_id for e in log.events if isinstance(e, Started) and e.job_id in expected]
    assert started == expected
