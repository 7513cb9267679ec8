"""Images that members upload: hostile until proven otherwise.

`open_upload` decides by content (never by name or declared type), refuses decompression bombs
before decoding pixels, and hands back a plain RGB picture: first frame of an animation, EXIF
orientation applied, transparency flattened onto white.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from generation.imaging import flatten_to_rgb

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_UPLOAD_PIXELS = 24_000_000  # e.g. 6000×4000; beyond this is refused, not opened
MIN_UPLOAD_SIDE = 8
ACCEPTED_FORMATS = {"PNG", "JPEG", "WEBP", "GIF", "BMP"}


class UploadError(ValueError):
    """str(err) says what is wrong with the file, for the member who sent it."""


def open_upload(data: bytes, name: str, *, max_bytes: int = MAX_UPLOAD_BYTES,
                max_pixels: int = MAX_UPLOAD_PIXELS) -> Image.Image:
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
        raise UploadError(f"{name} is not an image (PNG, JPEG, WebP, GIF or BMP).") from None
    except Image.DecompressionBombError:
        raise UploadError(f"{name} has far too many pixels (a decompression bomb?); "
                          f"the limit is {max_pixels / 1e6:.0f} megapixels.") from None
    except Exception as err:  # noqa: BLE001 - any parser failure means the same to the member
        raise UploadError(f"{name} could not be read as an image ({type(err).__name__}).") from None
    with image:
        if image.format not in ACCEPTED_FORMATS:
            raise UploadError(f"{name} is a {image.format} file; send PNG, JPEG, WebP, GIF or BMP.")
        width, height = image.size
        if width * height > max_pixels:
            raise UploadError(f"{name} is {width}×{height} pixels; the limit is {max_pixels / 1e6:.0f} megapixels.")
        if min(width, height) < MIN_UPLOAD_SIDE:
            raise UploadError(f"{name} is {width}×{height} pixels; each side needs at least {MIN_UPLOAD_SIDE}.")
        try:
            image.seek(0)  # an animation: its first frame
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image.load()
            image = ImageOps.exif_transpose(image)
        except Exception as err:  # noqa: BLE001 - truncated or corrupt pixel data
            raise UploadError(f"{name} is damaged or truncated ({type(err).__name__}).") from None
        return flatten_to_rgb(image)
