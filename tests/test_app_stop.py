"""bot.app.run_bot's bounded stop: a stop that hangs (seen once in CI: `pintor run` on Redis had
not exited 60 s after SIGTERM) logs what it waits for, then stops waiting at its deadline and
exits cleanly; unfinished jobs stay queued for the next start (their leases expire)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from bot import app


@pytest.mark.smoke
async def test_a_stop_that_hangs_logs_where_and_ends_at_its_deadline(monkeypatch, caplog, tmp_path):
    monkeypatch.setattr(app, "SLOW_STOP_S", 0.2)
    monkeypatch.setattr(app, "STOP_DEADLINE_S", 0.5)
    closed = asyncio.Event()

    @contextlib.asynccontextmanager
    async def running_bot(settings: Any, **options: Any):
        gateway = asyncio.create_task(asyncio.sleep(0))  # the gateway ends: the bot stops
        try:
            yield app.Running(bot=None, studio=None, gateway=gateway, metrics=None)  # type: ignore[arg-type]
        finally:
            try:
                await asyncio.Event().wait()  # a close that never ends
            finally:
                closed.set()  # what comes after the hung step still runs

    monkeypatch.setattr(app, "running_bot", running_bot)
    with caplog.at_level(logging.WARNING, logger="bot.app"):
        settings = SimpleNamespace(pintor_data_dir=tmp_path)
        assert await asyncio.wait_for(app.run_bot(settings), 10) == 0  # type: ignore[arg-type]
    assert closed.is_set()
    assert any("still stopping after" in r.getMessage() and "running_bot" in r.getMessage() for r in caplog.records)
    assert any("the stop took longer than" in r.getMessage() for r in caplog.records)
