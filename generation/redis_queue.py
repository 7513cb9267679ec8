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
  member exactly once: a job already ended is not ended (or posted) again. Once a worker has
  put a job's final event in the events stream it acknowledges the entry itself (XACK: no
  worker runs it again); the front end deletes it (XDEL) once the result is stored.
- `<p>:handed` (hash, entry id → 1): entries a live worker handed on unrun (stopped by SIGTERM,
  or to a worker that has the job's model loaded); `<p>:deaths` (hash, entry id → count): how
  many workers died running the entry. A worker that takes over an idle entry counts a death
  only where it was not handed on; at MAX_WORKER_DEATHS_PER_JOB the job fails.
- `<p>:events:<owner>`, a stream of the events of one front end's jobs (its owner name: "bot",
  or a `pintor` verb's) as JSON (generation.events codec), pictures included (Done carries the
  PNG bytes: the workers share no disk with the front end). The workers never trim it; its
  front end reads it from its start at each start (events sent while it was down are read
  then) and trims it (XTRIM MINID) only below both what it has read and the first event of
  every job of its not acknowledged yet: no unread result, and none not yet stored, is trimmed.
- `<p>:cancel:<job id>`: set by `cancel`; a worker checks it before a job and every quarter
  second while it runs it (the job stops at its next step).
- `<p>:worker:<name>`: a hash each worker refreshes every heartbeat and lets expire after
  `heartbeat_timeout_s`: its device, loaded models, free memory, running job and step.

Redis restarted (or out of reach for a while): every client retries with a jittered exponential
backoff (redis-py's Retry), and past that the worker's and the front end's loops wait and try
again, creating the consumer group anew where Redis lost it (NOGROUP). No worker takes over a
job until Redis has been up for `heartbeat_timeout_s` (the live workers have had time to say
they still run theirs). The front end looks at its released jobs every tick: one whose entry
Redis lost (restarted without its data) and that no live worker runs, or whose result a worker
sent but that is not in the events stream after the front end read it all, is released again.

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
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

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
CANCEL_TTL_S = 86_400
TICK_S = 0.5  # how often the front end looks at the workers to release jobs to them
RETRIES = 3  # tries of one command again after a lost connection (redis-py's Retry), then the loop's wait
UNREACHABLE = (RedisConnectionError, RedisTimeoutError)  # Redis away: wait and go on


@dataclass(frozen=True)
class RedisKeys:
    """The names of Pintor's keys under `prefix` (several Pintors can share one Redis)."""

    prefix: str = "pintor"

    @property
    def jobs(self) -> str:
        return f"{self.prefix}:jobs"

    def events(self, owner: str) -> str:
        return f"{self.prefix}:events:{owner}"

    @property
    def handed(self) -> str:
        return f"{self.prefix}:handed"

    @property
    def deaths(self) -> str:
        return f"{self.prefix}:deaths"

    def cancel(self, job_id: int) -> str:
        return f"{self.prefix}:cancel:{job_id}"

    def worker(self, name: str) -> str:
        return f"{self.prefix}:worker:{name}"


def connect(url: str, heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S) -> RedisClient:
    """A client that tries a command again after a lost connection, RETRIES times, waiting a
    jittered exponential backoff capped at a heartbeat (so a worker is back well within
    `heartbeat_timeout_s` of Redis)."""
    backoff = ExponentialWithJitterBackoff(cap=max(0.2, heartbeat_timeout_s / 5), base=0.05)
    return aioredis.Redis.from_url(url, decode_responses=True, retry=Retry(backoff, RETRIES),
                                   socket_connect_timeout=max(1.0, heartbeat_timeout_s))


def is_nogroup(err: Exception) -> bool:
    """Redis has no consumer group (or stream) there: it restarted without its data."""
    return isinstance(err, ResponseError) and str(err).startswith("NOGROUP")


def stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Outage:
    """A loop's wait while Redis is away: said once in the log (and once when it is back),
    each try a jittered exponential backoff later (redis-py's), at most `cap_s` apart."""

    def __init__(self, what: str, cap_s: float):
        self.what = what
        self.backoff = ExponentialWithJitterBackoff(cap=cap_s, base=0.1)
        self.failures = 0

    async def wait(self, err: Exception) -> None:
        self.failures += 1
        if self.failures == 1:
            log.warning("%s: Redis cannot be reached (%s: %s); trying again", self.what, type(err).__name__, err)
        await asyncio.sleep(self.backoff.compute(self.failures))

    def over(self) -> None:
        if self.failures:
            log.warning("%s: Redis is back after %d tries", self.what, self.failures)
        self.failures = 0


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
        self._users: dict[int, tuple[int, Request]] = {}  # job → (user, request), until acknowledged
        self._released: dict[int, str] = {}  # job → stream entry id, in release order, until acknowledged
        self._running: set[int] = set()  # released jobs a worker has started
        self._ended: set[int] = set()  # released jobs whose final event came, not acknowledged yet
        self._unacked: dict[int, str] = {}  # job → entry id whose acknowledgement Redis did not take yet
        self._first_event: dict[int, str] = {}  # released job → the id of its first event read
        self._missing_since: dict[int, float] = {}  # released job → when its entry was first seen gone
        self._read_up_to = "0-0"  # the last event read and passed on
        self._live_workers = 0
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._release_lock = asyncio.Lock()
        # set by close: the loops end on it even where a cancellation was swallowed on the way
        # (seen: `pintor run` on Redis hung at its stop, its loops "cancelling" yet going on)
        self._closing = False

    @property
    def client(self) -> RedisClient:
        if self._client is None:
            raise RuntimeError("RedisQueue.start() was not called")
        return self._client

    @property
    def events_key(self) -> str:
        return self.keys.events(self.owner)

    # -- the JobQueue interface ---------------------------------------------------------------

    async def start(self) -> None:
        self._closing = False
        self._client = connect(self.url, self.heartbeat_timeout_s)
        await self.client.ping()
        await ensure_group(self.client, self.keys)
        # entries released by an earlier run and not acknowledged: still the workers'
        for entry_id, fields in await self.client.xrange(self.keys.jobs):
            if fields.get("owner") == self.owner:
                job_id = int(fields["job"])
                self._released[job_id] = entry_id
                with contextlib.suppress(KeyError, ValueError):  # kept to release it again if Redis loses it
                    self._users[job_id] = (int(fields.get("user", "0")), Request.from_json(fields["request"]))
        if self._start_workers is not None:
            self._start_workers()
        # the own events stream from its start: it holds only what was not stored for sure
        self._tasks = [asyncio.create_task(self._read_events("0-0"), name="redis-events"),
                       asyncio.create_task(self._tick(), name="redis-workers")]

    async def close(self) -> None:
        """Stop reading; this machine's workers stop after their step (SIGTERM) and their jobs
        go back to the stream for any worker. Jobs not yet released stay queued in the database
        for the next start."""
        if self._stop_workers is not None:
            await asyncio.to_thread(self._stop_workers)
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._client is not None:
            with contextlib.suppress(RedisError):
                if not self._released and not self._unacked:
                    await self._client.delete(self.events_key)  # nothing of this owner's is on its way
            await self._client.aclose()
            self._client = None
        self._events.put_nowait(None)

    async def submit(self, job_id: int, user_id: int, request: Request) -> int:
        if job_id in self._released:  # released before a restart: the workers have it
            self._users[job_id] = (user_id, request)
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
        self._users.pop(job_id, None)
        self._running.discard(job_id)
        self._ended.discard(job_id)
        self._first_event.pop(job_id, None)
        self._missing_since.pop(job_id, None)
        if entry_id is not None:
            self._unacked[job_id] = entry_id
            await self._acknowledge_entries()
        await self._trim()
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

    async def _acknowledge_entries(self) -> None:
        """XACK and XDEL the entries of the jobs whose results are stored (a connection lost
        on the way: tried again next tick)."""
        for job_id, entry_id in list(self._unacked.items()):
            try:
                async with self.client.pipeline(transaction=True) as pipe:
                    pipe.xack(self.keys.jobs, GROUP, entry_id)
                    pipe.xdel(self.keys.jobs, entry_id)
                    pipe.delete(self.keys.cancel(job_id))
                    pipe.hdel(self.keys.deaths, entry_id)
                    pipe.hdel(self.keys.handed, entry_id)
                    await pipe.execute()
            except ResponseError as err:
                if not is_nogroup(err):  # no group: Redis lost it and the entry with it; the rest ran
                    raise
            except UNREACHABLE as err:
                log.warning("could not acknowledge job %s yet (%s); trying again", job_id, type(err).__name__)
                return
            self._unacked.pop(job_id, None)

    async def _trim(self) -> None:
        """Trim the own events stream below what is read and every unacknowledged job's first
        event (XTRIM MINID, exact): nothing unread and no result not yet stored goes."""
        ms, seq = stream_id(self._read_up_to)
        keep = [(ms, seq + 1), *(stream_id(self._first_event[job]) for job in self._released
                                 if job in self._first_event)]
        minid = min(keep)
        try:
            await self.client.xtrim(self.events_key, minid=f"{minid[0]}-{minid[1]}", approximate=False)
        except RedisError as err:  # a trim can wait for the next one
            log.debug("could not trim %s: %s", self.events_key, err)

    async def _release(self) -> None:
        """Hand the next jobs, in fair order, to the stream while workers are free for them."""
        async with self._release_lock:
            released = False
            while self._live_workers - len(self._running) - self._released_waiting() > 0:
                job_id = self._waiting.pop()
                if job_id is None:
                    break
                user_id, request = self._users[job_id]
                try:
                    fields = await asyncio.to_thread(self._entry, job_id, user_id, request)
                except (OSError, ValueError):  # ValueError: BadKey, not a key of the store
                    self._users.pop(job_id, None)
                    self._events.put_nowait(Failed(job_id, "A picture this job starts from is gone from "
                                                           "Pintor's file store."))
                    continue
                try:
                    self._released[job_id] = await self.client.xadd(self.keys.jobs, fields)
                except UNREACHABLE as err:  # first in line again; the next tick tries again
                    log.warning("could not hand job %s to the workers (%s); trying again", job_id,
                                type(err).__name__)
                    self._waiting.push(job_id, user_id, front=True)
                    break
                released = True
            if released:
                self._announce_positions()

    def _entry(self, job_id: int, user_id: int, request: Request) -> dict[str, str]:
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
        return {"job": str(job_id), "owner": self.owner, "user": str(user_id), "model": request.model,
                "request": request.to_json(), "inputs": json.dumps(inputs)}

    async def _tick(self) -> None:
        outage = Outage("the queue's look at the workers", cap_s=max(TICK_S, self.heartbeat_timeout_s / 2))
        while not self._closing:
            try:
                workers = await self.workers()
                live = len([w for w in workers if w.ready])
                if live != self._live_workers:
                    log.info("%d generation worker(s) connected", live)
                self._live_workers = live
                if self._unacked:
                    await self._acknowledge_entries()
                await self._find_lost(workers)
                await self._release()
                outage.over()
            except UNREACHABLE as err:
                await outage.wait(err)
                continue
            except Exception:  # noqa: BLE001 - one bad look: try again next tick
                log.exception("could not look at the workers")
            await asyncio.sleep(TICK_S)

    async def _find_lost(self, workers: list[WorkerState]) -> None:
        """Release again each job of ours that Redis lost: its entry gone (Redis restarted
        without its data) for a heartbeat timeout and more while no live worker runs it; or its
        result sent (the entry acknowledged by its worker) but not in the events stream once
        that is read to its end (Redis restarted from an older snapshot)."""
        jobs = [(job, entry) for job, entry in self._released.items() if job not in self._ended]
        if not jobs:
            return
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xrevrange(self.events_key, count=1)
            pipe.xinfo_groups(self.keys.jobs)
            for _, entry in jobs:
                pipe.xrange(self.keys.jobs, entry, entry)
                pipe.xpending_range(self.keys.jobs, GROUP, min=entry, max=entry, count=1)
            newest_event, groups, *replies = await pipe.execute(raise_on_error=False)
        if isinstance(groups, Exception) or any(is_nogroup(r) for r in replies if isinstance(r, Exception)):
            await ensure_group(self.client, self.keys)  # Redis lost the stream: entries and group with it
        last_event = newest_event[0][0] if newest_event and not isinstance(newest_event, Exception) else "0-0"
        delivered = "0-0" if isinstance(groups, Exception) else next(
            (g["last-delivered-id"] for g in groups if g["name"] == GROUP), "0-0")
        running = {w.running_job for w in workers}
        now = time.monotonic()
        lost: list[tuple[int, str]] = []
        for n, (job, entry) in enumerate(jobs):
            exists, pending = replies[2 * n], replies[2 * n + 1]
            if isinstance(exists, Exception):
                continue  # not known this time
            if isinstance(pending, Exception):
                pending = []  # no group: nothing is pending
            if not exists:
                if job in running:
                    self._missing_since.pop(job, None)
                elif now - self._missing_since.setdefault(job, now) >= 2 * self.heartbeat_timeout_s:
                    lost.append((job, "Redis lost its entry"))
                continue
            self._missing_since.pop(job, None)
            taken_and_done = not pending and stream_id(entry) <= stream_id(delivered)
            if taken_and_done and stream_id(self._read_up_to) >= stream_id(last_event):
                lost.append((job, "its result is not in the events stream"))
        for job, why in lost:
            if self._released.get(job) is None or job in self._ended:
                continue  # its result came, or it was acknowledged, meanwhile
            entry = self._released.pop(job)
            log.warning("job %s: %s; it is released to the workers again", job, why)
            self._running.discard(job)
            self._first_event.pop(job, None)
            self._missing_since.pop(job, None)
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.xdel(self.keys.jobs, entry)
                pipe.hdel(self.keys.deaths, entry)
                pipe.hdel(self.keys.handed, entry)
                await pipe.execute()
            if job not in self._users:  # its request is not known here (never: kept until acknowledged)
                self._events.put_nowait(Failed(job, "Pintor's queue lost this job; run it again."))
                continue
            self._waiting.push(job, self._users[job][0], front=True)

    async def _read_events(self, last: str) -> None:
        outage = Outage("the queue's reader of results", cap_s=max(1.0, self.heartbeat_timeout_s / 2))
        while not self._closing:
            try:
                batches = await self.client.xread({self.events_key: last}, count=100, block=1000)
                outage.over()
            except UNREACHABLE as err:  # read on from `last` once it is back
                await outage.wait(err)
                continue
            except Exception:  # noqa: BLE001 - read on from `last`
                log.exception("could not read the events stream")
                await asyncio.sleep(1)
                continue
            for _, entries in batches or []:
                for entry_id, fields in entries:
                    try:
                        event = event_from_json(fields["event"])
                    except (KeyError, ValueError):
                        log.error("not a Pintor event in %s: %r", self.events_key, fields)
                    else:
                        if event.job_id in self._released:
                            self._first_event.setdefault(event.job_id, entry_id)
                        await self._on_event(event)
                    last = self._read_up_to = entry_id
            if batches:
                await self._trim()

    async def _on_event(self, event: Event) -> None:
        job_id = event.job_id
        if job_id not in self._released:
            if isinstance(event, FINAL_EVENTS) and self._waiting.remove(job_id):
                # the result of a job thought lost and queued again: it is here after all
                self._users.pop(job_id, None)
                self._announce_positions()
            else:
                return  # another run's, or one acknowledged already (delivered again)
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

