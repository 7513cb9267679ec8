"""Zoom Out, Pan and Make Square (generation/outpaint.py, Studio.zoom_out/pan/make_square) and U's
picture alone (Studio.pick): the canvas geometry, the tiny SD inpainting pipeline built from the
loaded model's components, and the jobs through a real Studio, worker and SQLite file: stored,
queued, cancellable, and finished after a restart."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from bot.intake import USER_ERRORS, Member
from generation.devices import choose_device
from generation.engine import Engine
from generation.events import FINAL_EVENTS, Cancelled, Done, Event, Interrupted, Progress
from generation.outpaint import PAN_DIRECTIONS, canvas_size, prepare, square_extension, zoom_extension
from generation.pipelines import ModelLoadError
from generation.prompt import size_for_aspect
from generation.registry import load_registry
from generation.request import Request
from tests.engine_helpers import picture_maker, request, run
from tests.studio_helpers import started_studio
from tests.tiny_models import build_kandinsky22_inpaint
from tests.waiting import collect_until

ANN = Member(1, "ann")


def final(event: Event) -> bool:
    return isinstance(event, FINAL_EVENTS)


# -- the canvas ----------------------------------------------------------------------------------


def test_zoom_pan_and_square_grow_the_canvas_as_asked():
    assert canvas_size(64, 48, zoom_extension(2)) == (128, 96)
    assert canvas_size(64, 48, zoom_extension(1.5)) == (96, 72)
    assert canvas_size(64, 48, PAN_DIRECTIONS["left"]) == (96, 48)
    assert canvas_size(64, 48, PAN_DIRECTIONS["down"]) == (64, 72)
    assert canvas_size(64, 48, square_extension(64, 48)) == (64, 64)
    assert canvas_size(48, 64, square_extension(48, 64)) == (64, 64)
    with pytest.raises(ValueError):
        square_extension(64, 64)
    with pytest.raises(ValueError):
        zoom_extension(1)


@pytest.mark.parametrize("way, kept", [("left", "right"), ("right", "left"), ("up", "bottom"), ("down", "top")])
def test_pan_keeps_the_picture_on_the_side_away_from_where_it_extends(way: str, kept: str):
    picture = Image.new("RGB", (64, 64), (200, 30, 30))
    size = (96, 64) if way in ("left", "right") else (64, 96)
    canvas, mask, _ = prepare(picture, PAN_DIRECTIONS[way], size)
    m = np.asarray(mask)
    painted = {"right": m[:, -8:], "left": m[:, :8], "bottom": m[-8:, :], "top": m[:8, :]}
    opposite = {"right": "left", "left": "right", "bottom": "top", "top": "bottom"}
    assert (painted[kept] == 0).all()  # the picture's side: kept
    assert (painted[opposite[kept]] == 255).all()  # the new side: painted
    # the kept part of the canvas is the picture's own pixels
    pixels = np.asarray(canvas).reshape(-1, 3)[m.reshape(-1) == 0]
    assert (pixels == (200, 30, 30)).all()


# -- the engine ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine_registry(small_registry_file: Path):
    return load_registry(small_registry_file)


def test_outpaint_paints_four_pictures_around_the_kept_one(engine_registry, tmp_path_factory):
    engine = Engine(engine_registry, choose_device("cpu"))
    source = picture_maker(tmp_path_factory.mktemp("pictures"))(64, 64)
    width, height = size_for_aspect(canvas_size(64, 64, PAN_DIRECTIONS["left"]), 64, multiple=8)
    req = request(engine_registry, "a red fox --seed 3", kind="outpaint", init_image=source,
                  outpaint=PAN_DIRECTIONS["left"], width=width, height=height, strength=1.0)
    result, steps, _ = run(engine, req)
    assert len(result.images) == 4 and {image.size for image in result.images} == {(width, height)}
    assert steps and steps[-1][0] == steps[-1][1]
    # the kept part is the picture (scaled onto the canvas), the border is new and differs per seed
    canvas, mask, blend = prepare(Image.open(source).convert("RGB"), PAN_DIRECTIONS["left"], (width, height))
    keep = np.asarray(blend) == 0  # the picture, away from the seam that is painted over
    assert keep.mean() > 0.3 and not keep[:, : width // 3].any()
    for image in result.images:
        assert np.array_equal(np.asarray(image)[keep], np.asarray(canvas)[keep])
    border = np.asarray(mask) == 255
    borders = [np.asarray(image, dtype=np.int16)[border] for image in result.images]
    assert np.abs(borders[0] - borders[1]).mean() > 1
    again, _, _ = run(engine, req)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(result.images, again.images, strict=True))


# -- through the Studio ----------------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def env(small_registry_file: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("outpaint")
    async with started_studio(root, small_registry_file) as studio:
        submitted = await studio.imagine(ANN, "a lighthouse on a cliff --ar 2:1 --seed 5")
        events = await collect_until(submitted.events, final)
        assert isinstance(events[-1], Done)
        yield SimpleNamespace(studio=studio, root=root, grid=submitted.job_id)


pytestmark_studio = pytest.mark.asyncio(loop_scope="module")


@pytestmark_studio
async def test_pick_is_stored_done_at_once_with_the_grids_picture(env):
    studio = env.studio
    pick = await studio.pick(ANN, env.grid, 2)
    grid = await studio.job(env.grid)
    assert (pick.kind, pick.status, pick.parent_id, pick.parent_index) == ("pick", "done", env.grid, 2)
    assert pick.started_at is None and [i.path for i in pick.images] == [grid.images[1].path]
    assert (await studio.pick(ANN, env.grid, 2)).id == pick.id  # pressed again: the same job
    assert (await studio.pick(Member(2, "bob"), env.grid, 2)).id != pick.id  # another member's own
    assert await studio.jobs_today(ANN.id, guild_id=None) == 1  # the grid; picks are free
    with pytest.raises(USER_ERRORS, match="no image 5"):
        await studio.pick(ANN, env.grid, 5)


@pytestmark_studio
@pytest.mark.parametrize("how", ["zoom 2", "zoom 1.5", "pan left", "pan down", "square"])
async def test_zoom_pan_square_make_a_new_grid_within_the_models_budget(env, how: str):
    studio = env.studio
    pick = await studio.pick(ANN, env.grid, 1)
    image = pick.images[0]
    if how.startswith("zoom"):
        submitted = await studio.zoom_out(ANN, pick.id, 1, factor=float(how.split()[1]))
    elif how.startswith("pan"):
        submitted = await studio.pan(ANN, pick.id, 1, direction=how.split()[1])
    else:
        submitted = await studio.make_square(ANN, pick.id, 1)
    job = await studio.job(submitted.job_id)
    assert (job.kind, job.parent_id) == ("outpaint", pick.id) and job.status in ("queued", "running")
    request = Request.from_json(job.request)
    assert request.outpaint is not None
    wanted = canvas_size(image.width, image.height, request.outpaint)
    assert (request.width, request.height) == size_for_aspect(wanted, 64, multiple=8)  # the model's budget
    assert request.width * request.height <= 2 * 64 * 64
    events = await collect_until(submitted.events, final)
    assert isinstance(events[-1], Done), events
    done = await studio.job(submitted.job_id)
    assert len(done.images) == 4 and {(i.width, i.height) for i in done.images} == {(request.width, request.height)}
    if how == "square":
        assert request.width == request.height


@pytestmark_studio
async def test_repeated_zooms_stay_within_the_budget_and_a_new_prompt_is_used(env):
    studio = env.studio
    source = (await studio.pick(ANN, env.grid, 3)).id
    for _ in range(2):
        submitted = await studio.zoom_out(ANN, source, 1, factor=2, prompt="a storm at sea")
        events = await collect_until(submitted.events, final)
        assert isinstance(events[-1], Done)
        job = await studio.job(submitted.job_id)
        request = Request.from_json(job.request)
        assert request.width * request.height <= 2 * 64 * 64 and request.prompt == "a storm at sea"
        source = submitted.job_id
    again = await studio.reroll(ANN, source)  # 🔄 under a zoom: the same canvas, new seeds
    job = await studio.job(again.job_id)
    assert job.kind == "outpaint" and Request.from_json(job.request).outpaint == (0.5, 0.5, 0.5, 0.5)
    await studio.cancel(again.job_id)


@pytestmark_studio
async def test_bad_zooms_and_pans_are_refused_and_change_nothing(env):
    studio = env.studio
    pick = await studio.pick(ANN, env.grid, 4)  # 2:1
    asks = {"zoom 3": studio.zoom_out(ANN, pick.id, 1, factor=3),
            "zoom 1": studio.zoom_out(ANN, pick.id, 1, factor=1),
            "sideways": studio.pan(ANN, pick.id, 1, direction="sideways")}
    async def job_count() -> int:
        return (await studio.history(ANN.id, offset=0, limit=1))[1]

    before = await job_count()
    for ask in asks.values():
        with pytest.raises(USER_ERRORS):
            await ask
    assert await job_count() == before
    panned = await studio.pan(ANN, pick.id, 1, direction="right")  # 3:1: the widest allowed
    assert isinstance((await collect_until(panned.events, final))[-1], Done)
    wide = (await studio.pick(ANN, panned.job_id, 1)).id
    with pytest.raises(USER_ERRORS, match="beyond 3:1"):  # 4.5:1
        await studio.pan(ANN, wide, 1, direction="left")
    assert await job_count() == before + 2  # the pan right and its picture alone, nothing more


@pytestmark_studio
async def test_an_outpaint_job_is_cancellable(env):
    studio = env.studio
    pick = await studio.pick(ANN, env.grid, 1)
    long = await studio.imagine(Member(3, "cy"), "a long wait --steps 150")
    await collect_until(long.events, lambda e: isinstance(e, Progress))
    submitted = await studio.pan(ANN, pick.id, 1, direction="up")
    assert submitted.position == 1
    assert await studio.cancel(submitted.job_id)
    events = await collect_until(submitted.events, final)
    assert isinstance(events[-1], Cancelled) and (await studio.job(submitted.job_id)).status == "cancelled"
    await studio.cancel(long.job_id)
    await collect_until(long.events, final)


@pytest.mark.asyncio(loop_scope="function")
async def test_an_outpaint_job_left_queued_is_made_after_a_restart(small_registry_file: Path, tmp_path: Path):
    async with started_studio(tmp_path, small_registry_file) as studio:
        grid = await studio.imagine(ANN, "a harbour --seed 9")
        assert isinstance((await collect_until(grid.events, final))[-1], Done)
        pick = await studio.pick(ANN, grid.job_id, 1)
        long = await studio.imagine(ANN, "a slow harbour --steps 150")
        await collect_until(long.events, lambda e: isinstance(e, Progress))
        zoom = await studio.zoom_out(ANN, pick.id, 1, factor=1.5)
        await studio.close()
        assert isinstance((await collect_until(long.events, final))[-1], Interrupted)
    async with started_studio(tmp_path, small_registry_file) as studio:  # Pintor starts again
        assert [j.id for j in await studio.store.unfinished()] == [long.job_id, zoom.job_id]
        events = studio.watch(zoom.job_id)
        await studio.cancel(long.job_id)
        assert isinstance((await collect_until(events, final))[-1], Done)
        job = await studio.job(zoom.job_id)
        assert job is not None and job.status == "done" and len(job.images) == 4
        assert [j.id for j in await studio.store.unfinished()] == []


# -- Kandinsky 2.2, with an inpainting decoder ------------------------------------------------------


@pytest.fixture(scope="module")
def kandinsky_registry(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-kandinsky with a tiny inpainting decoder (`inpaint`), and tiny-sd as the default."""
    folder = tmp_path_factory.mktemp("kandinsky-inpaint")
    decoder = build_kandinsky22_inpaint(folder / "decoder-inpaint")
    path = folder / "models.toml"
    path.write_text(f'''
default = "tiny-sd"

[models.tiny-sd]
source = "{tiny_models['sd']}"
family = "sd"
native_side = 64
steps = 2

[models.tiny-kandinsky]
source = "{tiny_models['kandinsky22']}"
prior = "{tiny_models['kandinsky22-prior']}"
inpaint = "{decoder}"
family = "kandinsky22"
native_side = 64
steps = 2

[models.plain-kandinsky]
source = "{tiny_models['kandinsky22']}"
prior = "{tiny_models['kandinsky22-prior']}"
family = "kandinsky22"
native_side = 64
steps = 2
''', encoding="utf-8")
    return path


def test_kandinsky_paints_the_border_with_its_inpainting_decoder(kandinsky_registry, tmp_path_factory):
    registry = load_registry(kandinsky_registry)
    engine = Engine(registry, choose_device("cpu"))
    source = picture_maker(tmp_path_factory.mktemp("pictures"))(64, 64)
    width, height = size_for_aspect(canvas_size(64, 64, PAN_DIRECTIONS["right"]), 64, multiple=64)
    req = request(registry, "a red fox --seed 3 --model tiny-kandinsky", kind="outpaint", init_image=source,
                  outpaint=PAN_DIRECTIONS["right"], width=width, height=height, strength=1.0,
                  images=(source,), image_weights=(1.0,))
    result, steps, _ = run(engine, req)
    assert len(result.images) == 4 and {image.size for image in result.images} == {(width, height)}
    assert steps and steps[-1][0] == steps[-1][1]
    canvas, mask, blend = prepare(Image.open(source).convert("RGB"), PAN_DIRECTIONS["right"], (width, height))
    keep = np.asarray(blend) == 0
    assert keep.mean() > 0.3 and not keep[:, -width // 3:].any()
    for image in result.images:
        assert np.array_equal(np.asarray(image)[keep], np.asarray(canvas)[keep])
    border = np.asarray(mask) == 255
    borders = [np.asarray(image, dtype=np.int16)[border] for image in result.images]
    assert np.abs(borders[0] - borders[1]).mean() > 1
    # without an inpainting decoder the engine says what is missing
    with pytest.raises(ModelLoadError, match="no inpainting decoder"):
        run(engine, req.replace(model="plain-kandinsky"))


@pytest.mark.asyncio(loop_scope="function")
async def test_kandinsky_zoom_and_pan_through_the_studio(kandinsky_registry, tmp_path: Path):
    async with started_studio(tmp_path, kandinsky_registry) as studio:
        made = await studio.imagine(ANN, "a lighthouse on a cliff --model tiny-kandinsky --seed 5")
        assert isinstance((await collect_until(made.events, final))[-1], Done)
        zoomed = await studio.zoom_out(ANN, made.job_id, 2, factor=2.0, prompt="a lighthouse in fog")
        events = await collect_until(zoomed.events, final)
        assert isinstance(events[-1], Done), events[-1]
        job = await studio.job(zoomed.job_id)
        assert job is not None
        request = Request.from_json(job.request)
        assert (job.kind, request.model, request.prompt, len(job.images)) == (
            "outpaint", "tiny-kandinsky", "a lighthouse in fog", 4)
        plain = await studio.imagine(ANN, "a lighthouse --model plain-kandinsky --seed 5")
        assert isinstance((await collect_until(plain.events, final))[-1], Done)
        with pytest.raises(USER_ERRORS, match="Kandinsky 2.2 model whose entry names its inpainting decoder"):
            await studio.pan(ANN, plain.job_id, 1, direction="left")
