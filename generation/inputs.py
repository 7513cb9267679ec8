"""Images that members upload: hostile until proven otherwise.

`open_upload` decides by content (never by name or declared type), refuses decompression bombs
and extreme shapes before decoding pixels, and hands back a plain RGB picture: first frame of an
animation (the main picture of an MPO), EXIF orientation applied, colours converted from the
file's embedded ICC profile to sRGB in every mode (phones shoot in Display P3; palette and
greyscale pictures carry profiles too), high-bit-depth samples scaled
to 8 bits, transparency of any kind flattened onto white.

Phones save photos as HEIC (iPhones) or AVIF: pillow-heif, registered with Pillow here, reads
HEIC/HEIF; Pillow reads AVIF itself from 11.2 on (on an older Pillow an AVIF is refused, named).
"""

from __future__ import annotations

import io
import warnings

import pillow_heif
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

from generation.imaging import ALPHA_MODES, flatten_to_rgb, to_8_bit

pillow_heif.register_heif_opener()  # Image.open reads HEIC/HEIF from here on (format "HEIF")

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_UPLOAD_PIXELS = 24_000_000  # e.g. 6000×4000; beyond this is refused, not opened
MIN_UPLOAD_SIDE = 8
# Long side at most 8 × the short side (a wide phone panorama fits). Kandinsky's prior (a CLIP
# image processor) scales the short side to 224 px before it crops, so without a bound its work
# grows with the ratio, not the pixel count: 100000×8 would become a 627-megapixel intermediate.
MAX_UPLOAD_ASPECT = 8
# MPO: a JPEG with a second picture appended (phone portrait photos, many cameras); the first
# frame is the JPEG itself. HEIF: an iPhone's HEIC photo (pillow-heif); AVIF: Pillow ≥ 11.2.
ACCEPTED_FORMATS = {"PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP", "HEIF", "AVIF"}
FORMATS_SAID = "PNG, JPEG, WebP, GIF, BMP or a phone's HEIC"


class UploadError(ValueError):
    """str(err) says what is wrong with the file, for the member who sent it."""


def open_upload(data: bytes, name: str, *, max_bytes: int = MAX_UPLOAD_BYTES,
                max_pixels: int = MAX_UPLOAD_PIXELS, max_aspect: float = MAX_UPLOAD_ASPECT) -> Image.Image:
    """`data` (the bytes of an upload called `name`) as an RGB picture of the same size (sides
    swapped by an EXIF rotation).

    Raises UploadError, whose text is for the member, for: an empty file or one over
    `max_bytes`; anything Pillow cannot identify, or a format outside ACCEPTED_FORMATS; over
    `max_pixels` pixels, a side under MIN_UPLOAD_SIDE px, or a long side over `max_aspect` ×
    the short one (all three from the header, before any pixel is decoded); damaged pixel data.
    """
    if len(data) == 0:
        raise UploadError(f"{name} is empty.")
    if len(data) > max_bytes:
        raise UploadError(f"{name} is {len(data) / 1024**2:.1f} MB; the limit is {max_bytes / 1024**2:.0f} MB.")
    try:
        # Image.open reads only the header: the size is known before any pixel is decoded.
        # Pillow's own bomb warning is redundant with the pixel limit checked below.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        if phone_format := _heif_brand(data):  # a HEIF file pillow-heif cannot read, an AVIF on Pillow < 11.2
            raise UploadError(f"{name} is a {phone_format} photo, which Pintor cannot read: send it as JPEG or "
                              "PNG (on an iPhone: Settings → Camera → Formats → Most Compatible).") from None
        raise UploadError(f"{name} is not an image ({FORMATS_SAID}).") from None
    except Image.DecompressionBombError:
        raise UploadError(f"{name} has far too many pixels (a decompression bomb?); "
                          f"the limit is {max_pixels / 1e6:.0f} megapixels.") from None
    except (OSError, EOFError) as err:  # the header itself is cut short (a partial download, a cut file)
        raise UploadError(f"{name} is damaged or truncated ({type(err).__name__}).") from None
    except Exception as err:  # noqa: BLE001 - any parser failure means the same to the member
        raise UploadError(f"{name} could not be read as an image ({type(err).__name__}).") from None
    with image:
        if image.format not in ACCEPTED_FORMATS:
            raise UploadError(f"{name} is in {image.format} format; send {FORMATS_SAID}.")
        width, height = image.size
        if width * height > max_pixels:
            raise UploadError(f"{name} is {width}×{height} pixels; the limit is {max_pixels / 1e6:.0f} megapixels.")
        if min(width, height) < MIN_UPLOAD_SIDE:
            raise UploadError(f"{name} is {width}×{height} pixels; each side needs at least {MIN_UPLOAD_SIDE}.")
        if max(width, height) > max_aspect * min(width, height):
            raise UploadError(f"{name} is {width}×{height} pixels; the long side may be at most "
                              f"{max_aspect:g} times the short one ({max_aspect:g}:1). Crop it and send it again.")
        try:
            image.seek(0)  # an animation: its first frame; an MPO: its main picture
            _key_to_8_bit(image)
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image.load()
            upright = ImageOps.exif_transpose(image)
        except Exception as err:  # noqa: BLE001 - truncated or corrupt pixel data
            raise UploadError(f"{name} is damaged or truncated ({type(err).__name__}).") from None
        return flatten_to_rgb(to_srgb(upright, image.info.get("icc_profile")))


_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
# The modes whose pixels can be read in each colour space of an ICC profile, once high-bit
# samples are brought to 8 bits (to_8_bit): a palette's entries and a grey picture are colours
# in an RGB profile's space too (RGB is how a palette PNG is tagged, and a JPEG with one
# component may carry a phone's RGB profile); a grey profile is only for grey pixels.
_MODES_IN_SPACE = {"RGB": {"RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "L", "LA", "La", "1"},
                   "GRAY": {"L", "LA", "La", "1"},
                   "CMYK": {"CMYK"}}


def to_srgb(image: Image.Image, icc_profile: bytes | None) -> Image.Image:
    """`image` (any mode Pillow opens) with its colours converted from `icc_profile` (the ICC
    profile embedded in its file) to sRGB, the space models are trained on and viewers assume
    for a picture without one: a phone's Display P3 photo read as sRGB looks washed out, a CMYK
    one off-colour, a palette PNG tagged Display P3 or a grey scan with a gamma-1.0 profile
    wrong the same ways.

    Returns RGB, or RGBA where the picture has transparency of any kind (an alpha band, a
    palette's transparent entries, a colour key: kept as alpha, not converted). Returns `image`
    unchanged without a profile, with a profile of another colour space than its pixels (a grey
    profile on a colour picture; a profile for Lab or for an RGB picture on CMYK pixels), or
    when littlecms cannot use the profile (a damaged one: the pixels as they are beat a
    refusal). Raises nothing for a bad profile."""
    if not icc_profile:
        return image
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        space = source.profile.xcolor_space.strip()
    except (ImageCms.PyCMSError, OSError, ValueError, AttributeError):
        return image
    pixels = to_8_bit(image)
    if pixels.mode not in _MODES_IN_SPACE.get(space, ()):
        return image
    alpha = None
    if pixels.mode in ALPHA_MODES or "transparency" in pixels.info:
        with_alpha = pixels.convert("LA" if space == "GRAY" else "RGBA")  # applies a palette's or key's transparency
        alpha = with_alpha.getchannel("A")
        pixels = with_alpha
    pixels = pixels.convert({"RGB": "RGB", "GRAY": "L", "CMYK": "CMYK"}[space])
    try:
        converted = ImageCms.profileToProfile(pixels, source, _SRGB, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        return image
    if converted is None:
        return image
    if alpha is not None:
        converted.putalpha(alpha)
    return converted


# ISO base media files ("ftyp" box first) of the HEIF family, by their major brand (ISO/IEC
# 23008-12 and the AV1 Image File Format): what phones save photos as.
_HEIF_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"hevc": "HEIC", b"hevx": "HEIC", b"heim": "HEIC",
                b"heis": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF", b"avif": "AVIF", b"avis": "AVIF"}


def _heif_brand(data: bytes) -> str | None:
    """"HEIC", "HEIF" or "AVIF" when `data` starts as such a file does, else None."""
    return _HEIF_BRANDS.get(data[8:12]) if data[4:8] == b"ftyp" else None


def _key_to_8_bit(image: ImageFile.ImageFile) -> None:
    """Pillow decodes a 16-bit RGB PNG to 8 bits per channel (the high byte) but keeps its colour
    key in 16 bits, so no pixel would match it: bring the key to 8 bits the same way. Call it
    before load(): only the undecoded tile tells the file's bit depth. (Pixels that differ from
    the key only in their low byte become transparent too: the closest 8 bits can come.)"""
    key = image.info.get("transparency")
    if image.format == "PNG" and image.mode == "RGB" and isinstance(key, tuple) and image.tile \
            and str(image.tile[0][3]).startswith("RGB;16"):
        image.info["transparency"] = tuple(v >> 8 for v in key)
