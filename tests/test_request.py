"""generation.request: a parsed prompt resolved against a model into what the worker makes."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from generation.prompt import MAX_SEED, parse_prompt, size_for_aspect
from generation.registry import load_registry
from generation.request import GRID_SIZE, KINDS, Request, build_request

REGISTRY = load_registry()
SD15 = REGISTRY.get("sd-1.5")  # native 512, 30 steps, guidance 7
TURBO = REGISTRY.get("sd-turbo")  # 2 steps, no guidance
KANDINSKY = REGISTRY.get("kandinsky-2.2")  # no emphasis (generation.registry.EMPHASIS_FAMILIES)


def build(text: str, spec=SD15) -> Request:
    return build_request(parse_prompt(text), spec)


def test_defaults_come_from_the_model():
    request = build("a lighthouse at dusk --seed 7")
    assert request.kind == "imagine" and request.model == "sd-1.5"
    assert request.prompt == "a lighthouse at dusk" and request.parts == (("a lighthouse at dusk", 1.0),)
    assert (request.width, request.height) == (512, 512)
    assert request.steps == 30 and request.guidance == 7.0
    assert request.seed == 7 and request.chaos == 0 and request.count == GRID_SIZE == 4
    assert request.negative == "" and request.init_image is None and request.images == ()


@pytest.mark.parametrize(("aspect", "size"), [
    ("1:1", (512, 512)), ("3:2", (576, 384)), ("2:3", (384, 576)), ("16:9", (704, 384)), ("1:3", (320, 896)),
])
def test_size_follows_the_aspect_ratio_and_the_native_side(aspect: str, size: tuple[int, int]):
    request = build(f"a cat --ar {aspect}")
    assert (request.width, request.height) == size
    assert request.width % 64 == 0 and request.height % 64 == 0
    w, h = map(int, aspect.split(":"))
    assert abs(request.width / request.height - w / h) < 0.2 * w / h
    # the area stays about the model's native square
    assert 0.8 < request.width * request.height / 512**2 < 1.25


def test_size_scales_with_the_model(registry_file):
    tiny = load_registry(registry_file).get("tiny-sd")  # native 128
    request = build("a cat --ar 2:1", tiny)
    assert (request.width, request.height) == size_for_aspect((2, 1), 128) == (128, 64)
    sdxl = REGISTRY.get("sdxl")
    assert (build("a cat", sdxl).width, build("a cat", sdxl).height) == (1024, 1024)


@pytest.mark.parametrize(("params", "steps"), [
    ("", 30), ("--q 0.5", 15), ("--q 1", 30), ("--q 2", 60), ("--steps 7", 7), ("--q 2 --steps 7", 7),
])
def test_steps_from_quality_and_steps(params: str, steps: int):
    assert build(f"a cat {params}").steps == steps


def test_quality_never_gives_zero_steps():
    one_step = dataclasses.replace(TURBO, steps=1)
    assert build("a cat --q 0.5", one_step).steps == 1


@pytest.mark.parametrize(("stylize", "guidance"), [
    (None, 7.0), (100, 7.0), (400, 14.0), (25, 3.5), (0, 1.0), (1000, 20.0),
])
def test_guidance_from_stylize(stylize: int | None, guidance: float):
    text = "a cat" + (f" --stylize {stylize}" if stylize is not None else "")
    assert build(text).guidance == guidance


def test_models_without_guidance_keep_it_off_whatever_stylize():
    assert build("a cat --stylize 1000", TURBO).guidance == 0.0
    assert build("a cat --s 0", TURBO).guidance == 0.0


def test_a_random_seed_is_recorded_when_none_is_given():
    seeds = {build("a cat").seed for _ in range(20)}
    assert all(isinstance(s, int) and 0 <= s <= MAX_SEED for s in seeds)
    assert len(seeds) > 1  # chosen at random, not a constant


def test_seed_bounds_are_kept():
    assert build(f"a cat --seed {MAX_SEED}").seed == MAX_SEED
    assert build("a cat --seed 0").seed == 0


def test_parameters_are_canonical_and_leave_out_the_seed():
    request = build("a cat::1 a dog::3 --seed 7 --no grass, trees --ar 3:2 --chaos 20 --s 200 --q 2")
    assert request.parameters == "--ar 3:2 --no grass, trees --chaos 20 --stylize 200 --q 2 --model sd-1.5"
    assert "--seed" not in request.parameters
    assert request.parts == (("a cat", 1.0), ("a dog", 3.0))
    assert request.negative == "grass, trees" and request.chaos == 20
    # prompt + parameters (+ the seed, shown on its own) make the same request again: a re-roll keeps them
    again = build(f"{request.prompt} {request.parameters} --seed {request.seed}")
    assert again == request


def test_model_is_always_named_in_the_parameters():
    assert build("a cat").parameters == "--model sd-1.5"
    assert build("a cat --model sd-1.5").parameters == "--model sd-1.5"


def test_json_round_trip():
    request = build("a cat::2 a dog --seed 9 --no rain").replace(
        kind="blend", images=("/data/in/a.png", "/data/in/b.png"), image_weights=(2.0, 0.5))
    text = request.to_json()
    assert isinstance(text, str)
    assert Request.from_json(text) == request
    variation = request.replace(kind="variation", init_image="/data/jobs/1/2.png", strength=0.35)
    assert Request.from_json(variation.to_json()) == variation


_texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_floats = st.floats(allow_nan=False, allow_infinity=False, width=64)


@given(
    kind=st.sampled_from(KINDS), prompt=_texts, negative=_texts,
    parts=st.lists(st.tuples(_texts, _floats), min_size=1, max_size=4),
    size=st.tuples(st.integers(1, 4096), st.integers(1, 4096)), steps=st.integers(0, 150),
    guidance=_floats, seed=st.integers(0, MAX_SEED), chaos=st.integers(0, 100), count=st.integers(1, 4),
    init_image=st.none() | _texts, strength=st.floats(0, 1),
    images=st.lists(_texts, max_size=5), weights=st.lists(_floats, max_size=5),
)
def test_json_round_trip_of_any_request(kind, prompt, negative, parts, size, steps, guidance, seed, chaos,
                                        count, init_image, strength, images, weights):
    request = Request(kind=kind, model="m", prompt=prompt, parts=tuple(parts), negative=negative,
                      width=size[0], height=size[1], steps=steps, guidance=guidance, seed=seed, chaos=chaos,
                      count=count, parameters="--ar 1:1", init_image=init_image, strength=strength,
                      images=tuple(images), image_weights=tuple(weights))
    assert Request.from_json(request.to_json()) == request


def test_seeds_one_per_image_and_wrapping():
    request = build("a cat --seed 5")
    assert request.seeds() == [5, 6, 7, 8]
    assert request.replace(seed=MAX_SEED).seeds() == [MAX_SEED, 0, 1, 2]
    assert request.replace(count=1).seeds() == [5]


def test_replace_keeps_the_rest():
    request = build("a cat --seed 5")
    changed = request.replace(seed=6, kind="reroll")
    assert (changed.seed, changed.kind) == (6, "reroll")
    assert dataclasses.replace(changed, seed=5, kind="imagine") == request


def test_a_negative_prompt_on_a_model_without_guidance_is_said_and_not_listed():
    request = build("a quiet street --no cars, people --seed 3", TURBO)
    assert request.negative == "" and "--no" not in request.parameters
    assert request.notices == ("--no “cars, people” was not applied: sd-turbo runs without guidance, "
                               "which a negative prompt needs.",)


@pytest.mark.parametrize("name", ["sd-turbo", "sdxl-turbo"])
def test_turbo_steps_over_the_recipe_are_capped_shown_and_said(name: str):
    """Turbo's recipe is 1–4 steps (generation.schedulers.TURBO): more is capped as a --steps over
    the parser's highest value is, the message shows the steps used, and a notice says so."""
    spec = REGISTRY.get(name)
    request = build("a cat --steps 30 --ar 3:2", spec)
    assert request.steps == 4 and request.parameters == f"--ar 3:2 --steps 4 --model {name}"
    assert request.notices == (f"--steps “30” is over the highest value for {name} ({spec.family} models are "
                               "made for 1–4 steps); used 4.",)
    # beyond the parser's own highest (150): said once, with what the member typed
    assert build("a cat --steps 500", spec).notices == (
        f"--steps “500” is over the highest value for {name} ({spec.family} models are made for 1–4 steps); "
        "used 4.",)
    # --q that would make more steps than the recipe: capped too, the steps used shown instead
    three = dataclasses.replace(spec, steps=3)
    quality = build("a cat --q 2", three)
    assert quality.steps == 4 and "--q" not in quality.parameters and "--steps 4" in quality.parameters
    assert quality.notices == (f"--q 2 (6 steps) is over the highest value for {name} ({spec.family} models are "
                               "made for 1–4 steps); used 4.",)
    # within the recipe: nothing changed, nothing said
    for text, steps in (("a cat --steps 4", 4), ("a cat --steps 1", 1), ("a cat --q 2", 4)):
        within = build(text, spec)
        assert within.steps == steps and within.notices == ()
    # other families keep any --steps up to the parser's highest
    assert build("a cat --steps 30").steps == 30 and build("a cat --steps 30").notices == ()


def test_a_low_stylize_keeps_guidance_for_a_negative_prompt_and_says_so():
    request = build("a quiet street --no cars --s 0")
    assert request.negative == "cars" and request.guidance == 1.5 and "--no cars" in request.parameters
    assert request.notices == ("--stylize 0 would turn guidance off; it is kept at 1.5 so that --no "
                               "“cars” applies.",)
    assert build("a quiet street --s 0").guidance == 1.0 and build("a quiet street --s 0").notices == ()


def test_the_parsers_notices_travel_with_the_request_and_its_json():
    request = build("a red fox --raw --chaos 150")
    assert request.notices == ("--chaos “150” is over the highest value; used 100.",
                               "Ignored what Pintor does not have: “--raw”.")
    assert Request.from_json(request.to_json()) == request
    data = json.loads(request.to_json())
    del data["notices"]  # a job stored before notices existed
    assert Request.from_json(json.dumps(data)).notices == ()


def test_selectors_are_not_listed_as_parameters():
    request = build("a red fox --v 6 --style raw")
    assert "--v" not in request.parameters and "--style" not in request.parameters



def test_repeat_makes_one_request_per_grid_where_a_single_one_is_asked_it_says_so():
    from bot.intake import prepare, prepare_repeated

    requests, _ = prepare_repeated(REGISTRY, "a fox --repeat 3 --seed 4294967294")
    assert len(requests) == 3 and [r.seed for r in requests] == [4294967294, 2, 6]  # seed + 4k, wrapped
    assert {r.prompt for r in requests} == {"a fox"} and len({r.to_json() for r in requests}) == 3
    assert all("--repeat" not in r.parameters for r in requests)
    unseeded, _ = prepare_repeated(REGISTRY, "a fox --repeat 2")
    assert unseeded[0].seed != unseeded[1].seed
    single = prepare(REGISTRY, "a fox --repeat 2")
    assert single.notices == ("--repeat 2 makes several grids in Discord's /imagine only: this made one.",)
    assert prepare(REGISTRY, "a fox").notices == () and len(prepare_repeated(REGISTRY, "a fox")[0]) == 1


# --- negative `::` parts (issue 26 item 9): used where the model has a negative side, else said and dropped ---


def test_a_negative_part_is_kept_and_shown_where_the_model_has_a_negative_side():
    request = build("still life gouache painting::1 fruit::-.5 --seed 3")
    assert request.parts == (("still life gouache painting", 1.0), ("fruit", -0.5))
    assert request.prompt == "still life gouache painting::1 fruit::-0.5" and request.guidance == 7.0
    assert request.notices == ("Read “fruit” (“::-.5”) as less of it, as --no does: it goes to the negative side "
                               "(::-0.5 beside parts weighing 1 counts as much as --no).",)


def test_a_negative_part_on_a_model_without_guidance_is_said_dropped_and_not_shown():
    request = build("a quiet street::2 cars::-.5 people::-.25 --no fog --seed 3", TURBO)
    assert request.parts == (("a quiet street", 1.0),) and request.prompt == "a quiet street"
    assert request.negative == "" and "--no" not in request.parameters
    assert request.notices[1:] == (
        "--no “fog” was not applied: sd-turbo runs without guidance, which a negative prompt needs.",
        "The negative parts “cars::-0.5”, “people::-0.25” were not applied: sd-turbo runs without guidance, "
        "which a negative weight needs.")
    two = build("a street::1 trees::1 cars::-.5", TURBO)
    assert two.parts == (("a street", 1.0), ("trees", 1.0)) and two.prompt == "a street::1 trees::1"


def test_a_low_stylize_keeps_guidance_for_a_negative_part_and_says_so():
    request = build("a quiet street::1 cars::-.5 --s 0")
    assert request.guidance == 1.5 and request.parts[1] == ("cars", -0.5)
    assert request.notices[1] == "--stylize 0 would turn guidance off; it is kept at 1.5 so that the negative " \
                                 "weights apply."


def test_a_negative_part_for_a_providers_api_is_said_dropped_and_not_shown(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text('[models.dalle3]\nfamily = "openai"\nmodel = "dall-e-3"\n', encoding="utf-8")
    spec = load_registry(path).get("dalle3")
    request = build("a lighthouse at dusk::1 fog::-.5", spec)
    assert request.parts == (("a lighthouse at dusk", 1.0),) and request.prompt == "a lighthouse at dusk"
    assert request.notices[1] == "The negative part “fog::-0.5” was not applied: dalle3's API takes no negative prompt."


def test_a_loras_trigger_words_join_the_last_part_that_is_not_negative(tmp_path):
    from generation.registry import LoraSpec

    lora = LoraSpec(name="ink", source=str(tmp_path / "ink.safetensors"), families=("sd",), triggers=("ink wash",))
    request = build_request(parse_prompt("a lighthouse::2 fog::-.5"), SD15, loras=[(lora, 1.0)])
    assert request.parts == (("a lighthouse, ink wash", 2.0), ("fog", -0.5))
    assert request.prompt == "a lighthouse, ink wash::2 fog::-0.5"


# --- emphasis on a model that cannot weight words: the --no list is read as the prompt is ---


@pytest.mark.parametrize("family", ["kandinsky22", "kandinsky21", "kandinsky3"])
def test_emphasis_in_the_negative_is_read_as_plain_words_and_said_as_the_prompts_is(family: str):
    spec = dataclasses.replace(KANDINSKY, family=family)
    request = build("a red fox --no (blurry:1.4) people --seed 3", spec)
    assert request.negative == "blurry people" and request.parts == (("a red fox", 1.0),)
    assert request.parameters == "--no blurry people --model kandinsky-2.2"  # what the model reads is shown
    assert request.notices == ("kandinsky-2.2 cannot weight words: the emphasis in --no “(blurry:1.4) people” "
                               "is read as plain words.",)
    # both sides weighted: one notice names each text
    both = build("a ((red)) fox::2 [snow]::-1 --no [[blurry]]", spec)
    assert both.parts == (("a red fox", 2.0), ("snow", -1.0)) and both.negative == "blurry"
    assert both.notices[-1] == ("kandinsky-2.2 cannot weight words: the emphasis in “a ((red)) fox”, “[snow]” "
                                "and --no “[[blurry]]” is read as plain words.")
    # escaped brackets are words, not emphasis: kept as a prompt's are, nothing said
    escaped = build(r"a fox --no makima \(chainsaw man\)", spec)
    assert escaped.negative == r"makima \(chainsaw man\)" and escaped.notices == ()
    # a plain --no: unchanged, nothing said
    plain = build("a red fox --no blurry, people", spec)
    assert plain.negative == "blurry, people" and plain.notices == ()


def test_emphasis_in_the_negative_stays_where_the_model_weights_words():
    request = build("a red fox --no (blurry:1.4) people")
    assert request.negative == "(blurry:1.4) people" and request.notices == ()


# --- an --ar whose ratio the size cannot keep exactly: the size made is said ---


@pytest.mark.parametrize("native, aspect, size", [
    (64, "16:9", (128, 64)),  # the tester's example: a 64 px model makes 2:1 for 16:9
    (64, "3:2", (128, 64)), (512, "16:9", (704, 384)), (512, "4:3", (576, 448)), (512, "1:3", (320, 896)),
])
def test_an_aspect_ratio_the_size_does_not_keep_is_said_with_the_size(native: int, aspect: str, size):
    spec = dataclasses.replace(SD15, native_side=native)
    request = build(f"a cat --ar {aspect}", spec)
    assert (request.width, request.height) == size
    assert request.notices == (f"sd-1.5 makes {size[0]}×{size[1]} for --ar {aspect} (the nearest with sides in "
                               f"multiples of 64 pixels, at about its {native}×{native} pixels).",)
    assert f"--ar {aspect}" in request.parameters  # what was asked stays shown; the notice says what was made


@pytest.mark.parametrize("native, aspect", [(512, "3:2"), (512, "2:3"), (512, "1:1"), (64, "1:1"), (64, "2:1"),
                                            (256, "1:2"), (128, "3:2")])
def test_an_aspect_ratio_kept_exactly_says_nothing(native: int, aspect: str):
    request = build(f"a cat --ar {aspect}", dataclasses.replace(SD15, native_side=native))
    w, h = map(int, aspect.split(":"))
    assert request.width * h == request.height * w and request.notices == ()
    assert build("a cat", dataclasses.replace(SD15, native_side=native)).notices == ()  # no --ar: square, nothing
