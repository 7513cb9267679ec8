"""bot.attachments.fit_image: a picture over the upload limit is re-encoded to fit."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image

from bot.attachments import fit_image


def noisy_png(size: tuple[int, int] = (384, 256), seed: int = 1) -> bytes:
    """Random noise: the worst case for every codec."""
    rng = random.Random(seed)
    image = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def smooth_png(size: tuple[int, int] = (384, 256)) -> bytes:
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=0)  # stored uncompressed: an optimised PNG is far smaller
    return buffer.getvalue()


def test_a_file_under_the_limit_is_sent_as_it_is():
    data = noisy_png()
    fitted = fit_image(data, "pintor-1.png", len(data))
    assert fitted.data is data and fitted.filename == "pintor-1.png" and fitted.changed is None


def test_a_png_that_compresses_stays_a_lossless_png():
    data = smooth_png()
    fitted = fit_image(data, "pintor-2.png", len(data) // 4)
    assert fitted.filename == "pintor-2.png" and fitted.changed == "an optimised PNG"
    assert len(fitted.data) <= len(data) // 4
    with Image.open(io.BytesIO(fitted.data)) as image, Image.open(io.BytesIO(data)) as original:
        assert image.format == "PNG" and image.tobytes() == original.tobytes()


@pytest.mark.parametrize("limit", [200_000, 60_000, 20_000, 3_000])
def test_noise_is_reencoded_to_fit_a_small_limit(limit: int):
    data = noisy_png()
    assert len(data) > limit
    fitted = fit_image(data, "pintor-3.png", limit)
    assert fitted is not None and len(fitted.data) <= limit
    assert fitted.changed
    with Image.open(io.BytesIO(fitted.data)) as image:
        image.load()
        assert image.format in ("WEBP", "JPEG")
        assert fitted.filename == f"pintor-3.{ {'WEBP': 'webp', 'JPEG': 'jpg'}[image.format]}"
        if limit >= 60_000:
            assert image.size == (384, 256)  # re-encoding alone was enough
        else:
            assert image.size[0] < 384 and abs(image.size[0] / image.size[1] - 1.5) < 0.05  # downscaled, same shape


LOSSES = ("an optimised PNG", "WebP", "JPEG (quality 90)", "JPEG (quality 80)", "JPEG (quality 70)",
          "JPEG (quality 60)", "JPEG (quality 50)", "a smaller JPEG")


def test_a_tighter_limit_never_gets_a_smaller_loss():
    data = noisy_png()
    limits = (len(data) - 1, 100_000, 80_000, 60_000, 45_000, 40_000, 20_000, 5_000)
    ranks = [next(i for i, loss in enumerate(LOSSES) if fit_image(data, "x.png", limit).changed.startswith(loss))
             for limit in limits]
    assert ranks == sorted(ranks) and ranks[0] < ranks[-1] == len(LOSSES) - 1


def test_a_limit_nothing_fits_in_gives_none():
    assert fit_image(noisy_png(), "x.png", 100) is None
