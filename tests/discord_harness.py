"""Pintor as it runs in production — the real discord.py client (PintorBot), the real Studio,
its worker process and a SQLite file — against the local Discord emulator.

With PINTOR_TEST_DATABASE=postgresql the harness's database is a new one on the session's
throwaway PostgreSQL server (tests/postgres_server.py) instead: the same Discord tests prove
the bot on PostgreSQL (`.ci/run` runs them so; tests/README.md).

One harness is shared by the Discord end-to-end tests (the worker takes seconds to start):
the session fixture `discord_harness`, and `pintor`, which every test takes, pointing
discord.py at the emulator again (other tests point it elsewhere and back).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from PIL import Image
from sqlalchemy import func, select

from bot.app import Running, running_bot
from bot.discord_bot import PintorBot
from bot.discord_endpoints import DEFAULT_API_BASE, DEFAULT_GATEWAY_URL, point_discord_at
from bot.settings import Settings
from bot.studio import Studio
from generation.events import Event
from storage.models import Job
from tests.discord_emulator import DiscordEmulator, RecordedRequest
from tests.postgres_server import DATABASE_VARIABLE
from tests.secrets_check import leaks, secret

TEST_PROGRESS_INTERVAL_S = 0.25
HARNESS_TOKEN = secret("MTIz.harness-bot-token.secret")
TIMEOUT_S = 90.0  # for a job to finish: generous, a loaded CI machine is slow


class Harness:
    def __init__(self, emu: DiscordEmulator, settings: Settings):
        self.emu = emu
        self.settings = settings
        self._stack: contextlib.AsyncExitStack | None = None
        self.running: Running | None = None

    @property
    def bot(self) -> PintorBot:
        return self.running.bot

    @property
    def studio(self) -> Studio:
        return self.running.studio

    async def start(self) -> None:
        self._stack = contextlib.AsyncExitStack()
        self.running = await self._stack.enter_async_context(running_bot(self.settings, guild_ready_timeout=0))
        self.bot.progress_interval_s = TEST_PROGRESS_INTERVAL_S
        await asyncio.wait_for(self.bot.wait_until_ready(), 30)

    async def stop(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = self.running = None

    async def restart(self, settings: Settings | None = None, *, while_stopped=None) -> None:
        """Stop the bot and its studio (worker included), run `while_stopped()`, start anew
        over the same database and data folder."""
        await self.stop()
        if while_stopped is not None:
            await while_stopped()
        self.settings = settings or self.settings
        await self.start()

    # -- looking at what happened ---------------------------------------------------------------

    async def until(self, condition: Callable[[], Any], timeout: float = TIMEOUT_S) -> None:
        """Wait until `condition()` holds; checked after each request the emulator receives."""
        await self.emu._wait(condition, timeout)

    def requests(self, predicate: Callable[[RecordedRequest], bool]) -> list[RecordedRequest]:
        return [r for r in self.emu.requests if predicate(r)]

    async def job_count(self) -> int:
        async with self.studio.store.session() as session:
            return await session.scalar(select(func.count()).select_from(Job))

    async def job(self, job_id: int) -> Job:
        job = await self.studio.job(job_id)
        assert job is not None, f"no job {job_id}"
        return job

    async def posted(self, job_id: int, timeout: float = 10.0) -> Job:
        """The job once the bot has recorded where its result was posted (right after posting)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (job := await self.job(job_id)).message_id is None:
            assert loop.time() < deadline, f"job {job_id}: no message recorded"
            await asyncio.sleep(0.02)
        return job

    async def fetch(self, attachment: dict) -> bytes:
        async with aiohttp.ClientSession() as session, session.get(attachment["url"]) as response:
            assert response.status == 200
            return await response.read()

    async def picture(self, message: dict) -> Image.Image:
        [attachment] = message["attachments"]
        image = Image.open(io.BytesIO(await self.fetch(attachment)))
        image.load()
        return image


@contextlib.asynccontextmanager
async def held(harness: Harness, when: Callable[[int, Event], Awaitable[bool]]) -> AsyncIterator[asyncio.Event]:
    """Hold the Studio back at the first event for which `when(job_id, event)` is true, until
    the block ends (listeners run in line with storing: nothing after that event is stored
    meanwhile). Yields an asyncio.Event that is set once the Studio is held."""
    reached, release = asyncio.Event(), asyncio.Event()

    async def hold(job_id: int, event: Event) -> None:
        if not reached.is_set() and await when(job_id, event):
            reached.set()
            await release.wait()

    harness.studio.listeners.append(hold)
    try:
        yield reached
    finally:
        release.set()
        harness.studio.listeners.remove(hold)


def job_id_in(message: dict) -> int | None:
    """The job a message is about (its "· job N"), or None for any other message: the shared
    emulator also holds /history pages, /settings menus and the like, some with pictures and
    buttons too."""
    match = re.search(r"· job (\d+)", message["content"])
    return int(match[1]) if match else None


def job_id_of(message: dict) -> int:
    """The job a result message is about; the message must be one."""
    job_id = job_id_in(message)
    assert job_id is not None, message["content"]
    return job_id


def custom_ids(message: dict) -> list[list[str]]:
    return [[c.get("custom_id") or c.get("url") for c in row["components"]] for row in message["components"]]


def is_result(message: dict) -> bool:
    """A message that reached its final state: a picture and buttons."""
    return bool(message["attachments"]) and bool(message["components"])


async def acked(inter, *, kind: int | None = None) -> dict:
    """The interaction's callback, which came within Discord's 3 seconds."""
    callback = await inter.wait_callback(timeout=5)
    assert callback["at"] - inter.dispatched_at < 3
    if kind is not None:
        assert callback["type"] == kind, callback
    return callback


def harness_settings(emu: DiscordEmulator, tmp: Path, registry_file: Path, **overrides: Any) -> Settings:
    values = dict(
        discord_token=HARNESS_TOKEN, discord_api_base=emu.api_base, discord_gateway_url=emu.gateway_url,
        discord_guild_ids=[], pintor_allow_dms=False, pintor_buttons_author_only=False,
        database_url=f"sqlite+aiosqlite:///{tmp / 'pintor.db'}", pintor_data_dir=tmp / "data",
        pintor_models=registry_file, pintor_default_model=None, pintor_device="cpu",
        pintor_max_loaded_models=3, pintor_queue_url="", pintor_log_level="WARNING",
        pintor_fetch_local_hosts=["127.0.0.1"],  # the emulator serves attachments over http on loopback
        pintor_metrics_port=0)  # /metrics and /healthz on a free loopback port (tests/test_discord_metrics.py)
    return Settings(_env_file=None, **(values | overrides))



def harness_database(request: pytest.FixtureRequest, tmp: Path) -> str:
    """The shared bot's database URL: a SQLite file, or with PINTOR_TEST_DATABASE=postgresql a
    new database on the session's PostgreSQL server."""
    chosen = os.environ.get(DATABASE_VARIABLE, "sqlite")
    if chosen == "postgresql":
        return request.getfixturevalue("postgres").create_database()
    assert chosen == "sqlite", f"{DATABASE_VARIABLE}={chosen}: sqlite or postgresql"
    return f"sqlite+aiosqlite:///{tmp / 'pintor.db'}"


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def discord_harness(registry_file: Path, tmp_path_factory: pytest.TempPathFactory,
                          request: pytest.FixtureRequest):
    tmp = tmp_path_factory.mktemp("pintor-discord")
    database_url = harness_database(request, tmp)
    async with bot_of_its_own(tmp, registry_file, database_url=database_url) as harness:
        yield harness
    emu = harness.emu
    # no secret in any message the bot left or request body it sent (errors included)
    assert not leaks(json.dumps(m) for m in emu.messages.values())
    assert not leaks(json.dumps(r.json, default=str) for r in emu.requests if r.json is not None)


@contextlib.asynccontextmanager
async def bot_of_its_own(tmp: Path, registry_file: Path, **overrides: Any) -> AsyncIterator[Harness]:
    """A started bot with an emulator of its own, its data in `tmp` and its models from
    `registry_file` (`harness_settings` with `overrides`): the shared bot's, or one for a
    module whose models differ; stopped after, and Discord pointed back at the default."""
    async with DiscordEmulator() as emu:
        harness = Harness(emu, harness_settings(emu, tmp, registry_file, **overrides))
        try:
            await harness.start()
            yield harness
        finally:
            await harness.stop()
            point_discord_at(DEFAULT_API_BASE, DEFAULT_GATEWAY_URL)


SHARED_RULES = ("allowed_models", "channel_ids", "max_queued_per_member", "daily_quota", "max_steps",
                "max_side", "buttons_author_only", "nsfw_check", "paused", "strict_parameters",
                "allow_controlnet", "clip_guidance")
SHARED_PREFERENCES = ("model", "aspect", "quality", "stylize", "private", "append", "remix")
IDLE_TIMEOUT_S = 2 * TIMEOUT_S  # for the jobs a test left running to finish and be posted


async def shared_state(harness: Harness) -> dict[str, Any]:
    """What every test shares and must leave as it found it (tests/README.md, rules 3 and 4):
    the emulator's current server and channel, that server's rules, the default member's
    preferences and how many listeners the Studio has."""
    emu, studio = harness.emu, harness.studio
    rules = await studio.rules(emu.guild_id)
    preferences = await studio.preferences(emu.user_id)
    return {"guild and channel": (emu.guild_id, emu.channel_id),
            "server rules": {name: getattr(rules, name) for name in SHARED_RULES},
            "member preferences": {name: getattr(preferences, name) for name in SHARED_PREFERENCES},
            "studio listeners": len(studio.listeners)}


async def until_idle(harness: Harness, timeout: float = IDLE_TIMEOUT_S) -> None:
    """Wait until the shared bot has no unfinished job and nothing left to post: the jobs a test
    started run in its own time, not in the next test's (a grid queued behind them, or refused by
    the server's limit of queued jobs per member). Polled: no request announces the end."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        unfinished = [job.id for job in await harness.studio.store.unfinished()]
        busy = [task.get_name() for task in (*harness.bot._tasks, *harness.bot._posting)]
        if not unfinished and not busy:
            return
        if loop.time() > deadline:
            for job_id in unfinished:  # so that the tests after it are not its victims
                if not await harness.studio.cancel(job_id):  # stored directly: in no queue
                    await harness.studio.store.mark_cancelled(job_id)
            stuck = list(harness.bot._tasks)  # a report still waiting: ended, so the next test starts idle
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
            raise AssertionError(f"the test left jobs {unfinished} unfinished, tasks {busy} running")
        await asyncio.sleep(0.05)


@pytest_asyncio.fixture(loop_scope="session")
async def pintor(discord_harness: Harness):
    """The shared bot. After the test: nothing it sent broke Discord's limits (the emulator
    answered 400 like Discord), no member link was unfurled into a preview, the jobs it started
    are finished and posted, and what every test shares is as it was (else the test fails here,
    and the state is put back so that the tests after it are not its victims)."""
    emu = discord_harness.emu
    point_discord_at(emu.api_base, emu.gateway_url)
    requests_before, unfurled_before = len(emu.requests), len(emu.unfurled)
    before = await shared_state(discord_harness)
    yield discord_harness
    if discord_harness.running is None:
        return  # stopped by the test, which failed before it started the bot again
    await until_idle(discord_harness)
    after = await shared_state(discord_harness)
    changed = [name for name in before if after[name] != before[name]]
    if changed:
        emu.guild_id, emu.channel_id = before["guild and channel"]
        await discord_harness.studio.update_rules(emu.guild_id, **before["server rules"])
        await discord_harness.studio.update_preferences(emu.user_id, "", **before["member preferences"])
        del discord_harness.studio.listeners[before["studio listeners"]:]
    assert not changed, f"the test left the shared {', '.join(changed)} changed: {before} → {after}"
    refused = [(r.method, r.path, r.answer) for r in emu.requests[requests_before:] if r.refused_by_limits]
    assert not refused, f"Discord would refuse these messages: {refused}"
    assert emu.unfurled[unfurled_before:] == [], "Discord would preview these links in Pintor's messages"
