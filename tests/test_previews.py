"""Progress previews: a tiny decoder (diffusers' AutoencoderTiny, as TAESD is) where a model entry
names one, else the linear latent projection; a decoder that cannot be loaded falls back."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny

from generation.devices import choose_device
from generation.engine import Engine
from generation.previews import PREVIEW_SIDE, TinyDecoderPreview, latents_preview
from generation.registry import Registry, load_registry
from tests.engine_helpers import request, run

CPU = choose_device("cpu")


def build_tiny_taesd(folder: Path) -> Path:
    """An AutoencoderTiny of TAESD's layout (4 latent channels, ×8), a few kB of random weights."""
    torch.manual_seed(0)
    decoder: Any = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                                   num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1))
    decoder.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def taesd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_taesd(tmp_path_factory.mktemp("taesd"))


@pytest.fixture(scope="module")
def registry(tiny_models: dict[str, Path], taesd: Path, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    path = tmp_path_factory.mktemp("previews") / "models.toml"
    path.write_text(f'''
default = "linear"
[models.linear]
source = "{tiny_models['sd']}"
family = "sd"
native_side = 64
steps = 2
[models.decoded]
source = "{tiny_models['sd']}"
family = "sd"
native_side = 64
steps = 2
preview = "{taesd}"
[models.missing]
source = "{tiny_models['sd']}"
family = "sd"
native_side = 64
steps = 2
preview = "{taesd.parent / 'no-such-folder'}"
''', encoding="utf-8")
    return load_registry(path)


def test_the_registry_reads_a_preview_decoder(registry, taesd):
    assert registry.get("decoded").preview == str(taesd)
    assert registry.get("linear").preview is None


def test_the_tiny_decoder_decodes_the_latents_into_the_preview_grid(registry, taesd):
    preview = Engine(registry, CPU).pipelines.preview(registry.get("decoded"))
    assert isinstance(preview, TinyDecoderPreview)
    latents = torch.randn(4, 4, 8, 12, generator=torch.Generator().manual_seed(1))
    grid = preview(latents, 96, 64)
    assert grid.size == latents_preview(latents, 96, 64).size
    assert max(grid.size) <= PREVIEW_SIDE
    # the grid's first tile is the decoder's first picture, scaled down
    decoder = AutoencoderTiny.from_pretrained(taesd)
    with torch.no_grad():
        first = decoder.decode(latents[:1]).sample[0]
    tile_w, tile_h = grid.width // 2, grid.height // 2
    expected = ((first.clamp(-1, 1) + 1) * 127.5).to(torch.uint8).permute(1, 2, 0).numpy()
    from PIL import Image

    expected_tile = np.asarray(Image.fromarray(expected).resize((tile_w, tile_h), Image.Resampling.BILINEAR))
    assert np.abs(np.asarray(grid)[:tile_h, :tile_w].astype(int) - expected_tile.astype(int)).max() <= 1
    assert not np.array_equal(np.asarray(grid), np.asarray(latents_preview(latents, 96, 64)))


def test_a_run_shows_the_decoded_preview_where_configured_and_the_same_pictures(registry):
    engine = Engine(registry, CPU, max_models=2)
    decoded, _, decoded_previews = run(engine, request(registry, "a red fox --model decoded --seed 3"))
    linear, _, linear_previews = run(engine, request(registry, "a red fox --model linear --seed 3"))
    assert [p.size for p in decoded_previews] == [p.size for p in linear_previews]
    assert not np.array_equal(np.asarray(decoded_previews[0]), np.asarray(linear_previews[0]))
    # the preview changes what members see while they wait, never the pictures
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(decoded.images, linear.images, strict=True))


def test_a_preview_decoder_that_cannot_be_loaded_falls_back_to_the_linear_preview(registry, caplog):
    engine = Engine(registry, CPU)
    with caplog.at_level(logging.WARNING, logger="generation.pipelines"):
        result, steps, previews = run(engine, request(registry, "a red fox --model missing --seed 3"))
    assert len(result.images) == 4 and previews
    assert engine.pipelines.preview(registry.get("missing")) is latents_preview
    assert "linear previews instead" in caplog.text
