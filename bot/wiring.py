"""Builds the pieces from settings: database, model registry, queue + worker, studio.
The one place that turns `Settings` into explicit arguments for the libraries."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncEngine

from bot.settings import Settings
from bot.studio import Studio
from generation.queue import LocalQueue
from generation.registry import Registry, load_registry
from generation.worker import WorkerConfig
from storage.db import open_engine, upgrade
from storage.jobs import JobStore


def registry_from(settings: Settings) -> Registry:
    return load_registry(settings.pintor_models, settings.pintor_default_model)


def worker_config(settings: Settings) -> WorkerConfig:
    return WorkerConfig(
        output_dir=str(settings.pintor_data_dir / "images"),
        registry_path=str(settings.pintor_models) if settings.pintor_models else None,
        default_model=settings.pintor_default_model,
        device=settings.pintor_device,
        max_models=settings.pintor_max_loaded_models,
        offload=settings.pintor_offload,
        batch_images=settings.pintor_batch_images,
        log_level=settings.pintor_log_level.upper(),
    )


def check_queue_url(settings: Settings) -> None:
    if settings.pintor_queue_url:
        raise SystemExit("PINTOR_QUEUE_URL: only the embedded queue (empty) is available in this version.")


def build_studio(settings: Settings, engine: AsyncEngine, registry: Registry | None = None) -> Studio:
    """A studio over an open, migrated database; not started yet (`await studio.start()`)."""
    return Studio(registry=registry or registry_from(settings), store=JobStore(engine),
                  queue=LocalQueue(worker_config(settings)),
                  inputs_dir=settings.pintor_data_dir / "images" / "inputs")


@asynccontextmanager
async def open_studio(settings: Settings, *, resume_user: int | None = None) -> AsyncIterator[Studio]:
    """A started studio (migrated database, worker process running); closed on exit, which
    lets the worker finish its step and leaves unfinished jobs queued for the next start.
    `resume_user`: queue again only that member's unfinished jobs (`Studio.start`)."""
    check_queue_url(settings)
    registry = registry_from(settings)
    engine = open_engine(settings.database_url)
    try:
        await upgrade(engine)
        studio = build_studio(settings, engine, registry)
        await studio.start(resume_user=resume_user)
        try:
            yield studio
        finally:
            await studio.close()
    finally:
        await engine.dispose()
