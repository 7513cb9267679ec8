"""Kandinsky 2.1 through generation.engine, on a tiny random-weight prior + decoder, on the CPU.

Pintor runs 2.1 the way it runs 2.2 (the prior turns texts and images into one image embedding;
`/blend` mixes them by weight), with two differences the engine has to handle: 2.1's decoder reads
the text as well (a multilingual CLIP text encoder), and its pipelines only have the older
per-step `callback`. A tiny 2.2 sits beside it for what both must do alike.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generation.devices import choose_device
from generation.engine import Engine, GenerationStopped
from generation.registry import Registry, load_registry
from tests.engine_helpers import picture_maker, pixels, request, run
from tests.tiny_models import build_kandinsky21, build_kandinsky22

MODEL = "tiny-kandinsky21"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    root = tmp_path_factory.mktemp("kandinsky21")
    prior, decoder = build_kandinsky21(root / "prior", root / "decoder")
    prior22, decoder22 = build_kandinsky22(root / "prior22", root / "decoder22")
    path = root / "models.toml"
    path.write_text(f'''
default = "{MODEL}"

[models.{MODEL}]
source = "{decoder}"
prior = "{prior}"
family = "kandinsky21"
native_side = 64
steps = 2

[models.tiny-kandinsky22]
source = "{decoder22}"
prior = "{prior22}"
family = "kandinsky22"
native_side = 64
steps = 2
''', encoding="utf-8")
    return load_registry(path)


@pytest.fixture(scope="module")
def engine(registry: Registry) -> Engine:
    return Engine(registry, choose_device("cpu"), max_models=2)


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory):
    """A random RGB picture saved as PNG."""
    return picture_maker(tmp_path_factory.mktemp("pictures"))


def differ(a, b) -> float:
    return float(np.abs(pixels(a.images) - pixels(b.images)).mean())


def test_text_to_image_is_four_pictures_deterministic_per_seed(engine, registry):
    req = request(registry, f"a red fox in the snow --seed 6 --model {MODEL}")
    assert (req.width, req.height, req.steps) == (64, 64, 2)
    first, steps, previews = run(engine, req)
    assert [image.size for image in first.images] == [(64, 64)] * 4 and first.notices == []
    assert steps == [(1, 2), (2, 2)] and previews and max(previews[0].size) <= 192
    again, _, _ = run(engine, req)
    assert np.array_equal(pixels(first.images), pixels(again.images))
    other, _, _ = run(engine, req.replace(seed=7))
    assert differ(first, other) > 1.0
    pics = pixels(first.images)
    assert np.abs(pics[0] - pics[1]).mean() > 1.0  # four pictures, not one four times
    negative, _, _ = run(engine, req.replace(negative="snow"))  # read by the prior and the decoder
    assert differ(first, negative) > 0.05


def test_blend_weights_change_the_picture(engine, registry, picture):
    images = (picture(64, 64, 1), picture(48, 80, 2))  # the prior takes pictures of any size
    base = request(registry, f"a red fox --seed 6 --model {MODEL}", kind="blend", images=images)
    first, steps, _ = run(engine, base.replace(image_weights=(3.0, 1.0)))
    assert [image.size for image in first.images] == [(64, 64)] * 4 and steps == [(1, 2), (2, 2)]
    same, _, _ = run(engine, base.replace(image_weights=(3.0, 1.0)))
    assert np.array_equal(pixels(first.images), pixels(same.images))
    swapped, _, _ = run(engine, base.replace(image_weights=(1.0, 3.0)))
    assert differ(first, swapped) > 0.05
    textless = base.replace(parts=())  # images only: the decoder reads an empty text
    first_textless, _, _ = run(engine, textless.replace(image_weights=(3.0, 1.0)))
    assert differ(first, first_textless) > 0.05  # the text counts
    swapped_textless, _, _ = run(engine, textless.replace(image_weights=(1.0, 3.0)))
    assert differ(first_textless, swapped_textless) > 0.05


def test_variation_from_an_image_keeps_its_size(engine, registry, picture):
    init = picture(64, 64, 3)
    req = request(registry, f"a red fox --seed 6 --model {MODEL}", kind="variation", init_image=init,
                  strength=0.5, steps=4, images=(init,), image_weights=(1.0,))
    result, steps, previews = run(engine, req)
    assert [image.size for image in result.images] == [(64, 64)] * 4
    assert steps == [(1, 2), (2, 2)] and previews  # int(4 steps × 0.5), each reported
    textless, _, _ = run(engine, req.replace(parts=()))  # a variation of a blend without text
    assert [image.size for image in textless.images] == [(64, 64)] * 4
    assert differ(result, textless) > 0.05


@pytest.mark.parametrize("model", [MODEL, "tiny-kandinsky22"])
def test_variation_of_a_wide_picture_stays_wide(engine, registry, picture, model):
    # diffusers' Kandinsky img2img swaps width and height when it resizes its input
    wide = picture(128, 64, 4)
    req = request(registry, f"a red fox --seed 6 --ar 2:1 --model {model}", kind="variation", init_image=wide,
                  strength=0.5, steps=2, images=(wide,), image_weights=(1.0,))
    assert (req.width, req.height) == (128, 64)
    result, _, _ = run(engine, req)
    assert [image.size for image in result.images] == [(128, 64)] * 4


def test_progress_is_reported_every_step_and_stop_works(engine, registry):
    result, steps, _ = run(engine, request(registry, f"a red fox --seed 1 --steps 4 --model {MODEL}"))
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)] and len(result.images) == 4
    seen: list[int] = []
    with pytest.raises(GenerationStopped):
        engine.generate(request(registry, f"a red fox --seed 1 --steps 30 --model {MODEL}"),
                        lambda step, total, preview: seen.append(step), lambda: bool(seen))
    assert seen == [1]


@pytest.mark.parametrize("scheduler", ["DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler",
                                       "DPMSolverSinglestepScheduler"])
def test_every_decoder_scheduler_the_registry_accepts_runs_and_the_prior_keeps_its_own(registry, picture, scheduler):
    import dataclasses

    from generation.schedulers import check_scheduler

    assert check_scheduler(scheduler, "kandinsky21") == ["decoder"]
    spec = dataclasses.replace(registry.get(MODEL), scheduler=scheduler)
    engine = Engine(dataclasses.replace(registry, models=registry.models | {MODEL: spec}), choose_device("cpu"))
    made, _, _ = run(engine, request(registry, f"a red fox --seed 6 --model {MODEL}"))
    init = picture(64, 64, 3)
    varied, _, _ = run(engine, request(registry, f"a red fox --seed 6 --model {MODEL}", kind="variation",
                                       init_image=init, strength=0.7, steps=4, images=(init,), image_weights=(1.0,)))
    assert len(made.images) == len(varied.images) == 4
    assert type(engine.pipelines.get(spec, "text2img").scheduler).__name__ == scheduler
    assert type(engine.pipelines.get(spec, "prior").scheduler).__name__ == "UnCLIPScheduler"


def test_each_picture_has_its_own_prior_draw_and_chaos_leans_them_together(engine, registry):
    """Issue 26 item 8 on 2.1: four draws of the prior (2.1's own `interpolate` would sum them
    into one), spread by --chaos as on 2.2 (tests/test_fidelity_kinds.py checks the formula)."""
    spec = registry.get(MODEL)

    def embeds(text: str):
        return engine._image_embeds(request(registry, text + f" --model {MODEL}"), spec, [])[0]

    for text in ("a red fox --seed 3 --chaos 100", "a red fox::1 snow::1 --seed 3 --chaos 100"):
        drawn = embeds(text)
        assert drawn.shape == (4, drawn.shape[1])
        assert all(float((drawn[i] - drawn[0]).abs().max()) > 1e-4 for i in (1, 2, 3))
    calm, wild = embeds("a red fox --seed 3 --chaos 0"), embeds("a red fox --seed 3 --chaos 100")
    assert torch.equal(calm[0], wild[0]) and not torch.allclose(calm[1:], wild[1:], atol=1e-4)
    pictures = {c: pixels(run(engine, request(registry, f"a red fox --seed 3 --chaos {c} --model {MODEL}"))[0].images)
                for c in (0, 100)}
    assert np.abs(pictures[0] - pictures[100]).mean() > 0.5  # --chaos changes 2.1's pictures


def test_a_negative_part_is_less_of_it_as_no_says(engine, registry):
    """Issue 26 item 9 on 2.1: `x::-.5` beside 1 is `--no x` (the prior's negative and the
    decoder's negative text alike); a lighter one is a mix, different from both."""
    def grid(text: str):
        return pixels(run(engine, request(registry, f"{text} --seed 4 --model {MODEL}"))[0].images)

    lessened, no, plain = grid("a red fox::1 snow::-.5"), grid("a red fox --no snow"), grid("a red fox")
    assert np.array_equal(lessened, no) and np.abs(lessened - plain).mean() > 0.5
    light = grid("a red fox::1 snow::-.25")
    assert np.abs(light - no).mean() > 0.1 and np.abs(light - plain).mean() > 0.1
