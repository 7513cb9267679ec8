"""Two `pintor worker` processes (generation.redis_worker, spawned; tiny models, CPU) behind
one Studio over a real SQLite file and a throwaway redis-server: jobs from several members are
each stored and delivered once, and a worker SIGKILLed in the middle of a job loses nothing (its
job finishes on the other worker, with the same pictures, posted once)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path

import pytest
import pytest_asyncio

from bot.intake import Member
from bot.studio import Studio
from generation.events import Done, Event, Interrupted, Progress, Started
from generation.files import FileStore
from generation.redis_queue import RedisQueue
from generation.registry import load_registry
from generation.worker import WorkerConfig
from storage.db import open_engine, upgrade
from storage.jobs import JobStore
from storage.models import JobStatus
from tests.redis_server import HEARTBEAT_TIMEOUT_S, redis_server, spawn_worker, stop_process, wait_for_workers
from tests.studio_helpers import db_url
from tests.waiting import TIMEOUT_S, collect_until

pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Env:
    studio: Studio
    processes: dict[str, BaseProcess]
    delivered: Counter[tuple[int, str]]  # (job id, event type) → times the listeners heard it
    url: str
    configs: dict[str, WorkerConfig]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def env(small_registry_file: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    root = tmp_path_factory.mktemp("redis-workers")
    with redis_server(root / "redis") as url:
        async with AsyncExitStack() as stack:
            processes: dict[str, BaseProcess] = {}
            configs = {}
            for name in ("w1", "w2"):
                configs[name] = WorkerConfig(output_dir=str(root / f"cache-{name}"), device="cpu",
                                             registry_path=str(small_registry_file), preview_interval_s=0.0)
                processes[name] = spawn_worker(url, configs[name], name)

            async def stop_all() -> None:
                for process in processes.values():
                    await asyncio.to_thread(stop_process, process)

            stack.push_async_callback(stop_all)
            await wait_for_workers(url, set(processes))
            db = open_engine(db_url(root / "pintor.db"))
            stack.push_async_callback(db.dispose)
            await upgrade(db)
            files = FileStore(root / "images")
            studio = Studio(registry=load_registry(small_registry_file), store=JobStore(db),
                            queue=RedisQueue(url, files, heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S), files=files)
            delivered: Counter[tuple[int, str]] = Counter()

            async def listen(job_id: int, event: Event) -> None:
                delivered[job_id, type(event).__name__] += 1

            studio.listeners.append(listen)
            await studio.start()
            stack.push_async_callback(studio.close)
            yield Env(studio, processes, delivered, url, configs)


async def test_jobs_of_several_members_on_two_workers_are_each_delivered_once(env: Env):
    members = [Member(100 + n, f"member{n}") for n in range(4)]
    submitted = [await env.studio.imagine(member, f"a lighthouse number {i} --steps 2 --seed {i}")
                 for i in range(3) for member in members]
    runners = set()
    for job in submitted:
        events = await collect_until(job.events, lambda e: isinstance(e, Done))
        runners |= {e.worker for e in events if isinstance(e, Started)}
    assert runners == {"w1", "w2"}  # both took their share
    workers = await env.studio.workers()
    assert sorted(w.name for w in workers) == ["w1", "w2"] and all(w.ready for w in workers)
    for job in submitted:
        stored = await env.studio.job(job.job_id)
        assert stored is not None and stored.status == JobStatus.DONE and len(stored.images) == 4
        assert all(env.studio.picture(image.path).is_file() for image in stored.images)
        assert env.delivered[job.job_id, "Done"] == 1
    assert await env.studio.waiting_count() == 0


async def runner_of(env: Env, job_id: int) -> str:
    """The name of the worker that runs `job_id` (its heartbeat says so within a second)."""
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            running = {w.name: w.running_job for w in await env.studio.workers()}
            if job_id in running.values():
                return next(name for name, job in running.items() if job == job_id)
            await asyncio.sleep(0.1)


async def all_idle(env: Env) -> None:
    """Until every worker's heartbeat says it is idle (and which models it holds)."""
    async with asyncio.timeout(TIMEOUT_S):
        while any(w.running_job is not None for w in await env.studio.workers()):
            await asyncio.sleep(0.1)


async def test_jobs_go_to_a_free_worker_that_has_their_model_loaded(env: Env):
    member = Member(400, "loader")

    async def runner(prompt: str) -> str:
        await all_idle(env)
        job = await env.studio.imagine(member, prompt)
        events = await collect_until(job.events, lambda e: isinstance(e, Done))
        return next(e.worker for e in events if isinstance(e, Started))

    assert all("tiny-sd" in w.models for w in await env.studio.workers())  # both ran the jobs above
    sdxl = await runner("a castle --model tiny-sdxl --steps 1")  # it holds one model: now tiny-sdxl only
    sd = ({"w1", "w2"} - {sdxl}).pop()
    for n in range(3):  # whichever worker reads the job first, the one with the model runs it
        assert await runner(f"a castle {n} --model tiny-sdxl --steps 1") == sdxl
        assert await runner(f"a castle {n} --steps 1") == sd


async def test_a_worker_stopped_with_sigterm_hands_its_job_to_the_other(env: Env):
    member = Member(300, "stopper")
    job = await env.studio.imagine(member, "a blue whale --steps 30 --seed 5")
    await collect_until(job.events, lambda e: isinstance(e, Progress))
    victim = await runner_of(env, job.job_id)
    process = env.processes[victim]
    process.terminate()  # SIGTERM: the step ends, the job goes back to the stream
    await asyncio.to_thread(process.join, 60)
    assert process.exitcode == 0

    events = await collect_until(job.events, lambda e: isinstance(e, Done))
    assert env.delivered[job.job_id, "Done"] == 1 and env.delivered[job.job_id, "Started"] == 2
    assert not any(isinstance(e, Interrupted) for e in events)  # nothing for the member to see
    stored = await env.studio.job(job.job_id)
    assert stored is not None and stored.status == JobStatus.DONE

    env.processes[victim] = spawn_worker(env.url, env.configs[victim], victim)  # back to two, for what follows
    await wait_for_workers(env.url, {victim})


async def test_a_worker_killed_mid_job_loses_nothing_and_posts_once(env: Env):
    member = Member(200, "killer")
    reference = await env.studio.imagine(member, "a red fox --steps 30 --seed 77")
    [reference_done] = [e for e in await collect_until(reference.events, lambda e: isinstance(e, Done))
                        if isinstance(e, Done)]

    job = await env.studio.imagine(member, "a red fox --steps 30 --seed 77")
    await collect_until(job.events, lambda e: isinstance(e, Progress))
    victim = await runner_of(env, job.job_id)
    env.processes[victim].kill()  # SIGKILL: no goodbye, no hand-back

    events = await collect_until(job.events, lambda e: isinstance(e, Done))
    done = events[-1]
    assert isinstance(done, Done)
    stored = await env.studio.job(job.job_id)
    assert stored is not None and stored.status == JobStatus.DONE
    assert env.delivered[job.job_id, "Done"] == 1
    assert env.delivered[job.job_id, "Started"] == 2  # really run again, on the other worker
    assert [i.sha256 for i in done.images] == [i.sha256 for i in reference_done.images]  # its recorded seed
    assert not any(isinstance(e, Started) for e in events[events.index(done):][1:])
    assert [w.name for w in await env.studio.workers()] == [n for n in ("w1", "w2") if n != victim]
