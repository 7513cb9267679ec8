"""--tile: pictures that repeat seamlessly, by circular padding in the denoiser's and the
decoder's convolutions.

A convolution pads its input before it slides over it; with zeros, the picture's edges see a
black border and the left edge never meets the right one. With circular padding (torch's
`padding_mode="circular"`) every convolution sees the opposite edge beyond each border, so the
UNet denoises a torus and the VAE decodes one: the picture's right edge continues into its left,
its bottom into its top. This is how AUTOMATIC1111's "Tiling" option and InvokeAI's "seamless"
work. The text encoders (no convolutions over the picture) are left alone.

The modules belong to the cached pipeline, shared by every job: `circular` switches them for one
run and always puts back what each convolution had, so the next job is made as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from PIL import Image

# the pipeline components that convolve over the picture: the denoiser, the VAE (Stable
# Diffusion) and MoVQ (Kandinsky's decoder)
PICTURE_COMPONENTS = ("unet", "vae", "movq")


def picture_convolutions(pipe: Any) -> list[torch.nn.Conv2d]:
    """The 2-D convolutions of `pipe`'s picture components (PICTURE_COMPONENTS that it has)
    that pad their input: each one once, even where two pipelines share a module."""
    seen: dict[int, torch.nn.Conv2d] = {}
    for name in PICTURE_COMPONENTS:
        component = getattr(pipe, name, None)
        if not isinstance(component, torch.nn.Module):
            continue
        for module in component.modules():
            if isinstance(module, torch.nn.Conv2d) and any(p > 0 for p in _padding(module)):
                seen.setdefault(id(module), module)
    return list(seen.values())


def _padding(conv: torch.nn.Conv2d) -> tuple[int, ...]:
    padding = conv.padding
    if isinstance(padding, str):  # "same" (padding counts are in _reversed_padding_repeated_twice)
        return tuple(conv._reversed_padding_repeated_twice)
    return tuple(padding)


@contextmanager
def circular(pipe: Any, enabled: bool = True) -> Iterator[int]:
    """Within the block, `pipe`'s picture convolutions pad circularly (the pictures it makes
    tile seamlessly); after it, even when the block raises, each convolution's own padding mode
    is back. Yields how many convolutions were switched (0 when not `enabled`).

    torch's Conv2d reads `padding_mode` at every forward call (circular padding is an F.pad
    with mode "circular" by the counts the module computed when built), so switching the
    attribute is enough; a compiled UNet (torch.compile) recompiles for the other mode."""
    convolutions = picture_convolutions(pipe) if enabled else []
    before = [conv.padding_mode for conv in convolutions]
    try:
        for conv in convolutions:
            conv.padding_mode = "circular"
        yield len(convolutions)
    finally:
        for conv, mode in zip(convolutions, before, strict=True):
            conv.padding_mode = mode


# Pixels of the opposite edges laid around a tiling picture before it is enlarged: enough for
# an ESRGAN network's receptive field at its edges (about 10 pixels for the compact SRVGGNet)
# and for Lanczos's 3-pixel kernel, so the enlarged picture's edges are computed from their
# true neighbours and it still tiles.
WRAP_MARGIN = 16


def wrap_pad(image: Image.Image, margin: int = WRAP_MARGIN) -> Image.Image:
    """`image` (W × H) with `margin` pixels of its opposite edges around it, as the tiling
    plane holds them: (W + 2·margin) × (H + 2·margin). `margin` ≤ min(W, H)."""
    pixels = np.asarray(image)
    pad = [(margin, margin), (margin, margin)] + [(0, 0)] * (pixels.ndim - 2)
    return Image.fromarray(np.pad(pixels, pad, mode="wrap"))


def unpad(enlarged: Image.Image, original: tuple[int, int], margin: int = WRAP_MARGIN) -> Image.Image:
    """The part of an enlarged `wrap_pad`ded picture that is the enlarged original (`original`:
    its W × H before padding): the margin, at the enlargement's scale, cut off."""
    width, height = original
    scale_x = enlarged.width / (width + 2 * margin)
    scale_y = enlarged.height / (height + 2 * margin)
    left, top = round(margin * scale_x), round(margin * scale_y)
    return enlarged.crop((left, top, left + round(width * scale_x), top + round(height * scale_y)))
