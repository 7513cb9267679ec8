"""Kandinsky 3 through generation.engine, on a tiny random-weight pipeline built from configs
(T5 encoder, Kandinsky3UNet, MoVQ), saved and loaded through the registry as real models are.

Kandinsky 3 reads text only (a T5 encoder feeds its UNet; there is no prior), so it makes grids
and variations but cannot blend; Kandinsky 2.0 is in no library Pintor can use: both are said
plainly, where they are configured and where members ask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from generation.devices import choose_device
from generation.engine import Engine, GenerationStopped, kandinsky3_mix
from generation.registry import KANDINSKY_20, Registry, RegistryError, load_registry
from generation.schedulers import check_scheduler
from tests.engine_helpers import picture_maker, pixels, request, run
from tests.tiny_models import build_kandinsky3

MODEL = "tiny-kandinsky3"


def registry_text(source: Path) -> str:
    return f'''
default = "{MODEL}"

[models.{MODEL}]
source = "{source}"
family = "kandinsky3"
native_side = 64
steps = 2
'''


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    root = tmp_path_factory.mktemp("kandinsky3")
    path = root / "models.toml"
    path.write_text(registry_text(build_kandinsky3(root / "k3")), encoding="utf-8")
    return load_registry(path)


@pytest.fixture(scope="module")
def engine(registry: Registry) -> Engine:
    return Engine(registry, choose_device("cpu"))


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory):
    return picture_maker(tmp_path_factory.mktemp("pictures"))


def differ(a, b) -> float:
    return float(np.abs(pixels(a.images) - pixels(b.images)).mean())


def test_the_entry_reads_text_makes_pictures_and_cannot_blend(registry):
    spec = registry.get(MODEL)
    assert spec.can_generate and not spec.can_blend and not spec.can_clip_guide
    assert spec.capabilities() == ["text to image", "image to image (V)"]
    assert (spec.guidance, check_scheduler("DDIMScheduler", "kandinsky3")) == (3.0, ["denoising loop"])


def test_text_to_image_is_four_pictures_deterministic_per_seed(engine, registry):
    req = request(registry, "a red fox in the snow --seed 6")
    assert (req.width, req.height, req.steps, req.model) == (64, 64, 2, MODEL)
    first, steps, previews = run(engine, req)
    assert [image.size for image in first.images] == [(64, 64)] * 4 and first.notices == []
    assert steps == [(1, 2), (2, 2)] and previews
    again, _, _ = run(engine, req)
    assert np.array_equal(pixels(first.images), pixels(again.images))
    assert differ(first, run(engine, req.replace(seed=7))[0]) > 1.0
    pics = pixels(first.images)
    assert np.abs(pics[0] - pics[1]).mean() > 1.0  # four pictures, not one four times
    assert differ(first, run(engine, req.replace(negative="snow"))[0]) > 0.05
    assert differ(first, run(engine, req.replace(parts=(("a blue whale", 1.0),)))[0]) > 0.05


def test_a_wide_grid_keeps_its_shape(engine, registry):
    req = request(registry, "a red fox --seed 6 --ar 2:1")
    assert (req.width, req.height) == (128, 64)
    result, _, _ = run(engine, req)
    assert [image.size for image in result.images] == [(128, 64)] * 4


def test_multi_prompt_weights_mix_the_texts(engine, registry):
    base = request(registry, "a red fox::3 a blue whale::1 --seed 6")
    first, _, _ = run(engine, base)
    assert [image.size for image in first.images] == [(64, 64)] * 4
    swapped, _, _ = run(engine, base.replace(parts=(("a red fox", 1.0), ("a blue whale", 3.0))))
    assert differ(first, swapped) > 0.05
    assert np.array_equal(pixels(first.images), pixels(run(engine, base)[0].images))


def test_a_negative_part_is_less_of_it_on_the_negative_side(engine, registry):
    """Issue 26 item 9: `x::-.5` beside a weight of 1 is `--no x`; a lighter one mixes the
    part's T5 embeddings with the empty negative's zeros by its share (weight_sides)."""
    lessened = request(registry, "a red fox::1 snow::-.5 --seed 6")
    no = request(registry, "a red fox --no snow --seed 6")
    assert np.array_equal(pixels(run(engine, lessened)[0].images), pixels(run(engine, no)[0].images))
    pipe = engine.pipelines.get(registry.get(MODEL), "text2img")
    got = kandinsky3_mix(pipe, ["a red fox"], [1.0], "", True, lessened=[("snow", 0.5)])
    with torch.no_grad():
        snow = pipe.encode_prompt("snow", True, num_images_per_prompt=1, device="cpu", negative_prompt="snow",
                                  _cut_context=False)
    assert torch.allclose(got["negative_prompt_embeds"], 0.5 * snow[1])
    assert torch.equal(got["negative_attention_mask"], snow[3])
    light = run(engine, request(registry, "a red fox::1 snow::-.25 --seed 6"))[0]
    plain = run(engine, request(registry, "a red fox --seed 6"))[0]
    # (the tiny T5's embeddings move its UNet little: half of them differs from all of them in a few pixels)
    assert differ(light, plain) > 0.01 and differ(light, run(engine, no)[0]) > 0


def test_emphasis_is_read_as_plain_words_and_said(registry):
    req = request(registry, "a (red:1.4) fox --seed 6")
    assert req.parts == (("a red fox", 1.0),)
    assert any("cannot weight words" in notice for notice in req.notices)


def test_variation_from_a_picture(engine, registry, picture):
    init = picture(64, 64, 3)
    req = request(registry, "a red fox --seed 6", kind="variation", init_image=init, strength=0.5, steps=4)
    result, steps, _ = run(engine, req)
    assert [image.size for image in result.images] == [(64, 64)] * 4
    assert steps == [(1, 2), (2, 2)]  # int(4 steps × 0.5)
    stronger, _, _ = run(engine, req.replace(strength=1.0))
    assert differ(result, stronger) > 0.05
    wide = picture(128, 64, 4)
    wide_req = request(registry, "a red fox --seed 6 --ar 2:1", kind="variation", init_image=wide, strength=0.5,
                       steps=2)
    assert [image.size for image in run(engine, wide_req)[0].images] == [(128, 64)] * 4


def test_stop_between_steps(engine, registry):
    seen: list[int] = []
    with pytest.raises(GenerationStopped):
        engine.generate(request(registry, "a red fox --seed 1 --steps 30"),
                        lambda step, total, preview: seen.append(step), lambda: bool(seen))
    assert seen == [1]


def test_a_request_without_text_is_refused_by_the_engine(engine, registry, picture):
    req = request(registry, "a red fox --seed 6", kind="blend", parts=(), images=(picture(64, 64, 1),),
                  image_weights=(1.0,))
    with pytest.raises(ValueError, match="Kandinsky 3 request needs a text"):
        engine.generate(req, lambda *a: None, lambda: False)


@pytest.mark.parametrize("family", ["kandinsky2", "kandinsky20", "Kandinsky-2.0"])
def test_kandinsky_20_is_said_plainly_with_what_to_use_instead(tmp_path, family):
    path = tmp_path / "models.toml"
    path.write_text(f'[models.old]\nsource = "ai-forever/Kandinsky_2.0"\nfamily = "{family}"\n', encoding="utf-8")
    with pytest.raises(RegistryError) as err:
        load_registry(path)
    message = str(err.value)
    assert message == f"model 'old': {KANDINSKY_20}"
    for words in ("neither in diffusers nor as a package", "kandinsky21", "kandinsky22", "kandinsky3"):
        assert words in message


@pytest.mark.parametrize("extra, error", [
    ('prior = "p"\n', "'prior' is for Kandinsky 2.1 and 2.2; the kandinsky3 family has none"),
    ('clip_model = "c"\n', "'clip_model' (CLIP guidance, --clip) works with the families"),
])
def test_fields_kandinsky3_has_no_use_for_are_refused(tmp_path, extra, error):
    path = tmp_path / "models.toml"
    path.write_text(f'[models.k3]\nsource = "k"\nfamily = "kandinsky3"\n{extra}', encoding="utf-8")
    with pytest.raises(RegistryError, match=error.replace("(", r"\(").replace(")", r"\)")):
        load_registry(path)


def test_pintor_models_lists_kandinsky3_and_says_kandinsky_20_is_not_offered(registry, monkeypatch, tmp_path,
                                                                           capsys):
    from bot.cli import main

    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    monkeypatch.setenv("PINTOR_MODELS", registry.origin)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert f"{MODEL:<16} kandinsky3" in out
    assert "can: text to image, image to image (V); downloaded" in out
    assert f"Not offered: {KANDINSKY_20}" in out

    old = tmp_path / "old.toml"
    old.write_text('[models.old]\nsource = "ai-forever/Kandinsky_2.0"\nfamily = "kandinsky20"\n', encoding="utf-8")
    monkeypatch.setenv("PINTOR_MODELS", str(old))
    assert main(["models"]) == 1
    assert capsys.readouterr().err.strip() == f"error: model 'old': {KANDINSKY_20}"
