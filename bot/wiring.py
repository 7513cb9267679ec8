"""Builds the pieces from settings: database, model registry, queue + worker, studio.
The one place that turns `Settings` into explicit arguments for the libraries."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncEngine

from bot.downloads import Fetcher, FetchPolicy
from bot.settings import Settings, registry_from
from bot.studio import Studio
from generation.files import FileStore
from generation.queue import JobQueue, LocalQueue
from generation.redis_queue import RedisQueue
from generation.redis_worker import LocalWorkers
from generation.registry import Registry
from generation.worker import WorkerConfig
from storage.db import open_engine, upgrade
from storage.jobs import JobStore
from storage.owners import OwnerStore, this_host


def worker_config(settings: Settings) -> WorkerConfig:
    return WorkerConfig(
        output_dir=str(settings.pintor_data_dir / "images"),
        registry_path=str(settings.pintor_models) if settings.pintor_models else None,
        default_model=settings.pintor_default_model,
        device=settings.pintor_device,
        max_models=settings.pintor_max_loaded_models,
        dtype=settings.pintor_dtype,
        offload=settings.pintor_offload,
        channels_last=settings.pintor_channels_last,
        compile=settings.pintor_compile,
        vae_tiling_pixels=settings.pintor_vae_tiling_pixels,
        batch_images=settings.pintor_batch_images,
        log_level=settings.pintor_log_level.upper(),
        openai_api_key=settings.openai_key(),
        openai_base_url=settings.openai_base_url,
        remote_timeout_s=settings.pintor_remote_timeout_s,
        remote_max_retries=settings.pintor_remote_max_retries,
    )


REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def check_queue_url(settings: Settings) -> None:
    url = settings.pintor_queue_url
    if url and not url.startswith(REDIS_SCHEMES):
        raise SystemExit("PINTOR_QUEUE_URL: empty (the embedded queue) or a Redis URL "
                         "(redis://host:6379/0, rediss://…, unix://…), not this.")


def worker_cache(settings: Settings) -> str:
    """Where a Redis worker keeps the pictures of the job it runs (they travel in the events)."""
    return str(settings.pintor_data_dir / "worker-cache")


def build_queue(settings: Settings, files: FileStore, owner: str, local_workers: int | None = None) -> JobQueue:
    """The embedded queue, or with PINTOR_QUEUE_URL=redis://… the Redis queue with
    `local_workers` (default PINTOR_LOCAL_WORKERS) worker processes on this machine."""
    check_queue_url(settings)
    if not settings.pintor_queue_url:
        return LocalQueue(worker_config(settings))
    config = dataclasses.replace(worker_config(settings), output_dir=worker_cache(settings))
    count = settings.pintor_local_workers if local_workers is None else local_workers
    local = LocalWorkers(settings.pintor_queue_url, config, max(0, count))
    return RedisQueue(settings.pintor_queue_url, files, owner=owner, start_workers=local.start,
                      stop_workers=local.stop)


def fetcher_from(settings: Settings) -> Fetcher:
    """The one way Pintor fetches URLs (attachments, image prompts), with the admin's hosts."""
    return Fetcher(FetchPolicy.of(settings.pintor_fetch_hosts, settings.pintor_fetch_local_hosts))


def build_studio(settings: Settings, engine: AsyncEngine, registry: Registry | None = None, *,
                 owner: str | None = None, local_workers: int | None = None) -> Studio:
    """A studio over an open, migrated database; not started yet (`await studio.start()`).
    `owner`: "bot" for `pintor run`; None: a `pintor` verb's own name (storage.owners)."""
    files = FileStore(settings.pictures_dir)
    owner = owner or f"cli-{this_host()}-{os.getpid()}"
    return Studio(registry=registry or registry_from(settings), store=JobStore(engine),
                  queue=build_queue(settings, files, owner, local_workers), files=files,
                  owner=owner,
                  queue_kind="redis" if settings.pintor_queue_url else "embedded", fetcher=fetcher_from(settings))


@asynccontextmanager
async def open_studio(settings: Settings, *, start: bool = True) -> AsyncIterator[Studio]:
    """A started studio (migrated database, worker process running); closed on exit, which
    lets the worker finish its step and leaves unfinished jobs queued for the next start.
    With `start=False` the caller starts it (`Studio.start`) when it first makes a job: its reading
    doors (history, show, look-ups) need the database alone, no worker."""
    check_queue_url(settings)
    registry = registry_from(settings)
    engine = open_engine(settings.database_url)
    try:
        await upgrade(engine, pictures_root=settings.pictures_dir)
        # beside a running front end on Redis: hand the jobs to its workers, start none here
        others = await OwnerStore(engine).alive()
        shared = bool(settings.pintor_queue_url) and any(o.queue == "redis" for o in others)
        studio = build_studio(settings, engine, registry, local_workers=0 if shared else None)
        if start:
            await studio.start()
        try:
            yield studio
        finally:
            await studio.close()
    finally:
        await engine.dispose()
