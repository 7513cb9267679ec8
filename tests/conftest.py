from __future__ import annotations

import logging
import os

# Tiny models gain nothing from several threads, and the tests run torch in two processes at
# once (the test's own and the worker it spawned): one thread each avoids oversubscribing the
# cores. Set before torch is imported; the worker processes inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

import generation.queue  # noqa: E402

# The suite starts dozens of worker processes (a queue per module, the CLI's and the bot's
# restarts, killed workers): forked from one server that imported torch and diffusers once,
# instead of each importing them anew (generation/queue.py, WORKER_START_METHOD). The CLI and
# `pintor run` subprocesses the tests start keep the default, "spawn".
generation.queue.WORKER_START_METHOD = "forkserver"

from tests.discord_harness import discord_harness, pintor  # noqa: E402, F401 - the Discord tests' shared bot
from tests.postgres_server import PostgresServer, postgres_server  # noqa: E402
from tests.properties import PROFILE  # noqa: E402, F401 - loads the hypothesis profile for every test
from tests.secrets_check import LogCollector  # noqa: E402
from tests.tiny_models import build_all  # noqa: E402

ON_POSTGRESQL_TOO = Path(__file__).with_name("discord_on_postgresql.txt")


SHARED_BOT_GROUP = "the shared Discord bot"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Two marks, given here so that no test module has to remember them:

    - `xdist_group`: with pytest-xdist's `--dist loadgroup` (the README's test command) a module
      runs whole on one process, its module-scoped fixtures made once; and every module with a
      test that uses the session's shared bot (`discord_harness`, which `pintor` takes) runs on
      one process, in file order, as the rules of tests/README.md expect of a shared bot.
    - `postgresql_too`: the Discord tests named in discord_on_postgresql.txt (chosen by
      choose_postgres_tests.py), which `.ci/run` runs again with the shared bot on PostgreSQL.
    """
    chosen = {line.strip() for line in ON_POSTGRESQL_TOO.read_text(encoding="utf-8").splitlines()
              if line.strip() and not line.startswith("#")}
    with_shared_bot = {item.path for item in items if "discord_harness" in getattr(item, "fixturenames", ())}
    for item in items:
        group = SHARED_BOT_GROUP if item.path in with_shared_bot else item.nodeid.split("::", 1)[0]
        item.add_marker(pytest.mark.xdist_group(group))
        if item.nodeid.split("[", 1)[0] in chosen:
            item.add_marker(pytest.mark.postgresql_too)


@pytest.fixture(scope="session", autouse=True)
def secrets_stay_out_of_logs() -> Iterator[LogCollector]:
    """Every log record of the session (INFO and up, tracebacks included) is read for the
    registered secrets (tests/secrets_check.py); one found fails the session at its end."""
    collector = LogCollector()
    root = logging.getLogger()
    level = root.level
    root.addHandler(collector)
    root.setLevel(min(level, logging.INFO) if level else logging.INFO)
    try:
        yield collector
    finally:
        root.removeHandler(collector)
        root.setLevel(level)
    assert not collector.leaked, f"a secret was logged: {collector.leaked[:5]}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for the session (tests/postgres_server.py), started by the
    first test that needs it."""
    with postgres_server() as server:
        yield server


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> str:
    """A new empty database on the session's PostgreSQL server (postgresql+asyncpg URL)."""
    return postgres.create_database()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random-weight diffusers pipelines saved with ``save_pretrained``:
    keys "sd", "sdxl", "kandinsky22-prior", "kandinsky22", "upscaler-x4"."""
    return build_all(tmp_path_factory.mktemp("models"))


def write_registry(path: Path, models: dict[str, Path], *, native_side: int = 128) -> Path:
    """A models.toml naming the tiny pipelines, as an admin would write it."""
    path.write_text(f'''
default = "tiny-sd"
upscaler = "tiny-upscaler"

[models.tiny-sd]
source = "{models['sd']}"
family = "sd"
native_side = {native_side}
steps = 2
guidance = 5.0

[models.tiny-sdxl]
source = "{models['sdxl']}"
family = "sdxl"
native_side = 64
steps = 2

[models.tiny-kandinsky]
source = "{models['kandinsky22']}"
prior = "{models['kandinsky22-prior']}"
family = "kandinsky22"
native_side = 64
steps = 2

[models.tiny-upscaler]
source = "{models['upscaler-x4']}"
family = "upscale-x4"
steps = 2

[midjourney]
"--v 6" = "tiny-sdxl"
"--niji" = "tiny-sd"
''', encoding="utf-8")
    return path


def cli_env(tmp_path: Path, registry: Path, **extra: str) -> dict[str, str]:
    """The environment of a `pintor` subprocess as an operator sets it up: the models file
    `registry`, the CPU, a data folder and SQLite file under `tmp_path/data`, offline, this
    checkout's code first on the import path; `extra` variables on top."""
    return os.environ | {
        "PINTOR_MODELS": str(registry),
        "PINTOR_DEVICE": "cpu",
        "PINTOR_DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'data' / 'pintor.db'}",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    } | extra


@pytest.fixture(scope="session")
def registry_file(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_registry(tmp_path_factory.mktemp("registry") / "models.toml", tiny_models)


@pytest.fixture(scope="session")
def small_registry_file(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny models with "tiny-sd" at a native 64 px: the cheapest grids, for tests
    that run jobs through the worker process."""
    return write_registry(tmp_path_factory.mktemp("registry64") / "models.toml", tiny_models, native_side=64)
