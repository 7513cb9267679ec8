"""generation.imaging: the grid, PNG bytes, checksums and atomic writes."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generation.imaging import flatten_to_rgb, make_grid, png_bytes, sha256, write_atomic

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def tiles(count: int, size=(10, 6)) -> list[Image.Image]:
    return [Image.new("RGB", size, colour) for colour in COLOURS[:count]]


def test_four_images_make_a_two_by_two_grid():
    grid = make_grid(tiles(4))
    assert grid.size == (20, 12) and grid.mode == "RGB"
    # 1 2 / 3 4, as the U1–U4 buttons number them
    assert grid.getpixel((0, 0)) == COLOURS[0]
    assert grid.getpixel((19, 0)) == COLOURS[1]
    assert grid.getpixel((0, 11)) == COLOURS[2]
    assert grid.getpixel((19, 11)) == COLOURS[3]
    assert grid.getpixel((9, 5)) == COLOURS[0] and grid.getpixel((10, 6)) == COLOURS[3]


def test_one_image_and_odd_counts():
    single = make_grid(tiles(1), columns=1)
    assert single.size == (10, 6) and single.getpixel((5, 3)) == COLOURS[0]
    three = make_grid(tiles(3))
    assert three.size == (20, 12)
    assert three.getpixel((0, 11)) == COLOURS[2] and three.getpixel((19, 11)) == (0, 0, 0)
    row = make_grid(tiles(2), columns=4)
    assert row.size == (20, 6)


def test_png_bytes_and_sha256():
    image = tiles(1)[0]
    data = png_bytes(image)
    assert data.startswith(b"\x89PNG")
    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.size == image.size and decoded.convert("RGB").getpixel((0, 0)) == COLOURS[0]
    assert sha256(data) == hashlib.sha256(data).hexdigest()
    assert png_bytes(image) == data  # the same picture encodes to the same bytes


def test_write_atomic_creates_folders_and_leaves_no_temp_files(tmp_path: Path):
    path = tmp_path / "jobs" / "7" / "grid.png"
    write_atomic(path, b"first")
    assert path.read_bytes() == b"first"
    assert os.listdir(path.parent) == ["grid.png"]


def test_write_atomic_replaces_by_renaming(tmp_path: Path):
    path = tmp_path / "1.png"
    write_atomic(path, b"old")
    reader = path.open("rb")  # a reader that opened the old file keeps reading it whole
    old_inode = path.stat().st_ino
    write_atomic(path, b"new contents")
    assert path.read_bytes() == b"new contents"
    assert path.stat().st_ino != old_inode  # a new file renamed over the old one, not rewritten in place
    assert reader.read() == b"old"
    reader.close()
    assert os.listdir(tmp_path) == ["1.png"]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_failure_mid_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str):
    path = tmp_path / "1.png"
    write_atomic(path, b"old")

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, broken)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, b"new" * 1000)
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["1.png"]  # the temp file is cleaned up


def test_an_interrupt_mid_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "grid.png"
    write_atomic(path, b"old")

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["grid.png"]


# -- flatten_to_rgb: every mode Pillow opens, with a viewer's brightness --------------------

_DTYPES = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2", "I": "<i4", "F": "<f4"}


def deep(mode: str, samples) -> Image.Image:
    """An image of a high-bit-depth mode from its raw samples (one row)."""
    array = np.asarray([samples], dtype=_DTYPES[mode])
    return Image.frombytes(mode, (array.shape[1], 1), array.tobytes())


@pytest.mark.parametrize("mode, samples", [
    ("I;16", [0, 257, 32768, 65535]),
    ("I;16L", [0, 257, 32768, 65535]),
    ("I;16B", [0, 257, 32768, 65535]),
    ("I", [0, 257, 32768, 65535]),
    ("F", [0.0, 1 / 255, 0.5, 1.0]),
])
def test_high_bit_depth_is_scaled_to_eight_bits_not_clipped(mode, samples):
    flat = flatten_to_rgb(deep(mode, samples))
    assert flat.mode == "RGB"
    assert [flat.getpixel((x, 0)) for x in range(4)] == [(v, v, v) for v in (0, 1, 128, 255)]


@pytest.mark.parametrize("mode, samples, expected", [
    ("I", [-5, 70_000], [0, 255]),
    ("F", [-0.5, 3.0], [0, 255]),
])
def test_values_beyond_black_and_white_are_clipped_at_the_ends(mode, samples, expected):
    flat = flatten_to_rgb(deep(mode, samples))
    assert [flat.getpixel((x, 0)) for x in range(2)] == [(value,) * 3 for value in expected]


def test_a_high_bit_depth_colour_key_becomes_white():
    image = deep("I;16", [1000, 32768])
    image.info["transparency"] = 1000
    flat = flatten_to_rgb(image)
    assert flat.getpixel((0, 0)) == (255, 255, 255) and flat.getpixel((1, 0)) == (128, 128, 128)


@pytest.mark.parametrize("image", [
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)),
    Image.new("LA", (4, 4), (0, 0)),
    Image.new("PA", (4, 4), (0, 0)),
    Image.new("RGBa", (4, 4), (0, 0, 0, 0)),
    Image.new("La", (4, 4), (0, 0)),
], ids=lambda image: image.mode)
def test_every_alpha_mode_is_composed_onto_white(image):
    assert flatten_to_rgb(image).getcolors() == [(16, (255, 255, 255))]


@pytest.mark.parametrize("mode, colour, key", [
    ("RGB", (9, 9, 9), (9, 9, 9)), ("L", 9, 9), ("1", 1, 1), ("P", 7, 7),
])
def test_a_colour_key_is_composed_onto_white(mode, colour, key):
    image = Image.new(mode, (4, 4), colour)
    image.info["transparency"] = key
    assert flatten_to_rgb(image).getcolors() == [(16, (255, 255, 255))]


def test_opaque_pictures_keep_their_colours():
    for image in (Image.new("RGB", (4, 4), (10, 20, 30)), Image.new("CMYK", (4, 4), (0, 0, 0, 0)),
                  Image.new("L", (4, 4), 77), Image.new("RGBA", (4, 4), (10, 20, 30, 255))):
        colours = flatten_to_rgb(image).getcolors()
        assert colours is not None and len(colours) == 1
    assert flatten_to_rgb(Image.new("RGB", (4, 4), (10, 20, 30))).getpixel((0, 0)) == (10, 20, 30)
    assert flatten_to_rgb(Image.new("L", (4, 4), 77)).getpixel((0, 0)) == (77, 77, 77)
