"""Single-file checkpoints (`source = "/models/x.safetensors"` with a `config`), offline, through
the registry and loading code users' files take."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from generation.availability import ModelLoadError, check_source
from generation.devices import DeviceChoice
from generation.pipelines import PipelineCache
from generation.registry import ModelSpec, RegistryError, load_registry
from tests.cli_in_process import pintor_here
from tests.tiny_models import build_sd_single_file

CPU = DeviceChoice("cpu", torch.float32, "CPU")


@pytest.fixture(scope="module")
def checkpoint(tiny_models, tmp_path_factory) -> Path:
    return build_sd_single_file(tiny_models["sd"], tmp_path_factory.mktemp("single") / "tiny-sd.safetensors")


def registry_text(checkpoint: Path, config: Path | str | None, family: str = "sd") -> str:
    text = f'[models.single]\nsource = "{checkpoint}"\nfamily = "{family}"\nnative_side = 64\nsteps = 2\n'
    return text + (f'config = "{config}"\n' if config else "")


def test_a_single_file_checkpoint_loads_the_same_weights_offline(checkpoint, tiny_models, tmp_path):
    path = tmp_path / "models.toml"
    path.write_text(registry_text(checkpoint, tiny_models["sd"]), encoding="utf-8")
    spec = load_registry(path).get("single")
    assert spec.single_file and check_source(spec.name, spec.source, spec.config).ok
    cache = PipelineCache(CPU)
    pipe = cache.get(spec, "text2img")
    folder = PipelineCache(CPU).get(ModelSpec(name="folder", source=str(tiny_models["sd"]), family="sd"), "text2img")
    for component in ("unet", "vae", "text_encoder"):
        mine, theirs = getattr(pipe, component).state_dict(), getattr(folder, component).state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    img2img = cache.get(spec, "img2img")
    assert img2img.unet is pipe.unet  # image-to-image from the same loaded weights, not a second copy


def test_registry_refuses_single_files_it_cannot_load(checkpoint, tmp_path):
    path = tmp_path / "models.toml"
    for text, message in [
        (registry_text(checkpoint, None), "a single-file checkpoint needs 'config'"),
        (registry_text(checkpoint, "x/y", family="kandinsky22") + 'prior = "a/b"\n',
         "a single-file checkpoint works for the families sd, sd-turbo, sd2, sdxl, sdxl-turbo"),
        ('[models.m]\nsource = "a/b"\nfamily = "sd"\nconfig = "c/d"\n', "'config' is for single-file checkpoints"),
    ]:
        path.write_text(text, encoding="utf-8")
        with pytest.raises(RegistryError, match=message):
            load_registry(path)


def test_a_missing_checkpoint_or_config_says_so(checkpoint, tiny_models, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    gone = tmp_path / "gone.safetensors"
    state = check_source("m", str(gone), str(tiny_models["sd"]))
    assert not state.ok and state.detail == f"single-file checkpoint {gone} does not exist"
    state = check_source("m", str(checkpoint), "stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert not state.ok and "its config hub id stable-diffusion-v1-5/stable-diffusion-v1-5 is not downloaded" \
        in state.detail and "pintor models pull m" in state.fix

    path = tmp_path / "models.toml"
    path.write_text(registry_text(checkpoint, tiny_models["sdxl"], family="sdxl"), encoding="utf-8")
    with pytest.raises(ModelLoadError) as raised:  # a config of another architecture: said, not a traceback
        PipelineCache(CPU).get(load_registry(path).get("single"), "text2img")
    assert (f"cannot load model 'single': single-file checkpoint {checkpoint} does not fit its config "
            f"{tiny_models['sdxl']}") in raised.value.detail
    assert str(checkpoint) not in str(raised.value)


def test_imagine_with_a_single_file_checkpoint(checkpoint, tiny_models, tmp_path):
    registry = tmp_path / "models.toml"
    registry.write_text(registry_text(checkpoint, tiny_models["sd"]), encoding="utf-8")
    env = os.environ | {
        "PINTOR_MODELS": str(registry), "PINTOR_DEVICE": "cpu", "PINTOR_DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'data' / 'pintor.db'}", "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    made = pintor_here(env, "imagine", "a lighthouse --seed 5", "-o", "out.png", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "out.png").is_file()
    listed = pintor_here(env, "models", cwd=tmp_path)
    assert "can: text to image, image to image (V), zoom/pan (inpaint); downloaded" in listed.stdout, listed.stdout
