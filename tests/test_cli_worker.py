"""`pintor worker` and a `pintor` verb on a Redis queue, as an operator runs them: real
subprocesses, a throwaway redis-server, the tiny models. The verb starts no worker of its own
(PINTOR_LOCAL_WORKERS=0): its job is served by the `pintor worker` process, which shares no
folder with it (its own PINTOR_DATA_DIR, no database)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.redis_server import redis_server

ROOT = Path(__file__).resolve().parents[1]


def base_env(tmp_path: Path, registry_file: Path, data: str) -> dict[str, str]:
    return os.environ | {
        "PINTOR_MODELS": str(registry_file), "PINTOR_DEVICE": "cpu", "PINTOR_DATA_DIR": str(tmp_path / data),
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / data / 'pintor.db'}", "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT), "PINTOR_LOCAL_WORKERS": "0",
    }


def pintor(env: dict[str, str], *args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def test_a_worker_without_a_redis_url_says_what_to_set(tmp_path: Path, small_registry_file: Path):
    result = pintor(base_env(tmp_path, small_registry_file, "data"), "worker", cwd=tmp_path)
    assert result.returncode == 2 and "PINTOR_QUEUE_URL=redis://" in result.stderr


def test_imagine_is_served_by_a_pintor_worker_process(tmp_path: Path, small_registry_file: Path):
    with redis_server(tmp_path / "redis") as url:
        worker_env = base_env(tmp_path, small_registry_file, "worker-machine") | {
            "PINTOR_QUEUE_URL": url, "PINTOR_WORKER_NAME": "gpu-a", "DATABASE_URL": "sqlite+aiosqlite:///nowhere/x.db"}
        worker = subprocess.Popen([sys.executable, "-m", "bot.cli", "worker"], env=worker_env, cwd=tmp_path,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            env = base_env(tmp_path, small_registry_file, "bot-machine") | {"PINTOR_QUEUE_URL": url}
            made = pintor(env, "imagine", "a red fox --seed 7 --steps 2", "-o", "fox.png", cwd=tmp_path)
            assert made.returncode == 0, made.stderr
            with Image.open(tmp_path / "fox.png") as grid:
                assert grid.size == (128, 128)  # 2×2 tiles at the tiny model's 64 px
            # the pictures are in the verb's own data folder: they came through Redis
            assert list((tmp_path / "bot-machine" / "images" / "jobs").glob("*/grid.png"))
            doctor = pintor(env, "doctor", cwd=tmp_path)
            assert "worker gpu-a" in doctor.stdout and "1 worker(s) connected" in doctor.stdout, doctor.stdout
        finally:
            worker.send_signal(signal.SIGTERM)  # stops after its step, and says so
            out, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0, out
        assert "worker gpu-a ready" in out and "worker gpu-a stopped" in out
        assert not (tmp_path / "nowhere").exists()  # no database on the worker's side
