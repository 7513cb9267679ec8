"""Super-resolution by a model of the ESRGAN family (ESRGAN/RRDBNet, Real-ESRGAN and its compact
SRVGGNet, 4x-UltraSharp, SwinIR…): the `.pth`/`.safetensors` files admins already have, loaded with
spandrel (the loader ComfyUI and chaiNNer use; it reads the architecture and scale from the
state dict), run tile by tile (generation/tiling.py) so that any picture fits a fixed memory
budget on the GPU or the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from generation.availability import ModelLoadError, member_message
from generation.devices import DeviceChoice
from generation.tiling import TileCallback, blend_tiles

# Input pixels per tile side and shared between neighbours: ComfyUI's and chaiNNer's order of
# size. An RRDBNet ×4 (23 blocks, 64 features) on a 256-pixel tile holds about 1 GiB of
# activations in float32 at its ×4 stage, half of that in float16.
TILE_SIDE = 256
TILE_OVERLAP = 32


def load_esrgan(name: str, path: str, device: DeviceChoice) -> Any:
    """The super-resolution model in the weights file `path` (of registry entry `name`), on
    `device`, in float16 where the device computes in float16 and the architecture supports it
    (else float32), in eval mode: a spandrel `ImageModelDescriptor` (`.scale`: 1, 2, 4 or 8).

    Raises ModelLoadError when the file is missing or unreadable, or holds no image-to-image
    model spandrel knows (an inpainting model, an unknown architecture)."""
    import spandrel  # imported on first use: it loads torchvision

    if not Path(path).expanduser().is_file():
        raise ModelLoadError(member_message(name), f"cannot load upscaler '{name}': {path} does not exist")
    try:
        model = spandrel.ModelLoader().load_from_file(Path(path).expanduser())
    except (spandrel.UnsupportedModelError, ValueError, OSError, RuntimeError, KeyError) as err:
        raise ModelLoadError(member_message(name), f"cannot load upscaler '{name}' from {path}: "
                             f"{type(err).__name__}: {err}") from err
    if not isinstance(model, spandrel.ImageModelDescriptor):
        raise ModelLoadError(member_message(name), f"cannot load upscaler '{name}' from {path}: it is a "
                             f"{model.purpose} model, not one that enlarges pictures")
    if device.dtype == torch.float16 and model.supports_half:
        model.half()
    elif device.dtype == torch.bfloat16 and model.supports_bfloat16:
        model.bfloat16()
    return model.to(torch.device(device.device)).eval()


def enlarge(model: Any, image: Image.Image, factor: int, *, tile: int = TILE_SIDE, overlap: int = TILE_OVERLAP,
            on_tile: TileCallback | None = None, should_stop: Callable[[], bool] | None = None) -> Image.Image:
    """`image` (RGB, W × H) enlarged to factor·W × factor·H by `model` (`load_esrgan`'s, of scale
    s), tile by tile: `tile` × `tile` input pixels at a time, `overlap` shared (see
    generation/tiling.py), so peak device memory is that of one tile whatever the picture's
    size. Where s differs from `factor` (a ×4 model for a ×2 upscale), the network's result is
    brought to the factor by Lanczos resampling, which keeps its detail.

    `on_tile(done, total)` after each tile; `should_stop()` before each (tiling.Stop is raised
    when it says so). Raises what torch raises (torch.OutOfMemoryError among them)."""
    scale = int(model.scale)

    def run(part: Image.Image) -> Image.Image:
        pixels = torch.from_numpy(np.asarray(part, dtype=np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)
        out = model(pixels.to(model.device, model.dtype))[0].float().clamp(0, 1).mul(255).round()
        return Image.fromarray(np.ascontiguousarray(out.to(torch.uint8).permute(1, 2, 0).cpu().numpy()))

    enlarged = blend_tiles(image, run, scale=scale, tile=tile, overlap=overlap, on_tile=on_tile,
                           should_stop=should_stop)
    size = (image.width * factor, image.height * factor)
    return enlarged if enlarged.size == size else enlarged.resize(size, Image.Resampling.LANCZOS)
