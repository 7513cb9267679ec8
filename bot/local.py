"""Pintor from Python: every kind of job in a few lines, through the same studio, queue, worker
and database as Discord and the `pintor` command (so the same prompt language, the same models
and, for the same seed, the same pictures)::

    from bot.local import Pintor

    async with Pintor() as pintor:
        mix = await pintor.blend(["cat.png", "tiger.png"], prompt="a new animal")
        fox = await pintor.imagine("a red fox in the snow --ar 3:2 --seed 7")
        big = await pintor.upscale(fox, 2)
    mix.save("new-animal.png")

Scripts and notebooks that do not use asyncio use `Pintor.sync()` the same way, without
`async`/`await` (it runs its own event loop in a thread, so it works inside Jupyter too).

Settings come from the environment and `.env` as for `pintor run`. Jobs are made by the
operator (user 0, as `pintor imagine`); a job made in Discord can be read, upscaled or varied
here when it was posted publicly in a server, never when it was delivered privately (a direct
message, or a member's private mode): those belong to their author. This module never imports
discord.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from PIL import Image

from bot.intake import OPERATOR_ID, USER_ERRORS, Member, RequestError
from bot.settings import Settings
from bot.studio import AlreadyMade, Studio, Submitted
from bot.wiring import open_studio
from generation.events import Cancelled, Done, Event, Failed, Interrupted
from generation.request import JobKind, Request
from storage.models import Job, JobStatus

__all__ = ["USER_ERRORS", "JobFailed", "Pintor", "Result", "SyncPintor", "Watcher"]

OPERATOR = Member(OPERATOR_ID, "cli")  # whoever runs the machine: the `pintor` command and this interface


class JobFailed(RuntimeError):
    """A job that was queued but made no pictures (failed, cancelled, or stopped by a shutdown,
    after which it stays queued for the next start); str(err) says why, for a member."""

    def __init__(self, job_id: int, reason: str):
        super().__init__(reason)
        self.job_id = job_id


def readable(job: Job | None) -> bool:
    """Whether the operator may read and build on `job`: their own, or one posted publicly in a
    server (what any member of that server can /show). A job delivered privately — in a
    direct message or to a member in private mode — belongs to its author alone."""
    return job is not None and (job.user_id == OPERATOR.id or (not job.private and job.guild_id is not None))


def check_output_name(target: Path) -> None:
    """Raise ValueError (its text for the user) when `target`'s suffix names a format Pillow
    cannot write (`fox.psd`): a PNG under that name would not be what it says. No suffix is
    fine (the PNG)."""
    if target.suffix and Image.registered_extensions().get(target.suffix.lower()) not in Image.SAVE:
        raise ValueError(f"cannot write {target}: Pintor writes PNG, JPEG or WebP (and the other formats Pillow "
                         f"writes), not {target.suffix}; name the file e.g. {target.with_suffix('.png')}")


def copy_atomic(source: str | Path, target: Path) -> None:
    """Copy a PNG file so that `target` either does not exist or is complete (temp + rename): a
    batch that is interrupted and resumed can trust every file it finds. A target named for
    another format Pillow writes (`.jpg`, `.webp` …) is converted to it, so that the file is
    what its name says; a name without a suffix gets the PNG as it is. Raises ValueError for
    a suffix of a format Pillow cannot write (`check_output_name`), with nothing written."""
    check_output_name(target)
    partial = target.with_name(f".{target.name}.part")
    kind = Image.registered_extensions().get(target.suffix.lower())
    if kind is None or kind == "PNG" or kind not in Image.SAVE:
        shutil.copyfile(source, partial)
    else:
        with Image.open(source) as image:
            image.save(partial, format=kind, quality=95)
    os.replace(partial, target)


@dataclass(frozen=True)
class Result:
    """A finished job: its grid and pictures as files in Pintor's data folder (PNG), opened as
    PIL images on demand."""

    job_id: int
    kind: str  # imagine, reroll, variation, upscale, blend, describe…
    prompt: str  # the display text
    model: str
    seed: int  # the job's seed: the same prompt with `--seed` this number makes the same pictures
    grid_path: Path  # the 2×2 grid (an upscale: the one picture)
    paths: tuple[Path, ...]  # each picture, index 1–4 as on the U/V buttons
    # every change Pintor made, as Discord says them with the result: the prompt's (a parameter
    # ignored, a size rounded), then the job's and the worker's (e.g. a prompt cut to 77 tokens)
    notices: tuple[str, ...] = ()
    prompts: tuple[str, ...] = ()  # a describe: the four prompts written for its picture (grid_path)

    @classmethod
    def of(cls, job: Job, studio: Studio) -> Result:
        """`job` (a finished one), its pictures found through `studio`'s file store."""
        request = Request.from_json(job.request)
        notices = list(request.notices)
        notices += [line for line in (job.notices or "").splitlines() if line.strip() and line not in notices]
        return cls(job.id, job.kind, job.prompt, job.model, request.seed, studio.picture(job.grid_path or ""),
                   tuple(studio.picture(i.path) for i in job.images), tuple(notices), tuple(job.prompts))

    @property
    def grid(self) -> Image.Image:
        """The grid as a PIL image (RGB, loaded)."""
        return _load(self.grid_path)

    @property
    def images(self) -> list[Image.Image]:
        """The pictures as PIL images, in button order."""
        return [_load(path) for path in self.paths]

    def save(self, path: str | Path, *, separate: bool = False) -> list[Path]:
        """Write the grid to `path` (PNG, or the format its extension names: `.jpg`, `.webp` …)
        and with `separate` each picture beside it as NAME-1.png …; returns the files written.
        Raises ValueError, writing nothing, for a name of a format Pillow cannot write (`.psd`)."""
        targets = output_paths(Path(path), separate, len(self.paths))
        for target in targets:
            check_output_name(target)
        for source, target in zip((self.grid_path, *self.paths), targets, strict=False):
            copy_atomic(source, target)
        return targets


def _load(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image.copy()


def output_paths(output: Path, separate: bool, count: int = 4) -> list[Path]:
    """The files a result is saved to: the grid, and with `separate` one per picture."""
    paths = [output]
    if separate:
        paths += [output.with_name(f"{output.stem}-{i}{output.suffix or '.png'}") for i in range(1, count + 1)]
    return paths


class Watcher:
    """Told what happens to each job a `Pintor` runs (the CLI shows it on a terminal); does
    nothing by default."""

    def submitted(self, submitted: Submitted) -> None:
        """The job is stored and queued."""

    def event(self, event: Event) -> None:
        """Each event of the job after it is stored: Queued, Started, Progress, then the final one."""

    def existing(self, job: Job) -> None:
        """Nothing new is made: `job` (queued, running or done) already makes what was asked
        for (an upscale asked for twice); its result is given instead."""

    def resumed(self, jobs: Sequence[Job]) -> None:
        """`jobs`, the operator's, were left unfinished by a command that stopped (interrupted,
        killed, a closed pipe) and are queued again before anything new: they run first."""


JobRef = int | Result


class Pintor:
    """The studio for Python: open it with `async with Pintor() as pintor`. Each method queues
    one job as the operator and returns its `Result` once done, or raises: one of `USER_ERRORS`
    (`except USER_ERRORS as err`) for bad input, with the message a Discord member would get
    and nothing stored; `JobFailed` when the job made no pictures."""

    def __init__(self, settings: Settings | None = None, *, watcher: Watcher | None = None):
        self.settings = settings or Settings()
        self.watcher = watcher or Watcher()
        self.studio: Studio | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._started = False  # the studio's worker: started at the first job (`_running`)

    @classmethod
    def sync(cls, settings: Settings | None = None, *, watcher: Watcher | None = None) -> SyncPintor:
        """The same, for code without asyncio: `with Pintor.sync() as pintor: pintor.imagine(…)`."""
        return SyncPintor(cls(settings, watcher=watcher))

    async def __aenter__(self) -> Self:
        self._stack = contextlib.AsyncExitStack()
        # started at the first job (`_running`): reading the history or a job needs no worker
        self.studio = await self._stack.enter_async_context(open_studio(self.settings, start=False))
        self._started = False
        return self

    async def __aexit__(self, *exc) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self.studio = None

    def _open(self) -> Studio:
        if self.studio is None:
            raise RuntimeError("use Pintor inside `async with Pintor() as pintor:`")
        return self.studio

    async def _running(self) -> Studio:
        """The studio with its worker started, at the first job made or waited for; the
        operator's unfinished jobs go on then (a batch resumed: Studio.start), before the new
        one is queued. Discord's unfinished jobs are the bot's to resume."""
        studio = self._open()
        if not self._started:
            resumed = await studio.start(resume_user=OPERATOR.id)
            self._started = True
            if resumed:
                self.watcher.resumed(resumed)
        return studio

    # -- jobs -----------------------------------------------------------------------------------

    async def imagine(self, prompt: str) -> Result:
        """A 2×2 grid from a prompt, as /imagine: `"a red fox in the snow --ar 3:2 --seed 7"`."""
        return await self.finish(await self.submit_imagine(prompt))

    async def submit_imagine(self, prompt: str) -> Submitted:
        """Store and queue an imagine job without waiting for it (`finish` waits)."""
        studio = await self._running()
        return self._told(await studio.imagine(OPERATOR, prompt))  # links at its start: image prompts

    async def blend(self, images: Sequence[str | Path | bytes | Image.Image], *, prompt: str = "",
                    weights: str | Sequence[float] = "", dimensions: str = "square",
                    model: str | None = None) -> Result:
        """Mix 2–5 pictures (file paths, PNG/JPEG bytes or PIL images) and an optional text, as
        /blend: `weights` one per picture and optionally one more for the text (e.g. "1,1,0.5"
        or [1, 1, 0.5]); `dimensions` square, portrait or landscape."""
        uploads = [await asyncio.to_thread(_upload, image, n) for n, image in enumerate(images, start=1)]
        if not isinstance(weights, str):
            weights = ",".join(str(w) for w in weights)
        submitted = await (await self._running()).blend(OPERATOR, uploads, prompt=prompt, weights=weights,
                                             dimensions=dimensions, model=model)
        return await self.finish(self._told(submitted))

    async def describe(self, image: str | Path | bytes | Image.Image) -> Result:
        """Four prompts that describe a picture (a file path, PNG/JPEG bytes or a PIL image), as
        /describe: `Result.prompts`; its `grid` is the picture as read (upright, RGB)."""
        name, data = await asyncio.to_thread(_upload, image, 1)
        return await self.finish(self._told(await (await self._running()).describe(OPERATOR, name, data)))

    async def upscale(self, job: JobRef, index: int) -> Result:
        """Picture `index` (1–4) of a finished job, larger (the U buttons). Asked again for the
        same picture, it returns the upscale made the first time (waiting for it while it is
        queued or running), as a second press of the button in Discord points to it. A job that
        is an upscale already has one picture (1): it is upscaled again, as Upscale (Subtle)
        under it in Discord does, and the result says so."""
        found = await self._readable(job)
        job_id = found.id
        again = ([f"Job {job_id} is an upscale already: its picture is upscaled again (as Upscale (Subtle) "
                  "under it in Discord)."] if found.kind == JobKind.UPSCALE else [])
        try:
            submitted = await (await self._running()).upscale(OPERATOR, job_id, index, notices=again)
        except AlreadyMade as made:
            self.watcher.existing(made.job)
            return await self.finish(made.job.id)
        return await self.finish(self._told(submitted))

    async def vary(self, job: JobRef, index: int, *, strong: bool = False) -> Result:
        """Four variations of picture `index` (1–4) of a finished job (the V buttons)."""
        job_id = (await self._readable(job)).id
        return await self.finish(self._told(await (await self._running()).vary(OPERATOR, job_id, index, strong=strong)))

    async def reroll(self, job: JobRef) -> Result:
        """The same grid request again with a new seed (🔄)."""
        job_id = (await self._readable(job)).id
        return await self.finish(self._told(await (await self._running()).reroll(OPERATOR, job_id)))

    async def show(self, job: JobRef) -> Result:
        """A finished job, as /show gives it (made here or posted publicly in Discord)."""
        found = await self._readable(job)
        job_id = found.id
        if found.status == JobStatus.FAILED:
            raise RequestError(f"Job {job_id} failed: {found.error or 'no reason recorded'}")
        if found.status == JobStatus.CANCELLED:
            raise RequestError(f"Job {job_id} was cancelled: it has no pictures.")
        if found.status != JobStatus.DONE:
            raise RequestError(f"Job {job_id} is {found.status}; it has no pictures yet.")
        if not found.grid_path or not self._open().picture(found.grid_path).is_file():
            raise RequestError(f"The picture files of job {job_id} are gone.")
        return Result.of(found, self._open())

    async def history(self, *, page: int = 1, page_size: int = 20) -> tuple[list[Job], int]:
        """A page of the jobs the operator may read (`readable`), newest first, and how many."""
        store = self._open().store
        jobs, total = await store.shared_history(OPERATOR.id, offset=(max(page, 1) - 1) * page_size,
                                                 limit=page_size)
        return list(jobs), total

    async def finish(self, submitted: Submitted | int, *, cancel_if_interrupted: bool = True) -> Result:
        """Wait for a job (just submitted, or stored earlier and queued again by the start) and
        return its result; raises `JobFailed` when it ends without pictures. When the wait is
        cancelled (Ctrl-C), the job is cancelled too, unless `cancel_if_interrupted` is False
        (a batch keeps its jobs queued, to be resumed)."""
        job_id = submitted.job_id if isinstance(submitted, Submitted) else submitted
        try:
            return await self._finish(submitted)
        except asyncio.CancelledError:
            if cancel_if_interrupted:
                await asyncio.shield(self.cancel(job_id))
            raise

    async def _finish(self, submitted: Submitted | int) -> Result:
        studio = await self._running()
        if isinstance(submitted, Submitted):
            job_id, events = submitted.job_id, submitted.events
        else:
            job_id, events = submitted, studio.watch(submitted)  # watch first, then look: no gap
            job = await studio.job(job_id)
            if job is None:
                raise RequestError(f"There is no job {job_id}.")
            if job.status == JobStatus.DONE:
                return Result.of(job, studio)
            if job.status in (JobStatus.FAILED, JobStatus.CANCELLED):
                raise JobFailed(job_id, job.error or f"Job {job_id} was {job.status}.")
        async for event in events:
            self.watcher.event(event)
            if isinstance(event, Done):
                return Result.of(await studio.job(job_id), studio)
            if isinstance(event, Failed):
                raise JobFailed(job_id, event.reason)
            if isinstance(event, Cancelled):
                raise JobFailed(job_id, f"Job {job_id} was cancelled.")
            if isinstance(event, Interrupted):
                raise JobFailed(job_id, f"Job {job_id} was stopped by a shutdown; it goes on at the next start.")
        raise JobFailed(job_id, f"Job {job_id} ended without a result.")

    async def cancel(self, job_id: int) -> bool:
        """Cancel one of the operator's queued or running jobs."""
        return await (await self._running()).cancel(job_id, member=OPERATOR)

    def _told(self, submitted: Submitted) -> Submitted:
        self.watcher.submitted(submitted)
        return submitted

    async def _readable(self, job: JobRef) -> Job:
        """The job the operator may read; RequestError when there is none or it is another's."""
        job_id = job.job_id if isinstance(job, Result) else int(job)
        found = await self._open().job(job_id)
        if found is None:
            raise RequestError(f"There is no job {job_id}.")
        if not readable(found):
            raise RequestError(f"Job {job_id} was delivered privately: it belongs to its author. "
                               f"Pintor's operator reads only their own jobs and those posted in a server.")
        return found


def _upload(image: str | Path | bytes | Image.Image, n: int) -> tuple[str, bytes]:
    """A picture as /blend receives it: (name, bytes)."""
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return f"image{n}.png", buffer.getvalue()
    if isinstance(image, bytes):
        return f"image{n}", image
    path = Path(image)
    try:
        return path.name, path.read_bytes()
    except FileNotFoundError:
        raise RequestError(f"There is no file {path}.") from None
    except IsADirectoryError:
        raise RequestError(f"{path} is a folder, not a picture.") from None
    except PermissionError:
        raise RequestError(f"Cannot read {path}: permission denied.") from None


class SyncPintor:
    """`Pintor` without asyncio: the same methods, called plainly. Its event loop runs in a
    thread of its own, so it also works where a loop is already running (Jupyter)."""

    def __init__(self, pintor: Pintor):
        self._pintor = pintor
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pintor-loop", daemon=True)
        self._thread.start()
        try:
            self._call(self._pintor.__aenter__())
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._call(self._pintor.__aexit__(*exc))
        finally:
            self._stop()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _call(self, coroutine):
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except KeyboardInterrupt:  # Ctrl-C: the job waited for is cancelled (`Pintor.finish`)
            future.cancel()
            raise

    def imagine(self, prompt: str) -> Result:
        return self._call(self._pintor.imagine(prompt))

    def blend(self, images, **options) -> Result:
        return self._call(self._pintor.blend(images, **options))

    def describe(self, image) -> Result:
        return self._call(self._pintor.describe(image))

    def upscale(self, job: JobRef, index: int) -> Result:
        return self._call(self._pintor.upscale(job, index))

    def vary(self, job: JobRef, index: int, *, strong: bool = False) -> Result:
        return self._call(self._pintor.vary(job, index, strong=strong))

    def reroll(self, job: JobRef) -> Result:
        return self._call(self._pintor.reroll(job))

    def show(self, job: JobRef) -> Result:
        return self._call(self._pintor.show(job))

    def history(self, **options) -> tuple[list[Job], int]:
        return self._call(self._pintor.history(**options))
