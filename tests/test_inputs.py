"""Uploaded images are checked by content; bombs are refused before their pixels are decoded."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

from generation.inputs import UploadError, open_upload, to_srgb


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


@pytest.mark.parametrize("kept", [300, 600, 2000])
def test_a_photo_cut_inside_its_header_is_called_truncated(kept: int):
    """A phone JPEG (EXIF block first) cut off early, as a broken download leaves it: Pillow
    fails while reading the header, before any pixel. Found by /describe's tests."""
    exif = Image.Exif()
    exif[0x010F] = "Phone"
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.effect_noise((480, 320), 50).convert("RGB").save(buffer, format="JPEG", exif=exif)
    with pytest.raises(UploadError, match="cut.jpg is damaged or truncated"):
        open_upload(buffer.getvalue()[:kept], "cut.jpg")


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


# -- what cameras, phones and image editors really write ------------------------------------


def raw_png(width: int, height: int, depth: int, colour_type: int, rows: list[bytes],
            *chunks: tuple[bytes, bytes]) -> bytes:
    """A PNG written byte by byte, for what Pillow cannot save: 16-bit RGB(A), 16-bit keys."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    idat = zlib.compress(b"".join(b"\x00" + row for row in rows))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + b"".join(chunk(k, d) for k, d in chunks)
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def grey16_png(samples: np.ndarray, **params) -> bytes:
    """A 16-bit greyscale PNG as Pillow saves it (mode I;16)."""
    image = Image.fromarray(samples.astype(np.uint16))
    assert image.mode == "I;16"
    return png(image, **params)


def mpo(main: Image.Image, second: Image.Image, orientation: int | None = None) -> bytes:
    """A JPEG with a second picture appended (MPO), as phones write portrait photos."""
    exif = Image.Exif()
    exif[0x010F] = "Phone"  # Make: Pillow writes the MPO index only beside an EXIF block
    if orientation is not None:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    main.save(buffer, format="MPO", save_all=True, append_images=[second], exif=exif)
    data = buffer.getvalue()
    with Image.open(io.BytesIO(data)) as opened:
        assert opened.format == "MPO" and opened.n_frames == 2
    return data


def grey_of(image: Image.Image, xy=(0, 0)) -> int:
    r, g, b = image.getpixel(xy)
    assert r == g == b
    return r


def test_a_mid_grey_16_bit_png_stays_mid_grey():
    image = open_upload(grey16_png(np.full((16, 16), 32768)), "grey16.png")
    assert image.mode == "RGB" and grey_of(image) == 128  # not 255: scaled, not clipped


def test_a_16_bit_ramp_keeps_its_brightness_from_black_to_white():
    ramp = np.tile(np.linspace(0, 65535, 256).round(), (32, 1))
    image = open_upload(grey16_png(ramp), "ramp16.png")
    row = [grey_of(image, (x, 4)) for x in range(256)]
    assert row[0] == 0 and row[-1] == 255
    assert all(abs(value - x) <= 1 for x, value in enumerate(row))  # value / 257: the viewer's grey
    assert sum(v == 255 for v in row) == 1


@pytest.mark.parametrize("colour_type, sample, expected", [
    (2, struct.pack(">3H", 32768, 16384, 65535), (128, 64, 255)),  # 16-bit RGB
    (6, struct.pack(">4H", 32768, 16384, 65535, 65535), (128, 64, 255)),  # 16-bit RGBA, opaque
    (4, struct.pack(">2H", 32768, 65535), (128, 128, 128)),  # 16-bit grey + alpha, opaque
    (0, struct.pack(">H", 16384), (64, 64, 64)),  # 16-bit grey, written by another encoder
], ids=["rgb16", "rgba16", "grey-alpha16", "grey16-raw"])
def test_other_16_bit_pngs_keep_their_brightness(colour_type, sample, expected):
    image = open_upload(raw_png(8, 8, 16, colour_type, [sample * 8] * 8), "deep.png")
    assert image.getpixel((3, 3)) == expected


def test_an_mpo_photo_is_a_jpeg_whose_main_picture_is_used():
    data = mpo(Image.new("RGB", (40, 24), (230, 20, 20)), Image.new("RGB", (40, 24), (20, 20, 230)))
    image = open_upload(data, "portrait.jpg")
    r, g, b = image.getpixel((20, 12))
    assert image.size == (40, 24) and r > 200 and b < 60  # the main (red) picture, not the blue one


@pytest.mark.parametrize("orientation, size", [(6, (24, 40)), (8, (24, 40)), (3, (40, 24)), (1, (40, 24))])
def test_an_mpo_photo_is_turned_by_its_exif_orientation(orientation, size):
    main = Image.new("RGB", (40, 24), (230, 20, 20))
    main.paste((20, 230, 20), (0, 0, 10, 6))  # a green corner shows which way it turned
    image = open_upload(mpo(main, Image.new("RGB", (40, 24), (20, 20, 230)), orientation), "camera.jpg")
    assert image.size == size
    corner = {1: (2, 2), 3: (37, 21), 6: (21, 2), 8: (2, 37)}[orientation]
    r, g, b = image.getpixel(corner)
    assert g > 200 and r < 60, (orientation, image.getpixel(corner))


@pytest.mark.parametrize("image, key", [
    (Image.new("RGB", (16, 16), (0, 0, 0)), (0, 0, 0)),
    (Image.new("RGB", (16, 16), (12, 200, 90)), (12, 200, 90)),
    (Image.new("L", (16, 16), 0), 0),
    (Image.new("1", (16, 16), 0), 0),
    (Image.new("P", (16, 16), 3), 3),
], ids=["rgb-black", "rgb-green", "grey", "one-bit", "palette"])
def test_a_fully_transparent_colour_keyed_png_is_white(image, key):
    if image.mode == "P":
        image.putpalette([0, 0, 0] * 256)
    data = png(image, transparency=key)
    with Image.open(io.BytesIO(data)) as opened:
        assert opened.info["transparency"] == key and opened.mode == image.mode  # the key, not alpha
    flat = open_upload(data, "clear.png")
    assert flat.getcolors() == [(256, (255, 255, 255))]


def test_a_colour_key_hides_only_its_colour():
    image = Image.new("RGB", (16, 16), (0, 0, 0))
    image.paste((40, 80, 160), (0, 0, 8, 16))
    flat = open_upload(png(image, transparency=(0, 0, 0)), "half.png")
    assert flat.getpixel((2, 2)) == (40, 80, 160) and flat.getpixel((12, 2)) == (255, 255, 255)


def test_a_16_bit_grey_colour_key_is_flattened_onto_white():
    samples = np.full((16, 16), 32768)
    samples[:, :8] = 1000
    flat = open_upload(grey16_png(samples, transparency=1000), "key16.png")
    assert grey_of(flat, (2, 2)) == 255 and grey_of(flat, (12, 2)) == 128


def test_a_16_bit_rgb_colour_key_is_flattened_onto_white():
    keyed, kept = struct.pack(">3H", 4660, 22136, 39612), struct.pack(">3H", 32768, 32768, 32768)
    data = raw_png(8, 8, 16, 2, [keyed * 4 + kept * 4] * 8, (b"tRNS", keyed))
    flat = open_upload(data, "key-rgb16.png")
    assert flat.getpixel((1, 1)) == (255, 255, 255) and flat.getpixel((6, 1)) == (128, 128, 128)


def test_a_colour_key_survives_the_exif_rotation():
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    flat = open_upload(png(image, transparency=(0, 0, 0), exif=exif), "turned.png")
    assert flat.size == (20, 40) and flat.getcolors() == [(800, (255, 255, 255))]


def test_semi_transparent_grey_with_alpha_is_composed_onto_white():
    flat = open_upload(png(Image.new("LA", (16, 16), (0, 128))), "la.png")
    assert grey_of(flat) == 127  # half black over white


@pytest.mark.parametrize("size", [(100_000, 8), (8, 100_000), (8 * 9, 8), (640, 79)])
def test_extreme_shapes_are_refused_from_the_header_naming_the_ratio(size):
    data = png(Image.new("L", size))
    assert len(data) < 200_000  # small files: only the shape is wrong
    with pytest.raises(UploadError, match=rf"{size[0]}×{size[1]} pixels; the long side may be at most 8 times .*8:1"):
        open_upload(data, "strip.png")


@pytest.mark.parametrize("size", [(64, 8), (8, 64), (640, 80), (1920, 1080)])
def test_shapes_up_to_the_ratio_are_accepted(size):
    assert open_upload(png(Image.new("RGB", size)), "wide.png").size == size


@pytest.mark.parametrize("fmt, name", [("HEIF", "IMG_4021.HEIC"), ("AVIF", "PXL_2026.avif")])
def test_a_phones_heic_or_avif_photo_is_read_upright(fmt, name):
    """An iPhone's HEIC photo (and an Android's AVIF) held sideways: read, EXIF orientation 6
    applied as for a JPEG (the left half, green, ends on top)."""
    if fmt not in Image.registered_extensions().values():
        pytest.skip(f"this Pillow reads no {fmt}")
    photo = Image.new("RGB", (64, 48), (200, 30, 40))
    photo.paste((10, 200, 10), (0, 0, 32, 48))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to show
    buffer = io.BytesIO()
    photo.save(buffer, format=fmt, exif=exif.tobytes(), quality=95)
    upright = open_upload(buffer.getvalue(), name)
    assert upright.mode == "RGB" and upright.size == (48, 64)
    (red, green, _), (red_below, green_below, _) = upright.getpixel((24, 5)), upright.getpixel((24, 60))
    assert green > 180 > red and red_below > 180 > green_below


def heif(brand: bytes) -> bytes:
    """The start of an ISO base media file as a phone writes a photo: an "ftyp" box naming its
    brand, then a "meta" box with nothing in it (a photo cut short: no reader takes it)."""
    ftyp = brand + b"\x00\x00\x00\x00" + b"mif1" + brand
    return struct.pack(">I", 8 + len(ftyp)) + b"ftyp" + ftyp + struct.pack(">I", 24) + b"meta" + b"\x00" * 16


@pytest.mark.parametrize("brand, said", [(b"heic", "HEIC"), (b"heix", "HEIC"), (b"mif1", "HEIF"),
                                         (b"avif", "AVIF")])
def test_a_phones_photo_that_cannot_be_read_is_named_not_called_not_an_image(brand, said):
    """An iPhone's photo was answered "is not an image"; one that cannot be read (here: cut
    short; an AVIF on a Pillow older than 11.2) is named, and the member learns what to send."""
    with pytest.raises(UploadError, match=f"IMG_4021.HEIC is a {said} photo, which Pintor cannot read: send it as"):
        open_upload(heif(brand), "IMG_4021.HEIC")


def test_a_format_pintor_does_not_take_is_named():
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, format="ICO")
    with pytest.raises(UploadError, match=r"f\.ico is in ICO format; send PNG"):
        open_upload(buffer.getvalue(), "f.ico")


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ " + bytes(4) + _s15(x) + _s15(y) + _s15(z)


def _icc(space: bytes, tags: list[tuple[bytes, bytes]]) -> bytes:
    """A minimal ICC v2 display profile of colour space `space` (b"RGB " or b"GRAY") with these
    tags (ICC.1:2001-04: header, tag table, tag data)."""
    offset, table, data = 128 + 4 + 12 * len(tags), b"", b""
    for signature, body in tags:
        body += bytes(-len(body) % 4)
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    header = (struct.pack(">I", offset + len(data)) + bytes(4) + bytes([2, 0x10, 0, 0]) + b"mntr" + space
              + b"XYZ " + bytes(12) + b"acsp" + bytes(28) + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + bytes(48))
    return header + struct.pack(">I", len(tags)) + table + data


def _curve(gamma: float) -> bytes:
    return b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256))


def _description(text: bytes) -> bytes:
    return b"desc" + bytes(4) + struct.pack(">I", len(text) + 1) + text + b"\0" + bytes(78)


def rgb_profile(primaries: list[tuple[float, float, float]], gamma: float = 2.2) -> bytes:
    """A minimal ICC v2 RGB display profile: the D50-adapted XYZ of the red, green and blue
    primaries and one gamma curve (desc/wtpt/?XYZ/?TRC tags). Pillow can make only sRGB, LAB
    and XYZ profiles itself."""
    curve = _curve(gamma)
    return _icc(b"RGB ", [(b"desc", _description(b"test P3")), (b"wtpt", _xyz(0.9642, 1.0, 0.8249)),
                          (b"rXYZ", _xyz(*primaries[0])), (b"gXYZ", _xyz(*primaries[1])),
                          (b"bXYZ", _xyz(*primaries[2])), (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)])


def grey_profile(gamma: float) -> bytes:
    """A minimal ICC v2 grey profile: the D50 white point and one gamma curve (desc/wtpt/kTRC),
    as scanners and cameras embed in greyscale files."""
    return _icc(b"GRAY", [(b"desc", _description(b"test grey")), (b"wtpt", _xyz(0.9642, 1.0, 0.8249)),
                          (b"kTRC", _curve(gamma))])


# Display P3's primaries adapted to D50, as Apple's "Display P3" profile has them
DISPLAY_P3 = [(0.5151, 0.2412, -0.0011), (0.2920, 0.6922, 0.0419), (0.1571, 0.0666, 0.7841)]


@pytest.mark.parametrize("fmt, mode", [("JPEG", "RGB"), ("PNG", "RGB"), ("PNG", "RGBA"), ("WEBP", "RGB"),
                                       ("HEIF", "RGB")])
def test_a_display_p3_photo_is_converted_to_srgb_not_read_washed_out(fmt, mode):
    """A phone's photo tagged Display P3 was read as if it were sRGB: its colours came out
    duller than the member sees them. Now converted through its profile (littlecms): the same
    orange is more saturated in sRGB numbers."""
    buffer = io.BytesIO()
    Image.new(mode, (32, 32), (200, 100, 50)).save(buffer, format=fmt, icc_profile=rgb_profile(DISPLAY_P3),
                                                   quality=100)
    red, green, blue = open_upload(buffer.getvalue(), "IMG_0001." + fmt.lower()).getpixel((5, 5))
    assert red >= 212 and green <= 95 and blue <= 28  # littlecms: (216, 93, 24); as read before: (200, 100, 50)


@pytest.mark.parametrize("profile", [ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes(),
                                     b"not a profile" * 20])
def test_an_srgb_or_unreadable_profile_leaves_the_colours_as_they_are(profile):
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 100, 50)).save(buffer, format="PNG", icc_profile=profile)
    assert all(abs(a - b) <= 1 for a, b in zip(open_upload(buffer.getvalue(), "x.png").getpixel((5, 5)),  # type: ignore[arg-type]
                                                (200, 100, 50), strict=True))


def srgb_of_linear(value: int) -> int:
    """The sRGB 8-bit value of a linear-light 8-bit value (IEC 61966-2-1's transfer function):
    what a gamma-1.0 profile's grey must become."""
    linear = value / 255
    encoded = 12.92 * linear if linear <= 0.0031308 else 1.055 * linear ** (1 / 2.4) - 0.055
    return round(255 * encoded)


def saved(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def near(pixel, expected, tolerance: int = 2) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


ORANGE_IN_P3_AS_SRGB = (216, 93, 24)  # (200, 100, 50) in Display P3, through littlecms


def palette_picture(transparent_index: int | None = None) -> Image.Image:
    """16×16, left half orange (200, 100, 50), right half blue, in palette mode ("P")."""
    image = Image.new("P", (16, 16), 0)
    image.putpalette([200, 100, 50, 30, 60, 200] + [0] * (256 * 3 - 6))
    image.paste(1, (8, 0, 16, 16))
    if transparent_index is not None:
        image.info["transparency"] = transparent_index
    return image


def test_a_palette_png_tagged_display_p3_is_converted():
    """issue 26: only RGB, RGBA and CMYK were converted; a palette PNG tagged Display P3 (what
    image optimisers make of a phone's screenshot) was read as if its palette were sRGB."""
    data = saved(palette_picture(), icc_profile=rgb_profile(DISPLAY_P3))
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == "P" and check.info.get("icc_profile")  # the file is what the test means
    picture = open_upload(data, "screenshot.png")
    red, green, blue = picture.getpixel((2, 2))
    assert red >= 212 and green <= 95 and blue <= 28, (red, green, blue)  # unconverted: (200, 100, 50)
    assert picture.getpixel((12, 2)) != (30, 60, 200)  # every entry of the palette, not only the first


def test_a_palette_png_with_a_transparent_entry_keeps_it_transparent_when_converted():
    data = saved(palette_picture(transparent_index=1), icc_profile=rgb_profile(DISPLAY_P3))
    picture = open_upload(data, "sticker.png")
    assert picture.getpixel((12, 2)) == (255, 255, 255)  # transparent: flattened onto white
    assert near(picture.getpixel((2, 2)), ORANGE_IN_P3_AS_SRGB, 4)


@pytest.mark.parametrize(("fmt", "mode"), [("PNG", "L"), ("JPEG", "L"), ("PNG", "LA"), ("PNG", "I;16"),
                                           ("TIFF", "L")])
def test_a_greyscale_picture_with_its_own_profile_is_converted(fmt, mode):
    """issue 26: a greyscale picture with a grey profile (a scanner's, a camera's) was read
    unconverted. A linear (gamma 1.0) grey of 50 is much lighter in sRGB numbers."""
    grey = 50 * 257 if mode == "I;16" else 50
    image = Image.new(mode, (16, 16), (grey, 255) if mode == "LA" else grey)
    data = saved(image, fmt, icc_profile=grey_profile(1.0), quality=100)
    if fmt == "TIFF":  # not a format members send: read through to_srgb itself
        with Image.open(io.BytesIO(data)) as opened:
            pixel = to_srgb(opened, opened.info["icc_profile"]).convert("RGB").getpixel((4, 4))
    else:
        with Image.open(io.BytesIO(data)) as check:
            assert check.info.get("icc_profile") and check.mode.startswith(mode[0])
        pixel = open_upload(data, f"scan.{fmt.lower()}").getpixel((4, 4))
    expected = srgb_of_linear(50)  # 124; unconverted: 50
    assert near(pixel, (expected,) * 3), (pixel, expected)


def test_a_grey_pictures_colour_key_stays_transparent_when_converted():
    image = Image.new("L", (16, 16), 50)
    image.paste(7, (8, 0, 16, 16))
    picture = open_upload(saved(image, transparency=7, icc_profile=grey_profile(1.0)), "key.png")
    assert picture.getpixel((12, 2)) == (255, 255, 255)
    assert near(picture.getpixel((2, 2)), (srgb_of_linear(50),) * 3)


def test_an_rgb_pictures_colour_key_stays_transparent_when_converted():
    image = Image.new("RGB", (16, 16), (200, 100, 50))
    image.paste((1, 2, 3), (8, 0, 16, 16))
    picture = open_upload(saved(image, transparency=(1, 2, 3), icc_profile=rgb_profile(DISPLAY_P3)), "key.png")
    assert picture.getpixel((12, 2)) == (255, 255, 255)
    assert near(picture.getpixel((2, 2)), ORANGE_IN_P3_AS_SRGB, 4)


def test_a_grey_jpeg_with_an_rgb_profile_is_read_through_it():
    # a phone's one-component JPEG may carry its RGB profile: grey pixels are colours in it too
    data = saved(Image.new("L", (16, 16), 50), "JPEG", icc_profile=rgb_profile(DISPLAY_P3, gamma=1.0), quality=100)
    assert near(open_upload(data, "bw.jpg").getpixel((4, 4)), (srgb_of_linear(50),) * 3, 3)


def test_a_profile_of_another_colour_space_than_the_pixels_leaves_them_as_they_are():
    # a grey profile on a colour picture cannot say what its colours are: read as they are
    data = saved(Image.new("RGB", (16, 16), (200, 100, 50)), icc_profile=grey_profile(1.0))
    assert open_upload(data, "odd.png").getpixel((4, 4)) == (200, 100, 50)
    cmyk = Image.new("CMYK", (16, 16), (0, 0, 0, 0))
    assert to_srgb(cmyk, rgb_profile(DISPLAY_P3)) is cmyk
