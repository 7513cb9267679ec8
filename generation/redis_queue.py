"""`RedisQueue`: the JobQueue seam over Redis, for workers on any number of machines
(`pintor worker`, generation/redis_worker.py).

Keys (under a prefix, "pintor" by default):

- `<p>:jobs`, a stream read by the consumer group `workers`: one entry per job released to the
  workers (fields: job id, request JSON with its input pictures by key, the pictures' bytes).
  A worker takes an entry with XREADGROUP; it stays pending (at-least-once delivery) until the
  front end has STORED the job's final event and calls `acknowledge` (XACK, then XDEL). A
  worker holding an entry resets its idle time every heartbeat (XCLAIM … JUSTID); an entry idle
  for `heartbeat_timeout_s` belongs to a dead worker and is taken by the next idle worker with
  XAUTOCLAIM, and run again with its recorded seed. The Studio's store makes delivery to the
  member exactly once: a job already ended is not ended (or posted) again.
- `<p>:events`, a stream of every job's events as JSON (generation.events codec), pictures
  included (Done carries the PNG bytes: the workers share no disk with the front end). The
  front end (its owner name: "bot", or a `pintor` verb's) reads it from where it stopped
  (`<p>:events:read:<owner>`), so events sent while it was down are read at its next start,
  and passes on the events of its own jobs only.
- `<p>:cancel:<job id>`: set by `cancel`; a worker checks it before a job and every quarter
  second while it runs it (the job stops at its next step).
- `<p>:worker:<name>`: a hash each worker refreshes every heartbeat and lets expire after
  `heartbeat_timeout_s`: its device, loaded models, free memory, running job and step.

Fair order stays in front of the workers: jobs wait in this process's FairQueue and are
released to the stream only as workers are free to take them (live workers − running jobs),
so a member's twenty jobs never sit in the stream ahead of another member's one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from generation.events import FINAL_EVENTS, Cancelled, Done, Event, Failed, Queued, Started, event_from_json
from generation.fairness import FairQueue
from generation.files import FileStore, input_key
from generation.imaging import sha256
from generation.queue import WorkerState
from generation.request import Request

log = logging.getLogger(__name__)

# redis-py's replies are typed as unions of bytes and str (and awaitables) whatever
# `decode_responses` says; Pintor's clients decode (str), and the replies are read as such.
RedisClient = Any

GROUP = "workers"
HEARTBEAT_TIMEOUT_S = 5.0  # a worker silent this long is dead: its job goes to another
EVENTS_MAXLEN = 10_000  # the events stream is trimmed to about this many entries
CANCEL_TTL_S = 86_400
TICK_S = 0.5  # how often the front end looks at the workers to release jobs to them


@dataclass(frozen=True)
class RedisKeys:
    """The names of Pintor's keys under `prefix` (several Pintors can share one Redis)."""

    prefix: str = "pintor"

    @property
    def jobs(self) -> str:
        return f"{self.prefix}:jobs"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    def events_read(self, owner: str) -> str:
        return f"{self.prefix}:events:read:{owner}"

    def cancel(self, job_id: int) -> str:
        return f"{self.prefix}:cancel:{job_id}"

    def worker(self, name: str) -> str:
        return f"{self.prefix}:worker:{name}"


async def ensure_group(client: RedisClient, keys: RedisKeys) -> None:
    """The jobs stream and its consumer group, created if missing."""
    try:
        await client.xgroup_create(keys.jobs, GROUP, id="0", mkstream=True)
    except ResponseError as err:
        if "BUSYGROUP" not in str(err):
            raise


def worker_state(fields: dict[str, str]) -> WorkerState:
    """A worker's heartbeat hash as a WorkerState."""
    running = fields.get("running_job") or ""
    free = fields.get("free_memory_bytes") or ""
    return WorkerState(
        name=fields.get("name", "?"), ready=fields.get("ready") == "1", device=json.loads(fields.get("device", "{}")),
        error=fields.get("error") or None, running_job=int(running) if running else None,
        step=int(fields.get("step", 0)), total=int(fields.get("total", 0)),
        models=tuple(json.loads(fields.get("models", "[]"))), free_memory_bytes=int(free) if free else None)


async def list_workers(client: RedisClient, keys: RedisKeys) -> list[WorkerState]:
    """Every worker whose heartbeat has not expired, by name."""
    states = []
    async for key in client.scan_iter(match=keys.worker("*"), count=100):
        fields = await client.hgetall(key)
        if fields:
            states.append(worker_state(fields))
    return sorted(states, key=lambda s: s.name)


class RedisQueue:
    """The front end's side (see the module's docstring). `url`: redis://…; `files`: the front
    end's FileStore, where the pictures of Done events are written before the event is passed
    on; `owner`: the front end's name (its jobs' entries carry it: several front ends can share
    the workers); `start_workers`/`stop_workers`: start and stop this machine's own workers
    (none by default: they may all run elsewhere)."""

    def __init__(self, url: str, files: FileStore, *, owner: str = "bot", keys: RedisKeys | None = None,
                 heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
                 start_workers: Callable[[], None] | None = None,
                 stop_workers: Callable[[], None] | None = None):
        self.url = url
        self.files = files
        self.owner = owner
        self.keys = keys or RedisKeys()
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._start_workers, self._stop_workers = start_workers, stop_workers
        self._client: RedisClient | None = None
        self._waiting = FairQueue()
        self._users: dict[int, tuple[int, Request]] = {}  # job → (user, request), until released
        self._released: dict[int, str] = {}  # job → stream entry id, in release order, until acknowledged
        self._running: set[int] = set()  # released jobs a worker has started
        self._ended: set[int] = set()  # released jobs whose final event came, not acknowledged yet
        self._live_workers = 0
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._release_lock = asyncio.Lock()

    @property
    def client(self) -> RedisClient:
        if self._client is None:
            raise RuntimeError("RedisQueue.start() was not called")
        return self._client

    # -- the JobQueue interface ---------------------------------------------------------------

    async def start(self) -> None:
        self._client = aioredis.Redis.from_url(self.url, decode_responses=True)
        await self.client.ping()
        await ensure_group(self.client, self.keys)
        # entries released by an earlier run and not acknowledged: still the workers'
        for entry_id, fields in await self.client.xrange(self.keys.jobs):
            if fields.get("owner") == self.owner:
                self._released[int(fields["job"])] = entry_id
        last = await self.client.get(self.keys.events_read(self.owner))
        if last is None:
            newest = await self.client.xrevrange(self.keys.events, count=1)
            last = newest[0][0] if newest else "0-0"
        if self._start_workers is not None:
            self._start_workers()
        self._tasks = [asyncio.create_task(self._read_events(last), name="redis-events"),
                       asyncio.create_task(self._tick(), name="redis-workers")]

    async def close(self) -> None:
        """Stop reading; this machine's workers stop after their step (SIGTERM) and their jobs
        go back to the stream for any worker. Jobs not yet released stay queued in the database
        for the next start."""
        if self._stop_workers is not None:
            await asyncio.to_thread(self._stop_workers)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        self._events.put_nowait(None)

    async def submit(self, job_id: int, user_id: int, request: Request) -> int:
        if job_id in self._released:  # released before a restart: the workers have it
            return await self.position(job_id) or 0
        self._users[job_id] = (user_id, request)
        self._waiting.push(job_id, user_id)
        self._events.put_nowait(Queued(job_id, self._waiting.positions()[job_id] + self._released_waiting()))
        await self._release()
        return await self.position(job_id) or 0

    async def cancel(self, job_id: int) -> bool:
        if self._waiting.remove(job_id):
            self._users.pop(job_id, None)
            self._events.put_nowait(Cancelled(job_id))
            self._announce_positions()
            return True
        if job_id in self._released and job_id not in self._ended:
            # wherever it runs: the worker checks this key before the job and at every step
            await self.client.set(self.keys.cancel(job_id), "1", ex=CANCEL_TTL_S)
            return True
        return False

    async def position(self, job_id: int) -> int | None:
        if job_id in self._running:
            return 0
        released = self._released_order()
        if job_id in released:
            return released.index(job_id) + 1
        place = self._waiting.positions().get(job_id)
        return None if place is None else place + len(released)

    async def events(self) -> AsyncIterator[Event]:
        while (event := await self._events.get()) is not None:
            yield event

    async def acknowledge(self, job_id: int) -> None:
        entry_id = self._released.pop(job_id, None)
        self._running.discard(job_id)
        self._ended.discard(job_id)
        if entry_id is not None:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.xack(self.keys.jobs, GROUP, entry_id)
                pipe.xdel(self.keys.jobs, entry_id)
                pipe.delete(self.keys.cancel(job_id))
                await pipe.execute()
        await self._release()

    async def waiting(self) -> list[int]:
        return self._released_order() + self._waiting.order()

    async def workers(self) -> list[WorkerState]:
        return await list_workers(self.client, self.keys)

    # -- internals ------------------------------------------------------------------------------

    def _released_order(self) -> list[int]:
        return [job for job in self._released if job not in self._running and job not in self._ended]

    def _released_waiting(self) -> int:
        return len(self._released_order())

    def _announce_positions(self) -> None:
        offset = self._released_waiting()
        for job_id, place in self._waiting.positions().items():
            self._events.put_nowait(Queued(job_id, place + offset))

    async def _release(self) -> None:
        """Hand the next jobs, in fair order, to the stream while workers are free for them."""
        async with self._release_lock:
            released = False
            while self._live_workers - len(self._running) - self._released_waiting() > 0:
                job_id = self._waiting.pop()
                if job_id is None:
                    break
                _, request = self._users.pop(job_id)
                try:
                    fields = await asyncio.to_thread(self._entry, job_id, request)
                except (OSError, ValueError):  # ValueError: BadKey, not a key of the store
                    self._events.put_nowait(Failed(job_id, "A picture this job starts from is gone from "
                                                           "Pintor's file store."))
                    continue
                self._released[job_id] = await self.client.xadd(self.keys.jobs, fields)
                released = True
            if released:
                self._announce_positions()

    def _entry(self, job_id: int, request: Request) -> dict[str, str]:
        """The stream entry of a job: its request with its input pictures by key, and their
        bytes read from the front end's store (a worker elsewhere has no access to this
        machine's files). On the wire each picture is named by its content, as uploads are
        kept ("inputs/<sha256>.png": files.input_key; a worker's cache keeps it once for every
        job that uses it, apart from the folders of the jobs it runs), whatever the stored
        request names: a store key, or an absolute path in a request stored before keys."""
        inputs: dict[str, str] = {}

        def by_key(stored: str) -> str:
            # FileNotFoundError: the worker would fail it the same way; BadKey: not a key
            data = self.files.local(stored).read_bytes()
            key = input_key(data)  # every stored picture is a PNG
            inputs[key] = base64.b64encode(data).decode("ascii")
            return key

        request = request.with_inputs(by_key)
        return {"job": str(job_id), "owner": self.owner, "model": request.model, "request": request.to_json(),
                "inputs": json.dumps(inputs)}

    async def _tick(self) -> None:
        while True:
            try:
                live = len([w for w in await self.workers() if w.ready])
                if live != self._live_workers:
                    log.info("%d generation worker(s) connected", live)
                self._live_workers = live
                await self._release()
            except Exception:  # noqa: BLE001 - Redis away for a moment: try again next tick
                log.exception("could not look at the workers")
            await asyncio.sleep(TICK_S)

    async def _read_events(self, last: str) -> None:
        while True:
            try:
                batches = await self.client.xread({self.keys.events: last}, count=100, block=1000)
            except Exception:  # noqa: BLE001 - Redis away for a moment: read on from `last`
                log.exception("could not read the events stream")
                await asyncio.sleep(1)
                continue
            for _, entries in batches or []:
                for entry_id, fields in entries:
                    try:
                        event = event_from_json(fields["event"])
                    except (KeyError, ValueError):
                        log.error("not a Pintor event in %s: %r", self.keys.events, fields)
                    else:
                        await self._on_event(event)
                    last = entry_id
                await self.client.set(self.keys.events_read(self.owner), last)

    async def _on_event(self, event: Event) -> None:
        job_id = event.job_id
        if job_id not in self._released:
            return  # another front end's job, or one acknowledged already (delivered again)
        if isinstance(event, Started):
            self._running.add(job_id)
        if isinstance(event, Done):
            try:
                event = await asyncio.to_thread(self._store_pictures, event)
            except (OSError, ValueError) as err:
                log.error("could not keep the pictures of job %s: %s", job_id, err)
                event = Failed(job_id, "The result could not be saved.")
        if isinstance(event, FINAL_EVENTS):
            self._running.discard(job_id)
            if job_id in self._released:
                self._ended.add(job_id)
        self._events.put_nowait(event)
        if isinstance(event, Started):
            self._announce_positions()

    def _store_pictures(self, event: Done) -> Done:
        """The pictures that came with a Done event, written into the front end's store
        (atomically) before anyone hears of it; the event then carries keys only."""
        images = []
        control = () if event.control is None else (event.control,)
        for image in (*event.images, event.grid, *control):
            if image.data is not None:
                if sha256(image.data) != image.sha256:
                    raise ValueError(f"job {event.job_id}: {image.key} arrived damaged")
                self.files.put(image.key, image.data)
            images.append(image.__class__(image.key, image.width, image.height, image.seed, image.sha256,
                                          image.flagged))
        if control:
            *images, kept_control = images
        return Done(event.job_id, tuple(images[:-1]), images[-1], event.notices, kept_control if control else None,
                    event.captions)

