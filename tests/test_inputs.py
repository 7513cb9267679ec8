"""Uploaded images are checked by content; bombs are refused before their pixels are decoded."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from generation.inputs import UploadError, open_upload


def png(image: Image.Image, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **params)
    return buffer.getvalue()


def bomb_png(side: int = 10_000) -> bytes:
    """A real, valid PNG of side×side black pixels: about 100 KB on disk, 100 MB decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + one grey byte per pixel
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_a_plain_png_comes_back_as_rgb():
    image = open_upload(png(Image.new("RGB", (40, 30), (10, 200, 30))), "a.png")
    assert image.size == (40, 30) and image.mode == "RGB" and image.getpixel((0, 0)) == (10, 200, 30)


def test_decompression_bomb_is_refused_without_decoding():
    data = bomb_png()
    assert len(data) < 1_000_000
    with pytest.raises(UploadError, match="10000×10000 pixels"):
        open_upload(data, "bomb.png")


def test_text_file_named_png_is_not_an_image():
    with pytest.raises(UploadError, match="notes.png is not an image"):
        open_upload(b"hello, I am text\n" * 20, "notes.png")


@pytest.mark.parametrize("data, message", [
    (b"", "is empty"),
    (b"x" * 2048, "not an image"),
])
def test_empty_and_garbage(data, message):
    with pytest.raises(UploadError, match=message):
        open_upload(data, "f.png")


def test_truncated_png_is_refused():
    data = png(Image.effect_noise((64, 64), 50).convert("RGB"))
    with pytest.raises(UploadError, match="damaged or truncated"):
        open_upload(data[: len(data) // 2], "cut.png")


def test_too_many_bytes_and_too_few_pixels():
    with pytest.raises(UploadError, match="the limit is"):
        open_upload(png(Image.new("RGB", (32, 32))), "big.png", max_bytes=50)
    with pytest.raises(UploadError, match="at least"):
        open_upload(png(Image.new("RGB", (1, 1))), "dot.png")


def test_animation_uses_its_first_frame():
    frames = [Image.new("RGB", (16, 16), color) for color in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    image = open_upload(buffer.getvalue(), "anim.gif")
    r, g, b = image.getpixel((8, 8))
    assert r > 200 and b < 50


def test_transparency_is_flattened_onto_white():
    image = open_upload(png(Image.new("RGBA", (16, 16), (0, 0, 0, 0))), "clear.png")
    assert image.mode == "RGB" and image.getpixel((3, 3)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    source = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buffer = io.BytesIO()
    source.save(buffer, format="JPEG", exif=exif)
    assert open_upload(buffer.getvalue(), "photo.jpg").size == (20, 40)
