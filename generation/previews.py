"""Previews of a run's latents while it denoises: what a member sees in the progress message.

Two ways: a linear projection of the latent channels to RGB (costs next to nothing, looks
like a blurred sketch of the picture), or a tiny decoder (TAESD / TAESDXL, diffusers'
`AutoencoderTiny`, configured per model with `preview = "madebyollin/taesd"` or a folder) that
shows the picture as the VAE would, at a few milliseconds on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import AutoencoderTiny
from PIL import Image

from generation.imaging import make_grid

# Stable Diffusion latent channels → RGB, a linear approximation good enough for a preview
# (no VAE decode, so a preview costs next to nothing): the factors fitted for SD 1.x by keturn,
# "Decoding latents to RGB without upscaling" (discuss.huggingface.co/t/23204), rows L1–L4.
_LATENT_RGB = torch.tensor([
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
])
PREVIEW_SIDE = 192  # pixels, the preview grid's longer side: small, to edit into a message once a second

# (latents, width, height) → preview grid; see latents_preview for the shapes
Preview = Callable[[torch.Tensor, int, int], Image.Image]


def _tile_size(width: int, height: int) -> tuple[int, int]:
    """One tile of the two-column preview grid, for a picture of width × height pixels."""
    scale = PREVIEW_SIDE / (2 * max(width, height))
    return max(8, round(width * scale)), max(8, round(height * scale))


def _grid(rgb: torch.Tensor, width: int, height: int) -> Image.Image:
    """Tiles of `rgb` (batch, 3, h, w) with values in [-1, 1], as a two-column grid."""
    pixels = ((rgb.float().clamp(-1, 1) + 1) * 127.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    size = _tile_size(width, height)
    return make_grid([Image.fromarray(tile).resize(size, Image.Resampling.BILINEAR) for tile in pixels])


def latents_preview(latents: torch.Tensor, width: int, height: int) -> Image.Image:
    """A small preview grid (two columns) of a batch of latents, without decoding them.

    `latents`: shape (batch, channels, H/8, W/8), any dtype and device; 4 channels (Stable
    Diffusion, Kandinsky) are projected to RGB by _LATENT_RGB, other counts show their first
    three. `width`, `height`: the final image's size in pixels, for the aspect ratio. Returns an
    RGB image whose longer side is about PREVIEW_SIDE pixels (each tile at least 8×8). Costs a
    few milliseconds: no VAE decode.
    """
    lat = latents.detach().float().cpu()
    if lat.shape[1] == 4:
        rgb = torch.einsum("bchw,cr->brhw", lat, _LATENT_RGB)
    else:
        rgb = lat[:, :3]
    return _grid(rgb, width, height)


class TinyDecoderPreview:
    """Previews decoded by a tiny autoencoder (TAESD for SD 1.x/2.x, TAESDXL for SDXL).

    `decoder`: an AutoencoderTiny on the device and in the dtype the latents come in. It reads
    the UNet's latents as they are (its scaling factor is 1.0: TAESD was trained on the scaled
    latents), so it fits only the family it was made for; latents with another channel count
    fall back to latents_preview."""

    def __init__(self, decoder: Any):  # an AutoencoderTiny (diffusers' models are untyped)
        self.decoder = decoder

    def __call__(self, latents: torch.Tensor, width: int, height: int) -> Image.Image:
        """The preview grid of `latents` (batch, 4, H/8, W/8), as latents_preview returns it."""
        if latents.shape[1] != self.decoder.config.latent_channels:
            return latents_preview(latents, width, height)
        parameter = next(self.decoder.parameters())
        with torch.no_grad():
            # decoded at the latents' size ×8, then scaled down to the tile: fine detail is lost
            # anyway, and decoding smaller latents would blur the picture's layout
            rgb = self.decoder.decode(latents.detach().to(parameter.device, parameter.dtype)).sample
        return _grid(rgb, width, height)


def load_tiny_decoder(source: str, device: str, dtype: torch.dtype) -> Any:
    """An AutoencoderTiny from a hub id or a folder (as models load: from the hub's cache, or
    downloaded unless HF_HUB_OFFLINE is set), on `device` in `dtype`, in eval mode. Raises
    OSError or ValueError when it cannot be loaded (not downloaded while offline, not an
    AutoencoderTiny folder)."""
    decoder: Any = AutoencoderTiny.from_pretrained(source, dtype=dtype)  # type: ignore[no-untyped-call]
    decoder.to(device)
    decoder.eval()
    return decoder
