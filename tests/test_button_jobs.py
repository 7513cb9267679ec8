"""The jobs buttons make, below Discord: 🔄 under a variation, Vary of an upscale (the grid's
model and settings), server step limits met by adjusting what Pintor chose, one upscale per
picture however often it is pressed, and a saved /settings model that an admin removed.

On a real studio (SQLite file, worker process, tiny models)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
from pathlib import Path

import pytest
import pytest_asyncio
from PIL import Image

from bot.intake import LimitError, Member, prepare_with_notices
from bot.studio import VARY_STRONG, VARY_SUBTLE, AlreadyMade, Studio, fit_image_to_image
from generation.registry import load_registry
from generation.request import Request
from storage.db import open_engine
from storage.jobs import DuplicateJob, JobStore
from storage.models import MemberPreferences, ServerRules
from tests.studio_helpers import finish, started_studio

# on the async tests only: warnings are errors, and the mark on a plain test is warned about
module_loop = pytest.mark.asyncio(loop_scope="module")

ANN, BOB = Member(31, "ann"), Member(32, "bob")


def png(color, size=(48, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


CAT, TIGER = ("cat.png", png((200, 120, 40))), ("tiger.png", png((30, 160, 220), (64, 64)))


def rules(**values) -> ServerRules:
    rules = ServerRules.new(1)
    for key, value in values.items():
        setattr(rules, key, value)
    return rules


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def studio(tmp_path_factory, small_registry_file: Path):
    async with started_studio(tmp_path_factory.mktemp("buttons"), small_registry_file) as studio:
        yield studio


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sdxl_grid(studio: Studio):
    """A grid by tiny-sdxl (not the default tiny-sd), with its own guidance and negative prompt."""
    return await finish(studio, await studio.imagine(ANN, "a paper boat --model tiny-sdxl --seed 3 "
                                                          "--no rain --stylize 400"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def textless_blend(studio: Studio):
    """A /blend without text (tiny-kandinsky), and U1 of it."""
    grid = await finish(studio, await studio.blend(ANN, [CAT, TIGER], prompt="--seed 5"))
    upscale = await finish(studio, await studio.upscale(ANN, grid.id, 1))
    return grid, upscale


# -- 🔄 under a variation grid ----------------------------------------------------------------------


@module_loop
@pytest.mark.parametrize("strong", [False, True])
async def test_reroll_of_a_variation_varies_the_same_picture_again(studio, sdxl_grid, strong: bool):
    variation = await finish(studio, await studio.vary(ANN, sdxl_grid.id, 2, strong=strong))
    first = Request.from_json(variation.request)
    again = await studio.reroll(BOB, variation.id)
    request = again.request
    assert request.seed != first.seed
    assert request.replace(seed=first.seed) == first  # the same picture, strength, model and text
    assert (request.init_image, request.strength) == (sdxl_grid.images[1].path,  # its key
                                                      VARY_STRONG if strong else VARY_SUBTLE)
    job = await finish(studio, again)
    # another variation of image 2 of the grid, as the result says
    assert (job.kind, job.parent_id, job.parent_index, job.user_id) == ("variation", sdxl_grid.id, 2, BOB.id)
    assert not {i.sha256 for i in job.images} & {i.sha256 for i in variation.images}

    # and 🔄 of that again
    third = await studio.reroll(ANN, job.id)
    assert third.request.init_image == first.init_image and third.request.seed not in (first.seed, request.seed)
    await finish(studio, third)


@module_loop
async def test_reroll_of_a_variation_whose_picture_is_gone_is_refused(studio, sdxl_grid, tmp_path: Path):
    store = studio.store
    variation = await finish(studio, await studio.vary(ANN, sdxl_grid.id, 1, strong=True))
    request = Request.from_json(variation.request).replace(init_image=str(tmp_path / "gone.png"))
    copy = await store.create_job(user_id=ANN.id, user_name="ann", kind="variation", model=request.model,
                                  prompt=request.prompt, request=request.to_json(), parent_id=sdxl_grid.id,
                                  parent_index=1)
    await store.complete(copy.id, [], variation.grid_path)
    with pytest.raises(Exception, match="gone from the file store"):
        await studio.reroll(ANN, copy.id)


@module_loop
async def test_only_grids_are_rerolled(studio, sdxl_grid):
    upscale = await finish(studio, await studio.upscale(ANN, sdxl_grid.id, 4))
    with pytest.raises(Exception, match="Only a grid can be re-rolled"):
        await studio.reroll(ANN, upscale.id)


# -- Vary of an upscale --------------------------------------------------------------------------


@module_loop
async def test_vary_of_an_upscale_uses_the_model_and_settings_of_the_grid(studio, sdxl_grid, monkeypatch):
    grid = Request.from_json(sdxl_grid.request)
    upscale = await finish(studio, await studio.upscale(ANN, sdxl_grid.id, 3))
    # "Upscale again" (resampled: the ×4 model at 1024 px is slow on a CPU): still the grid's settings
    monkeypatch.setattr(studio, "registry", dataclasses.replace(studio.registry, upscaler=None))
    again = await finish(studio, await studio.upscale(ANN, upscale.id, 1))
    monkeypatch.undo()
    for source in (upscale, again):
        for strong in (False, True):
            submitted = await studio.vary(ANN, source.id, 1, strong=strong)
            request = submitted.request
            assert (request.model, request.guidance, request.negative, request.parts, request.parameters) == (
                "tiny-sdxl", grid.guidance, "rain", grid.parts, grid.parameters)
            assert request.guidance != studio.registry.get("tiny-sdxl").guidance  # --stylize 400 kept
            assert (request.width, request.height) == (grid.width, grid.height)  # the tile, not the upscale
            assert request.init_image == source.images[0].path and request.images == ()
            await studio.cancel(submitted.job_id)
            async for _ in submitted.events:
                pass
    variation = await finish(studio, await studio.vary(ANN, upscale.id, 1, strong=True))
    assert (variation.model, variation.parent_id, variation.parent_index) == ("tiny-sdxl", upscale.id, 1)
    assert {(i.width, i.height) for i in variation.images} == {(grid.width, grid.height)}


@module_loop
@pytest.mark.parametrize("strong", [False, True])
async def test_vary_of_an_upscaled_textless_blend_uses_kandinsky_and_its_picture(studio, textless_blend,
                                                                                strong: bool):
    grid, upscale = textless_blend
    only_kandinsky = rules(allowed_models="tiny-kandinsky")  # the default tiny-sd is not allowed here
    job = await finish(studio, await studio.vary(ANN, upscale.id, 1, strong=strong, rules=only_kandinsky))
    request = Request.from_json(job.request)
    assert (job.model, request.parts) == ("tiny-kandinsky", ())
    assert request.images == (upscale.images[0].path,) and request.image_weights == (1.0,)
    assert (request.width, request.height) == (grid.images[0].width, grid.images[0].height)
    assert len(job.images) == 4


@module_loop
async def test_vary_of_an_upscale_whose_grid_is_gone_falls_back(studio):
    """Bob upscaled Ann's picture; Ann used /forget: the grid's settings are gone with it."""
    dee = Member(33, "dee")
    grid = await finish(studio, await studio.imagine(dee, "a kite --model tiny-sdxl --seed 8"))
    blend = await finish(studio, await studio.blend(dee, [CAT, TIGER], prompt="--seed 6"))
    upscale = await finish(studio, await studio.upscale(BOB, grid.id, 1))
    textless = await finish(studio, await studio.upscale(BOB, blend.id, 2))
    await studio.forget(dee)
    assert (await studio.job(upscale.id)).parent_id is None

    submitted = await studio.vary(BOB, upscale.id, 1, strong=True)
    default = studio.registry.get(None)
    assert (submitted.request.model, submitted.request.steps, submitted.request.guidance) == (
        default.name, default.steps, default.guidance)
    await finish(studio, submitted)
    # a picture without text needs a model that reads images; one the server allows
    submitted = await studio.vary(BOB, textless.id, 1, strong=True)
    assert submitted.request.model == "tiny-kandinsky" and submitted.request.parts == ()
    await finish(studio, submitted)
    with pytest.raises(LimitError, match="No model on this server can vary this picture"):
        await studio.vary(BOB, textless.id, 1, strong=True, rules=rules(allowed_models="tiny-sd,tiny-sdxl"))


# -- server step limits --------------------------------------------------------------------------


@pytest.mark.parametrize("steps, strength, max_steps, expected, said", [
    # a 2-step model: raised to int(3 × 0.35) = 1 step, and said (it was silent)
    (2, VARY_SUBTLE, None, (3, VARY_SUBTLE),
     ["Vary (Subtle) runs 35% of its steps on the picture (image to image): 2 steps would run none, so it used 3."]),
    (2, VARY_STRONG, None, (2, VARY_STRONG), []),
    (30, VARY_SUBTLE, None, (30, VARY_SUBTLE), []),
    (30, VARY_SUBTLE, 20, (20, VARY_SUBTLE),  # Pintor's steps, lowered to the limit
     ["Vary (Subtle): 30 steps is over this server's limit of 20; used 20."]),
    (2, VARY_SUBTLE, 3, (3, VARY_SUBTLE),
     ["Vary (Subtle) runs 35% of its steps on the picture (image to image): 2 steps would run none, so it used 3."]),
    (2, VARY_SUBTLE, 2, (2, 0.5),  # the limit forbids 3 steps: a stronger variation instead
     ["Vary (Subtle) runs 35% of its steps on the picture (image to image): with this server's limit of 2 steps "
      "none would run, so it used strength 0.5 instead of 0.35 (further from the picture)."]),
    (30, VARY_SUBTLE, 2, (2, 0.5),
     ["Vary (Subtle): 30 steps is over this server's limit of 2; used 2.",
      "Vary (Subtle) runs 35% of its steps on the picture (image to image): with this server's limit of 2 steps "
      "none would run, so it used strength 0.5 instead of 0.35 (further from the picture)."]),
    (30, VARY_STRONG, 2, (2, VARY_STRONG), ["Vary (Strong): 30 steps is over this server's limit of 2; used 2."]),
    (1, VARY_STRONG, None, (2, VARY_STRONG),
     ["Vary (Strong) runs 70% of its steps on the picture (image to image): 1 step would run none, so it used 2."]),
])
async def test_image_to_image_steps_and_strength_fit_the_limit_and_each_change_is_said(steps, strength, max_steps,
                                                                                        expected, said):
    name = "Vary (Strong)" if strength == VARY_STRONG else "Vary (Subtle)"
    fitted = fit_image_to_image(steps, strength, rules(max_steps=max_steps), name)
    assert (fitted.steps, fitted.strength) == expected and list(fitted.notices) == said
    assert int(fitted[0] * fitted[1]) >= 1 and (max_steps is None or fitted[0] <= max_steps)


@pytest.mark.parametrize("strength", [VARY_SUBTLE, VARY_STRONG])
async def test_one_step_is_too_few_to_vary(strength):
    with pytest.raises(LimitError, match="allows 1 step per job: too few to vary a picture"):
        fit_image_to_image(30, strength, rules(max_steps=1))


@module_loop
async def test_steps_raised_for_a_variation_are_said_with_the_job(studio, sdxl_grid):
    """Vary (Subtle) of a 2-step model's picture runs 3 steps (int(2 × 0.35) would run none): the
    job says so (it was silent); 🔄 of that variation keeps its 3 steps, nothing new to say;
    Vary (Strong) changes nothing, says nothing."""
    subtle = await finish(studio, await studio.vary(ANN, sdxl_grid.id, 1, strong=False))
    assert Request.from_json(subtle.request).steps == 3
    assert subtle.notices == ("Vary (Subtle) runs 35% of its steps on the picture (image to image): 2 steps would "
                              "run none, so it used 3.")
    again = await studio.reroll(ANN, subtle.id)
    assert again.request.steps == 3 and again.notices == ()
    await finish(studio, again)
    strong = await studio.vary(ANN, sdxl_grid.id, 2, strong=True)
    assert strong.request.steps == 2 and strong.notices == ()
    await finish(studio, strong)


@module_loop
async def test_buttons_stay_within_max_steps(studio, sdxl_grid):
    two = rules(max_steps=2)
    upscale = await finish(studio, await studio.upscale(ANN, sdxl_grid.id, 2, rules=two))
    for strong in (False, True):  # Vary (Subtle) needs 3 steps at 0.35: 2 at 0.5 instead
        job = await finish(studio, await studio.vary(ANN, upscale.id, 1, strong=strong, rules=two))
        request = Request.from_json(job.request)
        assert request.steps == 2 and int(request.steps * request.strength) >= 1
        # the strength raised for the limit is said; Vary (Strong) needed no change
        assert (job.notices or "") == ("" if strong else "Vary (Subtle) runs 35% of its steps on the picture (image "
                                       "to image): with this server's limit of 2 steps none would run, so it used "
                                       "strength 0.5 instead of 0.35 (further from the picture).")
        again = await finish(studio, await studio.reroll(ANN, job.id, rules=two))  # 🔄 of it, too
        assert Request.from_json(again.request).steps == 2

    one = rules(max_steps=1)
    upscale = await studio.upscale(BOB, sdxl_grid.id, 2, rules=one)  # the upscaler's 2 steps → 1
    assert upscale.request.steps == 1
    await finish(studio, upscale)
    for call in (studio.vary(ANN, sdxl_grid.id, 1, strong=True, rules=one),
                 studio.vary(ANN, upscale.job_id, 1, strong=False, rules=one)):
        with pytest.raises(LimitError, match="too few to vary") as refused:
            await call
        assert "--steps" not in str(refused.value)
    # the member's own steps are not changed by 🔄: refused, about the button
    with pytest.raises(LimitError, match="🔄 would make job .* again with its 2 steps") as refused:
        await studio.reroll(ANN, sdxl_grid.id, rules=one)
    assert "--steps" not in str(refused.value)


# -- one upscale per picture ---------------------------------------------------------------------


@module_loop
async def test_simultaneous_presses_of_one_upscale_make_one_job(studio, sdxl_grid):
    jobs_before = (await studio.store.history(ANN.id, offset=0, limit=1))[1]
    results = await asyncio.gather(*(studio.upscale(ANN, sdxl_grid.id, 1, rules=rules()) for _ in range(10)),
                                   return_exceptions=True)
    made = [r for r in results if not isinstance(r, BaseException)]
    pointed = [r for r in results if isinstance(r, BaseException)]
    assert len(made) == 1 and len(pointed) == 9
    assert all(isinstance(r, AlreadyMade) and r.job.id == made[0].job_id for r in pointed)
    assert (await studio.store.history(ANN.id, offset=0, limit=1))[1] == jobs_before + 1
    await finish(studio, made[0])
    with pytest.raises(AlreadyMade) as later:  # done: still that one
        await studio.upscale(ANN, sdxl_grid.id, 1)
    assert later.value.job.id == made[0].job_id and later.value.job.status == "done"

    # another member gets their own (it is theirs: their history, their /forget)
    other = await studio.upscale(BOB, sdxl_grid.id, 1)
    assert other.job_id != made[0].job_id
    # a cancelled (or failed) upscale made nothing: a new press makes it
    await studio.cancel(other.job_id)
    async for _ in other.events:
        pass
    assert (await studio.job(other.job_id)).status == "cancelled"
    anew = await studio.upscale(BOB, sdxl_grid.id, 1)
    await finish(studio, anew)
    # one whose pictures are gone from the file store is made again
    studio.picture((await studio.job(anew.job_id)).images[0].path).unlink()
    remade = await studio.upscale(BOB, sdxl_grid.id, 1)
    assert remade.job_id != anew.job_id
    await finish(studio, remade)


@module_loop
async def test_the_database_refuses_a_second_job_with_the_same_result(studio, sdxl_grid):
    """Two writers at once on their own connections (as two processes would be): one job."""
    engines = [open_engine(str(studio.store.engine.url)) for _ in range(2)]
    # a real job's request: the rows stay readable by the tests after this one (/forget reads them)
    request = Request.from_json(sdxl_grid.request).replace(kind="upscale", model="tiny-upscaler").to_json()
    stores = [JobStore(engine) for engine in engines]
    made: list = []
    try:
        results = await asyncio.gather(*(store.create_job(
            user_id=ANN.id, user_name="ann", kind="upscale", model="tiny-upscaler", prompt="p", request=request,
            result_key="test:race") for store in stores), return_exceptions=True)
        made = [r for r in results if not isinstance(r, BaseException)]
        assert len(made) == 1 and [type(r) for r in results if r not in made] == [DuplicateJob]
        duplicate = next(r for r in results if r not in made)
        assert isinstance(duplicate, DuplicateJob)
        assert duplicate.job.id == made[0].id
        await stores[0].mark_failed(made[0].id, "test")  # a failed job gives its key back
        made.append(await stores[1].create_job(user_id=ANN.id, user_name="ann", kind="upscale",
                                               model="tiny-upscaler", prompt="p", request=request,
                                               result_key="test:race"))
    finally:
        for job in made:  # leave nothing queued (tests/README.md, rule 4): no worker ever runs these
            await stores[0].mark_failed(job.id, "test")
        for engine in engines:
            await engine.dispose()


# -- a saved model that an admin removed --------------------------------------------------------


def saved(model: str | None = None, append: str = "") -> MemberPreferences:
    settings = MemberPreferences.new(7)
    settings.model, settings.append = model, append
    return settings


@pytest.mark.parametrize("settings, allowed, used, says", [
    (saved("gone-model"), (), "tiny-sd", "Your saved model 'gone-model' is no longer available: this used tiny-sd"),
    (saved("tiny-upscaler"), (), "tiny-sd", "'tiny-upscaler' is no longer available"),  # not a picture model
    (saved(append="--no fog --model old-one"), (), "tiny-sd", "'old-one' is no longer available"),
    (saved("tiny-sdxl"), ("tiny-sd",), "tiny-sd", "'tiny-sdxl' is not allowed on this server"),
    (saved("tiny-sdxl"), ("tiny-kandinsky",), "tiny-kandinsky", "this used tiny-kandinsky"),
    (saved("tiny-sdxl"), (), "tiny-sdxl", None),
    (saved("TINY-SDXL"), ("tiny-sdxl",), "tiny-sdxl", None),
])
async def test_a_saved_model_that_is_gone_falls_back_with_a_notice(small_registry_file, settings, allowed, used, says):
    registry = load_registry(small_registry_file)
    request, notices = prepare_with_notices(registry, "a fox", settings, allowed=allowed)
    assert request.model == used
    if says is None:
        assert notices == []
    else:
        [notice] = notices
        assert says in notice and "/settings" in notice
    # a --model in the prompt is the member's choice now: no fallback, no notice
    request, notices = prepare_with_notices(registry, "a fox --model tiny-sdxl", settings, allowed=allowed)
    assert request.model == "tiny-sdxl" and notices == []


@module_loop
async def test_the_notice_is_shown_with_the_result(studio):
    request, notices = studio.prepare_with_notices("a lamp --seed 4", saved("gone-model"))
    job = await finish(studio, await studio.submit(ANN, request, notices=notices))
    assert job.notices is not None
    assert job.model == "tiny-sd" and job.notices.splitlines()[0] == notices[0]
