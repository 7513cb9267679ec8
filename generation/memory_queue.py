"""`MemoryQueue`: the JobQueue seam with no worker process and no model, for fast tests of
everything in front of the worker (the Studio, the Discord cogs, limits, history).

It keeps the same fair order as the other queues (generation.fairness) and plays a worker in
this event loop: Started, one Progress per step (`step_s` apart), then Done with four plain
pictures (a colour drawn from each image's seed) written to its FileStore (for a /describe,
plain prompts). A request for a
model named in `failing_models` ends Failed. It is the StubBroker of dramatiq's tests: the
same contract tests run against it as against the real queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator

from PIL import Image

from generation.events import Cancelled, Done, Event, Failed, Interrupted, Progress, Queued, Started
from generation.fairness import FairQueue
from generation.files import FileStore
from generation.imaging import png_bytes
from generation.queue import WorkerState, loaded_after
from generation.request import JobKind, Request
from generation.worker import save_images, save_picture


def plain_pictures(request: Request) -> list[Image.Image]:
    """One flat-coloured RGB picture per image of `request` (its seed picks the colour), at the
    request's size (×2 for an upscale, which makes one; one for a /describe, the picture)."""
    if request.kind == JobKind.DESCRIBE:
        return [Image.new("RGB", (request.width, request.height), _colour(request.seed))]
    if request.kind == JobKind.UPSCALE:
        return [Image.new("RGB", (request.width * 2, request.height * 2), _colour(request.seed))]
    return [Image.new("RGB", (request.width, request.height), _colour(seed)) for seed in request.seeds()]


def plain_captions(request: Request) -> tuple[str, ...]:
    """The prompts a pretend captioner writes for a /describe: "plain picture N" for each."""
    return tuple(f"a plain picture, number {n}" for n in range(1, request.count + 1))


def _colour(seed: int) -> tuple[int, int, int]:
    rng = random.Random(seed)
    return rng.randrange(256), rng.randrange(256), rng.randrange(256)


class MemoryQueue:
    """A JobQueue served by a pretend worker in this process (see the module's docstring).
    `files`: where the pictures are written (the front end's FileStore); `step_s`: seconds
    per step; `failing_models`: models whose jobs fail, as a missing model would."""

    def __init__(self, files: FileStore, *, step_s: float = 0.0, failing_models: frozenset[str] = frozenset()):
        self.files = files
        self.step_s = step_s
        self.failing_models = failing_models
        self.state = WorkerState(name="memory", ready=True, device={"device": "memory", "device_name": "in memory"})
        self._waiting = FairQueue()
        self._jobs: dict[int, tuple[int, Request]] = {}
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._cancelled: set[int] = set()
        self._closing = False
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Nothing to start: jobs run as tasks of this event loop."""

    async def close(self) -> None:
        self._closing = True
        self._stop.set()
        if self._task is not None:
            await self._task
        self._events.put_nowait(None)

    async def submit(self, job_id: int, user_id: int, request: Request) -> int:
        self._jobs[job_id] = (user_id, request)
        self._waiting.push(job_id, user_id)
        position = self._waiting.positions()[job_id]
        self._events.put_nowait(Queued(job_id, position))
        self._dispatch()
        return await self.position(job_id) or 0

    async def cancel(self, job_id: int) -> bool:
        if self._waiting.remove(job_id):
            self._jobs.pop(job_id, None)
            self._events.put_nowait(Cancelled(job_id))
            self._announce_positions()
            return True
        if job_id == self.state.running_job:
            self._cancelled.add(job_id)
            return True
        return False

    async def position(self, job_id: int) -> int | None:
        if job_id == self.state.running_job:
            return 0
        return self._waiting.positions().get(job_id)

    async def events(self) -> AsyncIterator[Event]:
        while (event := await self._events.get()) is not None:
            yield event

    async def acknowledge(self, job_id: int) -> None:
        """Nothing to do: the job left this queue with its final event."""

    async def waiting(self) -> list[int]:
        return self._waiting.order()

    async def workers(self) -> list[WorkerState]:
        return [self.state]

    def _announce_positions(self) -> None:
        for job_id, position in self._waiting.positions().items():
            self._events.put_nowait(Queued(job_id, position))

    def _dispatch(self) -> None:
        """Start the next job if none runs (at once, as a worker that waits for work does)."""
        if self.state.running_job is not None or self._closing:
            return
        job_id = self._waiting.pop()
        if job_id is None:
            return
        self.state.running_job, self.state.step, self.state.total = job_id, 0, 0
        self._announce_positions()
        self._task = asyncio.create_task(self._work(job_id), name=f"memory-job-{job_id}")

    async def _work(self, job_id: int) -> None:
        try:
            event = await self._run(job_id, self._jobs[job_id][1])
        finally:
            self.state.running_job = None
            self._jobs.pop(job_id, None)
            self._cancelled.discard(job_id)
        self._events.put_nowait(event)
        self._dispatch()

    async def _run(self, job_id: int, request: Request) -> Event:
        self._events.put_nowait(Started(job_id))
        self.state.models = loaded_after(self.state.models, request.model, 1)
        if request.model in self.failing_models:
            return Failed(job_id, f"Unknown model '{request.model}'.")
        pictures = plain_pictures(request)
        for step in range(1, request.steps + 1):
            with contextlib.suppress(TimeoutError):  # a step's time, cut short by close()
                await asyncio.wait_for(self._stop.wait(), self.step_s)
            if job_id in self._cancelled:
                return Cancelled(job_id)
            if self._closing:
                return Interrupted(job_id)
            self.state.step, self.state.total = step, request.steps
            preview = png_bytes(pictures[0].resize((8, 8))) if step == 1 else None
            self._events.put_nowait(Progress(job_id, step, request.steps, preview))
        if request.kind == JobKind.DESCRIBE:  # plain prompts for the picture, as a captioner writes them
            picture = await asyncio.to_thread(save_picture, pictures[0], request, self.files, job_id)
            return Done(job_id, (), picture, captions=plain_captions(request))
        files, grid = await asyncio.to_thread(save_images, pictures, request, self.files, job_id)
        return Done(job_id, tuple(files), grid)
