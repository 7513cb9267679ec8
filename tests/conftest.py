from __future__ import annotations

import logging
import os

# Tiny models gain nothing from several threads, and the tests run torch in two processes at
# once (the test's own and the worker it spawned): one thread each avoids oversubscribing the
# cores. Set before torch is imported; the worker processes inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# No test reaches the real hub (the hub's tests use a local stand-in): offline from the start, as
# `.ci/run` runs the suite, so that a newcomer's run is CI's (huggingface_hub reads it at import).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

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


def chosen_for_postgresql() -> list[str]:
    """The node ids (`tests/test_x.py::test_name`) discord_on_postgresql.txt names, in its order."""
    return [line.strip() for line in ON_POSTGRESQL_TOO.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]


# The modules whose tests use the session's shared bot (tests/discord_harness.py): with
# pytest-xdist they all run on one process, in file order (pytest_xdist_make_scheduler below).
# Every test_discord_*.py module counts (the few without the bot cost nothing there); a module
# of another name that uses the bot must be named here, which collection checks.
SHARED_BOT_MODULES = {"test_cli_discord.py", "test_docker.py", "test_redis_bot.py", "test_reliability_database.py",
                      "test_reliability_load.py", "test_trial.py"}


def uses_the_shared_bot(module: str) -> bool:
    """Whether the module (a path or node id) is one of SHARED_BOT_MODULES or test_discord_*.py."""
    name = Path(module.split("::", 1)[0]).name
    return name in SHARED_BOT_MODULES or name.startswith("test_discord_")


def scope_of(nodeid: str) -> str:
    """The unit pytest-xdist sends whole to one process: "the shared bot" for its modules, else
    the test's module (`tests/test_x.py`)."""
    return "the shared bot" if uses_the_shared_bot(nodeid) else nodeid.split("::", 1)[0]


# The scopes that take longest, longest first (seconds summed over their tests, measured in a
# whole run: tests/README.md, "Where the time goes"): they are handed out first, so that the
# last minutes are not one long module running alone while the other process has nothing left.
HEAVIEST_FIRST = ("the shared bot", "tests/test_models_pull.py", "tests/test_cli_jobs.py",
                  "tests/test_reliability_killloop.py", "tests/test_redis_workers.py", "tests/test_engine.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """With pytest-xdist (the README's `-n auto`), whatever `--dist` says: a module runs whole on
    one process (its module-scoped Studio, queue or pictures made once), and every module of the
    shared bot on the same process, in file order, as the rules of tests/README.md expect of one
    bot. (pytest-xdist's own `--dist loadgroup` would say the same with marks, but cannot rename
    pytest 9's node ids, so its groups are lost.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ModulesAndTheSharedBot(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    # scopes in the order collection leaves them (HEAVIEST_FIRST first), not by their count of tests
    config.option.loadscopereorder = False
    return ModulesAndTheSharedBot(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Puts the scopes of HEAVIEST_FIRST first (in that order; the rest, and the tests inside
    each scope, in file order), checks SHARED_BOT_MODULES (a test of another module on the
    shared bot would run on a second bot, in no order the rules were written for), and marks
    `postgresql_too` the Discord tests named in discord_on_postgresql.txt (chosen by
    choose_postgres_tests.py), which `.ci/run` runs again with the shared bot on PostgreSQL."""
    strays = sorted({item.nodeid.split("::", 1)[0] for item in items if not uses_the_shared_bot(item.nodeid)
                     and "discord_harness" in getattr(item, "fixturenames", ())})
    if strays:
        raise pytest.UsageError(f"{', '.join(strays)} use the shared bot: name them in conftest.SHARED_BOT_MODULES")
    rank = {scope: place for place, scope in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(scope_of(item.nodeid), len(rank)))  # stable: file order within
    chosen = set(chosen_for_postgresql())
    for item in items:
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
