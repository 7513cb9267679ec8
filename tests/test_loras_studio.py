"""LoRAs through the Studio, as members ask for them (--lora, <lora:…>): checked before anything
is stored, kept in the stored Request (🔄 and V use them again), refused by a server's rules;
on a real SQLite file and a real worker process."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import pytest_asyncio
from sqlalchemy import func, select

from bot.intake import USER_ERRORS, LimitError, Member
from generation.events import FINAL_EVENTS, Done
from generation.request import JobKind, Request
from storage.models import Job, ServerRules
from tests.adapter_helpers import build_additions, registry_text
from tests.studio_helpers import started_studio
from tests.waiting import collect_until

pytestmark = pytest.mark.asyncio(loop_scope="module")

ANN = Member(1, "ann")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def env(tiny_models, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("lora-studio")
    files = build_additions(tiny_models, root / "additions")
    registry_file = root / "models.toml"
    registry_file.write_text(registry_text(tiny_models, files), encoding="utf-8")
    async with started_studio(root, registry_file) as studio:
        yield SimpleNamespace(studio=studio, root=root, db=studio.store.engine)


async def job_count(env) -> int:
    async with env.db.connect() as conn:
        return await conn.scalar(select(func.count()).select_from(Job.__table__))


async def finish(submitted) -> Done:
    events = await collect_until(submitted.events, lambda e: isinstance(e, FINAL_EVENTS))
    assert isinstance(events[-1], Done), events
    return events[-1]


def rules(**values) -> ServerRules:
    server = ServerRules.new(77)
    for name, value in values.items():
        setattr(server, name, value)
    return server


@pytest.mark.parametrize(("prompt", "server", "message"), [
    ("a cat --lora nope", None, "Unknown LoRA 'nope'. Available: ink, glow, xl-ink."),
    ("a cat <lora:nope:0.5>", None, "Unknown LoRA 'nope'"),
    ("a cat --lora xl-ink", None, "The LoRA 'xl-ink' is made for sdxl models; tiny-sd is a sd model. "
                                  "Use it with --model tiny-sdxl, or leave it out."),
    ("a cat --model tiny-sdxl --lora ink", None, "The LoRA 'ink' is made for sd models"),
    ("a cat --lora ink", {"allowed_loras": ""}, "The LoRA ink is not allowed on this server. "
                                                "This server allows no LoRAs."),
    ("a cat --lora ink --lora glow", {"allowed_loras": "glow"}, "The LoRA ink is not allowed on this server. "
                                                                 "Allowed: glow."),
    ("a cat --lora ink --lora glow", {"max_loras": 1}, "2 LoRAs is over this server's limit of 1 per job."),
])
async def test_a_lora_that_cannot_be_used_is_a_clear_message_and_nothing_is_stored(env, prompt, server, message):
    before = await job_count(env)
    where = {"rules": rules(**server), "guild_id": 77, "channel_id": 5} if server is not None else {}
    with pytest.raises(USER_ERRORS) as raised:
        await env.studio.imagine(ANN, prompt, **where)
    assert message in str(raised.value)
    assert isinstance(raised.value, LimitError) == (server is not None)
    assert await job_count(env) == before


async def test_a_lora_job_is_made_and_rerolls_and_variations_keep_its_loras(env):
    submitted = await env.studio.imagine(ANN, "a lighthouse <lora:ink:0.5> --lora glow --seed 3",
                                         rules=rules(allowed_loras="ink,glow", max_loras=2), guild_id=77)
    request = submitted.request
    assert request.loras == (("glow", 1.0), ("ink", 0.5))  # glow at its default weight
    assert request.parts == (("a lighthouse, ink wash", 1.0),)  # ink's trigger words added
    assert "Added the trigger words “ink wash” of the LoRA ink." in request.notices
    assert "--lora glow --lora ink:0.5" in request.parameters
    await finish(submitted)
    stored = Request.from_json((await env.studio.job(submitted.job_id)).request)
    assert stored.loras == request.loras

    reroll = await env.studio.reroll(ANN, submitted.job_id)
    vary = await env.studio.vary(ANN, submitted.job_id, 2, strong=False)
    upscale = await env.studio.upscale(ANN, submitted.job_id, 1)
    assert reroll.request.loras == vary.request.loras == request.loras
    assert vary.request.kind == JobKind.VARIATION and upscale.request.loras == ()  # the upscaler takes none
    for job in (reroll, vary, upscale):
        await finish(job)
