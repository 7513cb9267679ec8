"""What the /describe tests share: the tiny captioner (BLIP) and style-word ranker (CLIP),
built once per session into folders with save_pretrained, and a models.toml that names them
as an admin would."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from tests.conftest import write_registry
from tests.tiny_models import build_blip, build_clip


def build_describers(root: Path) -> dict[str, Path]:
    """{"blip": folder, "clip": folder} under `root` (built when missing)."""
    paths = {"blip": root / "blip", "clip": root / "clip"}
    if not (paths["blip"] / "config.json").exists():
        build_blip(paths["blip"])
    if not (paths["clip"] / "config.json").exists():
        build_clip(paths["clip"])
    return paths


def captioner_entries(describers: dict[str, Path], *, clip: bool = True) -> str:
    """The [models.tiny-blip] entry (with CLIP's style words unless `clip` is False)."""
    return (f'\n[models.tiny-blip]\nsource = "{describers["blip"]}"\nfamily = "blip"\n'
            + (f'clip = "{describers["clip"]}"\n' if clip else ""))


def write_describe_registry(path: Path, tiny_models: dict[str, Path], describers: dict[str, Path], *,
                            clip: bool = True, native_side: int = 64) -> Path:
    """The tiny models' models.toml (tests/conftest.py) with the tiny captioner added."""
    write_registry(path, tiny_models, native_side=native_side)
    text = path.read_text(encoding="utf-8")
    head, _, tail = text.partition("[midjourney]")  # the [midjourney] table stays last
    path.write_text(head + captioner_entries(describers, clip=clip) + "\n[midjourney]" + tail, encoding="utf-8")
    return path


def phone_jpeg(width: int = 48, height: int = 32, orientation: int = 6) -> bytes:
    """A JPEG as phones write them: stored landscape (`width` × `height`) with an EXIF
    orientation (6: turn 90° clockwise to show), so it shows `height` × `width`; the top half
    of the stored pixels red, the bottom blue."""
    image = Image.new("RGB", (width, height), (220, 30, 30))
    image.paste((30, 30, 220), (0, height // 2, width, height))
    exif = Image.Exif()
    exif[0x010F] = "Phone"
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif, quality=90)
    return buffer.getvalue()
