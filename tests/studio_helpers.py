"""A Studio over a fresh SQLite file with a real LocalQueue worker, as the studio-level tests
(test_studio.py, test_blend.py) build it, or on the MemoryQueue where no worker is needed
(test_rules.py); and the worker queue on its own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from bot.studio import Studio, Submitted
from generation.files import FileStore
from generation.memory_queue import MemoryQueue
from generation.queue import LocalQueue
from generation.registry import load_registry
from generation.worker import WorkerConfig
from storage.db import open_engine, upgrade
from storage.jobs import JobStore
from storage.models import Job


def db_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def local_queue(output_dir: Path, registry_file: Path, **config) -> LocalQueue:
    """A LocalQueue whose worker process runs on the CPU, writing into ``output_dir``."""
    return LocalQueue(WorkerConfig(output_dir=str(output_dir), registry_path=str(registry_file),
                                   device="cpu", **config))


def make_studio(db: AsyncEngine, root: Path, registry_file: Path, *, worker: bool = True) -> Studio:
    """A Studio (not started) storing in ``db``, with images and inputs under ``root``; with
    `worker=False` on the MemoryQueue (no worker process: flat pictures, for tests of what is
    in front of the worker)."""
    files = FileStore(root / "images")
    queue = local_queue(files.root, registry_file) if worker else MemoryQueue(files, step_s=0.02)
    return Studio(registry=load_registry(registry_file), store=JobStore(db), queue=queue, files=files)


@asynccontextmanager
async def started_studio(root: Path, registry_file: Path, *, worker: bool = True) -> AsyncIterator[Studio]:
    """A started Studio over a fresh, upgraded ``root/pintor.db`` (its engine is
    ``studio.store.engine``; `worker`: as make_studio's); closed, and the engine disposed, on
    the way out."""
    async with AsyncExitStack() as cleanup:  # on the way out: close the studio, then the engine
        db = open_engine(db_url(root / "pintor.db"))
        cleanup.push_async_callback(db.dispose)
        await upgrade(db)
        studio = make_studio(db, root, registry_file, worker=worker)
        await studio.start()
        cleanup.push_async_callback(studio.close)
        yield studio


async def finish(studio: Studio, submitted: Submitted) -> Job:
    """The job once its events have ended; it must be done (else its error fails the test)."""
    async for _event in submitted.events:
        pass
    job = await studio.job(submitted.job_id)
    assert job is not None
    assert job.status == "done", job.error
    return job
