"""The queue between the front end and the workers.

`JobQueue` is the seam: the front end (Discord, the CLI) submits jobs, cancels them, asks for
their place in line and the workers' state, and reads one stream of typed events. Every
method is async, so that an implementation may ask a server. Three implementations serve it,
and tests/test_queue_contract.py runs the same tests against each:

- `LocalQueue` (here): fair order in this process, and ONE worker process that owns the GPU;
- `generation.memory_queue.MemoryQueue`: no worker at all, for fast tests of the front end;
- `generation.redis_queue.RedisQueue`: fair order in the front end, jobs released to a Redis
  stream that `pintor worker` processes on any number of machines read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.context
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

from generation.batching import batch_key
from generation.events import FINAL_EVENTS, Cancelled, Event, Failed, Progress, Queued, Started
from generation.fairness import FairQueue
from generation.request import Request
from generation.worker import WorkerConfig, run_worker

log = logging.getLogger(__name__)

# A job whose run killed the worker this many times is failed instead of run again.
MAX_WORKER_DEATHS_PER_JOB = 3
STOP_TIMEOUT_S = 120.0


@dataclass
class WorkerState:
    """What the front end knows of a worker, for /info and `pintor doctor`: its `name`, its
    `device` (what the worker said: "device", "device_name", "dtype", "offload"), the models it
    has loaded and its device's free memory in bytes (None: not known, e.g. the CPU)."""

    name: str = "local"
    ready: bool = False
    device: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    running_job: int | None = None  # the first of running_jobs
    running_jobs: tuple[int, ...] = ()  # the jobs of the batch running now, in line order
    batch_images: dict[str, int] = field(default_factory=dict)  # model → most images per call (the worker's)
    step: int = 0
    total: int = 0
    restarts: int = 0
    models: tuple[str, ...] = ()
    free_memory_bytes: int | None = None


class JobQueue(Protocol):
    async def start(self) -> None:
        """Connect, start the local worker(s) if any; before any other call."""
    async def close(self) -> None:
        """Stop; a running job (here) stops after its step and is reported Interrupted. The
        event stream ends."""
    async def submit(self, job_id: int, user_id: int, request: Request) -> int:
        """Queue a job (already stored by the caller); returns its place in line, 1 = next."""
    async def cancel(self, job_id: int) -> bool:
        """Remove a waiting job or stop a running one at its next step (the other jobs of its
        batch go on); False if unknown."""
    async def position(self, job_id: int) -> int | None:
        """1 = next to run, 0 = running now, None = not in this queue."""
    def events(self) -> AsyncIterator[Event]:
        """Every job's events, in order; one reader. A final event (Done, Failed, Cancelled,
        Interrupted) may come twice for one job where delivery is at least once (Redis): the
        reader's store decides (a job already ended is not ended again)."""
    async def acknowledge(self, job_id: int) -> None:
        """The job's final event is stored: the queue may forget it (Redis: XACK). Before
        that, a queue that loses its worker runs the job again."""
    async def waiting(self) -> list[int]:
        """The waiting jobs in the order they will run."""
    async def workers(self) -> list[WorkerState]:
        """What is known of each worker: ready, device, models, the running job and its step."""


def loaded_after(models: tuple[str, ...], model: str, max_models: int) -> tuple[str, ...]:
    """The models a worker holds after running one with `model`: the pipeline cache keeps the
    `max_models` used last (generation.pipelines.PipelineCache), the last used first."""
    return (model, *(m for m in models if m != model))[:max(1, max_models)]


# How worker processes start (LocalQueue's worker, `pintor run`'s Redis workers). "spawn", the
# default: a fresh interpreter, never a fork of a process that has threads or CUDA. "forkserver":
# forks of one server process that imported WORKER_PRELOAD once and never touched CUDA, so a new
# worker skips importing torch, transformers and diffusers (about 10 s of CPU on a 2-core machine).
# The tests start dozens of workers and use it (tests/conftest.py); a GPU installation starts one
# worker per GPU and keeps "spawn", whose child initialises CUDA in a process nothing forked.
WORKER_START_METHOD = "spawn"
WORKER_PRELOAD = ("generation.engine", "generation.worker")


def worker_context() -> multiprocessing.context.SpawnContext | multiprocessing.context.ForkServerContext:
    """The multiprocessing context worker processes start in (WORKER_START_METHOD: "spawn" or
    "forkserver"; with "forkserver", its server imports WORKER_PRELOAD when it starts)."""
    if WORKER_START_METHOD == "forkserver":
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(list(WORKER_PRELOAD))
        return ctx
    return multiprocessing.get_context("spawn")


@contextlib.contextmanager
def _main_script_hidden() -> Iterator[None]:
    """While the worker is spawned: multiprocessing's spawn runs the parent's main script again
    in the child (as `__mp_main__`) when it was started as `python script.py`. The worker needs
    nothing of it, and a script that uses Pintor without an `if __name__ == "__main__":` guard
    (the README's three lines) would start a second Pintor inside the worker. Without
    `__file__`, spawn leaves the main module alone, as it does for `python -c` and notebooks."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or getattr(main, "__spec__", None) is not None:  # `-m`: imported by name, harmless
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


class LocalQueue:
    def __init__(self, config: WorkerConfig):
        self.config = config
        self.state = WorkerState()
        self._waiting = FairQueue()
        self._jobs: dict[int, tuple[int, Request]] = {}  # job id → (user id, request), waiting or running
        self._deaths: dict[int, int] = {}
        self._start_failures = 0  # worker deaths in a row before it was ready
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._generation = 0  # which worker process the pipe messages come from
        self._closing = False
        self._stopped = asyncio.Event()
        self._generating = False  # a batch is on the device (sent, its "free" not come back)

    # -- the JobQueue interface ---------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._start_worker()

    async def submit(self, job_id: int, user_id: int, request: Request) -> int:
        if self.state.error:
            self._emit(Failed(job_id, f"The generation worker could not start: {self.state.error}"))
            return 0
        self._jobs[job_id] = (user_id, request)
        self._waiting.push(job_id, user_id)
        position = self._waiting.positions()[job_id]
        self._emit(Queued(job_id, position))
        self._dispatch()
        return await self.position(job_id) or 0

    async def cancel(self, job_id: int) -> bool:
        if self._waiting.remove(job_id):
            self._jobs.pop(job_id, None)
            self._emit(Cancelled(job_id))
            self._announce_positions()
            return True
        if job_id in self.state.running_jobs:
            self._send("cancel", job_id)
            return True
        return False

    async def position(self, job_id: int) -> int | None:
        if job_id in self.state.running_jobs:
            return 0
        return self._waiting.positions().get(job_id)

    async def events(self) -> AsyncIterator[Event]:
        while (event := await self._events.get()) is not None:  # None: closed
            yield event

    async def close(self) -> None:
        """Stop the worker after its current step; a job it was running is reported
        Interrupted, so the caller can keep it queued for the next start."""
        self._closing = True
        process = self._process
        if process is not None and process.is_alive():
            if not self.state.ready:
                process.terminate()  # still starting: nothing to finish
            else:
                self._send("stop")
                try:
                    await asyncio.wait_for(self._stopped.wait(), STOP_TIMEOUT_S)
                except TimeoutError:
                    log.warning("worker did not stop in %.0f s; killing it", STOP_TIMEOUT_S)
                    process.kill()
            await asyncio.to_thread(process.join, 10)
        self._events.put_nowait(None)

    # -- queue state ----------------------------------------------------------------------------

    async def waiting(self) -> list[int]:
        return self._waiting.order()

    async def acknowledge(self, job_id: int) -> None:
        """Nothing to do: the job left this queue with its final event."""

    async def workers(self) -> list[WorkerState]:
        return [self.state]

    def kill_worker(self) -> None:
        """SIGKILL the worker (tests use it to show that no job is lost)."""
        if self._process is not None:
            self._process.kill()

    @property
    def worker_pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # -- internals ------------------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        self._events.put_nowait(event)

    def _announce_positions(self) -> None:
        for job_id, position in self._waiting.positions().items():
            self._emit(Queued(job_id, position))

    def _dispatch(self) -> None:
        if not self.state.ready or self._generating or self._closing:
            return
        batch = self._next_batch()
        if not batch:
            return
        self._generating = True
        # the batch before may still be being finished (its pictures written): running too
        self._set_running([*self.state.running_jobs, *batch], generating=batch[0])
        self.state.step, self.state.total = 0, 0
        self.state.models = loaded_after(self.state.models, self._jobs[batch[0]][1].model, self.config.max_models)
        self._send("run", [(job_id, self._jobs[job_id][1].to_json()) for job_id in batch])
        self._announce_positions()

    def _next_batch(self) -> list[int]:
        """The next job in fair order and the waiting jobs that may share its pipeline call
        (generation.batching.batch_key), up to the worker's image limit for its model, taken
        from the next (limit ÷ its images − 1) jobs in line (FairQueue.pop_batch). A job that
        was running when the worker died runs alone (the batch's size may have killed it)."""
        order = self._waiting.order()
        if not order:
            return []
        first = self._jobs[order[0]][1]
        key, limit = batch_key(first), self.state.batch_images.get(first.model, 0)
        if order[0] in self._deaths:
            limit = 0

        def joins(batch: list[int], job_id: int) -> bool:
            request = self._jobs[job_id][1]
            images = sum(self._jobs[j][1].count for j in batch) + request.count
            return (key is not None and batch_key(request) == key and images <= limit
                    and job_id not in self._deaths)

        return self._waiting.pop_batch(joins, window=limit // max(1, first.count))

    def _set_running(self, jobs: list[int], generating: int | None = None) -> None:
        """The jobs sent to the worker and not ended, in the order sent; `generating`: the first
        job of the batch on the device now (the job /info names; by default the first of
        `jobs` still running)."""
        self.state.running_jobs = tuple(jobs)
        if generating is not None:
            self.state.running_job = generating
        elif self.state.running_job not in jobs:
            self.state.running_job = jobs[0] if jobs else None

    def _send(self, *message: Any) -> None:
        if self._conn is None:
            return  # no worker started yet
        try:
            self._conn.send(message)
        except (OSError, ValueError, AttributeError):
            pass  # the worker is gone; _on_worker_exit deals with it

    def _start_worker(self) -> None:
        ctx = worker_context()
        parent_conn, child_conn = ctx.Pipe()
        self._generation += 1
        self.state.ready, self._generating = False, False
        process = ctx.Process(target=run_worker, args=(child_conn, self.config), name="pintor-worker", daemon=True)
        self._process = process
        with _main_script_hidden():
            process.start()
        child_conn.close()
        self._conn = parent_conn
        threading.Thread(target=self._read, args=(parent_conn, self._generation),
                         daemon=True, name="worker-reader").start()

    def _read(self, conn: Connection, generation: int) -> None:
        """Thread: pass each message of the worker to the event loop, then its exit."""
        loop = self._loop
        assert loop is not None  # set by start(), which starts the first worker
        try:
            try:
                while True:
                    message = conn.recv()
                    loop.call_soon_threadsafe(self._on_message, generation, message)
            except (EOFError, OSError):
                loop.call_soon_threadsafe(self._on_worker_exit, generation)
        except RuntimeError:
            pass  # the event loop is closed: nobody is listening any more

    def _on_message(self, generation: int, message: tuple[Any, ...]) -> None:
        if generation != self._generation:
            return
        kind = message[0]
        if kind == "ready":
            info = dict(message[1])
            self.state.batch_images = dict(info.pop("batch_images", {}))
            self.state.ready, self.state.device, self.state.error = True, info, None
            self._start_failures = 0
            log.info("worker ready on %s", message[1].get("device_name"))
            self._dispatch()
        elif kind == "fatal":
            self.state.error = message[1]
            log.error("worker could not start: %s", message[1])
            self._fail_all(f"The generation worker could not start: {message[1]}")
        elif kind == "free":  # the batch's pipeline call is over: the next one may start now
            self._generating = False
            self._dispatch()
        elif kind == "event":
            self._on_event(message[1])

    def _on_event(self, event: Event) -> None:
        if isinstance(event, Started):
            self.state.step = 0
        elif isinstance(event, Progress):
            self.state.step, self.state.total = event.step, event.total
        if isinstance(event, FINAL_EVENTS):
            self._jobs.pop(event.job_id, None)
            self._deaths.pop(event.job_id, None)
            if event.job_id in self.state.running_jobs:
                self._set_running([j for j in self.state.running_jobs if j != event.job_id])
        self._emit(event)
        self._dispatch()

    def _on_worker_exit(self, generation: int) -> None:
        if generation != self._generation:
            return
        was_ready, self.state.ready = self.state.ready, False
        if self._closing:
            running = self.state.running_jobs
            self._set_running([])
            for job_id in running:
                if job_id in self._jobs:
                    log.warning("worker stopped while running job %s; it stays queued", job_id)
            self._stopped.set()
            return
        if self.state.error:
            return  # it could not start: restarting would fail the same way
        if not was_ready:
            # it died while loading (no "fatal" message: a crash at import, the OOM killer...)
            self._start_failures += 1
            if self._start_failures >= MAX_WORKER_DEATHS_PER_JOB:
                self.state.error = f"the worker process died {self._start_failures} times while starting"
                log.error("%s; not restarting it", self.state.error)
                self._fail_all(f"The generation worker could not start: {self.state.error}")
                return
        running = self.state.running_jobs
        self._set_running([])
        self.state.restarts += 1
        for job_id in reversed(running):  # each pushed to the front: the batch's order is kept
            self._deaths[job_id] = self._deaths.get(job_id, 0) + 1
            user_id, _ = self._jobs[job_id]
            if self._deaths[job_id] >= MAX_WORKER_DEATHS_PER_JOB:
                log.error("job %s killed the worker %d times; failing it", job_id, self._deaths[job_id])
                self._jobs.pop(job_id)
                self._emit(Failed(job_id, "The generation worker crashed on this job several times."))
            else:
                log.warning("worker died during job %s; restarting it and running the job again", job_id)
                self._waiting.push(job_id, user_id, front=True)
        if not running:
            log.warning("worker died; restarting it")
        self._start_worker()

    def _fail_all(self, reason: str) -> None:
        for job_id in list(self._jobs):
            self._waiting.remove(job_id)
            self._emit(Failed(job_id, reason))
        self._jobs.clear()
        self._set_running([])
