"""The tiny offline pipelines of tests/tiny_models.py load through from_pretrained and run."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForText2Image,
    KandinskyV22Img2ImgPipeline,
    KandinskyV22Pipeline,
    KandinskyV22PriorPipeline,
    StableDiffusionUpscalePipeline,
)
from PIL import Image

from tests.tiny_models import build_all, make_clip_tokenizer

DTYPE = torch.float32


def _gen(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


def _image(size: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def sd_pipe(tiny_models):
    pipe = AutoPipelineForText2Image.from_pretrained(tiny_models["sd"], dtype=DTYPE)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cpu")


def test_tokenizer_roundtrip(tmp_path):
    tok = make_clip_tokenizer()
    assert tok.model_max_length == 77
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"
    text = "The cat and the dog, über 日本!"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.unk_token_id not in ids[1:-1]  # byte-level: every character is covered
    assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == text.lower().replace(" ", "")
    padded = tok(text, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(padded) == 77
    long = tok("word " * 200, truncation=True, max_length=tok.model_max_length).input_ids
    assert len(long) == 77
    tok.save_pretrained(tmp_path)
    tok2 = type(tok).from_pretrained(tmp_path)
    assert tok2(text).input_ids == ids and len(tok2) == len(tok) and tok2.model_max_length == 77


def test_build_all_is_idempotent(tiny_models):
    root = tiny_models["sd"].parent
    marker = tiny_models["sd"] / "unet" / "config.json"
    before = marker.stat().st_mtime_ns
    assert build_all(root) == tiny_models
    assert marker.stat().st_mtime_ns == before
    for path in tiny_models.values():
        assert (path / "model_index.json").exists()


def test_sd_text2img_batch_and_determinism(sd_pipe):
    assert isinstance(sd_pipe, diffusers.StableDiffusionPipeline)
    kw = dict(num_inference_steps=2, height=64, width=64, num_images_per_prompt=2)
    out = sd_pipe("a cat", generator=_gen(1), **kw).images
    assert len(out) == 2 and all(im.size == (64, 64) for im in out)
    again = sd_pipe("a cat", generator=_gen(1), **kw).images
    other = sd_pipe("a cat", generator=_gen(2), **kw).images
    arr = [np.asarray(im) for im in out]
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(arr, again, strict=True))
    assert not np.array_equal(arr[0], np.asarray(other[0]))
    assert not np.array_equal(arr[0], arr[1])  # the batch's two images differ
    assert float(np.std(arr[0])) > 0  # not a flat image


def test_sd_default_size_is_64(sd_pipe):
    out = sd_pipe("a dog", num_inference_steps=2, generator=_gen(0)).images
    assert out[0].size == (64, 64)


def test_sd_explicit_latents_and_step_callback(sd_pipe):
    latents = torch.randn((1, 4, 8, 8), generator=_gen(5), dtype=DTYPE)
    calls: list[int] = []

    def on_step(pipe, step, timestep, kwargs):
        calls.append(step)
        assert kwargs["latents"].shape == (1, 4, 8, 8)
        return kwargs

    kw = dict(num_inference_steps=2, height=64, width=64, output_type="np")
    a = sd_pipe("a cat", latents=latents.clone(), callback_on_step_end=on_step, **kw).images
    b = sd_pipe("a cat", latents=latents.clone(), **kw).images
    assert calls == [0, 1]
    assert a.shape == (1, 64, 64, 3)
    np.testing.assert_array_equal(a, b)


def test_sd_img2img(tiny_models):
    pipe = AutoPipelineForImage2Image.from_pretrained(tiny_models["sd"], dtype=DTYPE)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe, diffusers.StableDiffusionImg2ImgPipeline)
    out = pipe("a cat", image=_image(64), strength=0.5, num_inference_steps=4, generator=_gen(0))
    assert out.images[0].size == (64, 64)


def test_sdxl_text2img(tiny_models):
    pipe = AutoPipelineForText2Image.from_pretrained(tiny_models["sdxl"], dtype=DTYPE)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe, diffusers.StableDiffusionXLPipeline)
    out = pipe("a cat", num_inference_steps=2, height=64, width=64, generator=_gen(0))
    assert out.images[0].size == (64, 64)


def test_kandinsky22(tiny_models):
    prior = KandinskyV22PriorPipeline.from_pretrained(tiny_models["kandinsky22-prior"], dtype=DTYPE)
    decoder = KandinskyV22Pipeline.from_pretrained(tiny_models["kandinsky22"], dtype=DTYPE)
    for p in (prior, decoder):
        p.set_progress_bar_config(disable=True)

    emb = prior("a cat", num_inference_steps=2, generator=_gen(0))
    assert emb.image_embeds.shape == (1, 32) == emb.negative_image_embeds.shape
    assert emb.image_embeds.abs().sum() > 0  # clip_std is ones, not the all-zero default
    image = decoder(
        image_embeds=emb.image_embeds,
        negative_image_embeds=emb.negative_image_embeds,
        height=64,
        width=64,
        num_inference_steps=2,
        generator=_gen(0),
    ).images[0]
    assert image.size == (64, 64)

    # blends of text and images (of any size), deterministic per generator
    img1, img2 = _image(48, 1), _image(100, 2)
    mix = lambda w: prior.interpolate(  # noqa: E731
        ["a cat", img1, img2], w, num_inference_steps=2, generator=_gen(3)
    )
    a, a2, b = mix([0.3, 0.3, 0.4]), mix([0.3, 0.3, 0.4]), mix([0.8, 0.1, 0.1])
    assert a.image_embeds.shape == (1, 32)
    torch.testing.assert_close(a.image_embeds, a2.image_embeds)
    assert not torch.allclose(a.image_embeds, b.image_embeds)

    img2img = KandinskyV22Img2ImgPipeline.from_pretrained(tiny_models["kandinsky22"], dtype=DTYPE)
    img2img.set_progress_bar_config(disable=True)
    out = img2img(
        image=_image(64),
        image_embeds=a.image_embeds,
        negative_image_embeds=a.negative_image_embeds,
        height=64,
        width=64,
        strength=0.5,
        num_inference_steps=4,
        generator=_gen(0),
    ).images[0]
    assert out.size == (64, 64)


def test_upscaler_x4(tiny_models):
    pipe = StableDiffusionUpscalePipeline.from_pretrained(tiny_models["upscaler-x4"], dtype=DTYPE)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a cat", image=_image(32), num_inference_steps=2, generator=_gen(0)).images[0]
    assert out.size == (128, 128)
