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

A VAE that decodes (or encodes) in tiles (above PINTOR_VAE_TILING_PIXELS) cuts the torus into
overlapping tiles, each decoded on its own and cross-faded with its neighbours: circular padding
inside a tile would wrap the tile, not the picture. So for a --tile run the VAE's tiled decode
is replaced by `wrapping_tiles`: the tiles are cut from the torus (the latents with their first
rows and columns laid again after the last, decoded with the VAE's own padding as diffusers'
tiled decode is), and the copy past the edge is cross-faded into the picture's start exactly as
neighbouring tiles are (`AutoencoderKL.blend_h`/`blend_v`'s linear ramp): the edge becomes one
more seam between tiles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
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
    vae = getattr(pipe, "vae", None) if enabled else None
    with wrapping_tiles(vae) if _tiles(vae) else nullcontext():
        try:
            for conv in convolutions:
                conv.padding_mode = "circular"
            yield len(convolutions)
        finally:
            for conv, mode in zip(convolutions, before, strict=True):
                conv.padding_mode = mode


def _tiles(vae: Any) -> bool:
    """Whether `vae` has diffusers' AutoencoderKL tiled decode (0.42: `tiled_decode(z,
    return_dict)`, which its `_decode` calls through the instance, and the tile sizes)."""
    return vae is not None and all(hasattr(vae, name) for name in
                                   ("tiled_decode", "tile_sample_min_size", "tile_latent_min_size",
                                    "tile_overlap_factor"))


@contextmanager
def wrapping_tiles(vae: Any) -> Iterator[None]:
    """Within the block, `vae`'s tiled decode (an AutoencoderKL's, used when its tiling is on
    and the latents are larger than one tile) treats the picture as a torus: the result wraps
    around its edges as a tiled decode's neighbouring tiles meet (`wrapped`). Each tile is
    decoded with the VAE's convolutions as they were when the block began (the VAE's own
    padding, as in a plain tiled decode); after the block the VAE's own decode is back.
    Shapes are the decode's own: latents (B, C, h, w) → pixels (B, 3, 8h, 8w).

    The tiled encode (image to image of a large --tile picture) is left as diffusers does it,
    each tile padded circularly: a variation's seam measured 1.11 times the inside's step so
    (tests/test_seamless.py pins it under 1.2); the encode's tiles cut from the torus as well
    measured the same (1.11, tried on 2026-12-07), so that is not done."""
    from diffusers.models.autoencoders.vae import DecoderOutput

    convolutions = [m for m in vae.modules() if isinstance(m, torch.nn.Conv2d)]
    modes = [conv.padding_mode for conv in convolutions]
    # what neighbouring tiles cross-fade over (diffusers' blend_extent), on the input's side
    scale = max(1, vae.tile_sample_min_size // max(1, vae.tile_latent_min_size))
    margin = max(1, -(-int(vae.tile_sample_min_size * vae.tile_overlap_factor) // scale))  # in latents
    own = vars(vae).get("tiled_decode")
    decode = vae.tiled_decode

    def with_own_padding(call: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(tensor: torch.Tensor) -> torch.Tensor:
            now = [conv.padding_mode for conv in convolutions]
            try:
                for conv, mode in zip(convolutions, modes, strict=True):
                    conv.padding_mode = mode
                return call(tensor)
            finally:
                for conv, mode in zip(convolutions, now, strict=True):
                    conv.padding_mode = mode
        return run

    def tiled_decode(z: torch.Tensor, return_dict: bool = True) -> Any:
        sample = wrapped(with_own_padding(lambda t: decode(t, return_dict=False)[0]), z, margin)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    vae.tiled_decode = tiled_decode
    try:
        yield
    finally:
        if own is None:
            vars(vae).pop("tiled_decode", None)
        else:
            vae.tiled_decode = own


def wrapped(tiled: Callable[[torch.Tensor], torch.Tensor], tensor: torch.Tensor, margin: int) -> torch.Tensor:
    """`tiled(tensor)` (a tiled pass: (B, C, h, w) → (B, C', h·r, w·r)) of a tensor that wraps
    around: `tiled` runs on the tensor with its first `margin` rows and columns laid again after
    its last (so the tiles that cross the right and bottom edges see the true neighbours), and
    the part of the result past each edge, a second version of the start, is cross-faded into
    the start with a linear ramp over margin·r (AutoencoderKL.blend_h's: the copy's weight 1 at
    the first column, 0 at the last of the ramp). Returns (B, C', h·r, w·r). `margin` ≥ 1; a
    side shorter than it uses its whole length."""
    height, width = tensor.shape[-2:]
    my, mx = min(margin, height), min(margin, width)
    extended = torch.cat([tensor, tensor[..., :, :mx]], dim=-1)
    extended = torch.cat([extended, extended[..., :my, :]], dim=-2)
    out = tiled(extended)
    ry, rx = out.shape[-2] / extended.shape[-2], out.shape[-1] / extended.shape[-1]
    out = _fold(out, round(width * rx), round(mx * rx), dim=-1)
    return _fold(out, round(height * ry), round(my * ry), dim=-2)


def _fold(out: torch.Tensor, size: int, extent: int, dim: int) -> torch.Tensor:
    """`out`'s first `size` positions along `dim`, its first `extent` cross-faded from the copy
    at [size, size + extent) (weight 1 → 0) to themselves (weight 0 → 1)."""
    head, copy = out.narrow(dim, 0, extent), out.narrow(dim, size, extent)
    shape = [1] * out.dim()
    shape[dim] = extent
    ramp = (torch.arange(extent, device=out.device, dtype=torch.float32) / extent).reshape(shape).to(out.dtype)
    return torch.cat([copy * (1 - ramp) + head * ramp, out.narrow(dim, extent, size - extent)], dim=dim)


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
