"""Buttons on pictures made by buttons, end to end through the Discord emulator: every button
shown under every kind of result works; Vary of an upscale keeps the grid's model; server
step limits; one upscale however often (and however simultaneously) U is pressed; and a
saved /settings model that an admin removed."""

from __future__ import annotations

import asyncio
import dataclasses
import io

import pytest
import pytest_asyncio
from PIL import Image

from bot.discord_endpoints import point_discord_at
from bot.results import jump_url
from generation.files import input_key
from generation.request import JobKind, Request
from storage.jobs import NewImage
from tests.discord_harness import Harness, custom_ids, is_result, job_id_of

pytestmark = pytest.mark.asyncio(loop_scope="session")

DEFERRED_UPDATE, EPHEMERAL = 6, 64


def png(color, size=(48, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def settled(message: dict) -> bool:
    """A press's message in its last state: a result, a refusal (ephemeral) or a failure."""
    return is_result(message) or bool(message["flags"] & EPHEMERAL) or "❌" in message["content"]


async def click(pintor: Harness, message: dict, custom_id: str, **kwargs) -> dict:
    """Press a button as a member would; acknowledged within 3 s. Returns the message the
    press ended in."""
    pressed = await pintor.emu.click(int(message["id"]), custom_id, **kwargs)
    callback = await pressed.wait_callback(timeout=3)
    assert callback["type"] == DEFERRED_UPDATE and callback["at"] - pressed.dispatched_at < 3
    await pintor.until(lambda: pressed.followups and settled(pressed.followups[0]))
    return pressed.followups[0]


async def result(pintor: Harness, message: dict, custom_id: str, **kwargs) -> dict:
    answer = await click(pintor, message, custom_id, **kwargs)
    assert is_result(answer) and not answer["flags"] & EPHEMERAL, (custom_id, answer["content"])
    return answer


async def refusal(pintor: Harness, message: dict, custom_id: str, **kwargs) -> str:
    before = await pintor.job_count()
    answer = await click(pintor, message, custom_id, **kwargs)
    assert answer["flags"] & EPHEMERAL and not answer["attachments"], answer["content"]
    assert await pintor.job_count() == before
    return answer["content"]


def button(message: dict, label: str) -> str:
    return next(c["custom_id"] for row in message["components"] for c in row["components"]
                if c.get("label") == label or (c.get("emoji") or {}).get("name") == label)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def grid(discord_harness: Harness) -> dict:
    """A finished tiny-sdxl grid (64×64 tiles; not the default model) with its own guidance."""
    point_discord_at(discord_harness.emu.api_base, discord_harness.emu.gateway_url)
    inter = await discord_harness.emu.slash("imagine", {"prompt": "a glass bird --model tiny-sdxl --seed 21 "
                                                                  "--stylize 400"})
    return await inter.wait_original(is_result, timeout=90)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def upscaled(discord_harness: Harness, grid: dict) -> dict:
    point_discord_at(discord_harness.emu.api_base, discord_harness.emu.gateway_url)
    picked = await result(discord_harness, grid, f"pintor:u:{job_id_of(grid)}:1")  # the picture alone
    return await result(discord_harness, picked, f"pintor:x:{job_id_of(picked)}:1:s")


# -- item 5: every button shown works ------------------------------------------------------------


async def test_reroll_under_a_variation_varies_the_same_picture_again(pintor: Harness, grid: dict):
    grid_id = job_id_of(grid)
    variation = await result(pintor, grid, f"pintor:v:{grid_id}:2:h")
    var_id = job_id_of(variation)
    assert button(variation, "🔄") == f"pintor:r:{var_id}"

    again = await result(pintor, variation, f"pintor:r:{var_id}")
    assert f"Variation (Strong) of image 2 of job {grid_id}" in again["content"]
    assert "a glass bird" in again["content"] and f"<@{pintor.emu.user_id}>" in again["content"]
    first, job = await pintor.job(var_id), await pintor.posted(job_id_of(again))
    before, request = Request.from_json(first.request), Request.from_json(job.request)
    assert (job.kind, job.parent_id, job.parent_index, job.model) == ("variation", grid_id, 2, "tiny-sdxl")
    assert (request.init_image, request.strength) == (before.init_image, before.strength)
    assert request.seed != before.seed and not {i.sha256 for i in job.images} & {i.sha256 for i in first.images}


async def test_every_button_under_every_kind_of_result_works(pintor: Harness, grid: dict, upscaled: dict,
                                                             monkeypatch):
    # "Upscale again" of a 256 px picture by the ×4 model is slow on a CPU: resampled here
    monkeypatch.setattr(pintor.studio, "registry", dataclasses.replace(pintor.studio.registry, upscaler=None))
    grid_id, up_id = job_id_of(grid), job_id_of(upscaled)
    variation = await result(pintor, grid, f"pintor:v:{grid_id}:3:h")
    kinds = {
        "a grid": grid,
        "a variation": variation,
        "a re-roll of a variation": await result(pintor, variation, f"pintor:r:{job_id_of(variation)}"),
        "an upscale": upscaled,
        "a variation of an upscale": await result(pintor, upscaled, f"pintor:v:{up_id}:1:s"),
    }
    for kind, message in kinds.items():
        job_id = job_id_of(message)
        shown = [cid for row in custom_ids(message) for cid in row if cid.startswith("pintor:")]
        if kind == "an upscale":  # the picture alone's buttons (a square picture: no Make Square)
            assert shown == [f"pintor:x:{job_id}:1:s", f"pintor:x:{job_id}:1:c", f"pintor:v:{job_id}:1:s",
                             f"pintor:v:{job_id}:1:h", f"pintor:z:{job_id}:1:20", f"pintor:z:{job_id}:1:15",
                             f"pintor:zc:{job_id}:1", *(f"pintor:p:{job_id}:1:{way}" for way in "lrud")]
            # Custom Zoom opens a form (tests/test_discord_zoom.py); Creative of this 256-pixel
            # picture repaints 121 tiles (a smaller one in test_discord_zoom.py)
            pressed = [cid for cid in shown if not cid.startswith(("pintor:zc:", "pintor:x:")) or cid.endswith(":s")]
        else:
            assert f"pintor:r:{job_id}" in shown and len(shown) == 9
            pressed = [f"pintor:u:{job_id}:2", f"pintor:r:{job_id}", f"pintor:v:{job_id}:4:h"]
        for custom_id in pressed:
            made = await result(pintor, message, custom_id)
            assert f"<@{pintor.emu.user_id}>" in made["content"], (kind, custom_id)
            assert (await pintor.posted(job_id_of(made))).status == "done"


# -- item 6: Vary of an upscale keeps the grid's model -------------------------------------------


async def test_vary_of_an_upscale_keeps_the_grids_model_and_settings(pintor: Harness, grid: dict, upscaled: dict):
    up_id = job_id_of(upscaled)
    made = await result(pintor, upscaled, button(upscaled, "Vary (Strong)"))
    assert "tiny-sdxl" in made["content"] and f"Variation (Strong) of image 1 of job {up_id}" in made["content"]
    job, source = await pintor.posted(job_id_of(made)), Request.from_json((await pintor.job(job_id_of(grid))).request)
    request = Request.from_json(job.request)
    assert (job.model, request.guidance, request.parameters) == ("tiny-sdxl", source.guidance, source.parameters)
    assert (await pintor.picture(made)).size == (2 * source.width, 2 * source.height)


async def test_a_textless_blend_upscaled_then_varied_on_a_kandinsky_only_server(pintor: Harness):
    emu, stored = pintor.emu, pintor.studio.preferences_and_rules
    await stored.update_guild(emu.guild_id, allowed_models="tiny-kandinsky")
    try:
        inter = await emu.slash("blend", {"image1": emu.add_attachment("a.png", png((220, 30, 30))),
                                          "image2": emu.add_attachment("b.png", png((30, 30, 220), (64, 64)))})
        blended = await inter.wait_original(is_result, timeout=90)
        upscale = await result(pintor, blended, f"pintor:u:{job_id_of(blended)}:1")
        for label in ("Vary (Subtle)", "Vary (Strong)"):
            made = await result(pintor, upscale, button(upscale, label))
            job = await pintor.posted(job_id_of(made))
            request = Request.from_json(job.request)
            assert (job.model, request.parts) == ("tiny-kandinsky", ())
            steering = (await pintor.job(job_id_of(upscale))).images[0].path
            assert request.images == (steering,)  # its own steering
            assert "blend of 2 images" in made["content"] and "tiny-kandinsky" in made["content"]
    finally:
        await stored.update_guild(emu.guild_id, allowed_models=None)


# -- item 7: steps Pintor chooses stay within the server's limit ----------------------------------


async def test_buttons_meet_max_steps_or_say_why_the_button_cannot(pintor: Harness, grid: dict, upscaled: dict):
    emu, stored = pintor.emu, pintor.studio.preferences_and_rules
    await stored.update_guild(emu.guild_id, max_steps=2)
    try:
        made = await result(pintor, upscaled, button(upscaled, "Vary (Subtle)"))
        request = Request.from_json((await pintor.posted(job_id_of(made))).request)
        assert request.steps == 2 and int(request.steps * request.strength) >= 1
        await result(pintor, made, f"pintor:r:{job_id_of(made)}")  # 🔄 of it, within the limit too

        await stored.update_guild(emu.guild_id, max_steps=1)
        text = await refusal(pintor, upscaled, button(upscaled, "Vary (Strong)"))
        assert "allows 1 step per job: too few to vary a picture" in text and "--steps" not in text
        text = await refusal(pintor, grid, f"pintor:r:{job_id_of(grid)}")
        assert f"🔄 would make job {job_id_of(grid)} again with its 2 steps" in text and "--steps" not in text
    finally:
        await stored.update_guild(emu.guild_id, max_steps=None)


# -- item 8: one upscale per picture -------------------------------------------------------------


async def test_upscale_pressed_twice_at_once_makes_one_upscale_and_points_to_it(pintor: Harness, grid: dict):
    emu = pintor.emu
    picked = await result(pintor, grid, f"pintor:u:{job_id_of(grid)}:3")  # the picture alone
    grid_id, custom_id = job_id_of(picked), f"pintor:x:{job_id_of(picked)}:1:s"
    grid = picked  # below, "the grid" is the message pressed: the picture alone, image #1 of its job
    before = await pintor.job_count()
    presses = await asyncio.gather(emu.click(int(grid["id"]), custom_id), emu.click(int(grid["id"]), custom_id))
    for pressed in presses:
        callback = await pressed.wait_callback(timeout=3)
        assert callback["type"] == DEFERRED_UPDATE and callback["at"] - pressed.dispatched_at < 3
    await pintor.until(lambda: all(p.followups and settled(p.followups[0]) for p in presses))
    answers = sorted((p.followups[0] for p in presses), key=is_result)
    pointer, made = answers
    assert is_result(made) and not made["flags"] & EPHEMERAL
    up_id = job_id_of(made)
    assert pointer["flags"] & EPHEMERAL and not pointer["attachments"]
    assert f"Image #1 of job {grid_id} is already" in pointer["content"] and f"job {up_id}" in pointer["content"]
    assert await pintor.job_count() == before + 1
    assert len([m for m in emu.messages.values() if is_result(m) and f"job {grid_id}, upscaled" in m["content"]
                and "Image #1" in m["content"]]) == 1

    # pressed again later: the link to the result
    job = await pintor.posted(up_id)
    text = await refusal(pintor, grid, custom_id)
    assert f"already upscaled for you, as job {up_id}" in text
    assert jump_url(emu.guild_id, emu.channel_id, job.message_id) in text

    # another member's press is theirs: a job of their own
    other = await result(pintor, grid, custom_id, user_id=emu._snowflake())
    assert job_id_of(other) != up_id


# -- item 12: a saved model an admin removed --------------------------------------------------------


async def test_a_saved_model_that_was_removed_falls_back_with_a_notice(pintor: Harness):
    emu, studio = pintor.emu, pintor.studio
    member = emu._snowflake()
    await studio.preferences_and_rules.update_member(member, "member", model="tiny-sdxl")
    registry = studio.registry
    studio.registry = dataclasses.replace(registry, models={n: m for n, m in registry.models.items()
                                                            if n != "tiny-sdxl"})  # the admin removed it
    try:
        inter = await emu.slash("imagine", {"prompt": "a tin robot --seed 4"}, user_id=member)
        final = await inter.wait_original(is_result, timeout=90)
        settings = await emu.slash("settings", user_id=member)
        shown = (await settings.wait_callback(timeout=3))["data"]["content"]
    finally:
        studio.registry = registry
    job = await pintor.job(job_id_of(final))
    assert job.model == "tiny-sd" and "tiny-sd" in final["content"]
    assert ("⚠️ Your saved model 'tiny-sdxl' is no longer available: this used tiny-sd. "
            "Choose another model with /settings.") in final["content"]
    assert "model: `tiny-sdxl` — ⚠️ no longer available: `tiny-sd` is used instead" in shown

    # …or took it off this server's allowed models
    await studio.preferences_and_rules.update_guild(emu.guild_id, allowed_models="tiny-sd,tiny-kandinsky")
    try:
        inter = await emu.slash("imagine", {"prompt": "a tin robot --seed 5"}, user_id=member)
        final = await inter.wait_original(is_result, timeout=90)
        settings = await emu.slash("settings", user_id=member)
        shown = (await settings.wait_callback(timeout=3))["data"]["content"]
    finally:
        await studio.preferences_and_rules.update_guild(emu.guild_id, allowed_models=None)
    assert (await pintor.job(job_id_of(final))).model == "tiny-sd"
    assert "Your saved model 'tiny-sdxl' is not allowed on this server: this used tiny-sd" in final["content"]
    assert "⚠️ not allowed on this server" in shown

    # where it is there and allowed, it is used, without a word
    inter = await emu.slash("imagine", {"prompt": "a tin robot --seed 6"}, user_id=member)
    final = await inter.wait_original(is_result, timeout=90)
    assert (await pintor.job(job_id_of(final))).model == "tiny-sdxl" and "saved model" not in final["content"]


# -- a removed model's picture varied: the message shows the model and LoRAs the job used -------------


async def test_vary_of_a_removed_models_picture_shows_what_the_job_used_and_says_what_was_dropped(pintor: Harness):
    """A grid of a model since removed from models.toml, with a LoRA since removed too (the shared
    bot's registry configures none): V falls back to the default model, and the message in the
    channel shows --model tiny-sd and no --lora, and says both what replaced the model and that
    the LoRA was not used."""
    emu, studio = pintor.emu, pintor.studio
    member = emu._snowflake()
    data = png((40, 90, 160), (64, 64))
    key = input_key(data)
    studio.files.put(key, data)
    request = Request(kind=JobKind.IMAGINE, model="removed-xl", prompt="a lighthouse", parts=(("a lighthouse", 1.0),),
                      negative="", width=64, height=64, steps=2, guidance=5.0, seed=7, loras=(("old-lora", 0.5),),
                      parameters="--ar 1:1 --model removed-xl --lora old-lora:0.5")
    grid = await studio.store.create_finished_job(
        user_id=member, user_name="m", kind=request.kind, model=request.model, prompt=request.prompt,
        request=request.to_json(), grid_path=key, guild_id=emu.guild_id, channel_id=emu.channel_id,
        images=[NewImage(key, 64, 64, 7 + n, "0" * 64, False) for n in range(4)])
    show = await emu.slash("show", {"job_id": grid.id}, user_id=member)
    shown = await show.wait_original(is_result, timeout=10)
    assert "--lora old-lora:0.5" in shown["content"]  # the grid shows what it was made with
    made = await result(pintor, shown, f"pintor:v:{grid.id}:1:h", user_id=member)  # V1: strong
    job = await pintor.posted(job_id_of(made))
    used = Request.from_json(job.request)
    assert (job.model, used.loras) == ("tiny-sd", ())
    content = made["content"]
    assert "--model tiny-sd" in content and "--lora" not in content and "removed-xl" not in content.split("\n")[0]
    assert "The model 'removed-xl' is no longer configured here: made with tiny-sd instead." in content
    assert "The LoRA 'old-lora' is no longer configured here: not used." in content
