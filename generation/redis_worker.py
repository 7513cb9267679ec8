"""`pintor worker`: one generation worker (one device) serving a Redis queue
(generation/redis_queue.py describes the keys and the protocol).

It loads the registry and the engine as the embedded worker does, then loops: take a job (a
dead worker's first, by XAUTOCLAIM; else a new one, by XREADGROUP), write the pictures it
starts from into its own file store (a cache folder: it shares no disk with the front end),
run it through the engine (`generation.worker._Worker.run_job`, the embedded worker's code),
and send its events, the pictures' bytes with Done, to its front end's events stream. Once the
final event is there it acknowledges the entry (XACK: run, no one takes it over); the front
end deletes it once the result is stored.

A heartbeat every `heartbeat_timeout_s / 5` s refreshes its hash (device, models, free
memory, running job) and resets its job's idle time; a cancel key is checked every quarter
second. SIGTERM/SIGINT stop it after the running step; that job goes back to the stream at
once for another worker (marked handed on, its idle time set past the timeout), nothing is
lost, and no death is counted. Redis away (restarted, unreachable) stops nothing: each command
is tried again with a backoff (redis-py's Retry), then the loop waits and tries again, and
creates the consumer group anew where Redis lost it; the running job goes on, and its events
wait until they are sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import multiprocessing
import multiprocessing.process
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from generation.events import (
    FINAL_EVENTS,
    Cancelled,
    Done,
    Event,
    Failed,
    ImageFile,
    Interrupted,
    Progress,
    Started,
    event_to_json,
)
from generation.files import FileStore
from generation.queue import MAX_WORKER_DEATHS_PER_JOB, loaded_after
from generation.redis_queue import (
    GROUP,
    HEARTBEAT_TIMEOUT_S,
    UNREACHABLE,
    Outage,
    RedisClient,
    RedisKeys,
    connect,
    ensure_group,
    is_nogroup,
    list_workers,
)
from generation.request import Request
from generation.worker import WorkerConfig, _Worker, start_engine

if TYPE_CHECKING:
    from generation.engine import Engine

log = logging.getLogger(__name__)

CANCEL_POLL_S = 0.25
RELEASED_IDLE_MS = 10**9  # a stopped worker's job: idle "forever", so the next worker takes it at once
SEND_AFTER_STOP_S = 10.0  # stopping, a job's last events are tried this long while Redis is away


def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class RedisWorker(_Worker):
    """One worker process's loop (see the module's docstring)."""

    def __init__(self, url: str, config: WorkerConfig, *, name: str | None = None, keys: RedisKeys | None = None,
                 heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S):
        # _Worker's state that run_job uses; its pipe is replaced by the events stream
        self.config = config
        self.cancelled: set[int] = set()
        self.stopping = threading.Event()
        self.send_lock = threading.Lock()
        self.url = url
        self.name = name or default_name()
        self.keys = keys or RedisKeys()
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.cache = FileStore(config.output_dir)
        self.device: dict[str, Any] = {}
        self.error: str | None = None
        self.models: tuple[str, ...] = ()
        self.running: tuple[int, str, str] | None = None  # (job id, stream entry id, its front end)
        self.step = self.total = 0
        self.interrupted = False
        self.finished: list[str] = []  # entries whose final event is sent, not acknowledged (XACK) yet
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox: asyncio.Queue[tuple[str, Event]] = asyncio.Queue()
        self._engine: Engine | None = None
        self._closing = False  # set before the tasks are cancelled: they end on it whatever happens

    # called by run_job, in the generation thread
    def send(self, *message: Any) -> None:
        kind, event = message
        assert kind == "event" and self._loop is not None and self.running is not None
        if isinstance(event, Interrupted):
            self.interrupted = True  # stopping: the job goes back to the stream, not to the member
            return
        if isinstance(event, Started):
            event = Started(event.job_id, event.notices, self.name)
        if isinstance(event, Progress):
            self.step, self.total = event.step, event.total
        if isinstance(event, Done):
            event = self._with_pictures(event)
        self._loop.call_soon_threadsafe(self._outbox.put_nowait, (self.running[2], event))

    def _with_pictures(self, event: Done) -> Done:
        """The event with each picture's bytes: they travel to the front end with it."""
        def loaded(image: ImageFile) -> ImageFile:
            return ImageFile(image.key, image.width, image.height, image.seed, image.sha256, image.flagged,
                             self.cache.get(image.key))
        return Done(event.job_id, tuple(loaded(i) for i in event.images), loaded(event.grid), event.notices,
                    loaded(event.control) if event.control is not None else None,
                    event.captions)

    async def serve(self) -> int:
        """Run until SIGTERM/SIGINT (or `stopping` is set); returns the exit status (1 when the
        engine could not start). Redis away stops nothing: it waits for it (the module's
        docstring)."""
        self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
                self._loop.add_signal_handler(sig, self.stopping.set)
        client = connect(self.url, self.heartbeat_timeout_s)
        outage = Outage(f"worker {self.name}", cap_s=max(0.2, self.heartbeat_timeout_s / 5))
        try:
            while not self.stopping.is_set():
                try:
                    await ensure_group(client, self.keys)
                    break
                except UNREACHABLE as err:
                    await outage.wait(err)
            try:
                self._engine = await asyncio.to_thread(self._build_engine)
            except Exception as err:  # noqa: BLE001 - said in the log and in the worker's hash
                self.error = f"{type(err).__name__}: {err}"
                log.error("the worker could not start: %s", self.error)
                with contextlib.suppress(*UNREACHABLE):
                    await self._announce(client)
                return 1
            log.info("worker %s ready on %s", self.name, self.device.get("device_name"))
            with contextlib.suppress(*UNREACHABLE):  # the loop's first take waits for Redis
                await self._count_own_deaths(client)
            tasks = [asyncio.create_task(self._heartbeat(client)), asyncio.create_task(self._send_events(client))]
            try:
                while not self.stopping.is_set():
                    try:
                        entry = await self._take(client)
                        if entry is not None:
                            await self._run_entry(client, *entry)
                        outage.over()
                    except UNREACHABLE as err:
                        await outage.wait(err)
                    except ResponseError as err:
                        if not is_nogroup(err):
                            raise
                        log.warning("Redis lost the jobs stream (restarted without its data?): creating it again")
                        await ensure_group(client, self.keys)
            finally:
                self._closing = True
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            with contextlib.suppress(*UNREACHABLE):
                await client.delete(self.keys.worker(self.name))
            log.info("worker %s stopped", self.name)
            return 0
        finally:
            await client.aclose()

    def _build_engine(self) -> Engine:
        engine, self.device = start_engine(self.config)
        return engine

    async def _take(self, client: RedisClient) -> tuple[str, dict[str, str], int] | None:
        """The next entry and how many workers died running it: one handed to this worker first
        (by a worker without its model, or left here by a lost connection), then a dead
        worker's, then a new one. A new one for a model this worker has not loaded goes to an
        idle worker that has it, if there is one."""
        await self._acknowledge_finished(client)
        batches = await client.xreadgroup(GROUP, self.name, {self.keys.jobs: "0"}, count=10)
        for _, entries in batches or []:
            for entry_id, fields in entries:
                if fields:
                    deaths = await client.hget(self.keys.deaths, entry_id)
                    return entry_id, fields, int(deaths or 0)
        if await self._may_take_over(client):
            timeout_ms = int(self.heartbeat_timeout_s * 1000)
            _, claimed, *_ = await client.xautoclaim(self.keys.jobs, GROUP, self.name, min_idle_time=timeout_ms,
                                                     start_id="0-0", count=1)
            if claimed:
                entry_id, fields = claimed[0]
                if await client.hdel(self.keys.handed, entry_id):
                    log.info("taking job %s, handed back by a worker that stopped", fields.get("job"))
                    deaths = int(await client.hget(self.keys.deaths, entry_id) or 0)
                else:  # its worker stopped answering: a death
                    deaths = int(await client.hincrby(self.keys.deaths, entry_id, 1))
                    log.warning("taking over job %s of a worker that stopped answering (%d death(s))",
                                fields.get("job"), deaths)
                return entry_id, fields, deaths
        batches = await client.xreadgroup(GROUP, self.name, {self.keys.jobs: ">"}, count=1, block=500)
        for _, entries in batches or []:
            for entry_id, fields in entries:
                model = fields.get("model", "")
                if model not in self.models and (other := await self._idle_worker_with(client, model)):
                    # handed on, not a death, should it idle past the timeout there
                    await client.hset(self.keys.handed, entry_id, "1")
                    await client.xclaim(self.keys.jobs, GROUP, other, 0, [entry_id], justid=True)
                    log.info("job %s handed to worker %s, which has %s loaded", fields.get("job"), other, model)
                    return None
                return entry_id, fields, 0
        return None

    async def _count_own_deaths(self, client: RedisClient) -> None:
        """A worker started again under the same name finds the entries it held when it died
        pending to it still (it reads them first): each not handed on counts a death."""
        pending = await client.xpending_range(self.keys.jobs, GROUP, min="-", max="+", count=100,
                                              consumername=self.name)
        for row in pending:
            entry_id = row["message_id"]
            if not await client.hdel(self.keys.handed, entry_id):
                deaths = await client.hincrby(self.keys.deaths, entry_id, 1)
                log.warning("this worker died running entry %s (%d death(s))", entry_id, deaths)

    async def _may_take_over(self, client: RedisClient) -> bool:
        """Whether Redis has been up a heartbeat timeout: after a restart with its data, every
        entry looks idle until the live workers have said again that they run theirs."""
        uptime = (await client.info("server")).get("uptime_in_seconds", 0)
        return float(uptime) >= self.heartbeat_timeout_s

    async def _acknowledge_finished(self, client: RedisClient) -> None:
        """XACK the entries whose final event is sent: no worker takes them over now."""
        if self.finished:
            try:
                await client.xack(self.keys.jobs, GROUP, *self.finished)
            except ResponseError as err:
                if not is_nogroup(err):  # no group: Redis lost it, and the entries with it
                    raise
            self.finished.clear()

    async def _idle_worker_with(self, client: RedisClient, model: str) -> str | None:
        """The name of another live, idle worker that has `model` loaded, or None."""
        for state in await list_workers(client, self.keys):
            if state.name != self.name and state.ready and state.running_job is None and model in state.models:
                return state.name
        return None

    async def _run_entry(self, client: RedisClient, entry_id: str, fields: dict[str, str], deaths: int) -> None:
        job_id = int(fields["job"])
        owner = fields.get("owner", "bot")
        await client.hdel(self.keys.handed, entry_id)  # run here now: a death from now on is one
        if deaths >= MAX_WORKER_DEATHS_PER_JOB:
            log.error("job %s was run by %d workers that died; failing it", job_id, deaths)
            await self._xadd(client, owner, Failed(job_id, "The generation worker crashed on this job several times."))
            self.finished.append(entry_id)
            await self._acknowledge_finished(client)
            return
        if await client.exists(self.keys.cancel(job_id)):
            await self._xadd(client, owner, Cancelled(job_id))
            self.finished.append(entry_id)
            await self._acknowledge_finished(client)
            return
        request = Request.from_json(fields["request"])
        request = await asyncio.to_thread(self._with_local_inputs, request, json.loads(fields.get("inputs", "{}")))
        self.running, self.step, self.total, self.interrupted = (job_id, entry_id, owner), 0, 0, False
        self.models = loaded_after(self.models, request.model, self.config.max_models)
        try:
            await self._announce(client)  # the running job and the models now, not at the next heartbeat
            assert self._engine is not None
            await asyncio.to_thread(self.run_job, self._engine, job_id, request)
            await self._outbox.join()  # every event of the job is in the stream (or given up, stopping)
        finally:
            self.running = None
            await asyncio.to_thread(shutil.rmtree, self.cache.path(f"jobs/{job_id}"), True)
        if self.interrupted:  # stopped by SIGTERM: another worker takes it at once, no death counted
            await self._hand_back(client, entry_id)
            log.info("job %s handed back to the queue", job_id)
        else:
            self.finished.append(entry_id)
            await self._acknowledge_finished(client)

    async def _hand_back(self, client: RedisClient, entry_id: str) -> None:
        """Give an entry up, unrun: marked handed on (the next worker counts no death) and idle
        past any timeout (it takes it at once)."""
        async with client.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.handed, entry_id, "1")
            pipe.xclaim(self.keys.jobs, GROUP, self.name, 0, [entry_id], idle=RELEASED_IDLE_MS, justid=True)
            await pipe.execute()

    def _with_local_inputs(self, request: Request, inputs: dict[str, str]) -> Request:
        """The request with its input pictures' keys replaced by files in this worker's cache
        (their bytes came with the entry)."""
        import base64

        for key, data in inputs.items():
            if not self.cache.exists(key):
                self.cache.put(key, base64.b64decode(data))
        return request.with_inputs(lambda key: str(self.cache.path(key)))

    async def _xadd(self, client: RedisClient, owner: str, event: Event) -> None:
        # never trimmed here: the front end trims what it has read and stored
        await client.xadd(self.keys.events(owner), {"event": event_to_json(event)})

    async def _send_events(self, client: RedisClient) -> None:
        """Send the events in order. A progress event Redis does not take is dropped; the other
        events (a start, a result) are tried again until they are sent (or, stopping, for
        SEND_AFTER_STOP_S: the job then stays pending, and another worker runs it)."""
        outage = Outage(f"worker {self.name}'s events", cap_s=max(0.2, self.heartbeat_timeout_s / 5))
        while not self._closing:
            owner, event = await self._outbox.get()
            given_up_at: float | None = None
            try:
                while not self._closing:
                    try:
                        await self._xadd(client, owner, event)
                        outage.over()
                        break
                    except UNREACHABLE as err:
                        if isinstance(event, Progress):
                            break
                        if self.stopping.is_set():
                            given_up_at = given_up_at or time.monotonic() + SEND_AFTER_STOP_S
                            if time.monotonic() > given_up_at:
                                log.error("could not send %s of job %s before stopping", type(event).__name__,
                                          event.job_id)
                                if isinstance(event, FINAL_EVENTS):
                                    self.interrupted = True  # not sent: not finished here
                                break
                        await outage.wait(err)
                    except Exception:  # noqa: BLE001 - an event Redis refuses is not tried again
                        log.exception("could not send %s", type(event).__name__)
                        break
            finally:
                self._outbox.task_done()

    async def _heartbeat(self, client: RedisClient) -> None:
        beat_s = max(0.2, self.heartbeat_timeout_s / 5)
        ticks = 0
        outage = Outage(f"worker {self.name}'s heartbeat", cap_s=beat_s)
        while not self._closing:
            try:
                if ticks % max(1, round(beat_s / CANCEL_POLL_S)) == 0:
                    await self._announce(client)
                    if self.running is not None:  # the job is alive: reset its idle time
                        await client.xclaim(self.keys.jobs, GROUP, self.name, 0, [self.running[1]], justid=True)
                if self.running is not None and await client.exists(self.keys.cancel(self.running[0])):
                    self.cancelled.add(self.running[0])
                outage.over()
            except UNREACHABLE as err:  # Redis away: said once, tried again each beat
                if not outage.failures:
                    log.warning("worker %s's heartbeat: Redis cannot be reached (%s)", self.name, err)
                outage.failures += 1
            except ResponseError as err:
                if is_nogroup(err):  # Redis lost the stream (and this job's entry: it finishes all the same)
                    with contextlib.suppress(Exception):
                        await ensure_group(client, self.keys)
                else:
                    log.exception("heartbeat failed")
            except Exception:  # noqa: BLE001
                log.exception("heartbeat failed")
            ticks += 1
            await asyncio.sleep(CANCEL_POLL_S)

    async def _announce(self, client: RedisClient) -> None:
        key = self.keys.worker(self.name)
        running = self.running[0] if self.running is not None else ""
        await client.hset(key, mapping={
            "name": self.name, "ready": "1" if self._engine is not None else "0", "error": self.error or "",
            "device": json.dumps(self.device), "models": json.dumps(list(self.models)),
            "free_memory_bytes": _free_memory(self.device.get("device", "")), "running_job": str(running),
            "step": self.step, "total": self.total})
        await client.expire(key, max(1, round(self.heartbeat_timeout_s)))


def _free_memory(device: str) -> str:
    """The device's free memory in bytes (CUDA), or "" where it is not known."""
    if not device.startswith("cuda"):
        return ""
    try:
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return str(free)
    except Exception:  # noqa: BLE001 - a number for /info, not worth a failure
        return ""


class LocalWorkers:
    """`count` worker processes on this machine (spawned), for `pintor run` with a Redis queue:
    `start` them, `stop` them (SIGTERM: each finishes its step and hands its job back)."""

    def __init__(self, url: str, config: WorkerConfig, count: int, *, prefix: str = "pintor",
                 heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S):
        self.url, self.config, self.count, self.prefix = url, config, count, prefix
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.processes: list[multiprocessing.process.BaseProcess] = []

    def start(self) -> None:
        from generation.queue import _main_script_hidden, worker_context

        ctx = worker_context()
        for n in range(1, self.count + 1):
            name = f"{default_name()}-local{n}"
            config = dataclasses.replace(self.config, output_dir=str(Path(self.config.output_dir) / name))
            process = ctx.Process(target=run_redis_worker, name=f"pintor-{name}", daemon=True,
                                  args=(self.url, config, name, self.prefix, self.heartbeat_timeout_s))
            with _main_script_hidden():
                process.start()
            self.processes.append(process)

    def stop(self, timeout_s: float = 120.0) -> None:
        for process in self.processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process in self.processes:
            process.join(timeout_s)
            if process.is_alive():
                log.warning("worker %s did not stop in %.0f s; killing it", process.name, timeout_s)
                process.kill()
                process.join(10)
        self.processes = []


def run_redis_worker(url: str, config: WorkerConfig, name: str | None = None, prefix: str = "pintor",
                     heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S) -> int:
    """Entry point of a worker process (`pintor worker`, or spawned by `pintor run`)."""
    logging.basicConfig(level=config.log_level, format="%(asctime)s worker %(levelname)s %(name)s: %(message)s")
    worker = RedisWorker(url, config, name=name, keys=RedisKeys(prefix), heartbeat_timeout_s=heartbeat_timeout_s)
    return asyncio.run(worker.serve())
