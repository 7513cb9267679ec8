"""/describe on a `pintor worker` behind a Redis queue (a throwaway redis-server, the tiny BLIP
and CLIP on the CPU): the upload travels to the worker in the job's stream entry, the prompts
and the picture come back in its Done event, and the front end stores them, though the two
share no disk."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from bot.intake import Member
from bot.studio import Studio
from generation.events import Done
from generation.files import FileStore
from generation.redis_queue import RedisQueue
from generation.registry import load_registry
from generation.worker import WorkerConfig
from storage.db import open_engine, upgrade
from storage.jobs import JobStore
from tests.describe_helpers import build_describers, phone_jpeg, write_describe_registry
from tests.redis_server import HEARTBEAT_TIMEOUT_S, redis_server, spawn_worker, stop_process, wait_for_workers
from tests.studio_helpers import db_url
from tests.waiting import collect_until

pytestmark = pytest.mark.asyncio


async def test_a_describe_runs_on_a_redis_worker_that_shares_no_disk(tiny_models, tmp_path: Path):
    registry = write_describe_registry(tmp_path / "models.toml", tiny_models, build_describers(tmp_path / "models"))
    with redis_server(tmp_path / "redis") as url:
        async with AsyncExitStack() as stack:
            config = WorkerConfig(output_dir=str(tmp_path / "worker-cache"), device="cpu",
                                  registry_path=str(registry), preview_interval_s=0.0)
            process = spawn_worker(url, config, "w1")
            stack.push_async_callback(asyncio.to_thread, stop_process, process)
            await wait_for_workers(url, {"w1"})
            db = open_engine(db_url(tmp_path / "pintor.db"))
            stack.push_async_callback(db.dispose)
            await upgrade(db)
            files = FileStore(tmp_path / "images")
            studio = Studio(registry=load_registry(registry), store=JobStore(db),
                            queue=RedisQueue(url, files, heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S), files=files)
            await studio.start()
            stack.push_async_callback(studio.close)

            submitted = await studio.describe(Member(7, "ann"), "IMG_7.jpg", phone_jpeg(48, 32, orientation=6))
            events = await collect_until(submitted.events, lambda e: isinstance(e, Done))
            done = events[-1]
            assert isinstance(done, Done) and len(done.captions) == 4
            job = await studio.job(submitted.job_id)
            assert job is not None and job.status == "done" and job.prompts == list(done.captions)
            assert all(p.endswith(" --ar 2:3") and "in the style of" in p for p in job.prompts)
            # the picture came back with the event, into the front end's own store
            assert job.grid_path is not None and studio.picture(job.grid_path).is_file()
            assert studio.picture(job.grid_path).is_relative_to(tmp_path / "images")
