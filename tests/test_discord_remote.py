"""Remote models (OpenAI's image API) end to end: the real bot, studio, worker process and SQLite,
through the Discord emulator, with the API's local stand-in (tests/openai_standin.py) on 127.0.0.1.

This module runs its own bot (its registry holds remote models, its settings the key and the
stand-in's URL), so the shared bot's models stay as the other tests know them."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from PIL import Image
from sqlalchemy import select

from bot.discord_endpoints import DEFAULT_API_BASE, DEFAULT_GATEWAY_URL, point_discord_at
from generation.request import Request
from generation.upscale import RESAMPLE
from storage.db import open_engine
from storage.jobs import JobStore
from storage.models import Job
from tests.discord_emulator import DiscordEmulator
from tests.discord_harness import (
    Harness,
    acked,
    custom_ids,
    harness_settings,
    is_result,
    job_id_in,
    job_id_of,
    until_idle,
)
from tests.openai_standin import REQUEST_ID, TEST_KEY, OpenAIStandIn

pytestmark = pytest.mark.asyncio(loop_scope="session")

DEFERRED, DEFERRED_UPDATE, EPHEMERAL = 5, 6, 64
MANAGE_GUILD = str(1 << 5)


def remote_registry(path: Path) -> Path:
    """Remote models only: no upscaling model, so U enlarges by resampling, in the worker."""
    path.write_text('''
default = "dalle2"

[models.dalle2]
family = "openai"
model = "dall-e-2"
native_side = 256

[models.dalle2-large]
family = "openai"
model = "dall-e-2"
native_side = 1024

[models.dalle3]
family = "openai"
model = "dall-e-3"

[models.dalle3-one]
family = "openai"
model = "dall-e-3"
images = 1
''', encoding="utf-8")
    return path


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def remote_bot(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Harness, OpenAIStandIn]]:
    tmp = tmp_path_factory.mktemp("pintor-remote")
    registry = remote_registry(tmp / "models.toml")
    with OpenAIStandIn() as api:
        async with DiscordEmulator() as emu:
            settings = harness_settings(emu, tmp, registry, openai_api_key=TEST_KEY, openai_base_url=api.base_url,
                                        pintor_remote_max_retries=0, pintor_remote_timeout_s=10.0)
            harness = Harness(emu, settings)
            try:
                await harness.start()
                yield harness, api
            finally:
                await harness.stop()
                point_discord_at(DEFAULT_API_BASE, DEFAULT_GATEWAY_URL)


@pytest_asyncio.fixture(loop_scope="session")
async def remote(remote_bot: tuple[Harness, OpenAIStandIn]) -> AsyncIterator[tuple[Harness, OpenAIStandIn]]:
    """The module's bot (discord.py pointed at its emulator), its server allowing remote models
    (the test may change that), the stand-in answering pictures; idle again after the test."""
    harness, api = remote_bot
    point_discord_at(harness.emu.api_base, harness.emu.gateway_url)
    api.reset()
    await harness.studio.update_rules(harness.emu.guild_id, remote_models=True)
    yield harness, api
    if harness.running is not None:
        await until_idle(harness)


async def imagine(harness: Harness, prompt: str) -> dict:
    inter = await harness.emu.slash("imagine", {"prompt": prompt})
    await acked(inter, kind=DEFERRED)
    return await inter.wait_original(is_result, timeout=60)


async def failure_of(harness: Harness, prompt: str) -> tuple[str, int]:
    """/imagine whose job fails: the member's message and the job's id."""
    inter = await harness.emu.slash("imagine", {"prompt": prompt})
    await acked(inter, kind=DEFERRED)
    final = await inter.wait_original(lambda m: "❌" in m["content"], timeout=60)
    [job] = [j for j in await jobs(harness) if j.prompt in prompt]
    return final["content"], job.id


async def jobs(harness: Harness) -> list[Job]:
    async with harness.studio.store.session() as session:
        return list((await session.scalars(select(Job).order_by(Job.id))).all())


async def press(harness: Harness, message: dict, custom_id: str) -> dict:
    click = await harness.emu.click(int(message["id"]), custom_id)
    assert (await click.wait_callback(timeout=3))["type"] == DEFERRED_UPDATE
    await harness.until(lambda: click.followups and is_result(click.followups[0]), timeout=60)
    return click.followups[0]


async def test_a_server_refuses_remote_models_until_an_admin_allows_them(remote):
    harness, api = remote
    emu = harness.emu
    await harness.studio.update_rules(emu.guild_id, remote_models=False)  # a new server's rule
    before = await harness.job_count()
    inter = await emu.slash("imagine", {"prompt": "a fox in the snow --model dalle3"})
    await acked(inter, kind=DEFERRED)
    await harness.until(lambda: inter.followups and inter.original is None)
    [answer] = inter.followups
    assert answer["flags"] & EPHEMERAL
    assert "remote model" in answer["content"] and "/pintor-admin remote-models" in answer["content"]
    assert await harness.job_count() == before and api.calls == []  # nothing stored, nothing asked

    admin = await emu.slash("pintor-admin", {"allowed": True}, subcommand="remote-models",
                            permissions=MANAGE_GUILD, user_id=emu._snowflake())
    answer = (await acked(admin))["data"]["content"]
    assert "remote models (each picture costs money): allowed (dalle2, dalle2-large, dalle3, dalle3-one)" in answer
    assert (await harness.studio.rules(emu.guild_id)).remote_models

    info = await emu.slash("info")
    [embed] = (await acked(info))["data"]["embeds"]
    field = next(f for f in embed["fields"] if f["name"] == "remote models")
    assert field["value"] == ("dalle2 (OpenAI dall-e-2), dalle2-large (OpenAI dall-e-2), dalle3 (OpenAI dall-e-3), "
                              "dalle3-one (OpenAI dall-e-3) · allowed here")


async def test_dall_e_3_posts_a_grid_of_four_from_four_requests(remote):
    harness, api = remote
    final = await imagine(harness, "a lighthouse at dusk --ar 16:9 --model dalle3")
    job_id = job_id_of(final)
    calls = api.image_calls("generations")
    assert len(calls) == 4 and all(c.fields["n"] == 1 and c.fields["size"] == "1792x1024" for c in calls)
    assert custom_ids(final)[0] == [f"pintor:u:{job_id}:{n}" for n in range(1, 5)] + [f"pintor:r:{job_id}"]
    assert (await harness.picture(final)).size == (3584, 2048)  # 2×2 of 1792×1024
    job = await harness.job(job_id)
    assert job.status == "done" and [(i.width, i.height) for i in job.images] == [(1792, 1024)] * 4
    assert "1792×1024 for --ar 16:9" in final["content"]


async def test_one_picture_where_the_admin_configured_one_has_no_grid_buttons(remote):
    harness, api = remote
    final = await imagine(harness, "a lighthouse at dawn --model dalle3-one")
    job_id = job_id_of(final)
    assert len(api.image_calls("generations")) == 1
    # the picture alone: Upscale (Subtle) only; no U1–4 / V1–4 / 🔄 (they need four), no Vary (dall-e-3 has
    # no variation or edit call), no Zoom, Pan or Creative (the API cannot repaint)
    assert custom_ids(final) == [[f"pintor:x:{job_id}:1:s"]]
    # V pressed anyway (a forged or old message): refused clearly, nothing stored
    before = await harness.job_count()
    forged = harness.emu._new_message(harness.emu.channel_id, {"content": "forged", "components": [
        {"type": 1, "components": [{"type": 2, "style": 2, "label": "V", "custom_id": f"pintor:v:{job_id}:1:h"}]}]},
        [])
    click = await harness.emu.click(int(forged["id"]), f"pintor:v:{job_id}:1:h")
    await harness.until(lambda: click.followups)
    assert "cannot vary a picture" in click.followups[0]["content"]
    assert await harness.job_count() == before and len(api.image_calls()) == 1


async def test_v_on_dall_e_2_uses_variations_and_upscale_runs_here(remote):
    harness, api = remote
    grid = await imagine(harness, "a paper boat")
    grid_id = job_id_of(grid)
    [made] = api.image_calls("generations")
    assert (made.fields["n"], made.fields["size"], made.fields["model"]) == (4, "256x256", "dall-e-2")

    varied = await press(harness, grid, f"pintor:v:{grid_id}:2:h")
    [variation] = api.image_calls("variations")
    assert (variation.fields["n"], variation.fields["size"]) == ("4", "256x256")
    job = await harness.job(job_id_of(varied))
    assert (job.kind, job.parent_id, job.parent_index, len(job.images)) == ("variation", grid_id, 2, 4)

    # U1 then Upscale (Subtle): the picture is in the file store; the worker enlarges it as any picture
    # (here by resampling: this bot has no upscaling model)
    picked = await press(harness, grid, f"pintor:u:{grid_id}:1")
    upscaled = await press(harness, picked, f"pintor:x:{job_id_of(picked)}:1:s")
    assert (await harness.picture(upscaled)).size == (512, 512)
    job = await harness.job(job_id_of(upscaled))
    assert (job.kind, job.model, job.status) == ("upscale", RESAMPLE, "done")
    assert len(api.image_calls()) == 2  # the upscale asked the API nothing


async def test_vary_under_an_upscaled_dall_e_2_picture_sends_what_the_api_takes_and_says_so(remote):
    """Issue 26, item 19, as a member meets it: a 1024² DALL·E 2 picture, Upscale (Subtle) to
    2048², then Vary under it: the variations call gets a square PNG of at most 1024² and under
    4 MB (the stand-in refuses others, as the API does), and the result says what was sent."""
    harness, api = remote
    grid = await imagine(harness, "a paper lantern --model dalle2-large")
    picked = await press(harness, grid, f"pintor:u:{job_id_of(grid)}:1")
    upscaled = await press(harness, picked, f"pintor:x:{job_id_of(picked)}:1:s")
    assert (await harness.picture(upscaled)).size == (2048, 2048)
    vary = f"pintor:v:{job_id_of(upscaled)}:1:s"
    assert vary in [custom_id for row in custom_ids(upscaled) for custom_id in row]
    varied = await press(harness, upscaled, vary)
    [variation] = api.image_calls("variations")
    assert len(variation.fields["image"]) < 4_000_000
    with Image.open(io.BytesIO(variation.fields["image"])) as sent:
        assert (sent.format, sent.size) == ("PNG", (1024, 1024))
    job = await harness.job(job_id_of(varied))
    assert (job.kind, job.status, len(job.images)) == ("variation", "done", 4)
    assert "The picture was sent to dall-e-2 at 1024×1024 (it is 2048×2048)" in varied["content"]


@pytest.mark.parametrize(("mode", "says"), [
    ("content_policy", "refused this prompt under its content policy"),
    ("bad_key", "refused Pintor's API key. Tell Pintor's operator."),
    ("quota", "quota with the image provider is used up"),
])
async def test_provider_refusals_reach_the_member_without_key_or_request_id(
        remote, caplog: pytest.LogCaptureFixture, mode: str, says: str):
    harness, api = remote
    api.mode = mode
    caplog.set_level(logging.DEBUG)  # the bot's own logs (the worker's: tests/test_remote.py)
    content, job_id = await failure_of(harness, f"a forbidden thing {mode}")
    assert says in content
    job = await harness.job(job_id)
    assert job.status == "failed" and says in (job.error or "")
    for secret in (TEST_KEY, REQUEST_ID, TEST_KEY[-8:]):
        assert secret not in content and secret not in (job.error or "") and secret not in caplog.text


async def test_remote_models_are_refused_in_direct_messages(remote):
    harness, api = remote
    harness.bot.settings.pintor_allow_dms = True
    try:
        before = await harness.job_count()
        inter = await harness.emu.slash("imagine", {"prompt": "a fox --model dalle3"}, guild=False)
        await acked(inter)
        await harness.until(lambda: inter.followups)
        assert "not in direct messages" in inter.followups[-1]["content"]
        assert await harness.job_count() == before and api.calls == []
    finally:
        harness.bot.settings.pintor_allow_dms = False


async def test_a_queued_remote_job_is_delivered_once_after_a_restart(remote):
    harness, api = remote
    emu = harness.emu
    grid = await imagine(harness, "a kite")
    parent = await harness.job(job_id_of(grid))
    made: dict[str, int] = {}

    async def queue_one_while_stopped() -> None:
        engine = open_engine(harness.settings.database_url)
        try:
            request = Request.from_json(parent.request).replace(prompt="a kite left in the queue")
            job = await JobStore(engine).create_job(
                user_id=parent.user_id, user_name="someone", kind=request.kind, model=request.model,
                prompt=request.prompt, request=request.to_json(), guild_id=parent.guild_id,
                channel_id=parent.channel_id)
            made["queued"] = job.id
        finally:
            await engine.dispose()

    calls_before = len(api.image_calls())
    await harness.restart(while_stopped=queue_one_while_stopped)
    point_discord_at(emu.api_base, emu.gateway_url)

    def posted() -> list[dict]:
        return [m for m in emu.messages.values() if is_result(m) and job_id_in(m) == made["queued"]]

    await harness.until(lambda: posted())
    await until_idle(harness)
    assert len(posted()) == 1  # posted once
    assert (await harness.job(made["queued"])).status == "done"
    # the API was asked for it after the restart (a job queued again is asked again: it costs again)
    assert len(api.image_calls()) == calls_before + 1
