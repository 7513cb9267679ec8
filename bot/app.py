"""`pintor run`: the Discord bot and its generation worker, from start to a clean stop.

Start: migrate the database, build the studio, log in (which loads the cogs, registers the
buttons and the studio listener, and syncs the commands), start the studio (the worker
process; jobs left unfinished by the last run are queued again, and their results are posted
in their channels), then connect to the gateway; with PINTOR_METRICS_PORT, serve `/metrics` and
`/healthz` (bot.metrics) until the stop.

Stop (SIGTERM, SIGINT/Ctrl-C): close the Discord client, then the studio: the worker finishes
its current step and stops; the job it was running and every queued job stay queued in the
database for the next start. Pictures are written under `PINTOR_DATA_DIR/images`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.discord_bot import PintorBot
from bot.discord_endpoints import point_discord_at
from bot.metrics import Metrics, WorkerStatus, serve
from bot.settings import Settings, registry_from
from bot.studio import Studio
from bot.wiring import build_studio, check_queue_url
from generation.queue import WorkerState
from storage.db import open_engine, upgrade

log = logging.getLogger(__name__)


class MissingTokenError(RuntimeError):
    pass


def bot_token(settings: Settings) -> str:
    token = settings.discord_token.get_secret_value().strip() if settings.discord_token else ""
    if not token:
        raise MissingTokenError(
            "DISCORD_TOKEN is not set: put the bot token from https://discord.com/developers/applications "
            "(your application → Bot → Reset Token) in DISCORD_TOKEN, in the environment or in .env.")
    return token


@dataclass
class Running:
    bot: PintorBot
    studio: Studio
    gateway: asyncio.Task  # the gateway connection; it ends only on a fatal error or close
    metrics: Metrics
    metrics_port: int | None = None  # where /metrics and /healthz are served; None: not served


def worker_status(state: WorkerState) -> WorkerStatus:
    """A worker as the metrics show it (named by its queue: "local" for the embedded one)."""
    name = state.name or "local"
    if state.error:
        return WorkerStatus(name, "down")
    if state.running_job is not None:
        return WorkerStatus(name, "busy")
    return WorkerStatus(name, "idle" if state.ready else "starting")


async def _worker_statuses(studio: Studio) -> list[WorkerStatus]:
    return [worker_status(state) for state in await studio.workers()]


async def health_problems(bot: PintorBot, studio: Studio, engine: AsyncEngine) -> dict[str, str]:
    """What /healthz reports: {} when the bot is connected to Discord, the database answers and
    the worker has not given up; else each problem by name (never a secret: no URL, no token)."""
    problems: dict[str, str] = {}
    if bot.is_closed() or not bot.is_ready():
        problems["discord"] = "not connected to Discord"
    errors = [state.error for state in await studio.workers() if state.error]
    if errors:
        problems["worker"] = "; ".join(errors)
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as err:  # noqa: BLE001 - any failure of the database is the finding
        problems["database"] = f"the database does not answer ({type(err).__name__})"
    return problems


async def _job_kind(studio: Studio, job_id: int) -> str | None:
    job = await studio.job(job_id)
    return job.kind if job is not None else None


@contextlib.asynccontextmanager
async def running_bot(settings: Settings, **bot_options: Any) -> AsyncIterator[Running]:
    """The bot logged in and connecting, its studio started; on exit the bot is closed first,
    then the studio (the worker finishes its step; unfinished jobs stay queued)."""
    token = bot_token(settings)
    check_queue_url(settings)
    registry = registry_from(settings)  # a broken model registry fails here, before anything starts
    point_discord_at(settings.discord_api_base, settings.discord_gateway_url)
    engine = open_engine(settings.database_url)
    try:
        await upgrade(engine, pictures_root=settings.pictures_dir)
        studio = build_studio(settings, engine, registry, owner="bot")
        metrics = Metrics(kind_of=lambda job_id: _job_kind(studio, job_id), workers=lambda: _worker_statuses(studio))
        studio.listeners.append(metrics.on_event)  # before the start: re-queued jobs are counted
        bot = PintorBot(settings=settings, studio=studio, metrics=metrics, **bot_options)
        try:
            await bot.login(token)  # setup_hook: cogs, buttons, the studio listener, command sync
            await studio.start()  # after the listener: re-queued jobs' results are posted
            try:
                gateway = asyncio.create_task(bot.connect(reconnect=True), name="discord-gateway")
                try:
                    async with contextlib.AsyncExitStack() as served:
                        port = None
                        if settings.pintor_metrics_port is not None:
                            port = await served.enter_async_context(serve(
                                metrics, lambda: health_problems(bot, studio, engine),
                                host=settings.pintor_metrics_host, port=settings.pintor_metrics_port))
                        yield Running(bot, studio, gateway, metrics, port)
                finally:
                    await bot.close()
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        await gateway
            finally:
                await studio.close()
        finally:
            await bot.close()
    finally:
        await engine.dispose()


# A stop waits for the results being posted and the worker's step; one that takes longer than
# SLOW_STOP_S logs what it waits for, and at STOP_DEADLINE_S it stops waiting (unfinished jobs
# stay queued and their leases expire: the next start takes them on). Docker's grace is 10 s by
# default, after which it kills the process anyway.
SLOW_STOP_S = 20.0
STOP_DEADLINE_S = 40.0


async def _bound_the_stop(stopping: asyncio.Task) -> None:
    """After SLOW_STOP_S, log the stack of every task still running (the stop's own first): a
    stop that hangs says where. At STOP_DEADLINE_S, cancel `stopping` (the stop itself)."""
    await asyncio.sleep(SLOW_STOP_S)
    for task in sorted(asyncio.all_tasks(), key=lambda t: t is not stopping):
        if task is not asyncio.current_task():
            stack = io.StringIO()
            task.print_stack(file=stack)
            log.warning("still stopping after %.0f s: %s", SLOW_STOP_S, stack.getvalue())
    await asyncio.sleep(STOP_DEADLINE_S - SLOW_STOP_S)
    stopping.cancel()


async def run_bot(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT; 0 after a clean stop."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    watchdog: asyncio.Task | None = None
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # Windows; not the main thread
            loop.add_signal_handler(signum, stop.set)
    try:
        async with running_bot(settings) as running:
            log.info("Pintor is starting (data in %s)", settings.pintor_data_dir.resolve())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({stopping, running.gateway}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if running.gateway.done() and not stop.is_set():
                running.gateway.result()  # a fatal gateway error (e.g. intents not allowed): raise it
            log.info("stopping: closing the Discord client, then the worker (unfinished jobs stay queued)")
            stopping_task = asyncio.current_task()
            assert stopping_task is not None
            watchdog = asyncio.create_task(_bound_the_stop(stopping_task))
    except asyncio.CancelledError:
        if watchdog is None or not watchdog.done() or watchdog.cancelled():
            raise  # cancelled from outside, not by the deadline
        if (current := asyncio.current_task()) is not None:
            current.uncancel()
        log.error("the stop took longer than %.0f s: stopped without waiting further (unfinished jobs "
                  "stay queued for the next start)", STOP_DEADLINE_S)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signum)
        if watchdog is not None:
            watchdog.cancel()
    log.info("Pintor stopped")
    return 0
