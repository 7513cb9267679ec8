"""Running an image operation tile by tile, so that any picture fits a fixed memory budget.

The picture is cut into squares of `tile` pixels that overlap their neighbours by `overlap`
pixels; each tile is processed on its own (enlarged by a super-resolution network, repainted by
image to image) and the results are blended back with weights that cross-fade across each
overlap (an image border keeps full weight), so no seam shows. The quarter of an overlap nearest
a tile's edge, which the operation saw with too little context, gets no weight from that tile:
for a convolutional network whose receptive field is within that quarter, the tiled result is
the untiled one, and the only cost is the overlap computed twice. The result is assembled on the
CPU in float32; the device only ever holds one tile.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

TileCallback = Callable[[int, int], None]  # (tiles done, tiles in all), after each tile


class Stop(Exception):
    """`blend_tiles` was told to stop between tiles."""


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where the tiles along one side of `length` pixels start: first at 0, last ending at the
    side's end, neighbours overlapping by at least `overlap` pixels (evenly spread). One tile
    covers a side no longer than `tile`. Raises ValueError when `overlap` ≥ `tile`."""
    if not 0 <= overlap < tile:
        raise ValueError(f"the overlap ({overlap}) must be smaller than the tile ({tile})")
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    stride = (length - tile) / (count - 1)
    return [round(i * stride) for i in range(count)]


def tile_count(width: int, height: int, *, tile: int, overlap: int) -> int:
    """How many tiles a width × height picture is cut into."""
    return len(tile_starts(width, tile, overlap)) * len(tile_starts(height, tile, overlap))


def _ramp(length: int, before: int, after: int) -> torch.Tensor:
    """Blend weights along one side of a tile: over the `before` pixels it shares with the
    previous tile, 0 for the first quarter (the pixels nearest its edge, which the network saw
    with too little context), then rising linearly, then 1 for the last quarter; mirrored over
    the `after` pixels it shares with the next; 1 elsewhere. Where one tile has 0 its neighbour
    has 1, so the weights at every pixel add up to more than 0."""
    weights = torch.ones(length)
    for shared, side in ((before, 1), (after, -1)):
        if not shared:
            continue
        margin = shared // 4
        ramp = torch.zeros(shared)
        middle = shared - 2 * margin
        ramp[margin:margin + middle] = torch.arange(1, middle + 1) / (middle + 1)
        ramp[margin + middle:] = 1
        if side == 1:
            weights[:shared] = ramp
        else:
            weights[length - shared:] = ramp.flip(0)
    return weights


def _ramps(starts: list[int], tile: int, length: int, scale: int) -> list[torch.Tensor]:
    ramps = []
    for i, start in enumerate(starts):
        end = min(start + tile, length)
        before = (starts[i - 1] + tile - start) if i > 0 else 0
        after = (end - starts[i + 1]) if i + 1 < len(starts) else 0
        ramps.append(_ramp((end - start) * scale, before * scale, after * scale))
    return ramps


def blend_tiles(image: Image.Image, process: Callable[[Image.Image], Image.Image], *, scale: int, tile: int,
                overlap: int, on_tile: TileCallback | None = None,
                should_stop: Callable[[], bool] | None = None) -> Image.Image:
    """`image` (RGB, W × H) processed tile by tile into an sW × sH picture (s = `scale`).

    `process(tile)` takes an RGB tile (at most `tile` × `tile` pixels) and returns it `scale`
    times as large. `on_tile(done, total)` is called after each tile; `should_stop()` before
    each: when it says so, `Stop` is raised. Raises ValueError when overlap ≥ tile or a processed
    tile has the wrong size; what `process` raises passes through."""
    pixels = np.asarray(image.convert("RGB"))
    height, width = pixels.shape[:2]
    xs, ys = tile_starts(width, tile, overlap), tile_starts(height, tile, overlap)
    x_ramps, y_ramps = _ramps(xs, tile, width, scale), _ramps(ys, tile, height, scale)
    total = torch.zeros(height * scale, width * scale, 3)
    weight = torch.zeros(height * scale, width * scale, 1)
    done = 0
    for y, y_ramp in zip(ys, y_ramps, strict=True):
        for x, x_ramp in zip(xs, x_ramps, strict=True):
            if should_stop is not None and should_stop():
                raise Stop()
            part = Image.fromarray(np.ascontiguousarray(pixels[y:y + tile, x:x + tile]))
            out = process(part)
            wanted = (part.width * scale, part.height * scale)
            if out.size != wanted:
                raise ValueError(f"a {part.width}×{part.height} tile came back {out.width}×{out.height}, "
                                 f"not {wanted[0]}×{wanted[1]}")
            mask = (y_ramp[:, None] * x_ramp[None, :])[:, :, None]
            rows, cols = slice(y * scale, y * scale + wanted[1]), slice(x * scale, x * scale + wanted[0])
            total[rows, cols] += torch.from_numpy(np.asarray(out.convert("RGB"), dtype=np.float32)) * mask
            weight[rows, cols] += mask
            done += 1
            if on_tile is not None:
                on_tile(done, len(xs) * len(ys))
    result = (total / weight).clamp(0, 255).round().to(torch.uint8).numpy()
    return Image.fromarray(np.ascontiguousarray(result))
