"""Upscale (Creative)'s second half: an enlarged picture repainted at a low image-to-image
strength by the model that made it, so that new detail appears where the upscaler only
sharpened. Large pictures are repainted tile by tile (generation/tiling.py) at the model's
native side, so the pass costs what a native-size picture costs, whatever the size."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from generation.tiling import blend_tiles

LATENT_MULTIPLE = 8  # Stable Diffusion's VAE: sides must be multiples of 8 pixels


def repaint(pipe: Any, image: Image.Image, *, strength: float, steps: int, guidance: float, seed: int,
            embeds: dict[str, torch.Tensor], tile: int, callback: Callable[..., Any] | None = None,
            should_stop: Callable[[], bool] | None = None) -> Image.Image:
    """`image` (RGB) repainted by `pipe` (a diffusers image-to-image pipeline of the Stable
    Diffusion families) at `strength` (0–1; diffusers runs int(steps × strength) steps, at
    least 1 needed) and `guidance`, with the prompt embeddings `embeds` (for one image: the
    engine's `_prompt_embeds` with count 1) and the same seed for every tile. `tile`: the
    model's native side in pixels: a picture no larger than 1.25 × tile on each side is
    repainted whole, a larger one in tiles of `tile` pixels overlapping by a quarter.
    `callback`: the pipeline's callback_on_step_end (progress, cancel). Returns an image of the
    same size. Raises tiling.Stop when `should_stop()` says so between tiles, and what
    diffusers raises."""

    def run(part: Image.Image) -> Image.Image:
        width, height = part.size
        fitted = (max(LATENT_MULTIPLE, width // LATENT_MULTIPLE * LATENT_MULTIPLE),
                  max(LATENT_MULTIPLE, height // LATENT_MULTIPLE * LATENT_MULTIPLE))
        source = part if part.size == fitted else part.resize(fitted, Image.Resampling.LANCZOS)
        out: Image.Image = pipe(image=[source], strength=strength, num_inference_steps=steps,
                                guidance_scale=guidance, generator=[torch.Generator().manual_seed(seed)],
                                callback_on_step_end=callback, **embeds).images[0]
        return out if out.size == part.size else out.resize(part.size, Image.Resampling.LANCZOS)

    if max(image.width, image.height) <= tile * 5 // 4:
        return run(image)
    return blend_tiles(image, run, scale=1, tile=tile, overlap=tile // 4, should_stop=should_stop)
