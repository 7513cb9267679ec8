"""The Redis queue when Redis misbehaves (issue 26, items 1-3), against a real redis-server that
the tests stop and start again on the same port, with and without its data, and one real
`pintor worker` process (tiny models, CPU) that lives through all of it:

- Redis restarted under a running worker and a reading front end: neither ends, the consumer
  group is created again, the running job is finished (and run) once, new jobs run;
- a front end's results are never trimmed before it has read and stored them, whatever comes
  after them; a result Redis lost is run again;
- only a worker's death counts towards "crashed several times", never a clean hand-back.

Each test waits on events and states with deadlines, never on sleeps alone."""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path

import pytest
import pytest_asyncio

from generation.events import Done, Failed, Progress, Started, event_from_json
from generation.files import FileStore
from generation.queue import MAX_WORKER_DEATHS_PER_JOB
from generation.redis_queue import GROUP, RedisClient, RedisKeys, RedisQueue, connect
from generation.redis_worker import RedisWorker
from generation.request import JobKind, Request
from generation.worker import WorkerConfig
from tests.redis_server import (
    HEARTBEAT_TIMEOUT_S,
    RedisServer,
    restartable_redis_server,
    spawn_worker,
    stop_process,
    wait_for_workers,
)
from tests.waiting import TIMEOUT_S, EventLog

pytestmark = pytest.mark.asyncio(loop_scope="module")

_ids = itertools.count(5000)


@dataclass
class Env:
    server: RedisServer
    worker: BaseProcess
    queue: RedisQueue  # the front end "bot"
    log: EventLog
    files: FileStore
    root: Path
    registry: Path


def make_request(steps: int = 2, seed: int = 7) -> Request:
    return Request(kind=JobKind.IMAGINE, model="tiny-sd", prompt="a red fox", parts=(("a red fox", 1.0),),
                   negative="", width=64, height=64, steps=steps, guidance=5.0, seed=seed)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def env(small_registry_file: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    root = tmp_path_factory.mktemp("redis-faults")
    files = FileStore(root / "images")
    with restartable_redis_server(root / "redis") as server:
        async with AsyncExitStack() as stack:
            config = WorkerConfig(output_dir=str(root / "cache-w1"), registry_path=str(small_registry_file),
                                  device="cpu", preview_interval_s=0.0)
            worker = spawn_worker(server.url, config, "w1")
            stack.push_async_callback(asyncio.to_thread, stop_process, worker)
            await wait_for_workers(server.url, {"w1"})
            queue = RedisQueue(server.url, files, heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S)
            await queue.start()
            stack.push_async_callback(queue.close)
            yield Env(server, worker, queue, EventLog(queue.events()), files, root, small_registry_file)


async def until(condition, timeout: float = TIMEOUT_S) -> None:
    """Until `condition()` (awaited) is true, looked at every 50 ms, within `timeout`."""
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.05)


async def restart(server: RedisServer, persist: bool, down_s: float = 0.0) -> None:
    await asyncio.to_thread(server.stop)
    await asyncio.sleep(down_s)  # how long Redis stays away (the point of the test, not a wait)
    await asyncio.to_thread(server.start, persist)


def counts(log: EventLog, job_id: int) -> tuple[int, int]:
    """How often the front end passed on the job's Started and Done."""
    events = log.of(job_id)
    return sum(isinstance(e, Started) for e in events), sum(isinstance(e, Done) for e in events)


async def test_a_redis_restart_without_its_data_stops_no_worker_and_runs_the_running_job_once(env: Env):
    """Redis restarted empty (no persistence) in the middle of a job: XREADGROUP's ConnectionError
    and then NOGROUP end neither the worker nor the front end; the job is finished once (not run
    again by anyone: its worker says it runs it), a job submitted while Redis is away and one
    after both run. About 3 s."""
    pid = env.worker.pid
    running = next(_ids)
    await env.queue.submit(running, 1, make_request(steps=40))
    await env.log.wait_for(running, Progress)
    await restart(env.server, persist=False)
    assert not any(isinstance(e, Done) for e in env.log.of(running))  # it was in flight across the restart

    during = next(_ids)
    await env.queue.submit(during, 2, make_request())  # Redis may still be reconnecting: no error
    assert isinstance(await env.log.wait_for(running, Done), Done)
    await env.queue.acknowledge(running)
    await env.log.wait_for(during, Done)
    await env.queue.acknowledge(during)
    after = next(_ids)
    await env.queue.submit(after, 1, make_request())
    await env.log.wait_for(after, Done)
    await env.queue.acknowledge(after)

    assert env.worker.is_alive() and env.worker.pid == pid
    assert counts(env.log, running) == (1, 1) and counts(env.log, during) == (1, 1)
    client = connect(env.server.url)
    try:
        assert [g["name"] for g in await client.xinfo_groups(env.queue.keys.jobs)] == [GROUP]
        assert await client.xlen(env.queue.keys.jobs) == 0  # every entry acknowledged and deleted
    finally:
        await client.aclose()


async def test_a_redis_restart_with_its_data_lets_no_worker_take_over_a_running_job(env: Env):
    """Redis restarted from its append-only file after 3 s away (past the heartbeat timeout, so
    the running job's entry looks idle): no other worker takes it over before its own worker
    has said it still runs it; it is finished once and no death is counted. About 6 s."""
    await restart(env.server, persist=True)  # from now on with its data (nothing was queued)
    await wait_for_workers(env.server.url, {"w1"})
    other = RedisWorker(env.server.url, WorkerConfig(output_dir=str(env.root / "cache-other"), device="cpu",
                                                     registry_path=str(env.registry)),
                        name="other", heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S)
    job = next(_ids)
    await env.queue.submit(job, 1, make_request(steps=40))
    await env.log.wait_for(job, Progress)
    await restart(env.server, persist=True, down_s=HEARTBEAT_TIMEOUT_S + 1)

    client = connect(env.server.url)
    try:
        taken = []
        while not any(isinstance(e, Done) for e in env.log.of(job)):  # a deadline: TIMEOUT_S below
            taken.append(await asyncio.wait_for(other._take(client), TIMEOUT_S))
        assert taken and not any(taken)
        await env.queue.acknowledge(job)
        assert counts(env.log, job) == (1, 1)
        assert await client.hlen(env.queue.keys.deaths) == 0
        assert await client.xlen(env.queue.keys.jobs) == 0
        await client.xgroup_delconsumer(env.queue.keys.jobs, GROUP, "other")
    finally:
        await client.aclose()
    await restart(env.server, persist=False)  # back to no persistence: every write fsynced is slow
    await wait_for_workers(env.server.url, {"w1"})


async def test_a_result_waits_whatever_comes_after_it_until_its_front_end_has_stored_it(env: Env):
    """A front end away while its job's result is sent, with 10,050 events after the result
    (through the workers' own sending code; the job is taken by a stand-in worker, under a
    prefix of its own, so that the result is exactly the one the test sends): it reads the
    result at its next start. Read but not acknowledged (stopped before it was stored), it is
    read again at the start after; acknowledged, the front end trims it. About 2 s."""
    owner = "verb-a"
    keys = RedisKeys("trim-test")

    def front_end() -> RedisQueue:
        return RedisQueue(env.server.url, env.files, owner=owner, keys=keys, heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S)

    client = connect(env.server.url)
    try:
        job = next(_ids)
        await client.xgroup_create(keys.jobs, GROUP, id="0", mkstream=True)
        await client.xadd(keys.jobs, {"job": str(job), "owner": owner, "user": "1", "model": "tiny-sd",
                                      "request": make_request().to_json()})
        [[_, [(entry, _)]]] = await client.xreadgroup(GROUP, "stand-in", {keys.jobs: ">"}, count=1)
        sender = RedisWorker(env.server.url, WorkerConfig(output_dir=str(env.root / "cache-sender")), name="sender",
                             keys=keys)
        await sender._xadd(client, owner, Started(job))
        await sender._xadd(client, owner, Failed(job, "the result"))
        await client.xack(keys.jobs, GROUP, entry)  # as its worker does once the result is sent
        async with client.pipeline(transaction=False) as pipe:  # other jobs' events after it, one round trip
            for step in range(10_050):
                await sender._xadd(pipe, owner, Progress(job + 1, step, 10_050))
            await pipe.execute()
        assert await client.xlen(keys.events(owner)) == 10_052  # the workers trim nothing

        for acknowledged in (False, True):  # stopped before storing it, then stored
            again = front_end()
            await again.start()
            log = EventLog(again.events())
            result = await log.wait_for(job, Failed)
            assert isinstance(result, Failed) and result.reason == "the result"
            if acknowledged:
                await again.acknowledge(job)
                await until(lambda: _empty(client, keys, owner))  # trimmed by the front end
            else:
                await until(functools.partial(_read_all, again, client, keys, owner))
                assert await client.xlen(keys.events(owner)) == 10_052  # nothing trimmed: not stored yet
            await again.close()
        assert await client.exists(keys.events(owner)) == 0  # nothing of its own on the way: gone
        assert await client.xlen(keys.jobs) == 0
    finally:
        await client.delete(*[k async for k in client.scan_iter(match="trim-test:*")])
        await client.aclose()


async def _read_all(queue: RedisQueue, client: RedisClient, keys: RedisKeys, owner: str) -> bool:
    [(last, _)] = await client.xrevrange(keys.events(owner), count=1)
    return queue._read_up_to == last


async def _empty(client: RedisClient, keys: RedisKeys, owner: str) -> bool:
    return int(await client.xlen(keys.events(owner))) == 0


async def test_a_result_redis_lost_is_run_again(env: Env):
    """A job taken and acknowledged by its worker (its result sent) whose result Redis lost
    (restarted from older data): once the front end has read its events stream to the end, it
    hands the job out again, as a new entry, and drops the old one. The workers' side is a
    stand-in under a prefix of its own (the rerun itself is an ordinary job). About 1 s."""
    owner = "verb-b"
    keys = RedisKeys("lost-test")
    client = connect(env.server.url)
    try:
        job = next(_ids)
        await client.xgroup_create(keys.jobs, GROUP, id="0", mkstream=True)
        old = await client.xadd(keys.jobs, {"job": str(job), "owner": owner, "user": "1", "model": "tiny-sd",
                                            "request": make_request().to_json()})
        await client.xreadgroup(GROUP, "stand-in", {keys.jobs: ">"}, count=1)
        await client.xack(keys.jobs, GROUP, old)  # run, its result sent... and lost: the stream is empty
        await client.hset(keys.worker("stand-in"), mapping={"name": "stand-in", "ready": "1"})  # free for it

        queue = RedisQueue(env.server.url, env.files, owner=owner, keys=keys, heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S)
        await queue.start()
        try:
            async def handed_out_again() -> bool:
                return [f["job"] for _, f in await client.xrange(keys.jobs)] == [str(job)] and old not in (
                    entry for entry, _ in await client.xrange(keys.jobs))

            await until(handed_out_again)
            assert job in await queue.waiting()  # released again, waiting for a worker to take it
        finally:
            await queue.close()
    finally:
        await client.delete(*[k async for k in client.scan_iter(match="lost-test:*")])
        await client.aclose()


# -- item 3: deaths, not stops, are counted (the workers' protocol, in this process, no engine) --

def protocol_worker(env: Env, name: str) -> RedisWorker:
    """A worker's protocol side (taking, handing back, counting) without an engine; a short
    heartbeat timeout so that a "dead" one's entry is taken over within 0.3 s."""
    return RedisWorker(env.server.url, WorkerConfig(output_dir=str(env.root / f"cache-{name}")), name=name,
                       keys=RedisKeys("deaths-test"), heartbeat_timeout_s=0.3)


async def test_only_deaths_count_never_clean_hand_backs(env: Env):
    """Four rolling restarts (each worker hands the job back, as on SIGTERM), then a hand-over to
    an idle worker with the model that does not take it: no death counted, the job not failed.
    Then workers that die with it: the third death fails it ("crashed several times"); a
    worker started again under the name of one that died counts that death too. About 2 s."""
    keys = RedisKeys("deaths-test")
    client = connect(env.server.url)
    try:
        await client.xgroup_create(keys.jobs, GROUP, id="0", mkstream=True)
        entry = await client.xadd(keys.jobs, {"job": "1", "owner": "bot", "model": "tiny-sd",
                                              "request": make_request().to_json()})

        async def taken_by(worker: RedisWorker) -> tuple[str, dict[str, str], int]:
            result = None
            async with asyncio.timeout(TIMEOUT_S):
                while result is None:  # idle past 0.3 s, then taken over
                    result = await worker._take(client)
            return result

        # read by a worker without the model, handed to an idle one that has it, which never reads it
        idle = "has-model"
        await client.hset(keys.worker(idle), mapping={"name": idle, "ready": "1", "models": '["tiny-sd"]'})
        assert await protocol_worker(env, "lacking")._take(client) is None
        assert await client.hget(keys.handed, entry) == "1"
        await client.delete(keys.worker(idle))
        first = protocol_worker(env, "first")
        assert (await taken_by(first))[2] == 0  # taken over from "has-model": no death
        await first._hand_back(client, entry)
        for n in range(4):  # rolling restarts: each takes it, then hands it back (SIGTERM)
            worker = protocol_worker(env, f"roll{n}")
            taken = await worker._take(client)
            assert taken is not None and taken[0] == entry and taken[2] == 0
            if n < 3:
                await worker._hand_back(client, entry)
        # the last one "dies" with it (no heartbeat, no hand-back): each next taker counts one
        deaths = []
        for n in range(MAX_WORKER_DEATHS_PER_JOB - 1):
            deaths.append((await taken_by(protocol_worker(env, f"next{n}")))[2])
        assert deaths == [1, 2]
        reborn = protocol_worker(env, f"next{MAX_WORKER_DEATHS_PER_JOB - 2}")  # the last one, started again
        await reborn._count_own_deaths(client)
        taken = await reborn._take(client)  # its own pending entry first
        assert taken is not None
        entry_id, fields, died = taken
        assert (entry_id, died) == (entry, MAX_WORKER_DEATHS_PER_JOB)
        await reborn._run_entry(client, entry_id, fields, died)  # failed, not run
        [(_, sent)] = await client.xrange(keys.events("bot"))
        failed = event_from_json(sent["event"])
        assert isinstance(failed, Failed) and "crashed on this job several times" in failed.reason
        assert not await client.xpending_range(keys.jobs, GROUP, min="-", max="+", count=10)  # acknowledged
    finally:
        await client.delete(*[k async for k in client.scan_iter(match="deaths-test:*")])
        await client.aclose()

