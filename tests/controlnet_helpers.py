"""Tiny ControlNets for the tests (tests/test_controlnet.py, tests/test_discord_controlnet.py):
built once per session beside the tiny pipelines, and a models.toml naming them as an admin
would write it."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import write_registry
from tests.tiny_models import (
    build_controlnet,
    build_depth_estimator,
    build_kandinsky22_controlnet,
)


def build_controlnets(models: dict[str, Path], root: Path) -> dict[str, Path]:
    """ControlNets for the tiny SD and SDXL (`from_unet`), a tiny DPT depth estimator and a
    tiny Kandinsky 2.2 ControlNet decoder, under `root` (kept when there already)."""
    paths = {"sd-canny": root / "sd-canny", "sdxl-canny": root / "sdxl-canny", "depth": root / "depth",
             "kandinsky22-depth": root / "kandinsky22-depth"}
    if not (paths["sd-canny"] / "config.json").exists():
        build_controlnet(models["sd"], paths["sd-canny"])
    if not (paths["sdxl-canny"] / "config.json").exists():
        build_controlnet(models["sdxl"], paths["sdxl-canny"])
    if not (paths["depth"] / "config.json").exists():
        build_depth_estimator(paths["depth"])
    if not (paths["kandinsky22-depth"] / "model_index.json").exists():
        build_kandinsky22_controlnet(paths["kandinsky22-depth"])
    return paths


def write_controlnet_registry(path: Path, models: dict[str, Path], controlnets: dict[str, Path]) -> Path:
    """The tiny models.toml (tiny-sd at 64 px) with `[controlnets.NAME]` entries: canny and
    depth (the same tiny ControlNet, with the depth estimator) for SD, canny for SDXL, and
    depth for Kandinsky 2.2."""
    write_registry(path, models, native_side=64)
    with path.open("a", encoding="utf-8") as toml:
        toml.write(f'''
[controlnets.sd-canny]
source = "{controlnets['sd-canny']}"
family = "sd"
kind = "canny"
description = "edges"

[controlnets.sd-depth]
source = "{controlnets['sd-canny']}"
family = "sd"
kind = "depth"
estimator = "{controlnets['depth']}"

[controlnets.sdxl-canny]
source = "{controlnets['sdxl-canny']}"
family = "sdxl"
kind = "canny"

[controlnets.kandinsky-depth]
source = "{controlnets['kandinsky22-depth']}"
family = "kandinsky22"
kind = "depth"
estimator = "{controlnets['depth']}"
''')
    return path
