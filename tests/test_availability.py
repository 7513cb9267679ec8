"""A model that cannot be had: found out fast, said with what to do (generation/availability.py)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

try:
    import httpx2 as httpx  # what huggingface_hub 2.x builds its errors from
except ImportError:  # huggingface_hub 1.x (the dependency floors): httpx
    import httpx  # type: ignore[no-redef, import-not-found, unused-ignore]
import pytest
from huggingface_hub import constants
from huggingface_hub.errors import (
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)

from generation.availability import ModelLoadError, check_source, explain, require
from generation.devices import DeviceChoice
from generation.pipelines import PipelineCache
from generation.registry import load_registry
from generation.worker import _reason

CPU = DeviceChoice("cpu", __import__("torch").float32, "CPU")


def test_a_saved_pipeline_folder_is_ready(tiny_models):
    state = check_source("tiny-sd", str(tiny_models["sd"]))
    assert state.ok and state.downloaded and str(tiny_models["sd"]) in state.detail


def test_folders_that_are_not_pipelines_say_what_is_missing(tiny_models, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    state = check_source("m", str(empty))
    assert not state.ok and f"{empty} is not a diffusers pipeline: it has no model_index.json" in state.detail
    assert "save_pretrained" in state.fix

    partial = tmp_path / "partial"
    shutil.copytree(tiny_models["sd"], partial)
    shutil.rmtree(partial / "unet")
    shutil.rmtree(partial / "vae")
    state = check_source("m", str(partial))
    assert not state.ok and "names unet/, vae/, missing from the folder" in state.detail

    file = tmp_path / "model.bin"
    file.write_bytes(b"x")
    assert "is a file, not a diffusers pipeline folder" in check_source("m", str(file)).detail
    for missing in (str(tmp_path / "nowhere"), "./models/nowhere", "~/nowhere-pintor-test"):
        state = check_source("m", missing)
        assert not state.ok and f"{missing} does not exist" in state.detail


def _fake_cache(root: Path, repo: str, files: dict[str, str]) -> None:
    """The Hugging Face cache's layout for `repo` at one revision: refs/main → snapshots/<sha>."""
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("a" * 40)
    for name, text in files.items():
        (folder / "snapshots" / ("a" * 40) / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / "snapshots" / ("a" * 40) / name).write_text(text)


def test_hub_ids_offline_downloaded_or_not(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    state = check_source("sd-turbo", "stabilityai/sd-turbo")
    assert not state.ok and state.detail == "hub id stabilityai/sd-turbo is not downloaded and HF_HUB_OFFLINE is set"
    assert "`pintor models pull sd-turbo` where there is internet" in state.fix
    assert "point the entry's source at a local folder" in state.fix
    with pytest.raises(ModelLoadError) as raised:
        require("sd-turbo", "stabilityai/sd-turbo")
    assert "stabilityai/sd-turbo" in raised.value.detail and "pintor models pull sd-turbo" in raised.value.detail
    assert str(raised.value).startswith("Model 'sd-turbo' cannot be loaded on this server")

    _fake_cache(tmp_path, "stabilityai/sd-turbo", {"model_index.json": json.dumps({"_class_name": "X"})})
    state = check_source("sd-turbo", "stabilityai/sd-turbo")
    assert state.ok and state.downloaded and "downloaded" in state.detail
    require("sd-turbo", "stabilityai/sd-turbo")


def test_online_a_hub_id_not_downloaded_is_fetched_on_first_use(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    state = check_source("sd-turbo", "stabilityai/sd-turbo")
    assert state.ok and not state.downloaded and "fetched on first use" in state.detail
    assert "pintor models pull sd-turbo" in state.fix


def _as_diffusers_raises(hub_error: Exception) -> OSError:
    """diffusers' load_config turns the hub's error into a plain OSError inside its `except`."""
    try:
        try:
            raise hub_error
        except RepositoryNotFoundError:
            raise OSError("owner/model is not a local folder and is not a valid model identifier") from None
        except Exception:  # noqa: BLE001 - diffusers catches the rest this broadly
            raise OSError("owner/model does not appear to have a file named model_index.json.") from None
    except OSError as err:
        return err


def _http(status: int) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("GET", "https://huggingface.co/api/models/owner/model"))


@pytest.mark.parametrize("hub_error, expected", [
    (GatedRepoError("gated", response=_http(403)), ("hub id owner/model is gated: accept its licence on "
                                                     "https://huggingface.co/owner/model")),
    (RepositoryNotFoundError("404", response=_http(404)), "hub id owner/model does not exist on the hub"),
    (LocalEntryNotFoundError("cannot reach"), ("owner/model is not downloaded and the hub cannot be reached; "
                                               "run `pintor models pull m`")),
])
def test_a_failed_load_says_why(hub_error, expected, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    err = explain("m", "owner/model", _as_diffusers_raises(hub_error))
    assert expected in err.detail
    assert str(err) == ("Model 'm' cannot be loaded on this server right now (its files are missing or cannot be "
                        "downloaded). An admin can see why with `pintor doctor`.")


def test_the_pipeline_cache_fails_at_once_with_the_reason(registry_file, tmp_path, monkeypatch):
    registry = load_registry(registry_file)
    cache = PipelineCache(CPU)
    spec = dataclasses.replace(registry.get("tiny-sd"), name="broken", source=str(tmp_path))
    with pytest.raises(ModelLoadError) as raised:
        cache.get(spec, "text2img")
    assert f"cannot load model 'broken': {tmp_path} is not a diffusers pipeline" in raised.value.detail
    assert str(tmp_path) not in str(raised.value)  # the member's message names no server path

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="Model 'hub' cannot be loaded") as raised:
        cache.get(dataclasses.replace(spec, name="hub", source="owner/not-here"), "text2img")
    assert "hub id owner/not-here is not downloaded and HF_HUB_OFFLINE is set" in raised.value.detail


@pytest.mark.parametrize("text, shown", [
    ("cannot load stabilityai/sd-turbo", "cannot load stabilityai/sd-turbo"),
    ("no file in /srv/models/x.safetensors", "no file in <path>"),
    ("no file in '/srv/models/x'", "no file in '<path>'"),
    ("see ./models/x and ../y/z and ~/m", "see <path> and <path> and <path>"),
    ("under C:\\models\\x.ckpt", "under <path>"),
    ("kandinsky-community/kandinsky-2-2-decoder (/home/a/.cache/hf)",
     "kandinsky-community/kandinsky-2-2-decoder (<path>"),
])
def test_member_reasons_hide_server_paths_and_keep_hub_ids(text, shown):
    assert shown in _reason(RuntimeError(text))
