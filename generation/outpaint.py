"""Zoom Out, Pan and Make Square: a picture placed on a larger canvas whose new border the model's
inpainting pipeline paints (diffusers' AutoPipelineForInpainting, built from the loaded model's
components or from a dedicated inpainting checkpoint).

The canvas is brought back to the model's pixel budget before painting (the request's width ×
height), so repeated zooms never grow past what the model makes; the picture shrinks on it
instead. The new border starts from the picture stretched over the whole canvas and blurred
(its colours, no detail), and the mask reaches a few pixels into the picture so that the seam
is repainted too; after painting, the picture's own pixels are put back inside that margin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image, ImageDraw, ImageFilter

Extension = tuple[float, float, float, float]  # (left, top, right, bottom), fractions of the picture's side

SEAM_PX = 8  # output pixels of the picture's edge repainted with the border (one latent pixel)


def zoom_extension(factor: float) -> Extension:
    """Zoom Out ×`factor` (1 < factor ≤ 2 as MidJourney's; any factor > 1 works): each side
    grows by (factor − 1) / 2 of the picture, so the picture keeps the canvas's middle."""
    if factor <= 1:
        raise ValueError(f"a zoom out factor must be above 1, not {factor}")
    side = (factor - 1) / 2
    return (side, side, side, side)


PAN_SHARE = 0.5  # Pan extends the picture by half its side in one direction
PAN_DIRECTIONS = {"left": (PAN_SHARE, 0.0, 0.0, 0.0), "up": (0.0, PAN_SHARE, 0.0, 0.0),
                  "right": (0.0, 0.0, PAN_SHARE, 0.0), "down": (0.0, 0.0, 0.0, PAN_SHARE)}


def square_extension(width: int, height: int) -> Extension:
    """Make Square: the shorter side grows on both ends to the longer one. Raises ValueError
    for a square picture."""
    if width == height:
        raise ValueError("the picture is square already")
    if width > height:
        side = (width / height - 1) / 2
        return (0.0, side, 0.0, side)
    side = (height / width - 1) / 2
    return (side, 0.0, side, 0.0)


def canvas_size(width: int, height: int, extension: Extension) -> tuple[int, int]:
    """The canvas's size in the picture's pixels (width × height grown by `extension`)."""
    left, top, right, bottom = extension
    return round(width * (1 + left + right)), round(height * (1 + top + bottom))


def prepare(picture: Image.Image, extension: Extension, size: tuple[int, int]) -> tuple[Image.Image, Image.Image,
                                                                                        Image.Image]:
    """The canvas to paint at `size` (width, height in pixels: the model's budget), the mask
    (L: 255 where the model paints, the border and SEAM_PX into the picture) and the mask
    for putting the picture back (the mask blurred over the seam, so the two blend). The
    picture is scaled with the canvas; the border holds the picture stretched and blurred."""
    canvas_w, canvas_h = canvas_size(picture.width, picture.height, extension)
    scale_x, scale_y = size[0] / canvas_w, size[1] / canvas_h
    left = round(extension[0] * picture.width * scale_x)
    top = round(extension[1] * picture.height * scale_y)
    inner = (max(1, round(picture.width * scale_x)), max(1, round(picture.height * scale_y)))
    placed = picture.convert("RGB").resize(inner, Image.Resampling.LANCZOS)
    stretched = picture.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    canvas = stretched.filter(ImageFilter.GaussianBlur(max(size) / 16))
    canvas.paste(placed, (left, top))
    mask = Image.new("L", size, 255)
    keep = (left + SEAM_PX if left > 0 else 0, top + SEAM_PX if top > 0 else 0,
            left + inner[0] - (SEAM_PX if left + inner[0] < size[0] else 0),
            top + inner[1] - (SEAM_PX if top + inner[1] < size[1] else 0))
    ImageDraw.Draw(mask).rectangle((keep[0], keep[1], keep[2] - 1, keep[3] - 1), fill=0)
    blend = mask.filter(ImageFilter.GaussianBlur(SEAM_PX / 2))
    return canvas, mask, blend


def paint(pipe: Any, picture: Image.Image, extension: Extension, *, width: int, height: int, steps: int,
          guidance: float, generators: list[Any], embeds: dict[str, Any],
          callback: Callable[..., Any] | None = None) -> list[Image.Image]:
    """`len(generators)` pictures of width × height pixels: `picture` on the canvas `extension`
    describes, its border painted by `pipe` (a diffusers inpainting pipeline of the Stable
    Diffusion families, or Kandinsky 2.2's) with the prompt embeddings `embeds` (torch tensors
    for len(generators) images; Kandinsky: its prior's `image_embeds` and
    `negative_image_embeds`), each from its own torch.Generator (seeded by the caller: this
    module stays free of torch, the Studio imports it); the picture's own pixels put back where
    the mask kept them. `callback`: the pipeline's callback_on_step_end. Raises what diffusers
    raises."""
    canvas, mask, blend = prepare(picture, extension, (width, height))
    count = len(generators)
    # Stable Diffusion's inpainting pipelines start from the canvas noised by `strength` (1: all
    # the way); Kandinsky 2.2's (embeds: image_embeds) always starts from noise and has none
    strength = {} if "image_embeds" in embeds else {"strength": 1.0}
    out: list[Image.Image] = pipe(
        image=[canvas] * count, mask_image=[mask] * count, width=width, height=height,
        num_inference_steps=steps, guidance_scale=guidance,
        generator=generators,
        callback_on_step_end=callback, **strength, **embeds).images
    return [Image.composite(image.convert("RGB").resize((width, height)), canvas, blend) for image in out]
