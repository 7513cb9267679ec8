"""/describe in the worker (generation/captions.py and the engine): a tiny random-weight BLIP
captioner and CLIP style-word ranker, built in code and saved with save_pretrained, loaded
through the registry and the engine's pipeline cache as an admin's downloaded models are.
Random weights write gibberish: what is checked is what Pintor makes of any model's output
(cleaned, distinct, never empty, reproducible from the seed, shaped like the picture)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from generation.availability import MODEL_CONFIG, check_source
from generation.captions import (
    ARTISTS,
    MEDIUMS,
    NEUTRAL_CAPTIONS,
    aspect_parameter,
    clean_caption,
    fill_neutral,
    prompts_for,
)
from generation.devices import choose_device
from generation.engine import Engine, GenerationStopped
from generation.events import Done, ImageFile, event_from_json, event_to_json
from generation.prompt import parse_prompt
from generation.registry import RegistryError, load_registry
from generation.request import JobKind, Request
from tests.describe_helpers import build_describers, write_describe_registry
from tests.properties import examples

CPU = choose_device("cpu")


@pytest.fixture(scope="module")
def describers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_describers(tmp_path_factory.mktemp("describers"))


@pytest.fixture(scope="module")
def engines(describers, tiny_models, tmp_path_factory) -> dict[str, Engine]:
    """An engine whose captioner has CLIP's style words, and one whose captioner has none."""
    folder = tmp_path_factory.mktemp("describe-registry")
    with_clip = load_registry(write_describe_registry(folder / "clip.toml", tiny_models, describers))
    without = load_registry(write_describe_registry(folder / "plain.toml", tiny_models, describers, clip=False))
    return {"clip": Engine(with_clip, CPU), "plain": Engine(without, CPU)}


def describe_request(path: str, width: int, height: int, seed: int = 7) -> Request:
    return Request(kind=JobKind.DESCRIBE, model="tiny-blip", prompt="/describe photo.jpg", parts=(), negative="",
                   width=width, height=height, steps=1, guidance=0.0, seed=seed, count=4, images=(path,))


def picture(tmp_path: Path, size=(60, 40), colour=(200, 40, 40), name="picture.png") -> str:
    path = tmp_path / name
    Image.new("RGB", size, colour).save(path)
    return str(path)


def describe(engine: Engine, request: Request, stop_after: int | None = None):
    steps: list[tuple[int, int]] = []
    previews: list[Image.Image] = []

    def on_step(step, total, make_preview):
        steps.append((step, total))
        previews.append(make_preview())

    result = engine.generate(request, on_step, lambda: stop_after is not None and len(steps) >= stop_after)
    return result, steps, previews


# -- cleaning what any captioner writes --------------------------------------------------------


@pytest.mark.parametrize("raw, clean", [
    ("arafed woman sitting on a bench", "woman sitting on a bench"),
    ("there is a araffe cat cat cat on the the table", "there is a cat on the table"),
    ("[SEP] a dog [PAD] [UNK] in the snow [SEP]", "a dog in the snow"),
    ("<|endoftext|>a red fox<|endoftext|>", "a red fox"),
    ("  a bridge --ar 16:9 at night ::2 ", "a bridge ar 16:9 at night 2"),
    ("a well-known —no -c cat", "a well-known no c cat"),
    ("\x08a\u200bcat\ufeff\n", "a cat"),
    ("  , . a boat. ", "a boat"),
    ("[SEP] [PAD]", ""),
    ("", ""),
    ("arafed", ""),
])
def test_a_caption_is_cleaned_into_a_prompt(raw: str, clean: str):
    assert clean_caption(raw) == clean


@settings(max_examples=examples(300))
@given(raw=st.text(), styled=st.booleans(), size=st.tuples(st.integers(1, 5000), st.integers(1, 5000)))
def test_whatever_a_model_writes_becomes_a_prompt_that_parses_as_its_words_and_shape(raw, styled, size):
    """Any text (a model's words, tokens, dashes, weights, emphasis, controls) cleaned into a
    prompt parses without error as text plus the picture's --ar, and nothing else."""
    caption = clean_caption(raw) or NEUTRAL_CAPTIONS[0]
    styles = {"medium": list(MEDIUMS), "style": ["bokeh"], "artist": list(ARTISTS)} if styled else None
    [prompt] = prompts_for([caption], styles, *size)
    parsed = parse_prompt(prompt)
    assert parsed.given <= {"ar"} and parsed.text.strip()
    if "ar" in parsed.given:
        assert f"--ar {parsed.aspect[0]}:{parsed.aspect[1]}" == aspect_parameter(*size)


def test_a_caption_is_cut_at_a_word():
    cleaned = clean_caption("a very long caption " * 40)
    assert len(cleaned) <= 300 and cleaned.endswith("caption") and "  " not in cleaned


def test_missing_captions_are_filled_with_neutral_ones_never_twice():
    assert fill_neutral(["a picture", "a cat"], 4) == ["a picture", "a cat", "a photograph", "an image"]
    assert fill_neutral([], 4) == list(NEUTRAL_CAPTIONS[:4])
    assert fill_neutral(["a", "b", "c", "d", "e"], 4) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("size, parameter", [
    ((512, 512), ""), ((768, 512), "--ar 3:2"), ((512, 768), "--ar 2:3"), ((1920, 1080), "--ar 16:9"),
    ((4032, 3024), "--ar 4:3"), ((3024, 4032), "--ar 3:4"), ((4031, 3023), "--ar 4:3"),
    ((1000, 999), ""), ((8000, 1000), "--ar 3:1"), ((1000, 8000), "--ar 1:3"), ((2560, 1080), "--ar 7:3"),
    ((20, 40), "--ar 1:2"), ((17, 27), "--ar 5:8"),
])
def test_the_aspect_parameter_is_the_pictures_shape_within_pintors_limits(size, parameter):
    assert aspect_parameter(*size) == parameter


# -- the registry ------------------------------------------------------------------------------


def test_a_blip_entry_is_the_captioner(describers, tiny_models, tmp_path):
    registry = load_registry(write_describe_registry(tmp_path / "models.toml", tiny_models, describers))
    spec = registry.get("tiny-blip")
    assert registry.captioner == "tiny-blip" and spec.is_captioner and spec.clip == str(describers["clip"])
    assert not spec.can_generate and registry.default == "tiny-sd"  # never a default for /imagine
    assert "tiny-blip" not in [m.name for m in registry.generators()]


def test_no_captioner_is_configured_by_default(registry_file):
    assert load_registry(registry_file).captioner is None
    assert load_registry(None).captioner is None


@pytest.mark.parametrize("entry, message", [
    ('[models.x]\nsource = "/m/sd"\nfamily = "sd"\nclip = "/m/clip"\n', "'clip' ranks style words for a captioner"),
    ('[models.x]\nsource = "/m/blip.safetensors"\nfamily = "blip"\n', "a captioner's source is a transformers folder"),
])
def test_misconfigured_captioner_entries_are_named(tmp_path, entry, message):
    path = tmp_path / "models.toml"
    path.write_text('[models.sd]\nsource = "/m/sd2"\nfamily = "sd"\n' + entry, encoding="utf-8")
    with pytest.raises(RegistryError, match=message):
        load_registry(path)


def test_a_captioner_named_at_the_top_must_be_one(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text('captioner = "sd"\n[models.sd]\nsource = "/m/sd"\nfamily = "sd"\n', encoding="utf-8")
    with pytest.raises(RegistryError, match="captioner 'sd' is not a configured captioning model"):
        load_registry(path)


def test_a_captioners_folder_is_a_transformers_model(describers, tmp_path):
    assert check_source("tiny-blip", str(describers["blip"]), index=MODEL_CONFIG).ok
    (tmp_path / "empty").mkdir()
    state = check_source("tiny-blip", str(tmp_path / "empty"), index=MODEL_CONFIG)
    assert not state.ok and "no config.json" in state.detail
    assert not check_source("tiny-blip", str(tmp_path / "gone"), index=MODEL_CONFIG).ok


# -- the engine --------------------------------------------------------------------------------


def test_four_distinct_prompts_with_style_words_and_the_pictures_shape(engines, tmp_path):
    request = describe_request(picture(tmp_path, (60, 40)), 60, 40)
    result, steps, previews = describe(engines["clip"], request)
    prompts = result.captions
    assert len(prompts) == 4 and len({p.lower() for p in prompts}) == 4
    for prompt in prompts:
        caption = prompt.split(",")[0].strip()
        assert caption and "[" not in prompt and "--ar 3:2" in prompt and prompt.count("--") == 1
        assert any(medium in prompt for medium in MEDIUMS)
        assert any(f"in the style of {artist}" in prompt for artist in ARTISTS)
    # each prompt takes another rank of the ranked words: four different artists
    assert len({next(a for a in ARTISTS if f"in the style of {a}" in p) for p in prompts}) == 4
    assert result.images[0].size == (60, 40) and result.images[0].mode == "RGB"
    assert steps and steps[-1] == (4, 4) and previews[0].size[0] <= 192


def test_the_same_seed_writes_the_same_prompts_and_another_seed_others(engines, tmp_path):
    path = picture(tmp_path, (40, 40), (30, 160, 60))
    first = describe(engines["plain"], describe_request(path, 40, 40, seed=11))[0].captions
    again = describe(engines["plain"], describe_request(path, 40, 40, seed=11))[0].captions
    other = describe(engines["plain"], describe_request(path, 40, 40, seed=12))[0].captions
    assert first == again
    assert first[0] == other[0]  # beam search: the model's most likely caption, whatever the seed
    assert first[1:] != other[1:]  # the sampled ones follow the seed
    # no CLIP: the captions alone; a square picture: no --ar
    assert all("in the style of" not in p and "--" not in p and p for p in first)


def test_a_captioner_that_writes_nothing_usable_gives_neutral_prompts(engines, tmp_path, monkeypatch):
    import generation.captions as captions

    monkeypatch.setattr(captions, "_caption", lambda captioner, picture, seed: "[SEP] arafed [PAD]")
    result, _, _ = describe(engines["plain"], describe_request(picture(tmp_path), 60, 40))
    assert result.captions == [f"{c} --ar 3:2" for c in NEUTRAL_CAPTIONS[:4]]


def test_a_captioner_that_repeats_itself_is_asked_again_then_filled(engines, tmp_path, monkeypatch):
    import generation.captions as captions

    written = iter(["a red cat", "A red cat.", "a red cat", "a blue dog", "a red  cat"] + ["a blue dog"] * 10)
    monkeypatch.setattr(captions, "_caption", lambda captioner, picture, seed: next(written))
    result, _, _ = describe(engines["plain"], describe_request(picture(tmp_path), 60, 40))
    assert [p.removesuffix(" --ar 3:2") for p in result.captions] == ["a red cat", "a blue dog", "a picture",
                                                                       "a photograph"]


def test_a_describe_can_be_stopped(engines, tmp_path):
    with pytest.raises(GenerationStopped):
        describe(engines["plain"], describe_request(picture(tmp_path), 60, 40), stop_after=1)


def test_a_describe_of_a_model_that_is_not_a_captioner_fails_clearly(engines, tmp_path):
    request = describe_request(picture(tmp_path), 60, 40).replace(model="tiny-sd")
    with pytest.raises(ValueError, match="not a captioning model"):
        describe(engines["plain"], request)


def test_done_carries_the_prompts_across_the_wire():
    grid = ImageFile("jobs/3/grid.png", 60, 40, 7, "ab" * 32)
    done = Done(3, (), grid, ("a notice",), captions=("a red cat --ar 3:2", "a “quoted” dog"))
    assert event_from_json(event_to_json(done)) == done
    plain = event_from_json(event_to_json(Done(4, (grid,), grid)))
    assert isinstance(plain, Done) and plain.captions == ()
