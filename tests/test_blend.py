"""/blend below Discord: uploads checked, inputs kept with the job, weights steer the mix."""

from __future__ import annotations

import io

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from bot.intake import LimitError, Member, RequestError, blend_weights
from generation.inputs import UploadError
from generation.prompt import PromptError
from generation.request import Request
from storage.models import ServerRules
from tests.studio_helpers import finish, started_studio
from tests.test_inputs import bomb_png, grey16_png, mpo

pytestmark = pytest.mark.asyncio(loop_scope="module")
MEMBER = Member(21, "fay")


def png(color, size=(48, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


CAT, TIGER = ("cat.png", png((200, 120, 40))), ("tiger.png", png((30, 160, 220), (64, 64)))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def studio(tmp_path_factory, registry_file):
    async with started_studio(tmp_path_factory.mktemp("blend"), registry_file) as studio:
        yield studio


async def test_blend_two_images_with_a_text(studio):
    job = await finish(studio, await studio.blend(MEMBER, [CAT, TIGER], prompt="a cat tiger --seed 5",
                                                  dimensions="landscape"))
    request = Request.from_json(job.request)
    assert job.kind == "blend" and job.model == "tiny-kandinsky"
    assert len(request.images) == 2 and all(studio.picture(key).is_file() for key in request.images)
    assert request.image_weights == (1.0, 1.0) and request.parts == (("a cat tiger", 1.0),)
    assert job.images[0].width > job.images[0].height  # landscape
    assert job.grid_path is not None
    assert len(job.images) == 4 and studio.picture(job.grid_path).is_file()


async def test_weights_change_the_result(studio):
    first = await finish(studio, await studio.blend(MEMBER, [CAT, TIGER], prompt="x --seed 9", weights="3,1"))
    second = await finish(studio, await studio.blend(MEMBER, [CAT, TIGER], prompt="x --seed 9", weights="1,3"))
    again = await finish(studio, await studio.blend(MEMBER, [CAT, TIGER], prompt="x --seed 9", weights="3,1"))
    assert [i.sha256 for i in first.images] == [i.sha256 for i in again.images]
    assert [i.sha256 for i in first.images] != [i.sha256 for i in second.images]


async def test_reroll_and_variation_of_a_blend_work_from_the_stored_inputs(studio):
    blend = await finish(studio, await studio.blend(MEMBER, [CAT, TIGER]))
    reroll = await finish(studio, await studio.reroll(MEMBER, blend.id))
    assert reroll.kind == "blend"
    assert Request.from_json(reroll.request).images == Request.from_json(blend.request).images
    variation = await finish(studio, await studio.vary(MEMBER, blend.id, 2, strong=False))
    assert variation.kind == "variation" and variation.parent_index == 2


@pytest.mark.parametrize("uploads, error, message", [
    ([CAT, ("notes.png", b"just some text, not a picture\n" * 10)], UploadError, "notes.png is not an image"),
    ([CAT, ("bomb.png", bomb_png())], UploadError, "bomb.png is 10000×10000"),
    ([CAT, ("strip.png", png((0, 0, 0), (100_000, 8)))], UploadError,
     r"strip.png is 100000×8 pixels; the long side may be at most 8 times the short one \(8:1\)"),
    ([CAT], RequestError, "2 to 5 images"),
    ([CAT, TIGER], RequestError, "weights"),
])
async def test_bad_uploads_change_nothing(studio, uploads, error, message):
    inputs_before = set(studio.inputs_dir.glob("*")) if studio.inputs_dir.exists() else set()
    _, jobs_before = await studio.store.history(MEMBER.id, offset=0, limit=1)
    weights = "1,2,3" if message == "weights" else ""
    with pytest.raises(error, match=message):
        await studio.blend(MEMBER, uploads, weights=weights)
    assert (await studio.store.history(MEMBER.id, offset=0, limit=1))[1] == jobs_before
    assert (set(studio.inputs_dir.glob("*")) if studio.inputs_dir.exists() else set()) == inputs_before


async def test_a_model_that_cannot_blend_is_refused(studio):
    with pytest.raises(RequestError, match="'tiny-sd' cannot blend"):
        await studio.blend(MEMBER, [CAT, TIGER], model="tiny-sd")


async def test_forget_deletes_a_members_uploads_unless_another_job_uses_them(studio):
    ann, bob = Member(31, "ann"), Member(32, "bob")
    only_ann, both = ("mine.png", png((90, 10, 200), (40, 56))), ("ours.png", png((5, 99, 5), (48, 48)))
    first = await finish(studio, await studio.blend(ann, [both, only_ann]))
    shared, private = (studio.picture(key) for key in Request.from_json(first.request).images)
    assert shared.is_file() and private.is_file()
    await finish(studio, await studio.blend(bob, [both, TIGER]))

    await studio.forget(ann)
    assert not private.exists()  # only ann's job used it
    assert shared.exists()  # bob's blend uses the same picture
    assert first.grid_path is not None
    assert not studio.picture(first.grid_path).parent.exists()  # the job's folder went with its pictures
    await studio.forget(bob)
    assert not shared.exists()


async def test_blend_without_a_model_uses_one_the_server_allows(studio):
    """A server whose allow-list has no blending model refuses /blend by its rule, naming the
    models, and keeps nothing; one that allows a Kandinsky model blends with it."""
    rules = ServerRules.new(1)
    rules.allowed_models = "tiny-sd,tiny-sdxl"
    member = Member(22, "gil")
    with pytest.raises(LimitError, match="No model this server allows can blend images. Allowed: tiny-sd, tiny-sdxl; "
                                         "models that blend: tiny-kandinsky."):
        await studio.blend(member, [CAT, TIGER], prompt="x --seed 3", rules=rules, guild_id=1)
    assert await studio.store.count_unfinished(member.id) == 0
    rules.allowed_models = "tiny-sdxl,tiny-kandinsky"
    submitted = await studio.blend(member, [CAT, TIGER], prompt="x --seed 3", rules=rules, guild_id=1)
    await studio.cancel(submitted.job_id)
    assert (await studio.job(submitted.job_id)).model == "tiny-kandinsky"


async def test_what_phones_and_editors_save_is_blended_as_a_viewer_shows_it(studio):
    """A 16-bit greyscale PNG, a portrait photo stored as MPO (turned by EXIF) and a PNG whose
    transparency is a colour key: each kept as the RGB picture an image viewer shows."""
    mid_grey = grey16_png(np.full((40, 40), 32768))
    photo = Image.new("RGB", (60, 40), (230, 20, 20))
    portrait = mpo(photo, Image.new("RGB", (60, 40), (20, 20, 230)), orientation=6)
    keyed = io.BytesIO()
    Image.new("RGB", (48, 48), (0, 0, 0)).save(keyed, format="PNG", transparency=(0, 0, 0))
    job = await finish(studio, await studio.blend(MEMBER, [("grey16.png", mid_grey), ("portrait.jpg", portrait),
                                                           ("clear.png", keyed.getvalue())]))
    grey, turned, clear = (Image.open(studio.picture(key)) for key in Request.from_json(job.request).images)
    assert grey.mode == "RGB" and grey.getcolors() == [(1600, (128, 128, 128))]  # not white
    r, g, b = turned.getpixel((20, 30))
    assert turned.size == (40, 60) and r > 200 and b < 60  # the main picture, upright
    assert clear.getcolors() == [(48 * 48, (255, 255, 255))]  # not black
    assert len(job.images) == 4


async def test_a_scheduler_set_on_the_kandinsky_entry_leaves_imagine_blend_and_vary_working(
        tmp_path_factory, registry_file):
    """models.toml gives tiny-kandinsky a scheduler: its decoder takes it, its prior keeps its
    own (before, every Kandinsky job failed in the prior: "unexpected keyword 'prev_timestep'")."""
    root = tmp_path_factory.mktemp("scheduled")
    text = registry_file.read_text(encoding="utf-8").replace(
        'family = "kandinsky22"\n', 'family = "kandinsky22"\nscheduler = "DPMSolverMultistepScheduler"\n')
    scheduled = root / "models.toml"
    scheduled.write_text(text, encoding="utf-8")
    async with started_studio(root, scheduled) as studio:
        assert studio.registry.get("tiny-kandinsky").scheduler == "DPMSolverMultistepScheduler"
        made = await finish(studio, await studio.imagine(MEMBER, "a fox --model tiny-kandinsky --seed 3"))
        mixed = await finish(studio, await studio.blend(MEMBER, [CAT, TIGER], prompt="a cat tiger"))
        varied = await finish(studio, await studio.vary(MEMBER, mixed.id, 1, strong=True))
        assert [len(job.images) for job in (made, mixed, varied)] == [4, 4, 4]
async def test_blends_prompt_follows_the_prompt_rules_and_says_what_it_changed(studio):
    before = len(await studio.store.unfinished())
    submitted = await studio.blend(MEMBER, [CAT, TIGER],
                                   prompt="/imagine prompt: --v 6 --raw --chaos 150 --seed 3 --repeat 3")
    request = submitted.request
    assert request.parts == () and request.chaos == 100 and request.model == "tiny-kandinsky"
    assert request.notices == (
        "Removed “/imagine prompt:” from the start: it is part of the command, not of the prompt.",
        "--chaos “150” is over the highest value; used 100.",
        "Ignored what Pintor does not have: “--raw”.",
        # --repeat was dropped without a word: one /blend is one grid, and it says so
        "--repeat 3 makes several grids in Discord's /imagine only: this made one.",
        "Ignored “--v 6”: /blend uses a model that can blend images (tiny-kandinsky).")
    assert "--repeat" not in request.parameters and "--chaos 100" in request.parameters
    assert len(await studio.store.unfinished()) == before + 1  # one job
    await finish(studio, submitted)
    # a strict server refuses it, and nothing is stored
    rules = ServerRules.new(77)
    rules.strict_parameters = True
    before = len(await studio.store.unfinished())
    with pytest.raises(PromptError, match="“--raw”"):
        await studio.blend(MEMBER, [CAT, TIGER], prompt="a cat --raw", rules=rules, guild_id=77, channel_id=1)
    assert len(await studio.store.unfinished()) == before


@pytest.mark.parametrize("typed, weights", [
    ("2,1", ([2.0, 1.0], 1.0)), ("2, 1", ([2.0, 1.0], 1.0)), ("2 1", ([2.0, 1.0], 1.0)),
    ("2 1 0.5", ([2.0, 1.0], 0.5)), (" 2;1, ", ([2.0, 1.0], 1.0)), ("1,\t3", ([1.0, 3.0], 1.0))])
async def test_blend_weights_as_members_type_them(typed, weights):
    """"2 1" (spaces, as Discord's option box invites) was refused: "must be numbers separated by commas"."""
    assert blend_weights(typed, 2, has_text=True) == weights


@pytest.mark.parametrize("typed, bad", [("2:1", "2:1"), ("two, one", "two"), ("2,,x", "x")])
async def test_blend_weights_that_are_not_numbers_are_refused(typed, bad):
    with pytest.raises(RequestError, match="weights must be numbers") as refused:
        blend_weights(typed, 2, has_text=True)
    assert f"“{bad}” in “{typed.strip()}” is not a number" in str(refused.value)


@pytest.mark.parametrize("typed, named", [
    ("2,-1", "The weight “-1” in “2,-1” is"),  # the tester's example: it did not say which weight
    ("0, 1", "The weight “0” in “0, 1” is"), ("1 101", "The weight “101” in “1 101” is"),
    ("-1,-2", "The weights “-1”, “-2” in “-1,-2” are"), ("1,nan", "The weight “nan” in “1,nan” is"),
    ("1,1,-0.5", "The weight “-0.5” in “1,1,-0.5” is"),  # the prompt's weight too
])
async def test_blend_weights_out_of_range_are_refused_quoting_each(typed, named):
    with pytest.raises(RequestError) as refused:
        blend_weights(typed, 2, has_text=True)
    assert str(refused.value) == f"{named} not allowed: each weight must be more than 0 and at most 100 (e.g. 2,1)."


async def test_the_wrong_number_of_blend_weights_is_refused_quoting_them():
    with pytest.raises(RequestError) as refused:
        blend_weights("1,1,1,1", 2, has_text=True)
    assert str(refused.value) == "weights: give 2 (one per image, and one more for the prompt), not 4 (“1,1,1,1”)."
