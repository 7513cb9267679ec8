"""generation.engine in this process, on the tiny random-weight pipelines, on the CPU."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from generation.devices import choose_device
from generation.engine import PREVIEW_SIDE, Engine, GenerationStopped, initial_noise, prior_view, weighted_embeds
from generation.imaging import png_bytes
from generation.pipelines import ModelLoadError, PipelineCache
from generation.registry import Registry, UnknownModelError, load_registry
from generation.request import Request
from generation.upscale import RESAMPLE
from tests.engine_helpers import picture_maker, pixels, request, run

CPU = choose_device("cpu")


@pytest.fixture(scope="module")
def registry(small_registry_file: Path) -> Registry:
    return load_registry(small_registry_file)  # tiny-sd at a native 64 px


@pytest.fixture(scope="module")
def engine(registry: Registry) -> Engine:
    # room for every tiny model: each is loaded once for the whole module
    return Engine(registry, CPU, max_models=4)


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory):
    """A random RGB picture saved as PNG, of any size."""
    return picture_maker(tmp_path_factory.mktemp("pictures"))


def spread(images: list[Image.Image]) -> float:
    """Mean absolute pixel difference between the pictures of a grid, over every pair."""
    a = pixels(images)
    return float(np.mean([np.abs(a[i] - a[j]).mean() for i in range(len(a)) for j in range(i + 1, len(a))]))


# -- Stable Diffusion ---------------------------------------------------------------------------


@pytest.mark.smoke
def test_same_request_same_pixels_other_seed_other_pixels(engine, registry):
    first, steps, _ = run(engine, request(registry, "a red fox in the snow --seed 42"))
    assert len(first.images) == 4 and all(image.size == (64, 64) for image in first.images)
    assert first.notices == [] and steps == [(1, 2), (2, 2)]
    again, _, _ = run(engine, request(registry, "a red fox in the snow --seed 42"))
    assert np.array_equal(pixels(first.images), pixels(again.images))
    other, _, _ = run(engine, request(registry, "a red fox in the snow --seed 43"))
    assert np.abs(pixels(first.images) - pixels(other.images)).mean() > 1.0
    assert spread(first.images) > 1.0  # four different pictures, not one four times


def test_chaos_spreads_the_starting_noise():
    shape = (4, 32, 32)
    base = request(load_registry(), "a cat --seed 11")

    def mean_cosine(chaos: int) -> float:
        noise = initial_noise(base.replace(chaos=chaos), shape).flatten(1)
        assert noise.shape == (4, 4096)
        assert torch.all((noise.std(dim=1) > 0.9) & (noise.std(dim=1) < 1.1))  # still unit noise
        unit = noise / noise.norm(dim=1, keepdim=True)
        cos = unit @ unit.T
        return float(cos[~torch.eye(4, dtype=torch.bool)].mean())

    calm, medium, wild = mean_cosine(0), mean_cosine(50), mean_cosine(100)
    assert calm > 0.25 and abs(wild) < 0.1 and wild < medium < calm
    assert torch.equal(initial_noise(base, shape), initial_noise(base, shape))  # deterministic
    assert not torch.equal(initial_noise(base, shape)[0], initial_noise(base.replace(seed=12), shape)[0])


def test_chaos_zero_grids_are_more_alike_than_chaos_hundred(engine, registry):
    calm = [spread(run(engine, request(registry, f"a red fox --seed {s} --chaos 0"))[0].images) for s in (1, 2)]
    wild = [spread(run(engine, request(registry, f"a red fox --seed {s} --chaos 100"))[0].images) for s in (1, 2)]
    assert min(calm) > 1.0  # chaos 0 still makes four different pictures
    assert sum(calm) < 0.95 * sum(wild)  # measured: about 37.5 against 43.5 per grid


def test_multi_prompt_weights_change_the_picture(engine, registry):
    even, _, _ = run(engine, request(registry, "a red fox::1 a blue whale::1 --seed 5"))
    heavy, _, _ = run(engine, request(registry, "a red fox::3 a blue whale::1 --seed 5"))
    same, _, _ = run(engine, request(registry, "a red fox::2 a blue whale::2 --seed 5"))
    assert np.abs(pixels(even.images) - pixels(heavy.images)).mean() > 0.3
    assert np.allclose(pixels(even.images), pixels(same.images), atol=1)  # weights are relative


def test_the_negative_prompt_is_used(engine, registry):
    plain, _, _ = run(engine, request(registry, "a red fox --seed 5"))
    negative, _, _ = run(engine, request(registry, "a red fox --seed 5 --no snow, trees"))
    assert np.abs(pixels(plain.images) - pixels(negative.images)).mean() > 0.5


def test_on_step_reports_every_step_with_a_small_preview(engine, registry):
    result, steps, previews = run(engine, request(registry, "a red fox --seed 1 --steps 4"))
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    preview = previews[0]
    assert max(preview.size) <= PREVIEW_SIDE and min(preview.size) >= 8
    with Image.open(io.BytesIO(png_bytes(preview))) as decoded:  # what the worker sends
        assert decoded.size == preview.size
    assert len(result.images) == 4


def test_should_stop_stops_at_the_next_step(engine, registry):
    with pytest.raises(GenerationStopped):
        run(engine, request(registry, "a red fox --seed 1 --steps 20"), stop_after=1)
    # and the cached pipeline is not left stopped for the next job
    result, steps, _ = run(engine, request(registry, "a red fox --seed 1 --steps 2"))
    assert len(steps) == 2 and len(result.images) == 4


def test_stop_after_one_step_runs_no_more_steps(engine, registry):
    steps: list[int] = []
    with pytest.raises(GenerationStopped):
        engine.generate(request(registry, "a red fox --seed 1 --steps 20"),
                        lambda step, total, preview: steps.append(step), lambda: bool(steps))
    assert steps == [1]


def test_a_prompt_beyond_the_text_encoder_is_cut_with_a_notice(engine, registry):
    long = "cat " * 80 + "zebra"  # "cat" is one token of the tiny vocabulary: 80 + 5 > 75
    result, _, _ = run(engine, request(registry, f"{long} --seed 3"))
    assert len(result.notices) == 1
    notice = result.notices[0]
    assert "75 tokens" in notice and "zebra" in notice and notice.count("cat") == 5
    short, _, _ = run(engine, request(registry, "cat " * 75 + "--seed 3"))
    assert short.notices == []


def test_the_cut_part_of_a_long_pasted_prompt_is_quoted_as_written(caplog):
    """A gallery prompt past 75 tokens: the notice quoted the tokenizer's decoding ("oating
    around her — cinematic lighting , ultra detailed , 8 k ,"), starting inside a word; now the
    prompt is cut between words and the member's own words are quoted. No "Token indices
    sequence length" warning either: a long prompt is expected there."""
    from tests.tiny_models import make_clip_tokenizer
    tokenizer = make_clip_tokenizer()
    pasted = ("Ethereal portrait of a young woman with flowing silver hair, “bioluminescent” jellyfish floating "
              "around her — cinematic lighting, ultra detailed, 8k, octane render, trending on artstation, 🌊✨,")
    notices: list[str] = []
    kept = Engine._fit_tokens(tokenizer, pasted, notices)
    [notice] = notices
    cut = notice.split("was cut: “", 1)[1].removesuffix("”")
    assert pasted == f"{kept} {cut}"  # the two halves are the member's text, split at a space
    assert "ultra detailed, 8k, octane" in cut
    assert len(tokenizer(kept, add_special_tokens=False).input_ids) <= 75
    assert "Token indices" not in caplog.text
    one_word = "x" * 300  # no space to cut at: cut between tokens, as before
    assert len(tokenizer(Engine._fit_tokens(tokenizer, one_word, notices), add_special_tokens=False).input_ids) == 75


@pytest.mark.smoke
def test_variation_from_an_image(engine, registry, picture):
    init = picture(64, 96)
    req = request(registry, "a red fox --seed 8", kind="variation", init_image=init, strength=0.5,
                  width=64, height=96)
    result, steps, _ = run(engine, req)
    assert [image.size for image in result.images] == [(64, 96)] * 4
    resized, _, _ = run(engine, req.replace(width=128, height=128))  # the request's size wins
    assert [image.size for image in resized.images] == [(128, 128)] * 4
    assert steps == [(1, 1)]  # int(2 steps × 0.5)
    again, _, _ = run(engine, req)
    assert np.array_equal(pixels(result.images), pixels(again.images))
    stronger, _, _ = run(engine, req.replace(strength=1.0))
    assert np.abs(pixels(result.images) - pixels(stronger.images)).mean() > 0.05


def test_unknown_model_in_a_request(engine, registry):
    with pytest.raises(UnknownModelError, match="tiny-sd"):
        run(engine, request(registry, "a fox").replace(model="gone"))


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sdxl"])
def test_sd_emphasis_weights_the_embeddings_and_changes_the_picture(engine, registry, model):
    pipe = engine.pipelines.get(registry.get(model), "text2img")
    plain = pipe.encode_prompt(prompt="a red fox in the snow", device="cpu", num_images_per_prompt=1,
                               do_classifier_free_guidance=False)[0]
    # weight 1 everywhere: compel gives exactly diffusers' own embeddings
    assert torch.allclose(weighted_embeds(pipe, "a red fox in the snow", "cpu"), plain, atol=1e-5)
    assert not torch.allclose(weighted_embeds(pipe, "a (red fox:1.6) in the snow", "cpu"), plain, atol=1e-3)

    base, _, _ = run(engine, request(registry, f"a red fox in the snow --seed 5 --model {model}"))
    strong, _, _ = run(engine, request(registry, f"a (red fox:1.6) in the snow --seed 5 --model {model}"))
    doubled, _, _ = run(engine, request(registry, f"a ((red fox)) in the snow --seed 5 --model {model}"))
    assert np.abs(pixels(base.images) - pixels(strong.images)).mean() > 0.3
    assert np.abs(pixels(base.images) - pixels(doubled.images)).mean() > 0.1
    assert strong.notices == []


def test_kandinsky_reads_emphasis_as_plain_words_and_says_so(engine, registry):
    req = request(registry, "a (red fox:1.6) in the snow --seed 6 --model tiny-kandinsky")
    assert req.parts == (("a red fox in the snow", 1.0),)
    assert req.prompt == "a red fox in the snow"  # what the model reads is what is shown
    assert req.notices == ("tiny-kandinsky cannot weight words: the emphasis in “a (red fox:1.6) in the "
                           "snow” is read as plain words.",)
    result, _, _ = run(engine, req)
    same, _, _ = run(engine, request(registry, "a red fox in the snow --seed 6 --model tiny-kandinsky"))
    assert np.array_equal(pixels(result.images), pixels(same.images))
    # in --no alike: the prior reads the plain words, the pictures are those of the plain --no, and it is said
    weighted = request(registry, "a red fox --no (snow:1.5), [trees] --seed 6 --model tiny-kandinsky")
    assert weighted.negative == "snow , trees" and weighted.notices == (
        "tiny-kandinsky cannot weight words: the emphasis in --no “(snow:1.5), [trees]” is read as plain words.",)
    plain = request(registry, "a red fox --no snow , trees --seed 6 --model tiny-kandinsky")
    assert plain.notices == ()
    assert np.array_equal(pixels(run(engine, weighted)[0].images), pixels(run(engine, plain)[0].images))


# -- SDXL ---------------------------------------------------------------------------------------


@pytest.mark.smoke
def test_sdxl(engine, registry, picture):
    req = request(registry, "a red fox::2 a blue whale --seed 4 --model tiny-sdxl --no snow")
    result, steps, _ = run(engine, req)
    assert [image.size for image in result.images] == [(64, 64)] * 4 and steps == [(1, 2), (2, 2)]
    again, _, _ = run(engine, req)
    assert np.array_equal(pixels(result.images), pixels(again.images))
    variation, _, _ = run(engine, req.replace(kind="variation", init_image=picture(64, 64), strength=0.5))
    assert [image.size for image in variation.images] == [(64, 64)] * 4


# -- Kandinsky 2.2 -------------------------------------------------------------------------------


@pytest.mark.smoke
def test_kandinsky_text_to_image(engine, registry):
    req = request(registry, "a red fox --seed 6 --model tiny-kandinsky")
    result, steps, previews = run(engine, req)
    assert [image.size for image in result.images] == [(64, 64)] * 4
    assert steps == [(1, 2), (2, 2)] and previews
    again, _, _ = run(engine, req)
    assert np.array_equal(pixels(result.images), pixels(again.images))


def test_kandinsky_blend_weights_change_the_picture(engine, registry, picture):
    base = request(registry, "a red fox --seed 6 --model tiny-kandinsky",
                   kind="blend", parts=(), images=(picture(64, 64, 1), picture(48, 80, 2)))
    even, _, _ = run(engine, base.replace(image_weights=(1.0, 1.0)))
    uneven, _, _ = run(engine, base.replace(image_weights=(3.0, 0.2)))
    assert [image.size for image in even.images] == [(64, 64)] * 4
    assert np.abs(pixels(even.images) - pixels(uneven.images)).mean() > 0.05
    with_text, _, _ = run(engine, base.replace(parts=(("a red fox", 1.0),), image_weights=(1.0, 1.0)))
    assert np.abs(pixels(even.images) - pixels(with_text.images)).mean() > 0.05


@pytest.mark.parametrize("size", [(192, 64), (64, 192), (100, 100), (301, 97)])
def test_the_prior_is_handed_only_the_centre_square_it_looks_at(engine, registry, size):
    processor = engine.pipelines.get(registry.get("tiny-kandinsky"), "prior").image_processor
    y, x = np.mgrid[0:size[1], 0:size[0]]
    smooth = np.stack([np.sin(x / 9), np.cos(y / 7), np.sin((x + y) / 13)], axis=-1)  # a photo, not noise
    image = Image.fromarray(((smooth + 1) * 127.5).astype(np.uint8))
    view = prior_view(image, processor)
    assert view.size == (min(size),) * 2
    seen = processor(image, return_tensors="pt").pixel_values
    assert seen.shape == processor(view, return_tensors="pt").pixel_values.shape
    # what the processor makes of the square is what it made of the whole picture, up to the
    # rounding of where it crops (another square of the picture is far off)
    assert (seen - processor(view, return_tensors="pt").pixel_values).abs().mean() < 0.15
    if size[0] != size[1]:
        corner = image.crop((0, 0, min(size), min(size)))
        assert (seen - processor(corner, return_tensors="pt").pixel_values).abs().mean() > 0.3


def test_a_stored_input_of_any_shape_costs_the_prior_no_more_than_its_pixels(engine, registry, picture, tmp_path):
    strip = tmp_path / "strip.png"  # 0.8 megapixels: 627 megapixels once scaled to a 224 px short side
    Image.new("RGB", (100_000, 8), (200, 40, 40)).save(strip)
    req = request(registry, "x --seed 6 --model tiny-kandinsky", kind="blend", parts=(),
                  images=(str(strip), picture(64, 64, 1)), image_weights=(1.0, 1.0))
    result, _, _ = run(engine, req)
    assert len(result.images) == 4


def test_kandinsky_variation_steered_by_its_image(engine, registry, picture):
    init = picture(64, 64, 3)
    req = request(registry, "a red fox --seed 6 --model tiny-kandinsky", kind="variation", init_image=init,
                  strength=0.7, images=(init,), image_weights=(1.0,), steps=2)
    result, steps, _ = run(engine, req)
    assert [image.size for image in result.images] == [(64, 64)] * 4 and len(steps) == 1
    textless, _, _ = run(engine, req.replace(parts=()))  # a variation of a blend without text
    assert len(textless.images) == 4


def test_kandinsky_stops_at_the_next_step(engine, registry):
    steps: list[int] = []
    with pytest.raises(GenerationStopped):
        engine.generate(request(registry, "a red fox --seed 1 --steps 30 --model tiny-kandinsky"),
                        lambda step, total, preview: steps.append(step), lambda: bool(steps))
    assert steps == [1]


# -- upscaling ----------------------------------------------------------------------------------


def upscale_request(registry: Registry, init: str, model: str) -> Request:
    return request(registry, "a red fox --seed 9", kind="upscale", model=model, init_image=init, count=1,
                   steps=2, guidance=0.0)


@pytest.mark.smoke
def test_upscale_with_the_model_is_four_times_larger(engine, registry, picture):
    req = upscale_request(registry, picture(32, 48), "tiny-upscaler")
    result, steps, previews = run(engine, req)
    assert [image.size for image in result.images] == [(128, 192)]
    assert result.notices == [] and steps == [(1, 2), (2, 2)] and previews
    again, _, _ = run(engine, req)
    assert np.array_equal(pixels(result.images), pixels(again.images))


def test_upscale_stops_at_the_next_step(engine, registry, picture):
    steps: list[int] = []
    with pytest.raises(GenerationStopped):
        engine.generate(upscale_request(registry, picture(32, 32), "tiny-upscaler").replace(steps=20),
                        lambda step, total, preview: steps.append(step), lambda: bool(steps))
    assert steps == [1]


def test_upscale_without_a_model_resamples_twice_and_says_so(engine, registry, picture):
    result, steps, _ = run(engine, upscale_request(registry, picture(64, 32), RESAMPLE))
    assert [image.size for image in result.images] == [(128, 64)] and steps == []
    assert len(result.notices) == 1 and "×2" in result.notices[0] and "Lanczos" in result.notices[0]


def test_upscale_too_large_for_the_model_resamples(engine, registry, picture):
    result, _, _ = run(engine, upscale_request(registry, picture(1100, 64), "tiny-upscaler"))
    assert [image.size for image in result.images] == [(2200, 128)]
    assert "Too large" in result.notices[0]


CPU_OUT_OF_MEMORY = RuntimeError(
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate "
    "4294967296 bytes. Error code 12 (Cannot allocate memory)")


@pytest.mark.parametrize("error", [
    CPU_OUT_OF_MEMORY,  # a CPU worker (an upscale of an upscale): it failed with the allocator's message
    RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB, other allocations: 1.00 GB)"),
    MemoryError(),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
], ids=["cpu", "mps", "python", "cuda"])
def test_an_upscaler_out_of_memory_on_any_device_resamples_and_says_so(engine, registry, picture, monkeypatch,
                                                                        error):
    real_get = engine.pipelines.get

    def short_of_memory(spec, task, *args, **kwargs):
        if task == "upscale":
            def pipe(*_, **__):
                raise error
            return pipe
        return real_get(spec, task, *args, **kwargs)

    monkeypatch.setattr(engine.pipelines, "get", short_of_memory)
    result, _, _ = run(engine, upscale_request(registry, picture(32, 48), "tiny-upscaler"))
    assert [image.size for image in result.images] == [(64, 96)]  # ×2 resampled instead of ×4
    [notice] = result.notices
    assert notice.startswith("The upscaling model ran out of memory (cpu): enlarged ×2 by Lanczos") and \
        "alloc_cpu" not in notice


def test_an_upscaler_error_that_is_not_memory_still_fails(engine, registry, picture, monkeypatch):
    real_get = engine.pipelines.get

    def broken(spec, task, *args, **kwargs):
        if task == "upscale":
            def pipe(*_, **__):
                raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")
            return pipe
        return real_get(spec, task, *args, **kwargs)

    monkeypatch.setattr(engine.pipelines, "get", broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        run(engine, upscale_request(registry, picture(32, 48), "tiny-upscaler"))


# -- loading ------------------------------------------------------------------------------------


def test_pipeline_cache_evicts_the_least_recently_used(registry):
    cache = PipelineCache(CPU, max_models=1)
    sd = cache.get(registry.get("tiny-sd"), "text2img")
    assert cache.get(registry.get("tiny-sd"), "text2img") is sd  # kept
    img2img = cache.get(registry.get("tiny-sd"), "img2img")
    assert img2img.unet is sd.unet  # built from the same weights, not a second copy
    cache.get(registry.get("tiny-sdxl"), "text2img")
    assert cache.loaded() == ["tiny-sdxl"]


def test_scheduler_override_and_load_errors(registry, tmp_path: Path):
    cache = PipelineCache(CPU, max_models=3)
    spec = dataclasses.replace(registry.get("tiny-sd"), scheduler="DDIMScheduler")
    assert type(cache.get(spec, "text2img").scheduler).__name__ == "DDIMScheduler"
    with pytest.raises(ModelLoadError, match="model 'other': unknown scheduler 'NopeScheduler'"):
        cache.get(dataclasses.replace(spec, name="other", scheduler="NopeScheduler"), "text2img")
    with pytest.raises(ModelLoadError, match="Model 'missing' cannot be loaded") as raised:
        cache.get(dataclasses.replace(spec, name="missing", source=str(tmp_path / "nothing")), "text2img")
    assert raised.value.detail == f"cannot load model 'missing': {tmp_path / 'nothing'} does not exist; " \
        "fix the entry's source (a folder or a hub id)"
    with pytest.raises(ModelLoadError, match="has no prior"):
        cache.get(spec, "prior")


@pytest.mark.parametrize("scheduler", ["DDIMScheduler", "DPMSolverMultistepScheduler"])
def test_a_kandinsky_scheduler_replaces_the_decoders_and_leaves_the_prior_its_own(registry, picture, scheduler):
    """The prior's loop passes `prev_timestep` to its UnCLIPScheduler: any other one fails there."""
    spec = dataclasses.replace(registry.get("tiny-kandinsky"), scheduler=scheduler)
    engine = Engine(dataclasses.replace(registry, models=registry.models | {spec.name: spec}), CPU)
    cache = engine.pipelines
    assert type(cache.get(spec, "text2img").scheduler).__name__ == scheduler
    assert type(cache.get(spec, "img2img").scheduler).__name__ == scheduler
    assert type(cache.get(spec, "prior").scheduler).__name__ == "UnCLIPScheduler"
    result, steps, _ = run(engine, request(registry, "a red fox --seed 6 --model tiny-kandinsky"))
    assert len(result.images) == 4 and steps[-1] == (2, 2)
    init = picture(64, 64, 3)
    blend, _, _ = run(engine, request(registry, "x --seed 6 --model tiny-kandinsky", kind="blend", parts=(),
                                      images=(init, picture(48, 80, 2)), image_weights=(1.0, 1.0)))
    variation, _, _ = run(engine, request(registry, "a red fox --seed 6 --model tiny-kandinsky", kind="variation",
                                          init_image=init, strength=0.7, images=(init,), image_weights=(1.0,)))
    assert len(blend.images) == len(variation.images) == 4


def _accepted(family: str) -> list[str]:
    from generation.families import family_of
    from generation.schedulers import _usable

    return sorted({name for loop in family_of(family).loops[:1] for name in _usable(loop)})


@pytest.mark.parametrize("model, scheduler", [("tiny-sd", name) for name in _accepted("sd")]
                         + [("tiny-kandinsky", name) for name in _accepted("kandinsky22")])
def test_every_scheduler_the_registry_accepts_runs(registry, picture, model, scheduler):
    """What passes the check at start works on first use: a grid in 1 and 2 steps, and a
    variation, with it."""
    spec = dataclasses.replace(registry.get(model), scheduler=scheduler)
    engine = Engine(dataclasses.replace(registry, models=registry.models | {spec.name: spec}), CPU)
    for steps in (1, 2):
        result, done, _ = run(engine, request(registry, f"a red fox --seed 6 --model {model}", steps=steps))
        assert len(result.images) == 4 and done and done[-1][0] == done[-1][1]
        assert np.isfinite(pixels(result.images)).all()
    assert type(engine.pipelines.get(spec, "text2img").scheduler).__name__ == scheduler
    init = picture(64, 64, 3)
    varied, _, _ = run(engine, request(registry, f"a red fox --seed 6 --model {model}", kind="variation",
                                       init_image=init, strength=0.7, steps=4,
                                       **({"images": (init,), "image_weights": (1.0,)} if model != "tiny-sd" else {})))
    assert len(varied.images) == 4 and np.isfinite(pixels(varied.images)).all()


@pytest.mark.parametrize("scheduler", _accepted("upscale-x4"))
def test_every_scheduler_the_registry_accepts_upscales(registry, picture, scheduler):
    spec = dataclasses.replace(registry.get("tiny-upscaler"), scheduler=scheduler)
    engine = Engine(dataclasses.replace(registry, models=registry.models | {spec.name: spec}), CPU)
    result, _, _ = run(engine, upscale_request(registry, picture(32, 32), "tiny-upscaler"))
    assert type(engine.pipelines.get(spec, "upscale").scheduler).__name__ == scheduler
    assert [image.size for image in result.images] == [(128, 128)] and np.isfinite(pixels(result.images)).all()
