"""The terminal and Discord share one database: a job made with `pintor` can be /shown in
Discord, and `pintor show` reads a job made in Discord (not one delivered privately)."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.discord_harness import Harness, acked, is_result, job_id_of
from tests.test_cli_jobs import ROOT, codes_of, main_calls_script
from tests.test_discord_privacy import done_job

pytestmark = pytest.mark.asyncio(loop_scope="session")

DEFERRED, MESSAGE, EPHEMERAL = 5, 4, 64


async def cli(pintor: Harness, cwd: Path, *calls: list[str]) -> tuple[list[int], str, str]:
    """`bot.cli.main` in a subprocess on the bot's own settings (database, data folder, models),
    while the bot runs (the event loop is not blocked)."""
    settings = pintor.settings
    env = os.environ | {"PINTOR_MODELS": str(settings.pintor_models), "PINTOR_DEVICE": "cpu",
                        "PINTOR_DATA_DIR": str(settings.pintor_data_dir), "DATABASE_URL": settings.database_url,
                        "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", main_calls_script(*calls), env=env, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 300)
    assert process.returncode == 0, err.decode()
    return codes_of(out.decode()), out.decode(), err.decode()


def pixels(data: bytes) -> bytes:
    return Image.open(io.BytesIO(data)).convert("RGB").tobytes()


async def test_the_terminal_and_discord_read_each_others_jobs(pintor: Harness, tmp_path: Path):
    emu = pintor.emu
    prompt = "a harbour at dawn --seed 11"
    inter = await emu.slash("imagine", {"prompt": prompt})
    await acked(inter, kind=DEFERRED)
    discord_job = job_id_of(await inter.wait_original(is_result, timeout=90))
    stored = await pintor.posted(discord_job)
    secret = await done_job(pintor, emu._snowflake(), tmp_path, prompt="my secret garden",
                            guild_id=emu.guild_id, private=True)
    cli_job = await done_job(pintor, 0, tmp_path, prompt="a lighthouse made in the terminal", guild_id=None)
    jobs_before = await pintor.job_count()

    codes, out, err = await cli(pintor, tmp_path,
                                ["show", str(discord_job), "-o", "from-discord.png"],
                                ["imagine", prompt, "-o", "from-cli.png"],
                                ["show", str(secret), "-o", "secret.png"],
                                ["history"])
    assert codes == [0, 2, 2, 0], out + err
    # `pintor show` wrote the very file Discord posted
    assert (tmp_path / "from-discord.png").read_bytes() == pintor.studio.picture(stored.grid_path).read_bytes()
    # beside the running bot (embedded queue) a new job is refused: no second worker, no job stored,
    # and none of the bot's jobs run here
    assert "Pintor is running on this database" in err and "PINTOR_QUEUE_URL=redis://" in err
    assert not (tmp_path / "from-cli.png").exists() and await pintor.job_count() == jobs_before
    # a job delivered privately belongs to its author
    assert f"Job {secret} was delivered privately" in err and not (tmp_path / "secret.png").exists()
    history = out.split("---")[3]
    listed = [int(line.split()[0]) for line in history.strip().splitlines()[:-1]]
    assert discord_job in listed and secret not in listed and cli_job in listed

    # /show in Discord posts the terminal's job, whoever asks
    show = await emu.slash("show", {"job_id": cli_job}, user_id=emu._snowflake())
    posted = await show.wait_original(is_result, timeout=30)
    assert "a lighthouse made in the terminal" in posted["content"]
    grid = (await pintor.job(cli_job)).grid_path
    assert grid is not None
    assert pixels(await pintor.fetch(posted["attachments"][0])) == pixels(pintor.studio.picture(grid).read_bytes())
