"""The buttons under a result, end to end: U (the picture alone, at once), Upscale (Subtle), V
(vary), 🔄 (re-roll), refusals, /show of an upscale, and buttons that keep working across a
restart of the bot."""

from __future__ import annotations

import re

import pytest
import pytest_asyncio

from bot.discord_endpoints import point_discord_at
from bot.results import jump_url
from generation.files import FileStore
from generation.request import Request
from storage.db import open_engine
from storage.jobs import JobStore, NewImage
from tests.discord_harness import Harness, custom_ids, is_result, job_id_in, job_id_of

pytestmark = pytest.mark.asyncio(loop_scope="session")

DEFERRED, DEFERRED_UPDATE, MESSAGE, EPHEMERAL = 5, 6, 4, 64
TILE = 64  # tiny-sdxl's native side: small tiles keep the ×4 upscaler quick


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def grid(discord_harness: Harness) -> dict:
    """A finished grid message (tiny-sdxl, 64×64 tiles) to press buttons on."""
    point_discord_at(discord_harness.emu.api_base, discord_harness.emu.gateway_url)
    inter = await discord_harness.emu.slash("imagine", {"prompt": "a paper lantern --model tiny-sdxl --seed 11"})
    return await inter.wait_original(is_result, timeout=90)


async def press(pintor: Harness, message: dict, custom_id: str, **kwargs) -> tuple:
    """Click, check the quick acknowledgement, and wait for the new message's final state."""
    click = await pintor.emu.click(int(message["id"]), custom_id, **kwargs)
    callback = await click.wait_callback(timeout=3)
    assert callback["type"] == DEFERRED_UPDATE and callback["at"] - click.dispatched_at < 3
    await pintor.until(lambda: click.followups and is_result(click.followups[0]))
    [result] = click.followups
    return click, result


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def picked(discord_harness: Harness, grid: dict) -> dict:
    """The message U2 of the grid made: the picture alone, at once."""
    point_discord_at(discord_harness.emu.api_base, discord_harness.emu.gateway_url)
    _, result = await press(discord_harness, grid, f"pintor:u:{job_id_of(grid)}:2")
    return result


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def upscaled(discord_harness: Harness, picked: dict) -> dict:
    """The message Upscale (Subtle) under U2's picture made (by the x4 upscaler here)."""
    point_discord_at(discord_harness.emu.api_base, discord_harness.emu.gateway_url)
    _, result = await press(discord_harness, picked, f"pintor:x:{job_id_of(picked)}:1:s")
    return result


def picture_buttons(job_id: int, grid_url: str | None, *, square: bool = True) -> list[list[str]]:
    return [[f"pintor:x:{job_id}:1:s", f"pintor:x:{job_id}:1:c", f"pintor:v:{job_id}:1:s", f"pintor:v:{job_id}:1:h"],
            [f"pintor:z:{job_id}:1:20", f"pintor:z:{job_id}:1:15", f"pintor:zc:{job_id}:1",
             *([] if square else [f"pintor:sq:{job_id}:1"])],
            [f"pintor:p:{job_id}:1:{way}" for way in "lrud"] + ([grid_url] if grid_url else [])]


async def test_u2_shows_the_second_image_alone_at_once_with_its_buttons(pintor: Harness, grid: dict, picked: dict):
    emu = pintor.emu
    grid_id = job_id_of(grid)
    result = picked
    assert result["id"] != grid["id"] and not result["flags"] & EPHEMERAL
    assert (await pintor.picture(result)).size == (TILE, TILE)  # as it was made
    pick_id = job_id_of(result)
    assert f"Image #2 of job {grid_id}" in result["content"] and f"<@{emu.user_id}>" in result["content"]
    assert custom_ids(result) == picture_buttons(pick_id, jump_url(emu.guild_id, emu.channel_id, int(grid["id"])))
    labels = [c.get("label") or c["emoji"]["name"] for row in result["components"] for c in row["components"]]
    assert labels == ["Upscale (Subtle)", "Upscale (Creative)", "Vary (Subtle)", "Vary (Strong)", "Zoom Out 2x",
                      "Zoom Out 1.5x", "Custom Zoom", "⬅️", "➡️", "⬆️", "⬇️", "Grid"]
    assert grid["components"] == emu.messages[int(grid["id"])]["components"]  # the grid is left as it was

    job, parent = await pintor.posted(pick_id), await pintor.job(grid_id)
    assert (job.kind, job.parent_id, job.parent_index, job.status) == ("pick", grid_id, 2, "done")
    assert job.started_at is None  # no worker job
    assert job.images[0].path == parent.images[1].path and job.images[0].seed == parent.images[1].seed

    # pressed again: the same job, posted again; /show and /history know it
    _, again = await press(pintor, grid, f"pintor:u:{grid_id}:2")
    assert job_id_of(again) == pick_id
    show = await emu.slash("show", {"job_id": pick_id})
    assert custom_ids(await show.wait_original(is_result)) == custom_ids(result)
    history = await emu.slash("history", {})
    page = await history.wait_original(lambda m: bool(m["embeds"]))
    [entry] = [e for e in page["embeds"] if any(f["value"] == f"`/show job_id:{pick_id}`" for f in e["fields"])]
    assert {"name": "kind", "value": "U2", "inline": True} in entry["fields"]


async def test_upscale_subtle_under_the_picture_upscales_it(pintor: Harness, picked: dict, upscaled: dict):
    emu = pintor.emu
    pick_id, up_id = job_id_of(picked), job_id_of(upscaled)
    assert (await pintor.picture(upscaled)).size == (4 * TILE, 4 * TILE)
    assert f"Image #1 of job {pick_id}, upscaled by tiny-upscaler" in upscaled["content"]
    pick = await pintor.job(pick_id)  # ↩️ Grid leads to the grid, not to the U picture upscaled
    grid = await pintor.job(pick.parent_id)
    assert custom_ids(upscaled) == picture_buttons(up_id, jump_url(emu.guild_id, emu.channel_id, grid.message_id))
    job = await pintor.posted(up_id)
    assert (job.kind, job.parent_id, job.parent_index, job.status) == ("upscale", pick_id, 1, "done")
    assert job.model == "tiny-upscaler" and job.message_id == int(upscaled["id"])

    # /show of an upscale posts the single picture with its own buttons again
    show = await emu.slash("show", {"job_id": up_id})
    again = await show.wait_original(is_result)
    assert custom_ids(again) == custom_ids(upscaled)
    assert (await pintor.picture(again)).size == (4 * TILE, 4 * TILE)


async def test_v1_makes_a_new_grid_from_the_first_image(pintor: Harness, grid: dict):
    grid_id = job_id_of(grid)
    _, result = await press(pintor, grid, f"pintor:v:{grid_id}:1:h")
    assert (await pintor.picture(result)).size == (2 * TILE, 2 * TILE)
    var_id = job_id_of(result)
    assert f"Variation (Strong) of image 1 of job {grid_id}" in result["content"]
    assert custom_ids(result)[0][0] == f"pintor:u:{var_id}:1"

    job, parent = await pintor.posted(var_id), await pintor.job(grid_id)
    assert (job.kind, job.parent_id, job.parent_index, job.status) == ("variation", grid_id, 1, "done")
    assert Request.from_json(job.request).init_image == parent.images[0].path
    assert not {i.seed for i in job.images} & {i.seed for i in parent.images}


async def test_reroll_makes_the_same_prompt_with_a_new_seed(pintor: Harness, grid: dict):
    grid_id = job_id_of(grid)
    _, result = await press(pintor, grid, f"pintor:r:{grid_id}")
    assert (await pintor.picture(result)).size == (2 * TILE, 2 * TILE)
    assert f"Re-roll of job {grid_id}" in result["content"] and "a paper lantern" in result["content"]
    job, parent = await pintor.posted(job_id_of(result)), await pintor.job(grid_id)
    assert (job.kind, job.parent_id, job.status) == ("reroll", grid_id, "done")
    assert Request.from_json(job.request).seed != Request.from_json(parent.request).seed == 11


@pytest.mark.parametrize("custom_id, says", [
    ("pintor:u:999999:2", "no job 999999"),
    ("pintor:v:999999:1:s", "no job 999999"),
    ("pintor:r:999999", "no job 999999"),
])
async def test_a_forged_button_gets_an_ephemeral_refusal_and_no_job(pintor: Harness, custom_id: str, says: str):
    emu = pintor.emu
    forged = emu._new_message(emu.channel_id, {"content": "forged", "components": [
        {"type": 1, "components": [{"type": 2, "style": 2, "label": "U2", "custom_id": custom_id}]}]}, [])
    before = await pintor.job_count()
    click = await emu.click(int(forged["id"]), custom_id)
    assert (await click.wait_callback(timeout=3))["type"] == DEFERRED_UPDATE
    await pintor.until(lambda: click.followups)
    [refusal] = click.followups
    assert refusal["flags"] & EPHEMERAL and says in refusal["content"]
    assert await pintor.job_count() == before


async def test_an_image_the_job_does_not_have_is_refused(pintor: Harness, upscaled: dict):
    emu = pintor.emu
    up_id = job_id_of(upscaled)
    await pintor.posted(up_id)
    forged = emu._new_message(emu.channel_id, {"content": "forged", "components": [
        {"type": 1, "components": [{"type": 2, "style": 2, "label": "U3", "custom_id": f"pintor:u:{up_id}:3"}]}]}, [])
    before = await pintor.job_count()
    click = await emu.click(int(forged["id"]), f"pintor:u:{up_id}:3")
    await pintor.until(lambda: click.followups)
    assert click.followups[0]["flags"] & EPHEMERAL and "has no image 3" in click.followups[0]["content"]
    assert await pintor.job_count() == before


async def test_author_only_buttons_refuse_other_members(pintor: Harness, grid: dict):
    emu, settings = pintor.emu, pintor.bot.settings
    settings.pintor_buttons_author_only = True
    try:
        before = await pintor.job_count()
        click = await emu.click(int(grid["id"]), f"pintor:r:{job_id_of(grid)}", user_id=emu._snowflake())
        assert (await click.wait_callback(timeout=3))["type"] == DEFERRED_UPDATE
        await pintor.until(lambda: click.followups)
        assert click.followups[0]["flags"] & EPHEMERAL
        assert f"Only <@{emu.user_id}>" in click.followups[0]["content"]
        assert await pintor.job_count() == before
    finally:
        settings.pintor_buttons_author_only = False


async def copy_of(store: JobStore, grid_job, *, prompt: str, done: bool, flagged: bool = False,
                  **changes) -> int:
    """A job for the emulator's member and channel like `grid_job`: queued, or done with its pictures."""
    request = Request.from_json(grid_job.request).replace(**({"kind": "imagine", "prompt": prompt} | changes))
    job = await store.create_job(user_id=grid_job.user_id, user_name="someone", kind=request.kind, model=request.model,
                                 prompt=prompt, request=request.to_json(), guild_id=grid_job.guild_id,
                                 channel_id=grid_job.channel_id)
    if done:
        await store.complete(job.id, [NewImage(i.path, i.width, i.height, i.seed, i.sha256, flagged=flagged)
                                      for i in grid_job.images], grid_job.grid_path)
    return job.id


def result_of(emu, job_id: int) -> dict | None:
    """The result message of a job, among all the messages of the session's emulator."""
    return next((m for m in emu.messages.values() if is_result(m) and job_id_in(m) == job_id), None)


async def test_buttons_and_stopped_jobs_survive_a_restart(pintor: Harness, grid: dict):
    emu = pintor.emu
    made: dict[str, int] = {}

    async def as_a_stop_leaves_them() -> None:
        """While Pintor is down: a job stored as queued (a stop in mid-queue leaves it so), and
        one done but never posted (done while the bot was stopping)."""
        engine = open_engine(pintor.settings.database_url)
        pictures = FileStore(pintor.settings.pictures_dir)  # the stopped bot's file store
        try:
            store = JobStore(engine)
            parent = await store.get(job_id_of(grid))
            made["queued"] = await copy_of(store, parent, prompt="a lantern left in the queue", done=False)
            made["unposted"] = await copy_of(store, parent, prompt="a lantern never posted", done=True)
            made["failing"] = await copy_of(store, parent, prompt="a lantern that cannot be", done=False,
                                            kind="variation", strength=0.7,
                                            init_image=str(pictures.local(parent.grid_path).parent / "gone.png"))
        finally:
            await engine.dispose()

    # Restart with the commands registered in the emulator's server this time.
    await pintor.restart(pintor.settings.model_copy(update={"discord_guild_ids": [emu.guild_id]}),
                         while_stopped=as_a_stop_leaves_them)
    assert {"imagine", "show"} <= {c["name"] for c in emu.commands[emu.guild_id]}

    # Both are posted in their channel, mentioning the member, with the bot token.
    for name, prompt in (("queued", "a lantern left in the queue"), ("unposted", "a lantern never posted")):
        await pintor.until(lambda name=name: result_of(emu, made[name]))
        posted = result_of(emu, made[name])
        assert f"<@{emu.user_id}>" in posted["content"] and prompt in posted["content"]
        assert "interaction_metadata" not in posted  # a channel message, not an interaction's
        sent = next(r for r in emu.requests if r.method == "POST" and r.path == f"/channels/{emu.channel_id}/messages"
                    and r.status == 200 and re.search(rf"· job {made[name]}\b", r.json.get("content", "")))
        assert [int(u) for u in sent.json["allowed_mentions"]["users"]] == [emu.user_id]
        assert (await pintor.posted(made[name])).message_id == int(posted["id"])
        assert custom_ids(posted)[0][0] == f"pintor:u:{made[name]}:1"

    # A job that fails after the restart: its reason, in the channel, mentioning the member.
    def failure() -> dict | None:
        return next((m for m in emu.messages.values() if "a lantern that cannot be" in m["content"]), None)

    await pintor.until(failure)
    assert "❌" in failure()["content"] and f"<@{emu.user_id}>" in failure()["content"]
    assert not failure()["attachments"] and not failure()["components"]
    assert (await pintor.job(made["failing"])).status == "failed"

    # The grid's buttons, made before the restart, still work: U4 (posted before, now at once).
    _, result = await press(pintor, grid, f"pintor:u:{job_id_of(grid)}:4")
    assert (await pintor.picture(result)).size == (TILE, TILE)
    job = await pintor.posted(job_id_of(result))
    assert (job.kind, job.parent_id, job.parent_index) == ("pick", job_id_of(grid), 4)


async def test_a_flagged_picture_is_shown_behind_a_spoiler(pintor: Harness, grid: dict):
    parent = await pintor.job(job_id_of(grid))
    job_id = await copy_of(pintor.studio.store, parent, prompt="a flagged lantern", done=True, flagged=True)
    show = await pintor.emu.slash("show", {"job_id": job_id})
    again = await show.wait_original(is_result)
    [attachment] = again["attachments"]
    assert attachment["filename"] == f"SPOILER_pintor-{job_id}.png"


async def test_server_rules_apply_to_buttons(pintor: Harness, grid: dict):
    emu, stored = pintor.emu, pintor.studio.preferences_and_rules
    await stored.update_guild(emu.guild_id, paused=True)
    try:
        before = await pintor.job_count()
        click = await emu.click(int(grid["id"]), f"pintor:r:{job_id_of(grid)}")
        await pintor.until(lambda: click.followups)
        assert click.followups[0]["flags"] & EPHEMERAL and "paused" in click.followups[0]["content"]
        assert await pintor.job_count() == before

        await stored.update_guild(emu.guild_id, paused=False, buttons_author_only=True)
        click = await emu.click(int(grid["id"]), f"pintor:r:{job_id_of(grid)}", user_id=emu._snowflake())
        await pintor.until(lambda: click.followups)
        assert click.followups[0]["flags"] & EPHEMERAL and "Only" in click.followups[0]["content"]
        assert await pintor.job_count() == before
    finally:
        await stored.update_guild(emu.guild_id, paused=False, buttons_author_only=False)
