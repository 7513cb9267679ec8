"""The `pintor` command: run the bot, make a picture from the terminal, inspect the setup."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.cli_parser import JOB_COMMANDS, build_parser

if TYPE_CHECKING:
    from bot.settings import Settings

log = logging.getLogger(__name__)

# discord.webhook logs interaction-token URLs at DEBUG: short-lived, but still not for logs
# openai logs request ids at DEBUG (generation.remote.PROVIDER_LOGGERS)
NOISY_LOGGERS = ("discord.http", "discord.gateway", "discord.webhook", "httpx", "urllib3",
                 "alembic.runtime.migration", "openai", "httpx2", "httpcore2")


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _capabilities(spec, registry) -> str:
    from bot.intake import abilities

    return ", ".join(abilities(registry, spec))


def _on_disk(source: str, config: str | None = None, *, weights_file: bool = False,
             index: str = "model_index.json") -> str:
    from generation.availability import check_source
    from generation.hub import human_size, is_local, size_on_disk

    state = check_source("", source, config, weights_file=weights_file, index=index)
    size = size_on_disk(source)
    if state.downloaded:
        return f"downloaded, {human_size(size or 0)}"
    if weights_file or is_local(source):  # a path: nothing to download, the entry must be fixed
        return f"NOT usable — {state.detail}; {state.fix}"
    return "NOT downloaded" + (f" (partly: {human_size(size)})" if size else "")


def _addition_state(kind: str, name: str, source: str, weight_name: str | None = None) -> str:
    from generation.availability import check_addition
    from generation.hub import is_local

    state = check_addition(kind, name, source, weight_name)
    return ("here" if state.downloaded else "NOT usable" if is_local(source) else "NOT downloaded") + ("" if state.ok else f" — {state.detail}; {state.fix}")


def models(settings: Settings) -> int:
    from bot.settings import registry_from
    from generation.availability import check_controlnet, index_for
    from generation.families import family_of
    from generation.hub import is_local
    from generation.registry import KANDINSKY_20
    from generation.schedulers import check_scheduler

    registry = registry_from(settings)
    print(f"models from {registry.origin}; default: {registry.default}; upscaler: {registry.upscaler or 'none'}; "
          f"captioner (/describe): {registry.captioner or 'none'}")
    for spec in registry.models.values():
        marks = [m for m, on in (("default", spec.name == registry.default), ("blend", spec.can_blend)) if on]
        if (limits := spec.remote_limits) is not None:
            print(f"  {spec.name:<16} {spec.family:<12} remote: {spec.model} through the API at "
                  f"{spec.base_url or settings.openai_base_url or 'https://api.openai.com/v1'}"
                  f"{'  [' + ', '.join(marks) + ']' if marks else ''}")
            print(f"  {'':<16} can: {_capabilities(spec, registry)}; sizes "
                  f"{', '.join(f'{w}x{h}' for w, h in limits.sizes)}; costs money per picture: servers "
                  f"allow it with /pintor-admin remote-models; API key "
                  f"{'set' if settings.openai_key() else 'NOT set (OPENAI_API_KEY)'}")
            continue
        where = ("single-file checkpoint" if spec.single_file else "weights file" if family_of(spec.family).weights_file
                 else "local folder" if is_local(spec.source) else "hub id")
        print(f"  {spec.name:<16} {spec.family:<12} {spec.native_side}px {spec.steps} steps  "
              f"{spec.source} ({where}){'  [' + ', '.join(marks) + ']' if marks else ''}")
        print(f"  {'':<16} can: {_capabilities(spec, registry)}; {_on_disk(spec.source, spec.config, weights_file=family_of(spec.family).weights_file, index=index_for(spec.family))}")
        if spec.clip:
            print(f"  {'':<16} clip (style words): {spec.clip}; {_on_disk(spec.clip, index='config.json')}")
        if spec.config:
            print(f"  {'':<16} config: {spec.config}")
        if spec.prior:
            print(f"  {'':<16} prior: {spec.prior}; {_on_disk(spec.prior)}")
        if spec.scheduler:
            loops = check_scheduler(spec.scheduler, spec.family)
            print(f"  {'':<16} scheduler: {spec.scheduler} (for the {' and '.join(loops)})")
        if spec.vae:
            print(f"  {'':<16} vae: {spec.vae}; {_addition_state('VAE', spec.name, spec.vae)}")
        if spec.clip_model:
            print(f"  {'':<16} CLIP model (--clip): {spec.clip_model}; "
                  f"{_addition_state('CLIP model', spec.name, spec.clip_model)}")
    for lora in registry.loras.values():
        triggers = f"; adds “{', '.join(lora.triggers)}”" if lora.triggers else ""
        print(f"  LoRA {lora.name:<11} for {', '.join(lora.families)}; weight {lora.weight:g}{triggers}; "
              f"--lora {lora.name}:{lora.weight:g}")
        print(f"  {'':<16} {lora.source}{' (' + lora.weight_name + ')' if lora.weight_name else ''}; "
              f"{_addition_state('LoRA', lora.name, lora.source, lora.weight_name)}")
    for embedding in registry.embeddings.values():
        print(f"  embedding {embedding.name:<6} for {', '.join(embedding.families)}; write {embedding.token} "
              f"in the prompt or --no")
        print(f"  {'':<16} {embedding.source}; "
              f"{_addition_state('embedding', embedding.name, embedding.source, embedding.weight_name)}")
    for controlnet in registry.controlnets.values():
        print(f"  ControlNet {controlnet.name:<5} {controlnet.kind} for {controlnet.family}; --cn {controlnet.kind} "
              "with a control image")
        for what, state in check_controlnet(controlnet):
            source = controlnet.source if what == "ControlNet" else controlnet.estimator
            print(f"  {'':<16} {what}: {source}; " + ("here" if state.downloaded else "NOT downloaded")
                  + ("" if state.ok else f" — {state.detail}; {state.fix}"))
    if registry.selectors:
        print("MidJourney parameters that choose a model ([midjourney] in the registry file):")
        for (name, value), model in registry.selectors.items():
            key = f"--{name} {value or '(any)'}"
            print(f"  {key:<16} → {model}")
    else:
        print("MidJourney's --v, --niji and --style choose no model (they are ignored with a notice); "
              "map them in [midjourney] of the registry file (docs/models.md).")
    print(f"Not offered: {KANDINSKY_20}")
    return 0


def pull_models(settings: Settings, names: list[str], fp16: bool) -> int:
    """`pintor models pull [NAME…]`: the named models (all for none) into the Hugging Face
    cache; each repo's size is said, and the free disk checked, before its download starts."""
    from bot.settings import registry_from
    from generation.hub import (
        addition_sources,
        controlnet_sources,
        hub_sources,
        missing_local_sources,
        model_sources,
        plan,
        plan_files,
        plan_model,
    )

    registry = registry_from(settings)
    # LoRAs, embeddings and ControlNets are pulled by name too
    others = set(registry.loras) | set(registry.embeddings) | set(registry.controlnets)
    specs = ([registry.get(name) for name in names if name not in others] if names
             else list(registry.models.values()))
    if not fp16:
        from generation.devices import choose_device

        fp16 = choose_device(settings.pintor_device, settings.pintor_dtype).half  # fp16 files serve bf16 too
    failed = 0
    missing = missing_local_sources(registry, names or None)
    for name, what, source in missing:  # a path that is not here: no download can give it
        print(f"error: {name}: its {what} {source} does not exist here, and a path cannot be downloaded; fix "
              f"the entry in {registry.origin} (an existing folder or file, or a hub id such as owner/name)",
              file=sys.stderr)
    failed += len(missing)
    broken = {name for name, _, _ in missing}
    for spec in specs:
        sources, models = hub_sources(spec), model_sources(spec)
        if not sources and not models and spec.name not in broken:
            print(f"{spec.name}: {spec.source} is {'remote (an API)' if spec.is_remote else 'here'}: "
                  "nothing to download")
        for source, weights in sources:
            variant = spec.variant if fp16 else None
            failed += not _pull_repo(spec.name, source, functools.partial(plan, source, variant, weights=weights))
        for source in models:  # a captioner's transformers models (BLIP, CLIP)
            failed += not _pull_repo(spec.name, source, functools.partial(plan_model, source))
    for name, source, files in addition_sources(registry, names or None):
        failed += not _pull_repo(name, source, functools.partial(plan_files, source, files), ", ".join(files))
    for name, source, maybe_files in controlnet_sources(registry, names or None):
        making = (functools.partial(plan, source) if maybe_files is None
                  else functools.partial(plan_files, source, maybe_files))
        failed += not _pull_repo(name, source, making, ", ".join(maybe_files) if maybe_files else None)
    return 1 if failed else 0


def _pull_repo(name: str, source: str, make_plan: Callable[[], Any], listing: str | None = None) -> bool:
    """One repo of `pintor models pull`: plan its download (`make_plan`: generation.hub.plan or
    plan_files), say its size (and `listing`, else its number of files), pull it. Returns False
    when it failed, said on stderr with what to do (the hub's errors through
    generation.availability.explain)."""
    from generation.hub import PullError, human_size, pull

    try:
        found = make_plan()
        print(f"{name}: {source}: {listing or f'{len(found.files)} files'}, {human_size(found.total_bytes)}"
              f" ({human_size(found.missing_bytes)} to download)", flush=True)
        pull(found)
        print(f"{name}: {source} downloaded", flush=True)
        return True
    except PullError as err:
        print(f"error: {name}: {err}", file=sys.stderr)
    except Exception as err:  # noqa: BLE001 - the hub's errors, said with what to do
        from generation.availability import explain

        print(f"error: {explain(name, source, err).detail}", file=sys.stderr)
    return False


async def db_upgrade(settings: Settings) -> int:
    from storage.db import current_revision, open_engine, upgrade

    engine = open_engine(settings.database_url)
    try:
        await upgrade(engine, pictures_root=settings.pictures_dir)
        current, _ = await current_revision(engine)
        print(f"database at revision {current}")
    finally:
        await engine.dispose()
    return 0


async def db_copy(source_url: str, target_url: str) -> int:
    """`pintor db copy FROM TO`: every row of FROM (only read) into the empty database TO
    (storage.copy.copy_urls). Returns 0, or 1 after saying on stderr why nothing was copied."""
    from sqlalchemy.engine import make_url

    from storage.copy import SourceRefused, TargetNotEmpty, copy_urls

    try:
        report = await copy_urls(source_url, target_url)  # a URL that is none: ArgumentError
    except (SourceRefused, TargetNotEmpty, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for table, count in report.rows.items():
        print(f"  {table:<16} {count} rows")
    shown = [make_url(url).render_as_string(hide_password=True) for url in (source_url, target_url)]
    print(f"copied {shown[0]} → {shown[1]} (revision {report.revision}); "
          f"point DATABASE_URL at the new database")
    return 0
def worker(settings: Settings) -> int:
    """`pintor worker`: one generation worker serving the Redis queue at PINTOR_QUEUE_URL. It
    needs no database and no shared disk: only the queue URL, the models and a device."""
    import dataclasses

    from bot.wiring import REDIS_SCHEMES, worker_cache, worker_config
    from generation.redis_worker import default_name, run_redis_worker

    url = settings.pintor_queue_url
    if not url.startswith(REDIS_SCHEMES):
        print("error: `pintor worker` serves a Redis queue: set PINTOR_QUEUE_URL=redis://host:6379/0 "
              "(the embedded queue's worker runs inside `pintor run`).", file=sys.stderr)
        return 2
    name = settings.pintor_worker_name or default_name()
    config = dataclasses.replace(worker_config(settings), output_dir=str(Path(worker_cache(settings)) / name))
    return run_redis_worker(url, config, name)


EXIT_PIPE_CLOSED = 141  # 128 + SIGPIPE, as a shell's own commands end when their reader stops


def main(argv: list[str] | None = None) -> int:
    """Run one `pintor` command (`argv`: its arguments, default sys.argv's) and return its exit
    code. A reader that stops early (`pintor history | head`) ends it quietly with 141, as
    SIGPIPE ends a shell's own commands: no "Broken pipe" message."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # inside the try: a closed pipe is found here, not at exit
    except BrokenPipeError:
        # what was left unwritten goes nowhere: Python's flush at exit would complain again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_PIPE_CLOSED
    return code


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    # imported once the arguments are read: `pintor --help` and a mistyped verb answer at once
    from pydantic import ValidationError

    from bot.settings import Settings

    try:
        settings = Settings()
    except ValidationError as err:
        print(f"error: invalid settings:\n{err}", file=sys.stderr)
        return 2
    configure_logging(settings.pintor_log_level if args.command in ("run", "worker") else "WARNING")
    try:
        if args.command == "run":
            from bot.app import run_bot

            return asyncio.run(run_bot(settings)) or 0
        if args.command == "worker":
            return worker(settings)
        if args.command in JOB_COMMANDS:
            from bot.cli_jobs import run_job_command

            return run_job_command(settings, args)
        if args.command == "models":
            if args.action == "pull":
                return pull_models(settings, args.names, args.fp16)
            return models(settings)
        if args.command == "doctor":
            from bot.doctor import doctor

            return asyncio.run(doctor(settings, reach=args.reach))
        if args.command == "health":
            from bot.doctor import health

            return asyncio.run(health(settings))
        if args.command == "db":
            if args.action == "copy":
                return asyncio.run(db_copy(args.source, args.target))
            return asyncio.run(db_upgrade(settings))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        raise  # the reader stopped: `main` ends quietly
    except Exception as err:  # noqa: BLE001 - a clear line instead of a traceback
        log.debug("pintor %s failed", args.command, exc_info=True)
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
