"""/describe from the terminal: `pintor models pull` fetches a captioner's transformers repos
(BLIP, CLIP) from a local stand-in of the hub, then, offline, `pintor describe PHOTO` prints
the four prompts (and with -o writes the picture as described), through the same studio,
queue and worker process as Discord."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

from generation.hub import choose_model_files
from tests.describe_helpers import build_describers, phone_jpeg
from tests.hub_standin import Hub, HubServer


def run_pintor(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], check=False, env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_choose_model_files_takes_what_from_pretrained_reads():
    blip = ["config.json", "preprocessor_config.json", "tokenizer.json", "vocab.txt", "special_tokens_map.json",
            "model.safetensors", "pytorch_model.bin", "tf_model.h5", "README.md", ".gitattributes"]
    assert choose_model_files(blip) == ["config.json", "model.safetensors", "preprocessor_config.json",
                                        "special_tokens_map.json", "tokenizer.json", "vocab.txt"]
    old = ["config.json", "pytorch_model.bin", "flax_model.msgpack", "tf_model.h5", "merges.txt"]
    assert choose_model_files(old) == ["config.json", "merges.txt", "pytorch_model.bin"]
    sharded = ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
               "model.safetensors.index.json", "pytorch_model.bin.index.json", "onnx/model.onnx"]
    assert choose_model_files(sharded) == ["config.json", "model-00001-of-00002.safetensors",
                                           "model-00002-of-00002.safetensors", "model.safetensors.index.json"]


def test_pull_a_captioner_then_describe_a_photo_offline(tmp_path: Path):
    describers = build_describers(tmp_path / "built")
    repos = {"tiny/blip": tmp_path / "repos" / "blip", "tiny/clip": tmp_path / "repos" / "clip"}
    for name, repo in repos.items():
        shutil.copytree(describers[name.removeprefix("tiny/")], repo)
    (repos["tiny/blip"] / "tf_model.h5").write_bytes(b"\0" * 1024)  # another framework's copy: not pulled
    registry = tmp_path / "models.toml"
    registry.write_text('[models.sd]\nsource = "/nowhere/sd"\nfamily = "sd"\n'
                        '[models.blip]\nsource = "tiny/blip"\nfamily = "blip"\nclip = "tiny/clip"\n', encoding="utf-8")
    env = os.environ | {
        "PINTOR_MODELS": str(registry), "PINTOR_DEVICE": "cpu", "PINTOR_DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'data' / 'pintor.db'}", "HF_HOME": str(tmp_path / "hf"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("HF_HUB_CACHE", None)
    offline = env | {"HF_HUB_OFFLINE": "1"}

    listed = run_pintor(offline, "models", cwd=tmp_path)
    assert "captioner (/describe): blip" in listed.stdout and "can: describe; NOT downloaded" in listed.stdout

    hub = Hub(repos)
    with HubServer(hub) as url:
        pulled = run_pintor(env | {"HF_ENDPOINT": url}, "models", "pull", "blip", cwd=tmp_path)
    assert pulled.returncode == 0, pulled.stderr
    assert "blip: tiny/blip downloaded" in pulled.stdout and "blip: tiny/clip downloaded" in pulled.stdout
    assert "tf_model.h5" not in hub.downloads and "model.safetensors" in hub.downloads

    (tmp_path / "IMG_0042.jpg").write_bytes(phone_jpeg(48, 32, orientation=6))
    described = run_pintor(offline, "describe", "IMG_0042.jpg", "-o", "seen.png", cwd=tmp_path)
    assert described.returncode == 0, described.stderr
    lines = described.stdout.splitlines()
    assert [line[:3] for line in lines[:4]] == ["1. ", "2. ", "3. ", "4. "], described.stdout
    assert all(line.endswith(" --ar 2:3") and "in the style of" in line for line in lines[:4])
    with Image.open(tmp_path / "seen.png") as seen:
        assert seen.size == (32, 48)  # upright, as the phone shows it

    # `pintor show` of the describe job prints its four prompts, as describe did (it printed none)
    shown = run_pintor(offline, "show", "1", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0].startswith("job 1: describe")
    assert shown.stdout.splitlines()[1:5] == lines[:4], shown.stdout
