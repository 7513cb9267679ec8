"""A ControlNet job through the Redis queue: the control upload travels to a `pintor worker`
that shares no disk with the bot (in the job's stream entry), and the control image it made
comes back with Done (its bytes), written into the bot's file store beside the grid."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.intake import Member
from bot.studio import Studio
from generation.events import Done
from generation.files import CONTROL_FILE, FileStore
from generation.redis_queue import RedisQueue
from generation.registry import load_registry
from generation.worker import WorkerConfig
from storage.db import open_engine, upgrade
from storage.jobs import JobStore
from tests.controlnet_helpers import build_controlnets, write_controlnet_registry
from tests.redis_server import HEARTBEAT_TIMEOUT_S, redis_server, spawn_worker, stop_process, wait_for_workers
from tests.studio_helpers import db_url
from tests.waiting import collect_until

pytestmark = pytest.mark.asyncio(loop_scope="function")


def upload() -> bytes:
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[8:30, 10:40] = 230
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_a_controlled_job_on_a_redis_worker_brings_its_control_image_back(
        tiny_models: dict[str, Path], tmp_path: Path):
    registry_file = write_controlnet_registry(tmp_path / "models.toml", tiny_models,
                                              build_controlnets(tiny_models, tmp_path / "controlnets"))
    with redis_server(tmp_path / "redis") as url:
        config = WorkerConfig(output_dir=str(tmp_path / "worker-cache"), device="cpu",
                              registry_path=str(registry_file), preview_interval_s=0.0)
        process = spawn_worker(url, config, "w1")
        try:
            await wait_for_workers(url, {"w1"})
            db = open_engine(db_url(tmp_path / "pintor.db"))
            await upgrade(db)
            files = FileStore(tmp_path / "images")  # not the worker's folder: nothing shared
            studio = Studio(registry=load_registry(registry_file), store=JobStore(db),
                            queue=RedisQueue(url, files, heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S), files=files)
            await studio.start()
            try:
                request, notices = studio.prepare_with_notices("a fox --seed 4 --cn canny", control=True)
                submitted = await studio.controlled(Member(7, "m"), request, ("photo.png", upload()), notices=notices)
                events = await collect_until(submitted.events, lambda e: isinstance(e, Done))
                done = events[-1]
                assert isinstance(done, Done) and done.control is not None and done.control.data is None
                job = await studio.job(submitted.job_id)
                assert job is not None and job.grid_path is not None
                control = studio.picture(job.grid_path).with_name(CONTROL_FILE)
                assert control == files.path(done.control.key) and control.is_file()
                with Image.open(control) as made:
                    assert made.size == (64, 64) and set(np.unique(np.asarray(made))) == {0, 255}
            finally:
                await studio.close()
                await db.dispose()
        finally:
            stop_process(process)
