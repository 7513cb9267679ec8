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


# The colour channels a network may read and write, as spandrel reports them
# (`input_channels`, `output_channels`): 1 is grey (Pintor feeds it the picture's luma, Y of
# YCbCr, and puts the picture's own colour back around what it writes), 3 RGB, 4 RGBA (fed
# opaque; the alpha it writes is dropped). Others mean nothing Pintor can feed or show.
CHANNELS = (1, 3, 4)


def unusable(model: Any) -> str | None:
    """Why Pintor cannot enlarge pictures with `model` (a spandrel ImageModelDescriptor, or
    anything with `input_channels`, `output_channels` and `scale`), in words for the admin; or
    None when it can: channels in CHANNELS, a whole scale of at least 1 (a ×1 network's result,
    like any scale's, is brought to the upscale's factor by Lanczos)."""
    channels = (model.input_channels, model.output_channels)
    if any(count not in CHANNELS for count in channels):
        return (f"it reads {channels[0]} and writes {channels[1]} colour channels per pixel; Pintor "
                "feeds and reads 1 (grey), 3 (RGB) or 4 (RGBA)")
    scale = model.scale
    if not isinstance(scale, int) or scale < 1:
        return f"its scale is {scale!r}; Pintor uses networks that enlarge by a whole factor of 1 or more"
    return None


def load_esrgan(name: str, path: str, device: DeviceChoice) -> Any:
    """The super-resolution model in the weights file `path` (of registry entry `name`), on
    `device`, in float16 where the device computes in float16 and the architecture supports it
    (else float32), in eval mode: a spandrel `ImageModelDescriptor` (`.scale`: 1, 2, 4 or 8;
    `.input_channels`/`.output_channels`: 1, 3 or 4, see CHANNELS).

    Raises ModelLoadError when the file is missing or unreadable, holds no image-to-image
    model spandrel knows (an inpainting model, an unknown architecture), or one Pintor cannot
    use (`unusable`: its channel counts or scale); the detail names the entry and the file."""
    import spandrel  # imported on first use: it loads torchvision

    if not Path(path).expanduser().is_file():
        raise ModelLoadError(member_message(name), f"cannot load upscaler '{name}': {path} does not exist")
    try:
        model = spandrel.ModelLoader().load_from_file(Path(path).expanduser())
    # spandrel checks a state dict's shapes with assertions (an RRDBNet or SRVGGNet whose last
    # layer fits no (scale, channels) pair raises AssertionError)
    except (spandrel.UnsupportedModelError, ValueError, OSError, RuntimeError, KeyError, AssertionError) as err:
        raise ModelLoadError(member_message(name), f"cannot load upscaler '{name}' from {path}: "
                             f"{type(err).__name__}: {err}") from err
    if not isinstance(model, spandrel.ImageModelDescriptor):
        raise ModelLoadError(member_message(name), f"cannot load upscaler '{name}' from {path}: it is a "
                             f"{model.purpose} model, not one that enlarges pictures")
    if (why := unusable(model)) is not None:
        raise ModelLoadError(member_message(name), f"cannot use upscaler '{name}' from {path}: {why}")
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

    A grey network (1 channel in) reads each tile's luma (Y of YCbCr: a grey picture's own
    values); a network that writes 1 channel gives the result's luma, and the tile's colour
    (Cb, Cr) enlarged by Lanczos completes it; a 4-channel one reads the tile opaque and its
    alpha is dropped (CHANNELS). The result is RGB.

    `on_tile(done, total)` after each tile; `should_stop()` before each (tiling.Stop is raised
    when it says so). Raises what torch raises (torch.OutOfMemoryError among them)."""
    scale = int(model.scale)
    channels_in, channels_out = int(getattr(model, "input_channels", 3)), int(getattr(model, "output_channels", 3))

    def run(part: Image.Image) -> Image.Image:
        if channels_in == 1:
            planes = np.asarray(part.convert("YCbCr"), dtype=np.float32)[..., :1]
        else:
            planes = np.asarray(part, dtype=np.float32)
            if channels_in == 4:
                planes = np.concatenate([planes, np.full_like(planes[..., :1], 255)], axis=-1)
        pixels = torch.from_numpy(planes / 255.0).permute(2, 0, 1).unsqueeze(0)
        out = model(pixels.to(model.device, model.dtype))[0].float().clamp(0, 1).mul(255).round()
        result = np.ascontiguousarray(out.to(torch.uint8).permute(1, 2, 0).cpu().numpy())
        if channels_out != 1:
            return Image.fromarray(np.ascontiguousarray(result[..., :3]))
        size = (part.width * scale, part.height * scale)
        colour = np.asarray(part.convert("YCbCr").resize(size, Image.Resampling.LANCZOS))
        return Image.fromarray(np.dstack([result[..., 0], colour[..., 1], colour[..., 2]]), mode="YCbCr").convert("RGB")

    enlarged = blend_tiles(image, run, scale=scale, tile=tile, overlap=overlap, on_tile=on_tile,
                           should_stop=should_stop)
    size = (image.width * factor, image.height * factor)
    return enlarged if enlarged.size == size else enlarged.resize(size, Image.Resampling.LANCZOS)
