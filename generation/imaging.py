"""Pictures as files: the 2×2 grid, PNG encoding, checksums and atomic writes."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def make_grid(images: list[Image.Image], columns: int = 2) -> Image.Image:
    """Images of one size side by side, `columns` per row (a 2×2 grid for four)."""
    width, height = images[0].size
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (width * min(columns, len(images)), height * rows))
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * width, (i // columns) * height))
    return grid


# Modes with more than 8 bits per sample → the sample value that shows as white. 16-bit PNGs
# open as I;16 (older Pillow: I); Pillow keeps their 0–65535 range in I as well. Float images
# hold 0.0–1.0, as image viewers (and TIFF/EXR tools) read them.
HIGH_BIT_WHITE: dict[str, float] = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535,
                                    "I": 65535, "F": 1.0}
ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}  # modes with an alpha band (premultiplied or not)


def to_8_bit(image: Image.Image) -> Image.Image:
    """An I;16*, I or F image as L with the brightness a viewer shows (value × 255 / white,
    rounded; outside 0…white clipped), its colour key (info["transparency"]) as an alpha band
    (LA). Pillow's own convert() would clip every value above 255 to white instead.
    Other modes come back unchanged."""
    white = HIGH_BIT_WHITE.get(image.mode)
    if white is None:
        return image
    samples = np.asarray(image).astype(np.float64)
    grey = Image.fromarray(np.rint(np.clip(samples * (255 / white), 0, 255)).astype(np.uint8), "L")
    key = image.info.get("transparency")
    if isinstance(key, (int, float)) and not isinstance(key, bool):
        alpha = Image.fromarray(np.where(samples == key, 0, 255).astype(np.uint8), "L")
        return Image.merge("LA", (grey, alpha))
    return grey


def flatten_to_rgb(image: Image.Image) -> Image.Image:
    """`image` in any mode Pillow opens, as RGB with the brightness a viewer shows it with.

    High-bit-depth samples are scaled to 8 bits (`to_8_bit`), not clipped. Transparency in
    any form is composed onto white: an alpha band (RGBA, LA, PA), premultiplied alpha (RGBa,
    La), a palette's transparent entries, and a colour key (info["transparency"] on 1, L, RGB
    or I;16: pixels of exactly that value are transparent).
    """
    image = to_8_bit(image)
    if image.mode == "La":
        image = image.convert("LA")  # Pillow converts La to LA only
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")  # applies a palette's or a colour key's transparency
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


# zlib's fastest level: lossless all the same, and on a smooth 512² picture about 10 % more bytes
# for a third less time than Pillow's default (6) (issue 35; benchmarks/finishing.py measures it).
PNG_COMPRESS_LEVEL = 1


def png_bytes(image: Image.Image) -> bytes:
    """`image` as a PNG file's bytes, losslessly, at zlib's fastest level (PNG_COMPRESS_LEVEL)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file beside `path`, flush it to disk, then rename: a reader (or a crash)
    sees the old file or the whole new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
