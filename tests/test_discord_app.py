"""`pintor run` as an admin runs it: a real process against the Discord emulator, stopped by
SIGTERM; and the errors it gives before it starts."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from bot.app import MissingTokenError, bot_token, running_bot
from bot.settings import Settings
from tests.discord_emulator import DiscordEmulator
from tests.discord_harness import is_result
from tests.secrets_check import secret

SECRET = secret("MTIz.this-is-the-bot-token.xyz")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("token", [None, "", "   "])
async def test_a_missing_token_is_a_clear_error_naming_the_setting(token, tmp_path: Path):
    settings = Settings(_env_file=None, discord_token=token, database_url=f"sqlite+aiosqlite:///{tmp_path}/x.db")
    with pytest.raises(MissingTokenError, match="DISCORD_TOKEN"):
        bot_token(settings)
    with pytest.raises(MissingTokenError):
        async with running_bot(settings):
            pass
    assert not (tmp_path / "x.db").exists()  # nothing was started


def test_settings_never_show_the_token():
    settings = Settings(_env_file=None, discord_token=SECRET)
    assert SECRET not in repr(settings) and SECRET not in str(settings.model_dump())
    assert bot_token(settings) == SECRET


async def test_pintor_run_serves_imagine_and_stops_cleanly_on_sigterm(tmp_path: Path, registry_file: Path):
    with socket.socket() as sock:  # a free port for /metrics (released just before pintor takes it)
        sock.bind(("127.0.0.1", 0))
        metrics_port = sock.getsockname()[1]
    async with DiscordEmulator() as emu:
        env = os.environ | {"PINTOR_METRICS_PORT": str(metrics_port),
            "DISCORD_TOKEN": SECRET, "DISCORD_API_BASE": emu.api_base, "DISCORD_GATEWAY_URL": emu.gateway_url,
            "DISCORD_GUILD_IDS": str(emu.guild_id), "PINTOR_MODELS": str(registry_file), "PINTOR_DEVICE": "cpu",
            "PINTOR_DATA_DIR": str(tmp_path / "data"), "PINTOR_LOG_LEVEL": "DEBUG",
            "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'data' / 'pintor.db'}",
            "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "run", env=env, cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        output = asyncio.create_task(process.stdout.read())
        try:
            await emu.wait_ready(timeout=60)
            assert emu.identify["token"] == SECRET
            assert {"imagine", "show"} <= {c["name"] for c in emu.commands[emu.guild_id]}
            inter = await emu.slash("imagine", {"prompt": "a harbour at night --seed 1"})
            assert (await inter.wait_callback(timeout=3))["type"] == 5
            final = await inter.wait_original(is_result, timeout=120)
            assert "seed 1" in final["content"]
            # the process serves its health and metrics on loopback; the job is counted
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{metrics_port}/healthz") as response:
                    assert response.status == 200 and (await response.json())["status"] == "ok"
                async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
                    page = await response.text()
            assert 'pintor_jobs_total{kind="imagine",outcome="done"} 1.0' in page
            assert 'pintor_job_generating_seconds_count{kind="imagine"} 1.0' in page
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            returncode = await asyncio.wait_for(process.wait(), 60)
            log = (await output).decode(errors="replace")
    assert returncode == 0, log
    assert "Pintor stopped" in log
    assert f"metrics and health on http://127.0.0.1:{metrics_port}/metrics" in log
    assert SECRET not in log
