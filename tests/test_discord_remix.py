"""Remix mode end to end through the Discord emulator: a member who turns it on in /settings
gets a form with the prompt when they press V, 🔄, Zoom Out or Pan; what they submit is parsed
like /imagine (a bad prompt is refused, nothing stored) and the job runs with it. The forms
(Remix's and Custom Zoom's) are answered from their custom_id: they work after a restart."""

from __future__ import annotations

import pytest
import pytest_asyncio

from bot.discord_endpoints import point_discord_at
from generation.request import Request
from tests.discord_harness import Harness, acked, is_result, job_id_of

pytestmark = pytest.mark.asyncio(loop_scope="session")

MESSAGE, DEFERRED_UPDATE, UPDATE, MODAL, EPHEMERAL = 4, 6, 7, 9, 64
PROMPT = "Prompt (change it, then Submit)"


def form_prompt(callback: dict) -> str | None:
    """The prefilled value of the form's prompt field."""
    for row in callback["data"]["components"]:
        for component in row.get("components", []) + ([row["component"]] if "component" in row else []):
            if component.get("custom_id") == "prompt":
                return component.get("value")
    raise LookupError("no prompt field")


async def opened_form(pintor: Harness, message: dict, custom_id: str, member: int):
    click = await pintor.emu.click(int(message["id"]), custom_id, user_id=member)
    callback = await acked(click, kind=MODAL)
    return click, callback


async def made(pintor: Harness, submitted) -> dict:
    """The result (or the refusal) a submitted form's job ends with."""
    assert (await submitted.wait_callback(timeout=3))["type"] == DEFERRED_UPDATE
    await pintor.until(lambda: submitted.followups and (is_result(submitted.followups[0])
                                                        or submitted.followups[0]["flags"] & EPHEMERAL), timeout=90)
    [answer] = submitted.followups
    return answer


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def remixer(discord_harness: Harness) -> int:
    """A member who turned Remix mode on in /settings."""
    point_discord_at(discord_harness.emu.api_base, discord_harness.emu.gateway_url)
    emu, member = discord_harness.emu, discord_harness.emu._snowflake()
    inter = await emu.slash("settings", user_id=member)
    await acked(inter, kind=MESSAGE)
    assert inter.original_id is not None
    message_id = inter.original_id
    button = next(c["custom_id"] for row in emu.messages[message_id]["components"]
                  for c in row["components"] if c.get("label") == "Remix mode on/off")
    await acked(await emu.click(message_id, button, user_id=member), kind=UPDATE)
    assert "remix mode: on" in emu.messages[message_id]["content"]
    assert (await discord_harness.studio.preferences(member)).remix
    return member


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def grid(discord_harness: Harness, remixer: int) -> dict:
    inter = await discord_harness.emu.slash(
        "imagine", {"prompt": "a long beach --model tiny-sdxl --ar 2:1 --seed 3 --no people"}, user_id=remixer)
    return await inter.wait_original(is_result, timeout=90)


async def test_vary_in_remix_mode_asks_for_the_prompt_first(pintor: Harness, remixer: int, grid: dict):
    emu, grid_id = pintor.emu, job_id_of(grid)
    click, form = await opened_form(pintor, grid, f"pintor:v:{grid_id}:2:h", remixer)
    assert form["data"]["custom_id"] == f"pintor:rm:{grid_id}:2:vh" and form["data"]["title"] == "Remix"
    assert form_prompt(form) == "a long beach --no people"

    before = await pintor.job_count()
    refused = await made(pintor, await emu.submit_modal(click, {PROMPT: "a stormy sea --seed -1"}))
    assert refused["flags"] & EPHEMERAL and "--seed must be a whole number" in refused["content"]
    assert await pintor.job_count() == before  # nothing stored

    # typed once, --model is not "given twice": the picture's model stays, and the result says so,
    # as it says the --ar it did not use (the headline shows the picture's)
    result = await made(pintor, await emu.submit_modal(
        click, {PROMPT: "a stormy sea::2 gulls --no boats --model tiny-sd --ar 1:1"}))
    assert is_result(result) and "a stormy sea" in result["content"]
    assert "the model stays the picture's (tiny-sdxl)" in result["content"] and "--ar 1:1" in result["content"]
    assert "--ar 2:1 --no boats --model tiny-sdxl" in result["content"]
    job = await pintor.posted(job_id_of(result))
    request = Request.from_json(job.request)
    assert (job.kind, job.parent_id, job.parent_index, job.user_id) == ("variation", grid_id, 2, remixer)
    assert request.parts == (("a stormy sea", 2.0), ("gulls", 1.0)) and request.negative == "boats"
    assert (request.model, request.width, request.height) == ("tiny-sdxl", 128, 64)  # the picture's
    assert request.strength == 0.7

    # the form left empty: the job's own prompt
    click, _ = await opened_form(pintor, grid, f"pintor:v:{grid_id}:1:h", remixer)
    result = await made(pintor, await emu.submit_modal(click, {PROMPT: ""}))
    assert Request.from_json((await pintor.posted(job_id_of(result))).request).prompt == "a long beach"


async def test_reroll_zoom_and_pan_in_remix_mode(pintor: Harness, remixer: int, grid: dict):
    emu, grid_id = pintor.emu, job_id_of(grid)
    click, form = await opened_form(pintor, grid, f"pintor:r:{grid_id}", remixer)
    assert form["data"]["custom_id"] == f"pintor:rm:{grid_id}:0:r"
    result = await made(pintor, await emu.submit_modal(click, {PROMPT: "a long beach at night --tile"}))
    job = await pintor.posted(job_id_of(result))
    request = Request.from_json(job.request)
    assert (job.kind, job.parent_id, request.prompt, request.tile) == ("reroll", grid_id, "a long beach at night", True)
    assert request.negative == "" and request.seed != 3

    # U is not remixed: the picture alone at once; its Zoom Out and Pan ask
    pick = emu.messages[int((await made(pintor, await emu.click(int(grid["id"]), f"pintor:u:{grid_id}:1",
                                                                   user_id=remixer)))["id"])]
    pick_id = job_id_of(pick)
    for custom_id, code, outpaint, words in [(f"pintor:z:{pick_id}:1:15", "z15", (0.25,) * 4, "a beach from afar"),
                                              (f"pintor:p:{pick_id}:1:l", "pl", (0.5, 0, 0, 0), "a beach and a cliff")]:
        click, form = await opened_form(pintor, pick, custom_id, remixer)
        assert form["data"]["custom_id"] == f"pintor:rm:{pick_id}:1:{code}"
        assert form_prompt(form) == "a long beach --no people"
        result = await made(pintor, await emu.submit_modal(click, {PROMPT: words}))
        assert is_result(result), result["content"]
        job = await pintor.posted(job_id_of(result))
        request = Request.from_json(job.request)
        assert (job.kind, job.parent_id, request.prompt, request.outpaint) == ("outpaint", pick_id, words, outpaint)


async def test_forms_submitted_after_a_restart_still_work(pintor: Harness, remixer: int, grid: dict):
    emu, grid_id = pintor.emu, job_id_of(grid)
    remix, _ = await opened_form(pintor, grid, f"pintor:v:{grid_id}:3:h", remixer)
    pick = emu.messages[int((await made(pintor, await emu.click(int(grid["id"]), f"pintor:u:{grid_id}:3",
                                                                   user_id=remixer)))["id"])]
    zoom, _ = await opened_form(pintor, pick, f"pintor:zc:{job_id_of(pick)}:1", remixer)

    await pintor.restart()

    result = await made(pintor, await emu.submit_modal(remix, {PROMPT: "a beach after the restart"}))
    job = await pintor.posted(job_id_of(result))
    assert (job.kind, job.parent_index, Request.from_json(job.request).prompt) == (
        "variation", 3, "a beach after the restart")
    result = await made(pintor, await emu.submit_modal(zoom, {"factor": "2", "prompt": "a zoomed beach"}))
    job = await pintor.posted(job_id_of(result))
    request = Request.from_json(job.request)
    assert (job.kind, request.prompt, request.outpaint) == ("outpaint", "a zoomed beach", (0.5,) * 4)
