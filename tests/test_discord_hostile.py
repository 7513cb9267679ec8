"""Hostile input through the emulator: /imagine prompts of any text (random, huge, empty,
unicode, control characters) drawn by hypothesis, forged button custom_ids of every template
(jobs that do not exist, other members' jobs), replayed interactions — each answered within 3
seconds, none with an unhandled error, nothing stored for a refusal.

Hypothesis draws the values (`drawn`); the test sends them one by one on the shared bot's event
loop (hypothesis cannot drive an async test on a session loop): what it finds is not shrunk."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import discord
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.load import cancel_all, outcome
from bot.buttons import BUTTONS
from tests.discord_harness import Harness, acked

pytestmark = pytest.mark.asyncio(loop_scope="session")

BROKEN = "Something went wrong on Pintor's side"  # what an unhandled error says


def drawn(strategy: st.SearchStrategy[Any], examples: int) -> list[Any]:
    """`examples` values hypothesis draws from `strategy` (derandomized: the same every run)."""
    values: list[Any] = []

    @settings(max_examples=examples, database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def draw(value: Any) -> None:
        values.append(value)

    draw()
    return values


ANY_TEXT = st.one_of(
    st.text(max_size=200),  # any unicode, control characters and surrogates' neighbours included
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1000, max_size=6000),  # huge
    st.just(""), st.just("\x00\x07\x1b[31m\u202e\ufeff"),
    st.from_regex(r"[a-z ]{1,20}( --[a-z]{1,8}( [^\s]{0,12})?){1,6}", fullmatch=True),  # parameter soup
)


def answered(inter: Any, callback: dict) -> bool:
    """The bot said what it does: a message at once, or after "thinking…" an edit, a follow-up
    or the reply deleted (a refusal's private follow-up)."""
    loading = inter.original is not None and inter.original["flags"] & 128
    return callback["type"] not in (5, 6) or bool(inter.followups) or outcome(inter) is not None or (
        inter.original_id is not None and inter.original is None) or (inter.original is not None and not loading)


def said(inter) -> str:
    texts = [inter.original["content"] if inter.original else ""] + [m["content"] for m in inter.followups]
    return "\n".join(texts)


async def test_imagine_answers_any_prompt_in_time_and_stores_nothing_for_a_refusal(pintor: Harness):
    emu = pintor.emu
    guild_id, channel_id = emu.add_guild()
    await pintor.studio.update_rules(guild_id, max_queued_per_member=100)
    member = emu._snowflake()
    outcomes = []
    try:
        for prompt in drawn(ANY_TEXT, 30):
            before = await pintor.job_count()
            inter = await emu.slash("imagine", {"prompt": prompt}, user_id=member, channel_id=channel_id)
            callback = await acked(inter)  # within 3 s
            await emu._wait(partial(answered, inter, callback), 30)
            assert BROKEN not in said(inter), (prompt, said(inter))
            outcomes.append(outcome(inter) == "queued")
            if not outcomes[-1]:  # refused: with a message, nothing stored
                assert await pintor.job_count() == before, prompt
    finally:
        await cancel_all(pintor.studio, [member])
    print(f"{sum(outcomes)} of {len(outcomes)} drawn prompts queued")
    assert any(outcomes) and not all(outcomes)  # the drawn prompts met both ways


def item_templates() -> list[str]:
    """The custom_id template of every persistent button Pintor registers."""
    items = [*BUTTONS]
    for cog in ("bot.cogs.account", "bot.cogs.history", "bot.cogs.preferences"):
        module = __import__(cog, fromlist=["x"])
        items += [v for v in vars(module).values()
                  if isinstance(v, type) and issubclass(v, discord.ui.DynamicItem) and v is not discord.ui.DynamicItem]
    return sorted({item.__discord_ui_compiled_template__.pattern for item in items})  # type: ignore[attr-defined]


async def forged_click(emu, custom_id: str, *, user_id: int) -> Any:
    """A click on a message that carries a button `custom_id` no message of the bot carried."""
    message = emu._new_message(emu.channel_id, {"content": "forged", "components": [
        {"type": 1, "components": [{"type": 2, "style": 1, "label": "x", "custom_id": custom_id}]}]}, [])
    payload = emu._base_interaction(3, {"custom_id": custom_id, "component_type": 2},
                                    emu.channels[emu.channel_id], user_id, 10 * 1024 * 1024, "0")
    payload["message"] = json.loads(json.dumps(message))
    return await emu._dispatch_interaction(payload, original_id=int(message["id"]))


async def test_forged_buttons_of_every_template_are_refused_in_time_and_store_nothing(pintor: Harness):
    emu = pintor.emu
    member = emu._snowflake()
    ids = drawn(st.sampled_from(item_templates()).flatmap(lambda t: st.from_regex(t, fullmatch=True))
                .filter(lambda s: len(s) <= 100), 25)
    try:
        for custom_id in ids:
            before = await pintor.job_count()
            inter = await forged_click(emu, custom_id, user_id=member)
            await acked(inter)  # within 3 s
            await emu._wait(partial(answered, inter, inter.callbacks[0]), 30)
            assert BROKEN not in said(inter) + json.dumps(inter.callbacks[0].get("data") or {}), custom_id
            assert await pintor.job_count() == before, custom_id  # no job of a stranger's or unknown job
    finally:
        await cancel_all(pintor.studio, [member])


async def test_a_replayed_interaction_makes_no_second_job(pintor: Harness):
    emu = pintor.emu
    member = emu._snowflake()
    before = await pintor.job_count()
    inter = await emu.slash("imagine", {"prompt": "a replayed request --seed 5"}, user_id=member)
    await acked(inter, kind=5)
    await emu._wait(lambda: outcome(inter) is not None, 30)
    await emu.dispatch("INTERACTION_CREATE", inter.payload)  # the same interaction again
    await emu.wait_for(lambda r: r.path.startswith(f"/interactions/{inter.id}/") and r.status == 400, 10)
    try:
        assert await pintor.job_count() == before + 1
    finally:
        await cancel_all(pintor.studio, [member])
