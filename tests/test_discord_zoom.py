"""The buttons under a picture alone, end to end through the Discord emulator: Zoom Out 2x and
1.5x, Custom Zoom (its form, a new prompt, a bad factor), Pan each way, Make Square, Upscale
(Creative); each makes a stored job whose result is posted once, with the usual buttons."""

from __future__ import annotations

import dataclasses

import pytest
import pytest_asyncio

from bot.buttons import zoom_factor
from bot.discord_endpoints import point_discord_at
from generation.request import Request
from tests.discord_harness import Harness, custom_ids, is_result, job_id_of

pytestmark = pytest.mark.asyncio(loop_scope="session")

DEFERRED_UPDATE, MODAL, EPHEMERAL = 6, 9, 64


async def press(pintor: Harness, message: dict, custom_id: str) -> dict:
    click = await pintor.emu.click(int(message["id"]), custom_id)
    callback = await click.wait_callback(timeout=3)
    assert callback["type"] == DEFERRED_UPDATE and callback["at"] - click.dispatched_at < 3
    await pintor.until(lambda: click.followups and (is_result(click.followups[0])
                                                    or click.followups[0]["flags"] & EPHEMERAL))
    [answer] = click.followups
    return answer


def posted_once(pintor: Harness, job_id: int) -> bool:
    return len([m for m in pintor.emu.messages.values()
                if is_result(m) and f"· job {job_id}" in m["content"]]) == 1


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def picture(discord_harness: Harness) -> dict:
    """U1 of a 2:1 tiny-sdxl grid: the picture alone (128×64)."""
    point_discord_at(discord_harness.emu.api_base, discord_harness.emu.gateway_url)
    inter = await discord_harness.emu.slash("imagine", {"prompt": "a long beach --model tiny-sdxl --ar 2:1 --seed 3"})
    grid = await inter.wait_original(is_result, timeout=90)
    return await press(discord_harness, grid, f"pintor:u:{job_id_of(grid)}:1")


@pytest.mark.parametrize("label, outpaint", [
    ("Zoom Out 2x", (0.5, 0.5, 0.5, 0.5)), ("Zoom Out 1.5x", (0.25, 0.25, 0.25, 0.25)),
    ("⬅️", (0.5, 0, 0, 0)), ("➡️", (0, 0, 0.5, 0)), ("⬆️", (0, 0.5, 0, 0)), ("⬇️", (0, 0, 0, 0.5)),
    ("Make Square", (0, 0.5, 0, 0.5))])
async def test_each_canvas_button_makes_a_new_grid(pintor: Harness, picture: dict, label: str, outpaint):
    pick_id = job_id_of(picture)
    [custom_id] = [c["custom_id"] for row in picture["components"] for c in row["components"]
                   if c.get("label") == label or (not c.get("label") and c.get("emoji", {}).get("name") == label)]
    made = await press(pintor, picture, custom_id)
    assert is_result(made) and not made["flags"] & EPHEMERAL, made["content"]
    job_id = job_id_of(made)
    job = await pintor.posted(job_id)
    request = Request.from_json(job.request)
    assert (job.kind, job.parent_id, job.parent_index, job.status) == ("outpaint", pick_id, 1, "done")
    assert request.outpaint == outpaint and len(job.images) == 4
    assert f"of image 1 of job {pick_id}" in made["content"] and "a long beach" in made["content"]
    assert custom_ids(made)[0] == [f"pintor:u:{job_id}:{n}" for n in range(1, 5)] + [f"pintor:r:{job_id}"]
    picture_size = (await pintor.picture(made)).size  # the grid: 2 × 2 pictures
    assert picture_size == (2 * request.width, 2 * request.height)
    assert request.width * request.height <= 2 * 64 * 64  # tiny-sdxl's budget (64 px)
    assert posted_once(pintor, job_id)


async def test_custom_zoom_asks_for_a_factor_and_a_new_prompt(pintor: Harness, picture: dict):
    emu = pintor.emu
    pick_id = job_id_of(picture)
    opened = await emu.click(int(picture["id"]), f"pintor:zc:{pick_id}:1")
    form = (await opened.wait_callback(timeout=3))
    assert form["type"] == MODAL and form["at"] - opened.dispatched_at < 3

    before = await pintor.job_count()
    bad = await emu.submit_modal(opened, {"Zoom out by (more than 1, at most 2)": "5"})
    answer = await bad.wait_callback(timeout=3)
    assert answer["data"]["flags"] & EPHEMERAL and "at most 2" in answer["data"]["content"]
    assert await pintor.job_count() == before

    again = await emu.click(int(picture["id"]), f"pintor:zc:{pick_id}:1")
    await again.wait_callback(timeout=3)
    submitted = await emu.submit_modal(again, {"Zoom out by (more than 1, at most 2)": "1.3",
                                               "New prompt (empty: keep the picture's)": "a stormy sea"})
    assert (await submitted.wait_callback(timeout=3))["type"] == DEFERRED_UPDATE
    await pintor.until(lambda: submitted.followups and is_result(submitted.followups[0]))
    made = submitted.followups[0]
    job = await pintor.posted(job_id_of(made))
    request = Request.from_json(job.request)
    assert request.outpaint == pytest.approx((0.15, 0.15, 0.15, 0.15))
    assert request.prompt == "a stormy sea" and "a stormy sea" in made["content"]
    assert "Zoom Out 1.3x" in made["content"] and posted_once(pintor, job.id)


@pytest.mark.parametrize("rule, words", [("channels", "Pintor does not answer in this channel. Use one of: <#"),
                                          ("paused", "Pintor is paused on this server by its admins")])
async def test_custom_zoom_where_pintor_is_switched_off_refuses_before_the_form_opens(
        pintor: Harness, picture: dict, rule: str, words: str):
    """The form opened in a channel where Pintor is switched off (or on a paused server) and the
    member heard the refusal only after typing a factor and a prompt."""
    emu, stored = pintor.emu, pintor.studio.preferences_and_rules
    pick_id, before = job_id_of(picture), await pintor.job_count()
    was = await stored.guild(emu.guild_id)
    change = {"channel_ids": str(emu._snowflake())} if rule == "channels" else {"paused": True}
    await stored.update_guild(emu.guild_id, **change)
    try:
        opened = await emu.click(int(picture["id"]), f"pintor:zc:{pick_id}:1")
        answer = await opened.wait_callback(timeout=3)
    finally:
        await stored.update_guild(emu.guild_id, channel_ids=was.channel_ids if was else None,
                                  paused=was.paused if was else False)
    assert answer["type"] == 4 and answer["type"] != MODAL and answer["at"] - opened.dispatched_at < 3
    assert answer["data"]["flags"] & EPHEMERAL and words in answer["data"]["content"]
    assert await pintor.job_count() == before


@pytest.mark.parametrize("typed, factor", [
    ("1.5", 1.5), ("1,5", 1.5), ("1.5x", 1.5), ("1.5X", 1.5), ("×1.8", 1.8), ("x2", 2.0), (" 1.3 x ", 1.3),
    ("--zoom 1.8", 1.8), ("—zoom 1.2", 1.2), ("2", 2.0),
    ("nan", 0.0), ("inf", 0.0), ("1_5", 0.0), ("1.5.1", 0.0), ("", 0.0), ("one and a half", 0.0)])
async def test_custom_zooms_factor_as_members_type_it(typed: str, factor: float):
    """"1.5X" (a phone's capital) and "--zoom 1.8" (MidJourney's way) were refused as not numbers."""
    assert zoom_factor(typed) == factor


async def test_upscale_creative_repaints_the_picture_twice_as_large(pintor: Harness, picture: dict, monkeypatch):
    # resampled ×2 first (the x4 upscaler's 512-pixel result would be repainted in 55 tiles:
    # slow on a CPU); the network's tiled upscale is tests/test_esrgan.py's
    monkeypatch.setattr(pintor.studio, "registry", dataclasses.replace(pintor.studio.registry, upscaler=None))
    made = await press(pintor, picture, f"pintor:x:{job_id_of(picture)}:1:c")
    assert is_result(made), made["content"]
    job = await pintor.posted(job_id_of(made))
    request = Request.from_json(job.request)
    assert (job.kind, job.model, request.upscaler) == ("upscale", "tiny-sdxl", "resample")
    assert request.strength > 0 and "Upscale (Creative): enlarged resampled, repainted by tiny-sdxl" in made["content"]
    assert (await pintor.picture(made)).size == (2 * 128, 2 * 64)
    assert posted_once(pintor, job.id)
