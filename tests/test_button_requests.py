"""What the jobs buttons and forms make carry, and what their messages say (issue 27, items 1–11):
the Studio on the MemoryQueue (no worker: the requests are what is checked), with grids stored by
hand where a test needs a picture whose request the members' commands cannot make here (a
ControlNet or CLIP-guided grid, a model since removed from models.toml)."""

from __future__ import annotations

import io

import pytest
import pytest_asyncio
from PIL import Image

from bot.buttons import PROMPT_CHARS, CustomZoomForm, RemixForm, picture_view
from bot.cogs.admin import describe as admin_describe
from bot.cogs.preferences import describe as settings_describe
from bot.intake import USER_ERRORS, LimitError, Member, RequestError, allowed_models, prepare_repeated
from bot.results import result_message
from bot.studio import FORM_CHARS, Studio, blend_label, editable_prompt, own_words
from generation.files import input_key
from generation.prompt import edit_parameters, without_loras
from generation.request import JobKind, Request
from storage.jobs import NewImage
from storage.models import Job, MemberPreferences, ServerRules
from tests.studio_helpers import finish, started_studio

ANN = Member(27, "ann")


@pytest_asyncio.fixture
async def studio(tmp_path, registry_file):
    async with started_studio(tmp_path, registry_file, worker=False) as studio:
        yield studio


def grid_request(**changes) -> Request:
    base = Request(kind=JobKind.IMAGINE, model="tiny-sd", prompt="a lighthouse", parts=(("a lighthouse", 1.0),),
                   negative="", width=64, height=64, steps=2, guidance=5.0, seed=7,
                   parameters="--ar 3:2 --stylize 200 --model tiny-sd")
    return base.replace(**changes)


async def stored_grid(studio: Studio, request: Request, *, user: Member = ANN) -> Job:
    """A done grid job of `request`, its four pictures in the file store (as a worker leaves them)."""
    images = []
    buffer = io.BytesIO()
    Image.new("RGB", (request.width, request.height), (40, 90, 160)).save(buffer, format="PNG")
    data = buffer.getvalue()
    key = input_key(data)
    studio.files.put(key, data)
    for n in range(4):
        images.append(NewImage(key, request.width, request.height, request.seed + n, "0" * 64, False))
    return await studio.store.create_finished_job(
        user_id=user.id, user_name=user.name, kind=request.kind, model=request.model, prompt=request.prompt,
        request=request.to_json(), images=images, grid_path=key)


async def job_count(studio: Studio, user: Member = ANN) -> int:
    return (await studio.store.history(user.id, offset=0, limit=1))[1]


async def stop(studio: Studio, job_id: int) -> Request:
    """The stored request of a job just submitted, the job cancelled (nothing left queued)."""
    job = await studio.job(job_id)
    assert job is not None
    await studio.cancel(job_id)
    return Request.from_json(job.request)


# --- 1. the forms hold the whole editable prompt ---------------------------------------------------

def test_forms_hold_a_long_prompt_with_its_no_list_and_tile():
    words = " ".join(["lighthouse"] * 300)  # 3,299 characters: more than the 1,500 the forms held
    request = grid_request(prompt=words, parts=((words, 1.0),), negative="boats, people", tile=True)
    text = editable_prompt(request)
    assert text == f"{words} --no boats, people --tile"
    assert PROMPT_CHARS == FORM_CHARS == 4000  # Discord's most for a text field
    for form in (RemixForm(1, 1, "vs", text), CustomZoomForm(1, 1, text)):
        assert form.prompt.default == text and form.prompt.max_length == 4000


def test_words_beyond_the_form_are_cut_at_a_space_never_the_no_list(registry_file):
    words = " ".join(["lighthouse"] * 370)  # 4,069 characters with the --no list: cannot all be shown
    request = grid_request(prompt=words, parts=((words, 1.0),), negative="boats", tile=True)
    text = editable_prompt(request)
    assert len(text) <= FORM_CHARS and text.endswith(" --no boats --tile")
    assert text.removesuffix(" --no boats --tile").split(" ") == ["lighthouse"] * len(text.split(" ")[:-3])


async def test_a_form_sent_back_unchanged_makes_the_jobs_own_request(studio):
    words = " ".join(["lighthouse"] * 370)
    request = grid_request(prompt=words, parts=((words, 1.0),), negative="boats", tile=True,
                           parameters="--ar 3:2 --no boats --tile --model tiny-sd")
    assert studio.remixed(request, editable_prompt(request), None) == request
    short = grid_request(negative="boats", tile=True, parameters="--no boats --tile --model tiny-sd")
    assert studio.remixed(short, f"  {editable_prompt(short)}\n", None) == short


# --- 2. a blend's pictures pre-fill the blend's own words ------------------------------------------

@pytest.mark.parametrize("words", ["a sunset", "", "a sunset: over the sea"])
def test_a_blends_pictures_prefill_its_own_words(words):
    blend = grid_request(kind=JobKind.BLEND, model="tiny-kandinsky", prompt=blend_label(2, words),
                         images=("inputs/a.png", "inputs/b.png"))
    picked = blend.replace(kind=JobKind.PICK, init_image="jobs/1/1.png")  # its U picture: the same words
    varied = blend.replace(kind=JobKind.VARIATION, images=("jobs/1/1.png",))
    for request in (blend, picked, varied):
        assert own_words(request) == words
        assert editable_prompt(request) == words
    # a prompt that only reads like the label, without a blend's pictures, is the member's words
    assert own_words(grid_request(prompt="blend of 2 images: a sunset")) == "blend of 2 images: a sunset"


# --- 3 and 4. Remix reads words, --no and --tile; the rest stays the picture's, and is said --------

async def test_remix_keeps_the_pictures_parameters_and_says_what_it_ignored(studio):
    request = grid_request(chaos=10)
    remixed = studio.remixed(request, "a castle --ar 16:9 --stylize 900 --q 2 --chaos 50 --no fog", None)
    assert remixed.prompt == "a castle" and remixed.negative == "fog"
    assert (remixed.width, remixed.height, remixed.steps, remixed.guidance, remixed.chaos, remixed.seed) == (
        request.width, request.height, request.steps, request.guidance, request.chaos, request.seed)
    assert remixed.parameters == "--ar 3:2 --no fog --stylize 200 --model tiny-sd"  # what the job used
    said = " ".join(remixed.notices)
    for typed in ("--ar 16:9", "--stylize 900", "--q 2", "--chaos 50"):
        assert typed in said
    assert "keeps its own settings" in said


@pytest.mark.parametrize("typed", ["--model tiny-sdxl", "--model tiny-sd", "--v 6", "--model nothing-here"])
async def test_remix_with_a_model_keeps_the_pictures_model_and_says_so(studio, typed):
    remixed = studio.remixed(grid_request(), f"a castle {typed}", None)  # no "given twice", no unknown model
    assert remixed.model == "tiny-sd" and "--model tiny-sd" in remixed.parameters
    assert any("the model stays the picture's (tiny-sd)" in notice for notice in remixed.notices)


async def test_remix_takes_and_drops_tile_and_the_no_list_and_shows_it(studio):
    tiled = studio.remixed(grid_request(), "a castle --tile", None)
    assert tiled.tile and tiled.parameters == "--ar 3:2 --stylize 200 --model tiny-sd --tile"
    plain = studio.remixed(grid_request(tile=True, negative="fog", parameters="--no fog --model tiny-sd --tile"),
                           "a castle", None)
    assert not plain.tile and plain.negative == "" and plain.parameters == "--model tiny-sd"
    assert plain.notices == ()  # nothing ignored: nothing said


async def test_custom_zoom_with_an_ar_shows_the_canvas_it_used(studio):
    grid = await stored_grid(studio, grid_request())
    submitted = await studio.zoom_out(ANN, grid.id, 1, factor=1.5, prompt="a castle --ar 16:9")
    request = await stop(studio, submitted.job_id)
    assert "--ar" not in request.parameters and request.prompt == "a castle"
    assert any("--ar 16:9" in notice for notice in request.notices)


# --- 6 and 8. a job carries (and shows) only what it uses -----------------------------------------

def controlled_grid(*, clip: bool) -> Request:
    """A ControlNet grid that tiles (and with `clip`, CLIP-guided: tiny-sd has no CLIP model, so
    only the upscales, which drop it, can be made of that one here)."""
    return grid_request(tile=True, clip=3.0 if clip else 0.0, control="inputs/control.png", control_kind="canny",
                        controlnet="tiny-canny", control_weight=0.5,
                        parameters="--ar 3:2 --model tiny-sd --tile --cn canny --cw 0.5"
                        + (" --clip 3" if clip else ""))


@pytest.mark.parametrize("button", ["zoom", "pan", "square", "subtle", "creative"])
async def test_jobs_from_a_controlled_grid_carry_no_controlnet_and_pass_a_server_that_denies_it(studio, button):
    upscale = button in ("creative", "subtle")
    grid = await stored_grid(studio, controlled_grid(clip=upscale).replace(width=64, height=48))
    rules = ServerRules.new(2701)
    rules.allow_controlnet = False  # switched off after the grid was made
    where = {"guild_id": 2701, "channel_id": 5, "rules": rules}
    if button == "zoom":
        submitted = await studio.zoom_out(ANN, grid.id, 1, factor=2, **where)
    elif button == "pan":
        submitted = await studio.pan(ANN, grid.id, 1, direction="left", **where)
    elif button == "square":
        submitted = await studio.make_square(ANN, grid.id, 1, **where)
    else:
        submitted = await studio.upscale(ANN, grid.id, 1, creative=button == "creative", **where)
    request = await stop(studio, submitted.job_id)
    assert (request.control, request.controlnet, request.control_kind) == (None, None, None)
    for absent in ("--cn", "--cw"):
        assert absent not in request.parameters
    if button == "subtle":  # a tiling picture is enlarged so that it still tiles
        assert request.tile and "--tile" in request.parameters
    else:
        assert not request.tile and "--tile" not in request.parameters
    if upscale:
        assert request.clip == 0 and "--clip" not in request.parameters
    else:  # the canvas is the picture's, grown: the grid's --ar is not what it used
        assert "--ar" not in request.parameters


def test_edit_parameters_sets_and_removes_in_the_tables_order():
    shown = "--ar 3:2 --no a, b --stylize 500 --model x --lora foo:0.8 --cn canny"
    assert edit_parameters(shown, {"no": "--no c", "tile": "--tile", "ar": None, "cn": None}) == (
        "--no c --stylize 500 --model x --lora foo:0.8 --tile")
    assert edit_parameters("", {"tile": None}) == ""


# --- 7. Upscale (Creative) is offered only where the model repaints --------------------------------

async def test_creative_upscale_is_offered_and_made_only_where_the_model_repaints(studio):
    kandinsky = await stored_grid(studio, grid_request(model="tiny-kandinsky", parameters="--model tiny-kandinsky"))
    picked = await studio.pick(ANN, kandinsky.id, 2)
    assert not await studio.repaints(picked)
    before = await job_count(studio)
    with pytest.raises(RequestError, match=r"cannot repaint.*Upscale \(Subtle\)"):
        await studio.upscale(ANN, picked.id, 1, creative=True)
    assert await job_count(studio) == before  # refused before storing
    sd = await stored_grid(studio, grid_request())
    assert await studio.repaints(await studio.pick(ANN, sd.id, 1))

    def labels(view):
        return [getattr(getattr(item, "item", item), "label", None) for item in view.children]
    assert "Upscale (Creative)" not in labels(picture_view(picked.id, 64, 64, None, creative=False))
    assert "Upscale (Creative)" in labels(picture_view(picked.id, 64, 64, None))


# --- 5. ↩️ Grid under an upscale links the grid -----------------------------------------------------

async def test_the_grid_of_an_upscale_is_the_grid_not_the_u_picture(studio):
    grid = await stored_grid(studio, grid_request())
    picked = await studio.pick(ANN, grid.id, 3)
    submitted = await studio.upscale(ANN, picked.id, 1)
    upscale = await studio.job(submitted.job_id)
    await stop(studio, submitted.job_id)
    assert upscale is not None
    assert (await studio.grid_of(upscale)).id == grid.id
    assert (await studio.grid_of(picked)).id == grid.id
    assert await studio.grid_of(grid) is None


# --- 9. a grid whose model was removed --------------------------------------------------------------

async def test_reroll_of_a_removed_models_grid_is_refused_before_anything_is_stored(studio):
    grid = await stored_grid(studio, grid_request(model="removed-model", parameters="--model removed-model"))
    before = await job_count(studio)
    with pytest.raises(RequestError, match="no longer configured"):
        await studio.reroll(ANN, grid.id)
    with pytest.raises(RequestError, match="no longer configured"):  # Remix too
        await studio.reroll(ANN, grid.id, prompt="a castle")
    assert await job_count(studio) == before  # nothing stored, queued or counted


@pytest.mark.parametrize("button", ["vary", "zoom", "creative"])
async def test_buttons_of_a_removed_models_picture_name_the_model_that_replaced_it(studio, button):
    grid = await stored_grid(studio, grid_request(model="removed-model", parameters="--ar 3:2 --model removed-model"))
    if button == "vary":
        submitted = await studio.vary(ANN, grid.id, 1, strong=True)
    elif button == "zoom":
        submitted = await studio.zoom_out(ANN, grid.id, 1, factor=2)
    else:
        submitted = await studio.upscale(ANN, grid.id, 1, creative=True)
    job = await studio.job(submitted.job_id)
    request = await stop(studio, submitted.job_id)
    assert request.model == "tiny-sd" and "--model tiny-sd" in request.parameters
    assert "removed-model" not in request.parameters
    assert job is not None and "'removed-model' is no longer configured here: made with tiny-sd" in (job.notices or "")


# --- 10. an allow-list that names only removed models ------------------------------------------------

async def test_an_allow_list_of_removed_models_is_no_dead_end_and_every_view_agrees(studio):
    rules = ServerRules.new(2710)
    rules.allowed_models = "removed-model"
    assert allowed_models(rules, studio.models) == []
    request = studio.prepare("a cat", rules=rules)  # the default model: not refused
    assert request.model == studio.models.default
    await studio._check_rules(ANN, request, rules, None)  # the rule does not refuse it either
    assert studio.prepare("a cat --model tiny-sdxl", rules=rules).model == "tiny-sdxl"
    shown = admin_describe(rules, studio.models)
    assert ("models allowed: all (This server's allow-list names only models that are no longer configured "
            "(removed-model): every model is allowed until an admin sets it again (/pintor-admin models).)") in shown
    assert f"use {studio.models.default}" in shown
    settings = settings_describe(MemberPreferences.new(1), studio.models, rules)
    assert f"{studio.models.default} (server default)" in settings
    assert "ℹ️ This server's allow-list names only models that are no longer configured (removed-model)" in settings
    rules.allowed_models = "removed-model,tiny-sdxl"  # the configured ones count
    assert allowed_models(rules, studio.models) == ["tiny-sdxl"]
    assert studio.prepare("a cat", rules=rules).model == "tiny-sdxl"


# --- 11. "always append" refusals say where they come from ---------------------------------------------

def test_an_always_append_refusal_says_it_comes_from_settings(registry_file):
    from generation.registry import load_registry
    registry = load_registry(registry_file)
    defaults = MemberPreferences.new(1)
    defaults.append = "film grain --weird 3"
    with pytest.raises(USER_ERRORS, match=r"/settings → Always append.*--weird"):
        prepare_repeated(registry, "a cat", defaults, strict=True)
    defaults.append = "--ar 2:1 --lora nothing-here"
    with pytest.raises(USER_ERRORS, match=r"/settings → Always append.*nothing-here"):
        prepare_repeated(registry, "a cat", defaults)
    # the prompt's own fault is the prompt's
    defaults.append = "film grain"
    with pytest.raises(USER_ERRORS) as refused:
        prepare_repeated(registry, "a cat --ar 0:1", defaults)
    assert "Always append" not in str(refused.value)


# --- a removed model's LoRAs: the fallback model uses only those that apply to it, and says so -----------

def test_edit_parameters_keeps_every_lora_of_a_job():
    shown = "--ar 3:2 --model x --lora ink --lora glow:0.5"
    assert edit_parameters(shown, {"ar": None}) == "--model x --lora ink --lora glow:0.5"  # both, not the last
    assert without_loras(shown, ["GLOW"]) == "--ar 3:2 --model x --lora ink"  # any case, any weight
    assert without_loras(shown, ["ink", "glow"]) == "--ar 3:2 --model x"


@pytest_asyncio.fixture
async def lora_studio(tmp_path, tiny_models):
    """A Studio whose models.toml has LoRAs for the default tiny-sd ("ink") and for SDXL ("xl-ink"):
    pictures stored with a model since removed carry them (the files are never loaded here)."""
    for name in ("ink", "xl-ink"):
        (tmp_path / f"{name}.safetensors").write_bytes(b"not loaded: the MemoryQueue draws flat pictures")
    registry = tmp_path / "models.toml"
    registry.write_text(f'''
default = "tiny-sd"

[models.tiny-sd]
source = "{tiny_models['sd']}"
family = "sd"
native_side = 64
steps = 2
guidance = 5.0

[models.tiny-sdxl]
source = "{tiny_models['sdxl']}"
family = "sdxl"
native_side = 64
steps = 2

[loras.ink]
source = "{tmp_path / 'ink.safetensors'}"
families = ["sd"]

[loras.xl-ink]
source = "{tmp_path / 'xl-ink.safetensors'}"
families = ["sdxl"]
''', encoding="utf-8")
    async with started_studio(tmp_path, registry, worker=False) as studio:
        yield studio


def removed_xl_grid() -> Request:
    """A grid of an SDXL model since removed, with its SDXL LoRA and a LoRA since removed too."""
    return grid_request(model="removed-xl", loras=(("xl-ink", 1.0), ("old-lora", 0.5)),
                        prompt="a lighthouse, xl ink style", parts=(("a lighthouse, xl ink style", 1.0),),
                        notices=("Added the trigger words “xl ink style” of the LoRA xl-ink.",),
                        parameters="--ar 3:2 --model removed-xl --lora xl-ink --lora old-lora:0.5")


async def press(studio: Studio, button: str, grid_id: int):
    """The Studio action of a button under image 1 of a grid (Remix and Custom Zoom with new words)."""
    if button == "vary":
        return await studio.vary(ANN, grid_id, 1, strong=True)
    if button == "remix":
        return await studio.vary(ANN, grid_id, 1, strong=False, prompt="a castle --no fog")
    if button == "zoom":
        return await studio.zoom_out(ANN, grid_id, 1, factor=2)
    if button == "custom zoom":
        return await studio.zoom_out(ANN, grid_id, 1, factor=1.5, prompt="a castle")
    if button == "pan":
        return await studio.pan(ANN, grid_id, 1, direction="left")
    return await studio.upscale(ANN, grid_id, 1, creative=True)


@pytest.mark.parametrize("button", ["vary", "remix", "zoom", "custom zoom", "pan", "creative"])
async def test_a_fallback_model_drops_the_loras_it_cannot_use_shows_what_it_used_and_says_so(lora_studio, button):
    studio = lora_studio
    grid = await stored_grid(studio, removed_xl_grid())
    submitted = await press(studio, button, grid.id)
    job = await finish(studio, submitted)
    request = Request.from_json(job.request)
    assert request.model == "tiny-sd" and request.loras == ()  # the job used no LoRA: an SD model
    assert "--lora" not in request.parameters and "--model tiny-sd" in request.parameters
    said = job.notices or ""
    assert "'removed-xl' is no longer configured here: made with tiny-sd" in said
    assert ("The LoRA 'xl-ink' is made for sdxl models and tiny-sd is a sd model: not used; the trigger words it "
            "added stay in the prompt, as words.") in said
    assert "The LoRA 'old-lora' is no longer configured here: not used." in said
    assert not any("trigger words" in notice for notice in request.notices)  # not said as if the LoRA were used
    # the member's message shows the same: no --lora, each dropped LoRA said, no LoRA said used
    message = (await result_message(studio, job, size_limit=10 * 1024 * 1024)).content
    assert "--lora" not in message and "xl-ink" in message and "old-lora" in message and "not used" in message
    assert "Added the trigger words" not in message


@pytest.mark.parametrize("button", ["vary", "zoom", "creative"])
async def test_a_fallback_model_keeps_the_loras_of_its_own_family_and_shows_them(lora_studio, button):
    studio = lora_studio
    grid = await stored_grid(studio, grid_request(model="removed-sd", loras=(("ink", 0.7), ("xl-ink", 1.0)),
                                                  parameters="--model removed-sd --lora ink:0.7 --lora xl-ink"))
    submitted = await press(studio, button, grid.id)
    job = await finish(studio, submitted)
    request = Request.from_json(job.request)
    assert request.loras == (("ink", 0.7),) and request.parameters.endswith("--lora ink:0.7")
    assert "xl-ink" not in request.parameters and "The LoRA 'xl-ink' is made for sdxl models" in (job.notices or "")
    assert "The LoRA 'ink'" not in (job.notices or "")  # nothing said of what was kept


async def test_reroll_of_a_removed_models_variation_grid_is_refused_before_anything_is_stored(lora_studio):
    studio = lora_studio
    varied = await stored_grid(studio, removed_xl_grid().replace(kind=JobKind.VARIATION, strength=0.7,
                                                                 init_image="inputs/x.png"))
    before = await job_count(studio)
    for prompt in (None, "a castle"):  # 🔄, and Remix
        with pytest.raises(RequestError, match="'removed-xl' is no longer configured"):
            await studio.reroll(ANN, varied.id, prompt=prompt)
    assert await job_count(studio) == before


@pytest.mark.parametrize("button", ["vary", "remix", "zoom", "custom zoom", "creative"])
async def test_a_lora_removed_since_is_dropped_by_the_pictures_own_model_and_said(lora_studio, button):
    """The picture's model is still configured, one of its LoRAs is not: the buttons that make new
    pictures from it drop that LoRA (it cannot be loaded) and say so, instead of an "Unknown LoRA"
    refusal of a LoRA the member did not type; the LoRA still configured is kept and shown."""
    studio = lora_studio
    shown = "--ar 3:2 --model tiny-sd --lora ink:0.7 --lora old-lora:0.5"
    grid = await stored_grid(studio, grid_request(loras=(("ink", 0.7), ("old-lora", 0.5)), parameters=shown))
    job = await finish(studio, await press(studio, button, grid.id))
    request = Request.from_json(job.request)
    assert request.model == "tiny-sd" and request.loras == (("ink", 0.7),)
    assert "--lora ink:0.7" in request.parameters and "old-lora" not in request.parameters
    lines = (job.notices or "").splitlines()
    assert lines[0] == "The LoRA 'old-lora' is no longer configured here: not used."
    # after it, the steps raised for the 2-step model's image to image, where V or Upscale (Creative) needs it
    assert all(" of its steps on the picture (image to image)" in line for line in lines[1:])
    message = (await result_message(studio, job, size_limit=10 * 1024 * 1024)).content
    assert "--lora ink:0.7" in message and "--lora old-lora" not in message and "'old-lora' is no longer" in message


async def test_reroll_of_a_grid_whose_lora_was_removed_is_refused_before_anything_is_stored(lora_studio):
    studio = lora_studio
    grid = await stored_grid(studio, grid_request(loras=(("old-lora", 0.5), ("older", 1.0)),
                                                  parameters="--model tiny-sd --lora old-lora:0.5 --lora older"))
    before = await job_count(studio)
    for prompt in (None, "a castle"):  # 🔄, and Remix
        with pytest.raises(RequestError, match="its LoRAs 'old-lora', 'older' are no longer configured here. "
                                               "V1–V4 vary its pictures without them"):
            await studio.reroll(ANN, grid.id, prompt=prompt)
    assert await job_count(studio) == before


async def test_vary_with_a_fallback_model_drops_a_controlnet_that_cannot_steer_it_and_says_so(lora_studio):
    studio = lora_studio  # it configures no ControlNet: the grid's is gone with its model
    grid = await stored_grid(studio, removed_xl_grid().replace(
        loras=(), control="inputs/control.png", control_kind="canny", controlnet="xl-canny", control_weight=0.5,
        parameters="--ar 3:2 --model removed-xl --cn canny --cw 0.5"))
    job = await finish(studio, await studio.vary(ANN, grid.id, 1, strong=True))
    request = Request.from_json(job.request)
    assert (request.control, request.controlnet, request.control_kind) == (None, None, None)
    assert "--cn" not in request.parameters and "--cw" not in request.parameters
    assert "The ControlNet 'xl-canny' is no longer configured here: the control image was not used." in (
        job.notices or "")


async def test_a_lora_allow_list_of_removed_loras_allows_none_and_says_why(lora_studio):
    """LoRA lists differ from model lists on purpose: "none" is a list an admin may choose, so a
    list naming only removed LoRAs allows none (it never widens to all); the refusal and
    /pintor-admin show say why, and never offer a removed LoRA as allowed."""
    studio = lora_studio
    rules = ServerRules.new(2712)
    rules.allowed_loras = "gone-lora"
    request = studio.prepare("a cat --lora ink", rules=rules)
    with pytest.raises(LimitError) as refused:
        await studio._check_rules(ANN, request, rules, None)
    assert str(refused.value) == (
        "The LoRA ink is not allowed on this server. This server's LoRA list names only LoRAs no longer "
        "configured (gone-lora): none is allowed until an admin sets it again (/pintor-admin loras).")
    assert ("LoRAs allowed: gone-lora (no longer configured: gone-lora; the list names no configured LoRA, so none "
            "is allowed until an admin sets it again)") in admin_describe(rules, studio.models)
    rules.allowed_loras = "gone-lora,ink"  # the configured one is allowed, and the only one offered
    await studio._check_rules(ANN, request, rules, None)
    xl = studio.prepare("a cat --model tiny-sdxl --lora xl-ink", rules=rules)
    with pytest.raises(LimitError, match=r"The LoRA xl-ink is not allowed on this server\. Allowed: ink\.$"):
        await studio._check_rules(ANN, xl, rules, None)
    assert "(no longer configured: gone-lora, not usable)" in admin_describe(rules, studio.models)
