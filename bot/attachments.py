"""Pictures as Discord attachments: made to fit the upload limit of the place they go to.

Discord refuses a file over the limit (10 MiB by default, more on boosted servers; every
interaction says which in `attachment_size_limit`, `Interaction.filesize_limit` in
discord.py). A result must never fail to post for being too large, so a file over the limit
is re-encoded, step by step, from the smallest loss to the largest: an optimised PNG
(lossless), a high-quality WebP, JPEG at falling quality, and as the last resort a smaller
JPEG. The original stays on disk, untouched.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from pathlib import PurePath

from PIL import Image, features

from generation.imaging import flatten_to_rgb

log = logging.getLogger(__name__)

DEFAULT_UPLOAD_LIMIT_BYTES = 10 * 1024 * 1024  # Discord's limit for servers without boosts
WEBP_QUALITY = 90
JPEG_QUALITIES = (90, 80, 70, 60, 50)
DOWNSCALE_JPEG_QUALITY = 80
MIN_SIDE_PX = 16  # below this, a picture is not worth sending


@dataclass(frozen=True)
class FittedImage:
    data: bytes
    filename: str
    changed: str | None = None  # None: the original file; else how it was re-encoded, in words

    @property
    def size_bytes(self) -> int:
        return len(self.data)


def human_size(size_bytes: int) -> str:
    if size_bytes >= 1024 * 1024:
        return f"{size_bytes / (1024 * 1024):.4g} MiB"
    return f"{max(1, round(size_bytes / 1024))} KiB"


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def fit_image(data: bytes, filename: str, limit_bytes: int) -> FittedImage | None:
    """`data` (an image file) as it is if it fits in `limit_bytes`, else re-encoded to fit.

    None only if not even a tiny JPEG fits (a limit of a few hundred bytes). CPU work: call
    it through `asyncio.to_thread` from the event loop.
    """
    if len(data) <= limit_bytes:
        return FittedImage(data, filename)
    stem = PurePath(filename).stem
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        image = opened.copy()

    attempts: list[tuple[str, str, dict, str]] = [("PNG", "png", {"optimize": True}, "an optimised PNG")]
    if features.check("webp"):
        attempts.append(("WEBP", "webp", {"quality": WEBP_QUALITY, "method": 4},
                         f"WebP (quality {WEBP_QUALITY})"))
    attempts += [("JPEG", "jpg", {"quality": q, "optimize": True}, f"JPEG (quality {q})") for q in JPEG_QUALITIES]
    for fmt, extension, options, words in attempts:
        encoded = _encode(image if fmt != "JPEG" else flatten_to_rgb(image), fmt, **options)
        if len(encoded) <= limit_bytes:
            return FittedImage(encoded, f"{stem}.{extension}", words)

    # Last resort: fewer pixels. JPEG size grows about with the pixel count.
    small, encoded = flatten_to_rgb(image), b""
    while True:
        size = len(encoded) or len(_encode(small, "JPEG", quality=DOWNSCALE_JPEG_QUALITY))
        scale = min(0.9, math.sqrt(limit_bytes / size) * 0.95)
        width, height = round(small.width * scale), round(small.height * scale)
        if min(width, height) < MIN_SIDE_PX:
            log.warning("%s (%d bytes) cannot be made to fit %d bytes", filename, len(data), limit_bytes)
            return None
        small = small.resize((width, height), Image.Resampling.LANCZOS)
        encoded = _encode(small, "JPEG", quality=DOWNSCALE_JPEG_QUALITY, optimize=True)
        if len(encoded) <= limit_bytes:
            return FittedImage(encoded, f"{stem}.jpg",
                               f"a smaller JPEG ({width}×{height}, quality {DOWNSCALE_JPEG_QUALITY})")
