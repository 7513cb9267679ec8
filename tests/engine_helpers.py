"""Helpers for the tests that drive generation.engine in this process (test_engine.py,
test_kandinsky21.py): requests from prompt text, a run that records steps and previews, pixels."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from generation.engine import Engine
from generation.prompt import parse_prompt
from generation.registry import Registry
from generation.request import Request, build_request


def picture_maker(folder: Path) -> Callable[..., str]:
    """``make(width, height, seed=0)``: the path of a random RGB picture of that size, saved as
    PNG in ``folder`` (once per size and seed)."""

    def make(width: int, height: int, seed: int = 0) -> str:
        path = folder / f"{width}x{height}-{seed}.png"
        if not path.exists():
            pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path)
        return str(path)

    return make


def request(registry: Registry, text: str, **changes) -> Request:
    parsed = parse_prompt(text)
    return build_request(parsed, registry.get(parsed.model)).replace(**changes)


def run(engine: Engine, req: Request, stop_after: int | None = None):
    steps: list[tuple[int, int]] = []
    previews: list[Image.Image] = []

    def on_step(step, total, make_preview):
        steps.append((step, total))
        if len(previews) < 2:
            previews.append(make_preview())

    result = engine.generate(req, on_step, lambda: stop_after is not None and len(steps) >= stop_after)
    return result, steps, previews


def pixels(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.float32) for image in images])
