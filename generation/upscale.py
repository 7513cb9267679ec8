"""How much an upscale enlarges, and upscaling without a model: the honest fallback when none is
configured or it cannot run."""

from __future__ import annotations

from PIL import Image

RESAMPLE = "resample"  # the model name of an upscale job that no model serves
RESAMPLE_FACTOR = 2
ESRGAN_FACTOR = 2  # Upscale (Subtle) / (Creative): ×2, as MidJourney's, whatever the network's own scale
MODEL_FACTOR = 4  # Stable Diffusion x4 upscaler
MAX_UPSCALED_SIDE = 4096
CREATIVE_STRENGTH = 0.3  # image to image after the upscale: new detail, the same picture


def can_upscale(width: int, height: int) -> bool:
    return max(width, height) * RESAMPLE_FACTOR <= MAX_UPSCALED_SIDE


def upscale_factor(width: int, height: int, *, with_model: bool) -> int:
    """How much an upscale enlarges: ×4 by the SD x4 upscaler (`with_model`) while the result
    stays within the limit, else ×2 (an ESRGAN-family network, or resampling)."""
    fits = max(width, height) * MODEL_FACTOR <= MAX_UPSCALED_SIDE
    return MODEL_FACTOR if with_model and fits else RESAMPLE_FACTOR


def resample(image: Image.Image, factor: int = RESAMPLE_FACTOR) -> Image.Image:
    """Lanczos resampling: sharp, no invented detail."""
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.LANCZOS)
