"""The `pintor` command as a user runs it: real worker, real SQLite file; a real subprocess where
the process is part of what is proven (`pintor_process`), else `bot.cli.main` in this process
(`pintor`: tests/cli_in_process.py)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.cli_in_process import pintor_here as pintor
from tests.conftest import cli_env
from tests.secrets_check import secret

SECRET = secret("MTIz.secret-token-value.xyz")


@pytest.fixture
def env(tmp_path: Path, registry_file: Path) -> dict[str, str]:
    return cli_env(tmp_path, registry_file, DISCORD_TOKEN=SECRET)


def pintor_process(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=240)


def job_rows(tmp_path: Path) -> list[tuple]:
    db = tmp_path / "data" / "pintor.db"
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT id, status, request FROM jobs").fetchall()


def test_imagine_writes_grid_and_separate_images_and_no_command_loads_discord(env, tmp_path):
    """`pintor imagine` in a real subprocess, after `models`, `db upgrade`, `doctor` and a refused
    prompt in the same interpreter: only `pintor run` needs discord.py, the other commands (and
    reading the settings) never import it, which keeps them quick to start and working where
    discord.py is broken."""
    script = (
        "import sys\n"
        "from bot.cli import main\n"
        "codes = [main(args) for args in (['models'], ['db', 'upgrade'], ['doctor'], ['imagine', 'a --ar banana'],\n"
        "    ['imagine', 'a red fox in the snow --ar 3:2 --seed 7 --no people --raw',\n"
        "     '-o', 'fox.png', '--separate'])]\n"
        "print(codes)\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'discord'))\n")
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stderr
    codes, loaded = result.stdout.strip().splitlines()[-2:]
    assert codes == "[0, 0, 0, 2, 0]", result.stdout + result.stderr
    assert loaded == "[]"
    assert "note: Ignored what Pintor does not have: “--raw”." in result.stderr
    with Image.open(tmp_path / "fox.png") as grid:
        assert grid.size == (384, 256)  # 2×2 tiles of 192×128: 3:2 at a 128 px native budget
    for i in range(1, 5):
        with Image.open(tmp_path / f"fox-{i}.png") as tile:
            assert tile.size == (192, 128)
    assert "seed 7" in result.stdout
    [(job_id, status, request)] = job_rows(tmp_path)
    assert status == "done" and '"seed": 7' in request and '"negative": "people"' in request
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize("prompt, message", [
    ("a fox --ar banana", "“banana”"),
    ("a fox --model nope", "Unknown model 'nope'"),
    ("--seed 3", "has no text"),
    ("x" * 4001, "4000"),
])
def test_bad_prompts_change_nothing(env, tmp_path, prompt, message):
    result = pintor(env, "imagine", prompt, "-o", "out.png", cwd=tmp_path)
    assert result.returncode == 2
    assert message.lower() in result.stderr.lower()
    assert job_rows(tmp_path) == [] and not (tmp_path / "out.png").exists()


def test_unwritable_output_is_refused_before_anything_is_stored(env, tmp_path):
    result = pintor(env, "imagine", "a fox", "-o", str(tmp_path / "missing" / "x.png"), cwd=tmp_path)
    assert result.returncode == 2 and "does not exist" in result.stderr  # bad input, as the README says
    assert job_rows(tmp_path) == []


@pytest.mark.parametrize("name", ["fox.psd", "fox.PSD", "fox.svg", "fox.txt"])
def test_an_output_named_for_a_format_pintor_cannot_write_is_refused_before_anything_is_stored(env, tmp_path, name):
    """`-o fox.psd` (a format Pillow reads but cannot write) wrote a PNG under that name,
    silently: a file that is not what it says. Bad input: exit 2, as the README says (it was 1)."""
    result = pintor(env, "imagine", "a fox", "-o", name, cwd=tmp_path)
    assert result.returncode == 2 and f"not {Path(name).suffix}" in result.stderr and "fox.png" in result.stderr
    assert job_rows(tmp_path) == [] and not (tmp_path / name).exists()


@pytest.mark.smoke
def test_models_doctor_and_db_upgrade(env, tmp_path):
    """In real subprocesses: a smoke test, run on the dependency floors too, where SQLAlchemy's
    lowest version left an exception to the garbage collector in the test process when these
    commands ran in it (tests/cli_in_process.py)."""
    models = pintor_process(env, "models", cwd=tmp_path)
    assert models.returncode == 0
    assert "tiny-sd" in models.stdout and "tiny-kandinsky" in models.stdout and "[default]" in models.stdout
    assert "--v 6" in models.stdout and "→ tiny-sdxl" in models.stdout  # the [midjourney] mapping
    assert "--niji (any)" in models.stdout

    before = pintor_process(env, "doctor", cwd=tmp_path)
    assert before.returncode == 0, before.stdout  # a database that does not exist yet is no problem
    assert "does not exist yet, created on first start" in before.stdout
    assert not (tmp_path / "data" / "pintor.db").exists()  # and the doctor did not create it
    assert pintor_process(env, "db", "upgrade", cwd=tmp_path).returncode == 0
    after = pintor_process(env, "doctor", cwd=tmp_path)
    assert after.returncode == 0, after.stdout
    assert "All good." in after.stdout and "device: cpu" in after.stdout
    assert SECRET not in before.stdout + after.stdout + before.stderr + after.stderr


def test_a_scheduler_that_cannot_work_stops_run_and_models_naming_the_entry(env, tmp_path, registry_file):
    text = registry_file.read_text(encoding="utf-8")
    kandinsky = 'family = "kandinsky22"\n'
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(text.replace(kandinsky, kandinsky + 'scheduler = "DPMSolverMultistepScheduler"\n'),
                    encoding="utf-8")
    bad.write_text(text.replace(kandinsky, kandinsky + 'scheduler = "EulerAncestralDiscreteScheduler"\n'),
                   encoding="utf-8")

    listed = pintor(env | {"PINTOR_MODELS": str(good)}, "models", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "scheduler: DPMSolverMultistepScheduler (for the decoder)" in listed.stdout
    for command in ("models", "run"):
        result = pintor(env | {"PINTOR_MODELS": str(bad)}, command, cwd=tmp_path)
        assert result.returncode == 1
        assert ("model 'tiny-kandinsky': scheduler 'EulerAncestralDiscreteScheduler' fits none of the "
                "kandinsky22 family's decoder and prior") in result.stderr
    assert not (tmp_path / "data" / "pintor.db").exists()  # `run` stopped before anything started


def test_offline_a_model_not_downloaded_fails_fast_saying_what_to_do(tmp_path):
    """As a new user tries it: the built-in registry, no network, an empty Hugging Face cache."""
    env = os.environ | {
        "PINTOR_DEVICE": "cpu", "PINTOR_DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'data' / 'pintor.db'}",
        "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    env.pop("PINTOR_MODELS", None)
    env.pop("HF_HUB_CACHE", None)
    started = time.monotonic()
    result = pintor_process(env, "imagine", "a lighthouse at dusk", "-o", "out.png", cwd=tmp_path)
    assert time.monotonic() - started < 15
    assert result.returncode == 1, result.stderr
    assert ("error: cannot load model 'sd-turbo': hub id stabilityai/sd-turbo is not downloaded and "
            "HF_HUB_OFFLINE is set; run `pintor models pull sd-turbo` where there is internet") in result.stderr
    assert "Traceback" not in result.stderr and "<path>" not in result.stderr
    assert job_rows(tmp_path) == [] and not (tmp_path / "out.png").exists()

    doctor = pintor_process(env, "doctor", cwd=tmp_path)
    assert "[PROBLEM] model sd-turbo: hub id stabilityai/sd-turbo is not downloaded" in doctor.stdout
    assert "fix: run `pintor models pull sd-turbo` where there is internet" in doctor.stdout
    assert "created on first start" in doctor.stdout


def test_doctor_names_what_a_model_folder_lacks(env, tmp_path, tiny_models):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text((tiny_models["sd"] / "model_index.json").read_text())
    registry = tmp_path / "models.toml"
    registry.write_text(f'[models.mine]\nsource = "{broken}"\nfamily = "sd"\n', encoding="utf-8")
    doctor = pintor(env | {"PINTOR_MODELS": str(registry)}, "doctor", cwd=tmp_path)
    assert doctor.returncode == 1
    assert f"[PROBLEM] model mine: {broken} is not a complete diffusers pipeline" in doctor.stdout
    assert "unet/" in doctor.stdout and "vae/" in doctor.stdout


def test_doctor_checks_vaes_loras_and_embeddings(env, tmp_path, tiny_models):
    lora = tmp_path / "ink.safetensors"
    lora.write_bytes(b"not looked into by doctor: only that the file is here")
    registry = tmp_path / "models.toml"
    registry.write_text(
        f'[models.mine]\nsource = "{tiny_models["sd"]}"\nfamily = "sd"\nvae = "{tmp_path / "no-vae"}"\n'
        f'[loras.ink]\nsource = "{lora}"\nfamilies = ["sd"]\n'
        '[loras.glow]\nsource = "someone/glow-lora"\nfamilies = ["sd"]\n'
        f'[embeddings.neg]\nsource = "{tmp_path / "gone.pt"}"\nfamilies = ["sd"]\n', encoding="utf-8")
    doctor = pintor_process(env | {"PINTOR_MODELS": str(registry)}, "doctor", cwd=tmp_path)
    assert doctor.returncode == 1
    assert f"[PROBLEM] VAE mine: VAE {tmp_path / 'no-vae'} does not exist" in doctor.stdout, doctor.stdout
    assert f"[     ok] LoRA ink: LoRA {lora}" in doctor.stdout
    assert ("[PROBLEM] LoRA glow: LoRA hub id someone/glow-lora (pytorch_lora_weights.safetensors) is not "
            "downloaded and HF_HUB_OFFLINE is set") in doctor.stdout
    assert f"[PROBLEM] embedding neg: embedding {tmp_path / 'gone.pt'} does not exist" in doctor.stdout
