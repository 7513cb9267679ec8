"""`pintor doctor`: what this installation has, what is wrong, and how to fix it."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version

from bot.settings import Settings

OK, PROBLEM = "ok", "PROBLEM"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _shown(url: str) -> str:
    """DATABASE_URL as it may be printed: its password hidden, or nothing of it if it is no URL."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "DATABASE_URL (not a database URL)"


async def doctor(settings: Settings, *, reach: bool = False) -> int:
    """Print each check's finding with its fix; returns 1 when a problem was found, else 0.
    `reach`: also ask each remote model's API whether it answers to the key (pintor doctor --reach)."""
    problems = 0

    def report(status: str, what: str, detail: str, fix: str = "") -> None:
        nonlocal problems
        problems += status == PROBLEM
        print(f"[{status:>7}] {what}: {detail}")
        if fix:
            print(f"{'':10}fix: {fix}")

    report(OK, "python", platform.python_version())
    for package in ("torch", "diffusers", "transformers", "discord.py", "SQLAlchemy"):
        report(OK, package, _version(package))

    from generation.devices import LOW_VRAM_BYTES, choose_device

    try:
        device = choose_device(settings.pintor_device, settings.pintor_dtype)
        detail = f"{device.device} ({device.name}), {str(device.dtype).removeprefix('torch.')}"
        if device.low_vram and settings.pintor_offload == "auto":
            detail += (f"; under {LOW_VRAM_BYTES // 1024**3} GiB VRAM: models that do not fit are offloaded "
                       "to the CPU between steps (PINTOR_OFFLOAD=auto)")
        report(OK, "device", detail)
        if device.device == "cpu":
            report(OK, "note", "no GPU: generation runs on the CPU (sd-turbo is the model that fits)",
                   "for a GPU, install the torch build for your CUDA: https://pytorch.org/get-started/")
    except ValueError as err:
        report(PROBLEM, "device", str(err), "set PINTOR_DEVICE=auto, or install a torch build for your GPU")

    from sqlalchemy.exc import ArgumentError

    from storage.db import missing_sqlite_file

    try:
        missing = missing_sqlite_file(settings.database_url)
    except ArgumentError:
        missing = None  # the finding is reported by _check_database
    if missing is not None:
        # not a problem: `pintor run` (and every job verb) creates it and applies the migrations
        report(OK, "database", f"{_shown(settings.database_url)}: does not exist yet, created on first start")
    else:
        await _check_database(report, settings.database_url)

    data_dir = settings.pintor_data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    if os.access(data_dir, os.W_OK):
        report(OK, "data folder", str(data_dir.resolve()))
    else:
        report(PROBLEM, "data folder", f"{data_dir} is not writable", "check PINTOR_DATA_DIR and its permissions")

    from bot.settings import registry_from
    from generation.availability import index_for
    from generation.families import family_of
    from generation.registry import RegistryError

    try:
        registry = registry_from(settings)
        report(OK, "models", f"{len(registry.models)} from {registry.origin}, default {registry.default}")
        remote = [spec for spec in registry.models.values() if spec.is_remote]
        if remote:
            await _check_remote(report, settings, remote, reach)
        for spec in registry.models.values():
            if spec.is_remote:
                continue
            for source in filter(None, (spec.source, spec.prior, spec.inpaint, spec.clip)):
                _check_source(report, spec.name, source, spec.config if source == spec.source else None,
                              weights_file=family_of(spec.family).weights_file, index=index_for(spec.family))
            if family_of(spec.family).weights_file and spec.source:
                _check_upscaler(report, spec.name, spec.source)
            if spec.vae:
                _check_addition(report, "VAE", spec.name, spec.vae)
        for lora in registry.loras.values():
            _check_addition(report, "LoRA", lora.name, lora.source, lora.weight_name)
        for embedding in registry.embeddings.values():
            _check_addition(report, "embedding", embedding.name, embedding.source, embedding.weight_name)
        from generation.availability import check_controlnet

        for controlnet in registry.controlnets.values():
            for what, state in check_controlnet(controlnet):
                report(OK if state.ok else PROBLEM, f"{what} {controlnet.name}", state.detail, state.fix)
    except RegistryError as err:
        report(PROBLEM, "models", str(err), "fix the file that PINTOR_MODELS names (see docs/models.md)")

    if settings.discord_token is None:
        report(PROBLEM, "discord", "DISCORD_TOKEN is not set", "put the bot token in .env (see README: Discord)")
    else:
        report(OK, "discord", f"token set; API {settings.discord_api_base}")

    if settings.pintor_queue_url:
        await _check_workers(report, settings)

    print(f"\n{problems} problem(s) found." if problems else "\nAll good.")
    return 1 if problems else 0


REACH_TIMEOUT_S = 10.0


async def _check_remote(report, settings: Settings, specs, reach: bool) -> None:
    """Remote models (generation/remote.py): the API key is set (never printed), and with
    `reach` each API base URL answers to it (GET /models: free)."""
    import asyncio

    names = ", ".join(spec.name for spec in specs)
    key = settings.openai_key()
    if key is None:
        report(PROBLEM, "remote models", f"{names} need an OpenAI API key, and none is set",
               "set OPENAI_API_KEY (or PINTOR_OPENAI_API_KEY) in .env")
        return
    report(OK, "remote models", f"{names}: API key set (not shown)"
           + ("" if reach else "; `pintor doctor --reach` asks the API whether it answers to it"))
    if not reach:
        return
    import openai

    for base_url in dict.fromkeys(spec.base_url or settings.openai_base_url for spec in specs):
        shown = base_url or "https://api.openai.com/v1"
        client = openai.OpenAI(api_key=key, base_url=base_url, timeout=REACH_TIMEOUT_S, max_retries=0)
        try:
            await asyncio.to_thread(client.models.list)
            report(OK, "remote API", f"{shown} answers to the key")
        except openai.AuthenticationError:
            report(PROBLEM, "remote API", f"{shown} refuses the key (401)", "check OPENAI_API_KEY")
        except openai.APIError as err:  # the kind only: a message could quote the key, a request id
            status = getattr(err, "status_code", None)
            report(PROBLEM, "remote API", f"{shown}: {type(err).__name__}" + (f" (HTTP {status})" if status else ""),
                   "check OPENAI_BASE_URL (or the entry's base_url) and this machine's network")
        finally:
            client.close()


async def _check_workers(report, settings: Settings) -> None:
    """The Redis queue and every worker that answers on it."""
    import redis.asyncio as aioredis

    from generation.redis_queue import RedisKeys, list_workers

    client = aioredis.Redis.from_url(settings.pintor_queue_url, decode_responses=True)
    try:
        workers = await list_workers(client, RedisKeys())
    except Exception as err:  # noqa: BLE001 - any failure to connect is the finding
        report(PROBLEM, "queue", f"cannot reach the Redis queue: {type(err).__name__}",
               "check PINTOR_QUEUE_URL and that Redis runs")
        return
    finally:
        await client.aclose()
    report(OK, "queue", f"Redis; {len(workers)} worker(s) connected" + ("" if workers else
           f" (`pintor run` starts {settings.pintor_local_workers} beside the bot)"))
    for state in workers:
        free = f", {state.free_memory_bytes / 1024**3:.1f} GiB free" if state.free_memory_bytes is not None else ""
        doing = f"running job {state.running_job}" if state.running_job is not None else "idle"
        report(OK if state.ready else PROBLEM, f"worker {state.name}",
               f"{state.device.get('device_name', '?')}{free}; models: {', '.join(state.models) or 'none yet'}; "
               f"{doing}" + (f"; could not start: {state.error}" if state.error else ""))


async def _check_database(report, database_url: str) -> None:
    from storage.db import current_revision, open_engine

    engine = None
    try:  # opening the engine fails too: a driver not installed, a URL that is no URL
        engine = open_engine(database_url)
        current, head = await current_revision(engine)
        if current == head:
            report(OK, "database", f"{_shown(database_url)} at revision {current}")
        else:
            report(PROBLEM, "database", f"at revision {current or 'none'}, this version needs {head}",
                   "run `pintor db upgrade` (pintor run also upgrades on start)")
    except Exception as err:  # noqa: BLE001 - any failure to connect is the finding
        report(PROBLEM, "database", f"cannot open {_shown(database_url)}: {err}",
               "check DATABASE_URL (and that its driver is installed, e.g. postgresql+asyncpg:// needs asyncpg)")
    finally:
        if engine is not None:
            await engine.dispose()


def _check_source(report, name: str, source: str, config: str | None = None, *, weights_file: bool = False,
                  index: str = "model_index.json") -> None:
    """One line per source: a folder that is (or is not) a pipeline, a hub id downloaded or not;
    offline, a hub id that is not downloaded is a problem (generation/availability.py)."""
    from generation.availability import check_source

    state = check_source(name, source, config, weights_file=weights_file, index=index)
    if state.ok and not state.downloaded:  # online and not downloaded: may it be downloaded?
        from generation.hub import access_problem

        problem = access_problem(name, source)
        if problem:
            report(PROBLEM, f"model {name}", problem.removeprefix(f"cannot load model '{name}': "))
            return
    report(OK if state.ok else PROBLEM, f"model {name}", state.detail, state.fix)


def _check_upscaler(report, name: str, source: str) -> None:
    """An ESRGAN-family weights file that is here, read as the worker reads it (spandrel, on the
    CPU): one that Pintor cannot use (not an upscaler, channel counts it cannot feed or show:
    generation/esrgan.py: unusable) is a problem now, named, before any job fails on it."""
    from pathlib import Path

    if not Path(source).expanduser().is_file():
        return  # _check_source said so
    from generation.availability import ModelLoadError
    from generation.devices import choose_device
    from generation.esrgan import load_esrgan

    try:
        model = load_esrgan(name, source, choose_device("cpu"))
    except ModelLoadError as err:
        report(PROBLEM, f"upscaler {name}", err.detail,
               "use a super-resolution network of 1 (grey), 3 (RGB) or 4 (RGBA) channels (see docs/models.md)")
        return
    report(OK, f"upscaler {name}", f"{model.architecture.name} ×{model.scale}, "
           f"{model.input_channels} → {model.output_channels} channels")


def _check_addition(report, kind: str, name: str, source: str, weight_name: str | None = None) -> None:
    """One line per VAE override, LoRA or embedding: its file here, downloaded or not (offline:
    a problem), as generation/availability.py's check_addition says."""
    from generation.availability import check_addition

    state = check_addition(kind, name, source, weight_name)
    report(OK if state.ok else PROBLEM, f"{kind} {name}", state.detail, state.fix)


async def health(settings: Settings) -> int:
    """`pintor health`, the container's HEALTHCHECK: cheap (no torch, no GPU, no network).

    Checks that the database answers at the revision this version needs and that the data
    folder is writable; prints one line. Returns 0 (healthy) or 1 (unhealthy: the line says why).
    """
    from storage.db import current_revision, missing_sqlite_file, open_engine

    engine = None
    try:
        if (missing := missing_sqlite_file(settings.database_url)) is not None:
            # opening it would create an empty database: on a volume that is not mounted, one
            # that the next start would take for the real one
            print(f"unhealthy: there is no database at {missing} (is its volume mounted?)")
            return 1
        engine = open_engine(settings.database_url)
        current, head = await current_revision(engine)
    except Exception as err:  # noqa: BLE001 - any failure to connect is the finding
        print(f"unhealthy: cannot open the database {_shown(settings.database_url)}: {err}")
        return 1
    finally:
        if engine is not None:
            await engine.dispose()
    if current != head:
        print(f"unhealthy: the database is at revision {current or 'none'}, this version needs {head} "
              "(`pintor run` upgrades it on start)")
        return 1
    data_dir = settings.pintor_data_dir
    if not (data_dir.is_dir() and os.access(data_dir, os.W_OK)):
        print(f"unhealthy: the data folder {data_dir} is missing or not writable")
        return 1
    print(f"healthy: database at revision {current}, data folder {data_dir} writable")
    return 0
