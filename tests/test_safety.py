"""The NSFW check of models that ship one: flagged images are blurred and marked, never
silently blacked out, and a server can switch the check off."""

from __future__ import annotations

import numpy as np
import pytest

from generation.devices import choose_device
from generation.engine import Engine
from generation.registry import load_registry
from generation.request import JobKind, Request
from tests.tiny_models import build_sd_with_safety_checker


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> dict[bool, Engine]:
    root = tmp_path_factory.mktemp("safety")
    result = {}
    for flag_everything in (True, False):
        source = build_sd_with_safety_checker(root / f"flags-{flag_everything}", flag_everything=flag_everything)
        registry = root / f"models-{flag_everything}.toml"
        registry.write_text(f'[models.m]\nsource = "{source}"\nfamily = "sd"\nnative_side = 64\nsteps = 2\n')
        result[flag_everything] = Engine(load_registry(registry), choose_device("cpu"))
    return result


REQUEST = Request(kind=JobKind.IMAGINE, model="m", prompt="a fox", parts=(("a fox", 1.0),), negative="",
                  width=64, height=64, steps=2, guidance=5.0, seed=3)


def generate(engine: Engine, request: Request = REQUEST):
    return engine.generate(request, lambda *args: None, lambda: False)


def detail(image) -> float:
    """Mean difference between neighbouring pixels: blurring lowers it a lot."""
    pixels = np.asarray(image, dtype=np.float32)
    return float(np.abs(np.diff(pixels, axis=1)).mean())


def test_flagged_images_are_blurred_and_marked_not_blacked_out(engines):
    checked = generate(engines[True])
    unchecked = generate(engines[True], REQUEST.replace(safety_check=False))
    assert checked.flagged == [True] * 4 and unchecked.flagged == [False] * 4
    assert "flagged 4 of 4" in checked.notices[0]
    for blurred, original in zip(checked.images, unchecked.images, strict=True):
        assert np.asarray(blurred).max() > 0  # not the black image diffusers would return
        assert detail(blurred) < detail(original) / 2


def test_clean_images_pass_untouched(engines):
    result = generate(engines[False])
    assert result.flagged == [False] * 4 and result.notices == []
    assert [np.asarray(i).tobytes() for i in result.images] == \
        [np.asarray(i).tobytes() for i in generate(engines[False], REQUEST.replace(safety_check=False)).images]
