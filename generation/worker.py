"""The worker process: the one process that owns the GPU.

It receives jobs over a pipe, runs them through the engine, writes the image files
(atomically) and sends back events. It never talks to Discord or to the database, and it
decides no policy: order, limits and retries belong to the queue in the front end.

Messages in:  ("run", [(job_id, request_json), …]) · ("cancel", job_id) · ("stop",)
Messages out: ("ready", info) · ("fatal", reason) · ("event", Event)

A "run" carries one job or a batch of jobs that share one pipeline call (the queue picks them:
generation.batching); "ready" tells the queue how many images one call may hold per model.
"""

from __future__ import annotations

import errno
import logging
import queue
import re
import signal
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from generation.events import Cancelled, Done, Failed, ImageFile, Interrupted, Progress, Started
from generation.files import CONTROL_FILE, FileStore, job_folder, job_key
from generation.imaging import make_grid, png_bytes, sha256
from generation.request import JobKind, Request

if TYPE_CHECKING:
    from generation.engine import Engine, Generated  # imported in the worker process only: it loads torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    output_dir: str
    registry_path: str | None = None
    default_model: str | None = None
    device: str = "auto"
    max_models: int = 1
    # the fast path (generation.devices.FastPath; plain values: the front end never imports torch)
    dtype: str = "auto"
    offload: str = "auto"
    channels_last: bool | None = None
    compile: str | None = None  # a torch.compile mode; warmed up before the worker says it is ready
    vae_tiling_pixels: int = 1536 * 1536
    preview_interval_s: float = 1.0
    log_level: str = "INFO"
    # most images in one pipeline call, the jobs of several members together (None: per family
    # and device, the family record's batch_images_cuda; 4 or less: one job at a time)
    batch_images: int | None = None
    # remote models (generation/remote.py): the provider's API key (kept out of repr and logs),
    # its base URL (None: the client's default), per-request timeout and the client's retries
    openai_api_key: str | None = field(default=None, repr=False)
    openai_base_url: str | None = None
    remote_timeout_s: float = 120.0
    remote_max_retries: int = 2


def job_dir(output_dir: str | Path, job_id: int) -> Path:
    """The folder of a job's pictures in a local file store rooted at `output_dir`."""
    return Path(output_dir) / "jobs" / str(job_id)


def save_control(control: Image.Image, request: Request, store: FileStore, job_id: int) -> ImageFile:
    """A ControlNet job's control image as "jobs/<job id>/control.png" in `store` (atomically);
    returns its ImageFile (seed: the grid's)."""
    data = png_bytes(control)
    key = job_key(job_id, CONTROL_FILE)
    store.put(key, data)
    return ImageFile(key, control.width, control.height, request.seed, sha256(data))


def save_images(images: list[Image.Image], request: Request, store: FileStore, job_id: int,
                flagged: list[bool] | None = None) -> tuple[list[ImageFile], ImageFile]:
    """Each image and the grid as PNG files in `store` (keys "jobs/<job id>/1.png" …
    "grid.png"), each written atomically. Returns their ImageFiles (keys, pixel sizes, seeds,
    SHA-256 of the PNG bytes), the images' first.

    All or nothing: when a write fails (OSError, e.g. ENOSPC: the disk is full) the files
    already written for the job are removed before the error is raised; temp files that a
    worker killed mid-write left for this job are removed first."""
    flagged = flagged or [False] * len(images)
    files: list[ImageFile] = []
    written: list[str] = []
    store.remove_partial(job_folder(job_id))
    try:
        for i, (image, seed, bad) in enumerate(zip(images, request.seeds(), flagged, strict=False)):
            data = png_bytes(image)
            key = job_key(job_id, f"{i + 1}.png")
            store.put(key, data)
            written.append(key)
            files.append(ImageFile(key, image.width, image.height, seed, sha256(data), bad))
        grid = make_grid(images, columns=2 if len(images) > 1 else 1)
        data = png_bytes(grid)
        key = job_key(job_id, "grid.png")
        store.put(key, data)
    except OSError:
        for key in written:
            store.delete(key)
        raise
    return files, ImageFile(key, grid.width, grid.height, request.seed, sha256(data), any(flagged))


def save_picture(image: Image.Image, request: Request, store: FileStore, job_id: int) -> ImageFile:
    """The one picture of a job without images of its own (the picture a /describe described)
    as its grid, "jobs/<job id>/grid.png", written atomically. Returns its ImageFile."""
    data = png_bytes(image)
    key = job_key(job_id, "grid.png")
    store.put(key, data)
    return ImageFile(key, image.width, image.height, request.seed, sha256(data))


class WarmUpFailed(RuntimeError):
    """The torch.compile warm-up failed at start (it would fail every job)."""


def start_engine(config: WorkerConfig) -> tuple[Engine, dict[str, Any]]:
    """The worker's engine, built from `config` in this (child) process, and what the worker
    announces about itself: device, device_name, dtype, offload and, with torch.compile on,
    the warm-up made here before any job (generation.warmup). Raises WarmUpFailed when the
    warm-up fails, and whatever loading the registry or choosing the device raises."""
    import diffusers  # heavy imports happen in the child only
    import transformers

    from generation.devices import FastPath, Offload, choose_device
    from generation.engine import Engine
    from generation.registry import load_registry
    from generation.remote import RemoteSettings, quiet_provider_logs
    from generation.warmup import warm_up

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # (untyped there)
    registry = load_registry(Path(config.registry_path) if config.registry_path else None, config.default_model)
    device = choose_device(config.device, config.dtype)
    fast = FastPath(offload=Offload(config.offload), channels_last=config.channels_last,
                    compile=config.compile, vae_tiling_pixels=config.vae_tiling_pixels)
    remote = RemoteSettings(api_key=config.openai_api_key, base_url=config.openai_base_url,
                            timeout_s=config.remote_timeout_s, max_retries=config.remote_max_retries)
    if any(spec.is_remote for spec in registry.models.values()):
        quiet_provider_logs()
    engine = Engine(registry, device, max_models=config.max_models, fast=fast, remote_settings=remote)
    info: dict[str, Any] = {"device": device.device, "device_name": device.name,
                            "dtype": str(device.dtype).removeprefix("torch."), "offload": fast.offload.value}
    if fast.compile:
        # before "ready": the queue sends no job until then, so no member waits for the compiler
        try:
            info["warm_up"] = warm_up(engine, fast.compile)
        except Exception as err:
            log.error("compile warm-up failed:\n%s", traceback.format_exc())
            raise WarmUpFailed(f"the torch.compile warm-up failed (PINTOR_COMPILE): "
                               f"{type(err).__name__}: {err}") from err
        log.info("compile warm-up: %s", info["warm_up"])
    return engine, info


class _Worker:
    def __init__(self, conn: Connection, config: WorkerConfig):
        self.conn = conn
        self.config = config
        # the batches to run: [(job id, request JSON), …]; None: stop
        self.jobs: queue.Queue[list[tuple[int, str]] | None] = queue.Queue()
        self.cancelled: set[int] = set()
        self.stopping = threading.Event()
        self.send_lock = threading.Lock()

    def send(self, *message: Any) -> None:
        with self.send_lock:
            self.conn.send(message)

    def read_commands(self) -> None:
        """Runs in a thread so that a cancel or stop arrives while a job is running."""
        try:
            while True:
                message = self.conn.recv()
                if message[0] == "run":
                    self.jobs.put([(job_id, request_json) for job_id, request_json in message[1]])
                elif message[0] == "cancel":
                    self.cancelled.add(message[1])
                elif message[0] == "stop":
                    break
        except (EOFError, OSError):
            pass  # the front end is gone: stop as well
        self.stopping.set()
        self.jobs.put(None)

    def run(self) -> None:
        try:
            engine, info = start_engine(self.config)
        except WarmUpFailed as err:
            self.send("fatal", str(err))
            return
        except Exception as err:  # noqa: BLE001 - reported to the front end, which shows it
            self.send("fatal", f"{type(err).__name__}: {err}")
            return
        from generation.batching import max_batch_images

        batch_images = {name: max_batch_images(spec.family, info["device"], self.config.batch_images)
                        for name, spec in engine.registry.models.items()}
        info["batch_images"] = batch_images
        self.send("ready", info)
        threading.Thread(target=self.read_commands, daemon=True, name="commands").start()
        # A batch's pictures are encoded, written and reported in this thread of their own, one
        # batch after another, while the next batch is generated: the device never waits for them.
        finisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="finisher")
        try:
            while (batch := self.jobs.get()) is not None:
                jobs = []
                for job_id, request_json in batch:
                    if job_id in self.cancelled:  # cancelled before it started
                        self.cancelled.discard(job_id)
                        self.send("event", Cancelled(job_id))
                    else:
                        jobs.append((job_id, Request.from_json(request_json)))
                for job_id, _ in jobs:
                    self.send("event", Started(job_id))
                if jobs:
                    self.run_batch(engine, jobs, finisher=finisher)
                # the device is free (the batch's pictures may still be being written): the front
                # end sends the next batch now
                self.send("free", [job_id for job_id, _ in batch])
        finally:
            finisher.shutdown(wait=True)  # every finished batch is written and reported before the exit

    def run_job(self, engine: Engine, job_id: int, request: Request) -> None:
        """Run one job alone, from its Started to its end (the Redis worker's way)."""
        self.send("event", Started(job_id))
        self.run_batch(engine, [(job_id, request)])

    def run_batch(self, engine: Engine, jobs: list[tuple[int, Request]], *, offloaded: bool = False,
                  finisher: Executor | None = None) -> None:
        """Run jobs (already reported Started) as one pipeline call and report each one's end.

        A job cancelled while the batch runs is reported Cancelled at once (its images are
        dropped, the others go on). If a batch of several fails, each job still running is run
        again alone, so that one job's fault (a missing input picture, say) is its own. A job
        alone that runs out of memory runs once more with offloading on (`offloaded`:
        PipelineCache.offloaded), then fails with the reason; the worker goes on serving.

        `finisher`: where the pictures of a batch that ran are written and its jobs' ends sent
        (a one-thread executor: Done and Interrupted come in the order the batches ran; a
        Cancelled seen while a batch runs and a Failed after its call raised are sent at once);
        this call then returns when the pipeline call does. None: here, before this call
        returns (the Redis worker's way). A write that fails (a full disk) fails the jobs not
        yet reported, with the reason."""
        from generation.engine import BatchJob, GenerationStopped

        ended: set[int] = set()  # jobs whose final event was sent

        def end(event: Cancelled | Interrupted | Done | Failed) -> None:
            ended.add(event.job_id)
            self.send("event", event)

        def callbacks(job_id: int) -> tuple[Callable[[int, int, Callable[[], Image.Image]], None], Callable[[], bool]]:
            last_preview = 0.0

            def on_step(step: int, total: int, make_preview: Callable[[], Image.Image]) -> None:
                nonlocal last_preview
                preview = None
                now = time.monotonic()
                if now - last_preview >= self.config.preview_interval_s and step < total:
                    preview, last_preview = png_bytes(make_preview()), now
                self.send("event", Progress(job_id, step, total, preview))

            def should_stop() -> bool:
                if job_id in self.cancelled:
                    if job_id not in ended:
                        end(Cancelled(job_id))
                    return True
                return self.stopping.is_set()

            return on_step, should_stop

        store = FileStore(self.config.output_dir)
        try:
            # the engine opens files: each input picture's key → its file in this worker's store
            # (a request stored before keys names absolute paths, which stay as they are)
            opened = [BatchJob(request.with_inputs(lambda name: str(store.local(name))), *callbacks(job_id))
                      for job_id, request in jobs]
            results = engine.generate_batch(opened)
        except GenerationStopped:
            pass
        except Exception as err:  # noqa: BLE001 - one failed job must not stop the worker
            self._failed(engine, jobs, err, ended, end, offloaded=offloaded, finisher=finisher)
        else:
            def finish() -> None:
                try:
                    for (job_id, request), result in zip(jobs, results, strict=True):
                        if result is not None and job_id not in ended:  # (stopped: reported below)
                            end(_saved(job_id, request, result, store))
                except Exception as err:  # noqa: BLE001 - a full disk fails these jobs, not the worker
                    log.error("job %s failed:\n%s", jobs[0][0], traceback.format_exc())
                    for job_id, _ in jobs:
                        if job_id not in ended:
                            end(Failed(job_id, _reason(err, engine.device.device)))
                self._end_the_rest(jobs, ended, end)

            if finisher is None:
                finish()
            else:
                finisher.submit(finish)
            return
        if finisher is None:
            self._end_the_rest(jobs, ended, end)
        else:  # after the ends of the batches that ran before this one (in the order they ran)
            finisher.submit(self._end_the_rest, jobs, ended, end)

    def _end_the_rest(self, jobs: list[tuple[int, Request]], ended: set[int],
                      end: Callable[[Cancelled | Interrupted | Done | Failed], None]) -> None:
        """The end of each of `jobs` not reported yet: stopped by a cancel, or by the worker's stop."""
        for job_id, _ in jobs:
            if job_id not in ended:
                end(Cancelled(job_id) if job_id in self.cancelled else Interrupted(job_id))
            self.cancelled.discard(job_id)

    def _failed(self, engine: Engine, jobs: list[tuple[int, Request]], err: Exception, ended: set[int],
                end: Callable[[Cancelled | Interrupted | Done | Failed], None], *, offloaded: bool,
                finisher: Executor | None) -> None:
        """After a batch's pipeline call raised `err`: each job run again alone (a batch of
        several), once more with offloading on (out of memory), or failed with the reason."""
        from generation.availability import ModelLoadError
        from generation.devices import is_out_of_memory
        from generation.remote import RemoteRefusal

        still = [(job_id, request) for job_id, request in jobs if job_id not in ended]
        if len(jobs) > 1 and not self.stopping.is_set():
            log.warning("a batch of %d jobs failed (%s: %s); running each alone", len(jobs),
                        type(err).__name__, err)
            for job in still:
                if job[0] in self.cancelled:
                    end(Cancelled(job[0]))
                else:
                    self.run_batch(engine, [job], finisher=finisher)
                    ended.add(job[0])
        elif is_out_of_memory(err) and not offloaded and not self.stopping.is_set():  # any device's
            log.warning("job %s ran out of memory; running it again with offloading on", jobs[0][0])
            with engine.pipelines.offloaded():
                # finished here: the pictures are written while the pipelines are still offloaded
                self.run_batch(engine, still, offloaded=True)
            ended.update(job_id for job_id, _ in still)
        elif isinstance(err, ModelLoadError):  # expected (files missing, offline…): the why, not a traceback
            log.error("job %s failed: %s", jobs[0][0], err.detail)
            for job_id, _ in still:
                end(Failed(job_id, str(err)))
        elif isinstance(err, RemoteRefusal):  # the provider refused: said for the member, no traceback
            log.warning("job %s failed: %s", jobs[0][0], err)
            for job_id, _ in still:
                end(Failed(job_id, str(err)))
        else:
            log.error("job %s failed:\n%s", jobs[0][0], traceback.format_exc())
            for job_id, _ in still:
                end(Failed(job_id, _reason(err, engine.device.device)))


def _saved(job_id: int, request: Request, result: Generated, store: FileStore) -> Done:
    """A job's result written to `store`, as the Done
    event that names its files (OSError when a write fails: nothing of the job is left)."""
    if request.kind == JobKind.DESCRIBE:  # prompts, and the picture they describe
        picture = save_picture(result.images[0], request, store, job_id)
        return Done(job_id, (), picture, tuple(result.notices), captions=tuple(result.captions))
    files, grid = save_images(result.images, request, store, job_id, result.flagged)
    control = save_control(result.control, request, store, job_id) if result.control else None
    return Done(job_id, tuple(files), grid, tuple(result.notices), control)



# a path starts a word (so a hub id such as "stabilityai/sd-turbo" is left whole): /abs, ~/x,
# ./x, ../x, C:\x
_SERVER_PATH = re.compile(r"(?<![\w.~-])(?:[A-Za-z]:|~|\.{1,2})?[/\\][^\s'\"]+")


def _reason(err: Exception, device: str = "cuda") -> str:
    """What a member is told: no server paths or internals (the log has the traceback).
    `device` ("cuda", "mps", "cpu"): where the job ran, named when it ran out of memory."""
    from generation.devices import is_out_of_memory  # (torch: imported in the worker only)

    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if is_out_of_memory(err):  # the CPU allocator's message too: never its alloc_cpu.cpp line
        if device == "cpu":
            return "The worker's machine ran out of memory. Try a smaller --ar or fewer --steps."
        return "The GPU ran out of memory, even with offloading. Try a smaller --ar or fewer --steps."
    if isinstance(err, FileNotFoundError):
        return "A picture this job starts from is gone from Pintor's file store."
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "The server's disk is full: the pictures could not be saved. Tell an admin; try again later."
    text = _SERVER_PATH.sub("<path>", text)
    kind = type(err).__name__
    return f"Generation failed ({kind}: {text[:200]})." if text else f"Generation failed ({kind})."


def run_worker(conn: Connection, config: WorkerConfig) -> None:
    """Entry point of the worker process."""
    # Ctrl-C reaches the whole process group; the front end stops the worker itself, after
    # the running step, so the worker ignores it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=config.log_level, format="%(asctime)s worker %(levelname)s %(name)s: %(message)s")
    _Worker(conn, config).run()
