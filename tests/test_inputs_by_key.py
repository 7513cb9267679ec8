"""Requests name their input pictures by file-store key (generation/files.py), never by a path
of the machine that stored them: every kind of job that starts from pictures (blend, /describe,
image prompts, ControlNet, V, U, Upscale (Creative), Zoom Out, Pan, a picked picture, 🔄 of a
blend) stores keys inside the store. Requests stored before keys name absolute paths: those
still run (queued again after a restart, through the real worker), still travel to a Redis
worker, and /forget still reasons about their files as before.

The Studio here runs on the MemoryQueue (no worker: the stored requests are what is checked),
except for the restart, which runs the real worker process."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from PIL import Image

from bot.downloads import Fetcher, FetchPolicy
from bot.intake import Member
from bot.studio import Studio
from generation.files import BadKey, FileStore
from generation.redis_queue import RedisQueue
from generation.request import JobKind, Request
from storage.jobs import JobStore
from storage.models import JobStatus
from tests.controlnet_helpers import build_controlnets, write_controlnet_registry
from tests.describe_helpers import build_describers, captioner_entries
from tests.local_http import served
from tests.studio_helpers import finish, started_studio

pytestmark = pytest.mark.asyncio(loop_scope="module")

ANN, BOB = Member(71, "ann"), Member(72, "bob")


def png(colour: tuple[int, int, int], size: tuple[int, int] = (48, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def shapes_png(side: int = 64) -> bytes:
    """A picture with edges (a ControlNet's canny control image needs some)."""
    image = Image.new("RGB", (side, side), (250, 250, 250))
    for x in range(side // 4, side // 2):
        for y in range(side // 4, 3 * side // 4):
            image.putpixel((x, y), (10, 10, 10))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def assert_by_key(studio: Studio, request_json: str) -> list[str]:
    """The stored request names its pictures by keys of the studio's store, each a file there,
    and no folder of this machine. Returns the keys."""
    names = Request.from_json(request_json).inputs()
    assert names, "a request that starts from pictures"
    assert str(studio.files.root) not in request_json and str(studio.files.root.resolve()) not in request_json
    for name in names:
        assert not Path(name).is_absolute()
        assert studio.files.path(name).is_file()  # BadKey for a key that would leave the store
    return names


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def studio(tiny_models, tmp_path_factory) -> AsyncIterator[Studio]:
    root = tmp_path_factory.mktemp("inputs-by-key")
    registry = write_controlnet_registry(root / "models.toml", tiny_models,
                                         build_controlnets(tiny_models, root / "controlnets"))
    with registry.open("a", encoding="utf-8") as toml:
        toml.write(captioner_entries(build_describers(root / "describers")))
    async with started_studio(root, registry, worker=False) as made:
        await made.fetcher.close()
        made.fetcher = Fetcher(FetchPolicy.of(["cdn.discordapp.com"], ["127.0.0.1"]))
        yield made


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def picture_server() -> AsyncIterator[str]:
    data = png((10, 200, 90), (40, 30))

    async def picture(request):
        return web.Response(body=data, content_type="image/png")

    app = web.Application()
    app.router.add_get("/p/cat.png", picture)
    async with served(app) as base:
        yield base


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def grids(studio) -> dict[str, int]:
    """A finished grid of an SD model and of Kandinsky 2.2 (job ids)."""
    sd = await finish(studio, await studio.imagine(ANN, "a lighthouse --seed 1 --ar 3:2"))
    kandinsky = await finish(studio, await studio.imagine(ANN, "a lighthouse --seed 2 --model tiny-kandinsky"))
    return {"sd": sd.id, "kandinsky": kandinsky.id}


async def stored(studio: Studio, job_id: int) -> str:
    job = await studio.job(job_id)
    assert job is not None
    return job.request


async def test_a_blend_stores_its_uploads_by_key(studio):
    submitted = await studio.blend(ANN, [("cat.png", png((200, 120, 40))), ("tiger.png", png((40, 40, 220)))])
    keys = assert_by_key(studio, await stored(studio, submitted.job_id))
    assert all(key.startswith("inputs/") for key in keys) and len(keys) == 2
    reroll = await studio.reroll(ANN, (await finish(studio, submitted)).id)
    assert assert_by_key(studio, await stored(studio, reroll.job_id)) == keys


async def test_a_describe_stores_its_upload_by_key(studio):
    submitted = await studio.describe(ANN, "IMG_1.png", png((1, 2, 3), (64, 48)))
    [key] = assert_by_key(studio, await stored(studio, submitted.job_id))
    assert key.startswith("inputs/")


@pytest.mark.parametrize("model, field", [("tiny-sd", "init_image"), ("tiny-kandinsky", "images")])
async def test_image_prompts_are_stored_by_key(studio, picture_server, model, field):
    submitted = await studio.imagine(ANN, f"{picture_server}/p/cat.png a cat --seed 3 --model {model}")
    [key] = assert_by_key(studio, await stored(studio, submitted.job_id))
    request = Request.from_json(await stored(studio, submitted.job_id))
    assert key.startswith("inputs/") and key in ((request.init_image,) if field == "init_image" else request.images)


async def test_a_control_image_is_stored_by_key(studio):
    request, notices = studio.prepare_with_notices("a fox --seed 9 --cn canny", control=True)
    submitted = await studio.controlled(ANN, request, ("mine.png", shapes_png()), notices=notices)
    [key] = assert_by_key(studio, await stored(studio, submitted.job_id))
    assert Request.from_json(await stored(studio, submitted.job_id)).control == key and key.startswith("inputs/")


# (the tiny Kandinsky names no inpainting decoder: it cannot paint around a picture)
@pytest.mark.parametrize("grid, make", [
    *((grid, make) for grid in ("sd", "kandinsky") for make in ("vary", "upscale", "creative", "pick")
      if (grid, make) != ("kandinsky", "creative")),  # refused before storing: test_button_requests.py
    ("sd", "zoom"), ("sd", "pan"), ("sd", "square")])
async def test_jobs_from_a_grids_picture_store_its_key(studio, grids, grid, make):
    job_id = grids[grid]
    parent = await studio.job(job_id)
    assert parent is not None
    picture = parent.images[1].path  # image 2, as the job stores it: a key
    if make == "vary":
        made = await studio.vary(ANN, job_id, 2, strong=True)
    elif make == "upscale":
        made = await studio.upscale(ANN, job_id, 2)
    elif make == "creative":
        made = await studio.upscale(ANN, job_id, 2, creative=True)
    elif make == "zoom":
        made = await studio.zoom_out(ANN, job_id, 2, factor=1.5)
    elif make == "pan":
        made = await studio.pan(ANN, job_id, 2, direction="left")
    elif make == "square":
        made = await studio.make_square(ANN, job_id, 2)
    else:
        made = await studio.pick(ANN, job_id, 2)
    made_id = made.job_id if hasattr(made, "job_id") else made.id
    keys = assert_by_key(studio, await stored(studio, made_id))
    assert set(keys) == {picture} and picture.startswith(f"jobs/{job_id}/")


async def test_a_request_that_names_a_path_outside_the_store_is_stored_as_it_is(studio, tmp_path):
    """Rows older than migration 0008 may name a picture outside the store: kept as a path (no
    key can name it), while a path inside the store becomes its key."""
    outside = tmp_path / "old.png"
    outside.write_bytes(png((9, 9, 9), (64, 64)))
    inside = studio.files.put("inputs/old-inside.png", png((8, 8, 8), (64, 64)))
    request = studio.prepare("a fox --seed 4").replace(kind=JobKind.VARIATION, init_image=str(inside),
                                                       strength=0.5, images=(str(outside),))
    submitted = await studio.submit(BOB, request)
    kept = Request.from_json(await stored(studio, submitted.job_id))
    assert kept.init_image == "inputs/old-inside.png" and kept.images == (str(outside),)
    await studio.cancel(submitted.job_id)


async def test_forget_deletes_old_path_named_uploads_unless_a_key_named_job_shares_them(studio):
    """/forget reasons about files: an upload named by an old request's absolute path and by a
    new request's key is the same file, kept while either job is there."""
    ann, bob = Member(81, "ann-old"), Member(82, "bob-new")
    shared_png, private_png = png((5, 99, 5), (48, 48)), png((90, 10, 200), (40, 56))
    new = await finish(studio, await studio.blend(bob, [("ours.png", shared_png), ("b.png", png((1, 1, 1)))]))
    [shared_key, _] = Request.from_json(new.request).images
    private_key = "inputs/" + "0" * 64 + ".png"
    studio.files.put(private_key, private_png)
    # as a request stored before keys names them: absolute paths into the uploads folder
    old = Request.from_json(new.request).replace(images=(str(studio.picture(shared_key)),
                                                         str(studio.picture(private_key))))
    job = await studio.store.create_job(user_id=ann.id, user_name=ann.name, kind=old.kind, model=old.model,
                                        prompt=old.prompt, request=old.to_json())
    await studio.store.mark_cancelled(job.id)
    shared, private = studio.picture(shared_key), studio.picture(private_key)
    await studio.forget(ann)
    assert not private.exists() and shared.is_file()  # bob's job still uses the shared one
    await studio.forget(bob)
    assert not shared.exists()


async def test_the_redis_entry_carries_keyed_and_old_path_named_pictures_alike(tmp_path):
    files = FileStore(tmp_path / "images")
    data = png((30, 60, 90))
    files.put("jobs/3/2.png", data)
    queue = RedisQueue("redis://127.0.0.1:1/0", files)  # never started: _entry reads files only
    base = Request(kind=JobKind.VARIATION, model="tiny-sd", prompt="x", parts=(("x", 1.0),), negative="",
                   width=64, height=64, steps=2, guidance=5.0, seed=1, strength=0.5)
    keyed = queue._entry(7, 1, base.replace(init_image="jobs/3/2.png"))
    old = queue._entry(7, 1, base.replace(init_image=str(files.path("jobs/3/2.png"))))
    for entry in (keyed, old):
        request = Request.from_json(entry["request"])
        assert request.init_image is not None and request.init_image.startswith("inputs/")
        assert base64.b64decode(json.loads(entry["inputs"])[request.init_image]) == data
    assert keyed["request"] == old["request"]
    with pytest.raises(BadKey):
        queue._entry(7, 1, base.replace(init_image="../elsewhere.png"))


async def test_an_old_request_naming_absolute_paths_runs_after_a_restart(small_registry_file, tmp_path):
    """A variation stored (before keys) with its picture's absolute path, left queued by a
    stop, is queued again at the next start and made by the real worker."""
    async with started_studio(tmp_path, small_registry_file) as first:
        grid = await finish(first, await first.imagine(ANN, "a harbour --seed 5 --steps 2"))
        source = grid.images[0]
        request = Request.from_json(grid.request).replace(
            kind=JobKind.VARIATION, init_image=str(first.picture(source.path)), strength=0.6, seed=11)
        assert Path(request.init_image or "").is_absolute()
        old = await first.store.create_job(user_id=ANN.id, user_name=ANN.name, kind=request.kind,
                                           model=request.model, prompt=request.prompt, request=request.to_json(),
                                           parent_id=grid.id, parent_index=1, owner="a-front-end-gone-since")
    async with started_studio(tmp_path, small_registry_file) as second:
        store: JobStore = second.store
        for _ in range(600):  # until it ends (two minutes at most), looked at five times a second
            job = await store.get(old.id)
            if job is not None and job.status in (JobStatus.DONE, JobStatus.FAILED):
                break
            await asyncio.sleep(0.2)
        assert job is not None and job.status == JobStatus.DONE, job.error if job else None
        assert len(job.images) == 4 and all(second.picture(i.path).is_file() for i in job.images)
        assert Request.from_json(job.request).init_image == request.init_image  # the row as it was
