"""/imagine and /show end to end: the real bot, studio, worker process and SQLite, through the
Discord emulator."""

from __future__ import annotations

import asyncio
import io
import os
import re

import pytest
from PIL import Image

from bot.intake import Member
from generation.events import Progress
from tests.discord_harness import TEST_PROGRESS_INTERVAL_S, Harness, custom_ids, is_result, job_id_of

pytestmark = pytest.mark.asyncio(loop_scope="session")

DEFERRED, MESSAGE, EPHEMERAL = 5, 4, 64


def original_edits(pintor: Harness, inter) -> list:
    return pintor.requests(lambda r: r.method == "PATCH" and r.path.endswith(f"/{inter.token}/messages/@original"))


async def test_commands_are_registered(pintor: Harness):
    commands = {c["name"]: c for c in pintor.emu.commands[None]}
    assert {"imagine", "show"} <= set(commands)
    assert [(o["name"], o["type"], o.get("required", False)) for o in commands["imagine"]["options"]] == [
        ("prompt", 3, True), ("image", 11, False), ("control", 11, False)]
    # optional: an image prompt (tests/test_discord_image_prompts.py), a control image (ControlNet)
    assert commands["imagine"]["description"] == "Make four pictures from a prompt."
    [job_id] = commands["show"]["options"]
    assert (job_id["name"], job_id["type"], job_id["min_value"]) == ("job_id", 4, 1)


@pytest.mark.smoke
async def test_imagine_shows_progress_then_the_grid_with_buttons(pintor: Harness):
    emu = pintor.emu
    # Hold the job's later events back until the bot has shown its first preview, so that the
    # progress edit is seen whatever the speed of the machine.
    shown_preview = asyncio.Event()

    async def hold_until_preview_shown(job_id, event):
        if isinstance(event, Progress) and event.preview and not shown_preview.is_set():
            await pintor.until(lambda: any(name.startswith("preview") for r in pintor.emu.requests
                                           if r.method == "PATCH" for name, _ in r.files), timeout=30)
            shown_preview.set()

    pintor.studio.listeners.append(hold_until_preview_shown)
    try:
        inter = await emu.slash("imagine", {"prompt": "a red fox in the snow --ar 3:2 --seed 7 --no people"})
        callback = await inter.wait_callback(timeout=3)
        assert callback["type"] == DEFERRED
        assert callback["at"] - inter.dispatched_at < 3
        final = await inter.wait_original(is_result, timeout=90)
    finally:
        pintor.studio.listeners.remove(hold_until_preview_shown)
    assert shown_preview.is_set()

    edits = original_edits(pintor, inter)
    # First at once: the place in line, or "starting" when the worker was free.
    assert re.search(r"queued — position \d+|starting…", edits[0].json["content"])
    progress = [e for e in edits if "generating" in e.json["content"]]
    assert progress and any(name.startswith("preview") for e in progress for name, _ in e.files)
    assert re.search(r"generating \d+ %", progress[0].json["content"])
    # Throttled: the edits before the final one are at least the interval apart.
    starts = [e.at for e in edits[:-1]]
    assert all(b - a >= TEST_PROGRESS_INTERVAL_S * 0.95 for a, b in zip(starts, starts[1:], strict=False))

    job_id = job_id_of(final)
    content = final["content"]
    assert content.startswith("**a red fox in the snow** --ar 3:2 --no people --model tiny-sd")
    assert f"<@{emu.user_id}>" in content and "seed 7" in content and "tiny-sd" in content
    assert not final["flags"] & EPHEMERAL
    assert custom_ids(final) == [[f"pintor:u:{job_id}:{n}" for n in range(1, 5)] + [f"pintor:r:{job_id}"],
                                 [f"pintor:v:{job_id}:{n}:h" for n in range(1, 5)]]
    assert all(len(c) < 100 for row in custom_ids(final) for c in row)

    grid = await pintor.picture(final)
    assert grid.format == "PNG" and grid.size == (384, 256)  # 2×2 tiles of 192×128 (3:2 at 128 px)
    job = await pintor.posted(job_id)
    assert job.status == "done" and job.kind == "imagine" and job.user_id == emu.user_id
    assert (job.channel_id, job.message_id) == (emu.channel_id, int(final["id"]))
    assert [i.seed for i in job.images] == [7, 8, 9, 10]
    for image, (x, y) in zip(job.images, [(0, 0), (192, 0), (0, 128), (192, 128)], strict=True):
        with Image.open(pintor.studio.picture(image.path)) as tile:
            assert tile.size == (192, 128)
            assert grid.crop((x, y, x + 192, y + 128)).tobytes() == tile.convert("RGB").tobytes()


@pytest.mark.parametrize("prompt, says", [
    ("a fox --ar banana", "--ar must be W:H"),
    ("a fox --seed -1", "got “-1”"),
    ("a fox --model nope", "Unknown model 'nope'"),
    ("--seed 3", "text"),
    ("https://s.mj.run/abc123 --v 6", "image links but no text"),
])
async def test_bad_input_gets_an_ephemeral_message_and_no_job(pintor: Harness, prompt: str, says: str):
    before = await pintor.job_count()
    inter = await pintor.emu.slash("imagine", {"prompt": prompt})
    callback = await inter.wait_callback(timeout=3)
    assert callback["type"] == MESSAGE
    assert callback["data"]["flags"] & EPHEMERAL
    assert says in callback["data"]["content"]
    assert await pintor.job_count() == before


async def test_direct_messages_are_refused_unless_allowed(pintor: Harness):
    before = await pintor.job_count()
    inter = await pintor.emu.slash("imagine", {"prompt": "a fox"}, guild=False)
    callback = await inter.wait_callback(timeout=3)
    assert callback["type"] == MESSAGE and callback["data"]["flags"] & EPHEMERAL
    assert "direct messages" in callback["data"]["content"]
    assert await pintor.job_count() == before


async def test_a_busy_worker_does_not_delay_the_acknowledgement(pintor: Harness):
    studio = pintor.studio
    busy = [await studio.submit(Member(4242, "busy"), studio.prepare(f"a crowded queue {i} --steps 1"))
            for i in range(10)]
    try:
        inter = await pintor.emu.slash("imagine", {"prompt": "a quiet lake --seed 3"})
        callback = await inter.wait_callback(timeout=3)
        assert callback["type"] == DEFERRED and callback["at"] - inter.dispatched_at < 3
        await pintor.until(lambda: original_edits(pintor, inter))
        position = re.search(r"queued — position (\d+)", original_edits(pintor, inter)[0].json["content"])
        assert position and int(position[1]) >= 1
    finally:
        for submitted in busy:
            await studio.cancel(submitted.job_id)
    final = await inter.wait_original(is_result, timeout=90)
    assert "seed 3" in final["content"]


async def test_a_result_after_the_token_expired_is_posted_in_the_channel(pintor: Harness):
    emu, bot = pintor.emu, pintor.bot
    bot.interaction_ttl_s = 0  # as if the job had waited 14 minutes in the queue
    try:
        inter = await emu.slash("imagine", {"prompt": "a late lighthouse --seed 5"})
        assert (await inter.wait_callback(timeout=3))["type"] == DEFERRED
        post = await emu.wait_for(lambda r: r.method == "POST" and r.path == f"/channels/{emu.channel_id}/messages"
                                  and "a late lighthouse" in (r.json or {}).get("content", ""), timeout=90)
    finally:
        del bot.interaction_ttl_s
    assert post.status == 200
    mentions = post.json["allowed_mentions"]
    assert [int(u) for u in mentions["users"]] == [emu.user_id] and not mentions["parse"]
    message = next(m for m in emu.messages.values() if "a late lighthouse" in m["content"] and is_result(m))
    assert f"<@{emu.user_id}>" in message["content"]
    job_id = job_id_of(message)
    assert custom_ids(message)[0][0] == f"pintor:u:{job_id}:1"
    assert (await pintor.picture(message)).size == (256, 256)
    assert not original_edits(pintor, inter)  # a dead token is not used at all
    assert (await pintor.posted(job_id)).message_id == int(message["id"])


async def test_a_result_over_the_upload_limit_is_reencoded(pintor: Harness):
    limit = 12_000
    inter = await pintor.emu.slash("imagine", {"prompt": "a noisy forest --ar 3:2 --seed 9"},
                                   attachment_size_limit=limit)
    final = await inter.wait_original(is_result, timeout=90)
    job = await pintor.job(job_id_of(final))
    [attachment] = final["attachments"]
    data = await pintor.fetch(attachment)
    assert job.grid_path is not None
    assert len(data) <= limit < os.path.getsize(pintor.studio.picture(job.grid_path))
    with Image.open(io.BytesIO(data)) as picture:
        assert picture.format in ("WEBP", "JPEG")
    assert "🗜️" in final["content"] and f"/show job_id:{job.id}" in final["content"]


async def test_show_posts_a_finished_job_again(pintor: Harness):
    emu = pintor.emu
    inter = await emu.slash("imagine", {"prompt": "a small boat --seed 21"})
    first = await inter.wait_original(is_result, timeout=90)
    job_id = job_id_of(first)

    show = await emu.slash("show", {"job_id": job_id})
    assert (await show.wait_callback(timeout=3))["type"] == DEFERRED
    again = await show.wait_original(is_result)
    assert custom_ids(again) == custom_ids(first)
    assert (await pintor.picture(again)).tobytes() == (await pintor.picture(first)).tobytes()
    assert (await pintor.posted(job_id)).message_id == int(first["id"])  # the grid's own message stays

    for unknown in (999_999, ):
        missing = await emu.slash("show", {"job_id": unknown})
        callback = await missing.wait_callback(timeout=3)
        assert callback["type"] == MESSAGE and callback["data"]["flags"] & EPHEMERAL
        assert f"no job {unknown}" in callback["data"]["content"]


async def test_server_rules_are_applied_with_a_private_answer(pintor: Harness):
    emu, stored = pintor.emu, pintor.studio.preferences_and_rules
    await stored.update_guild(emu.guild_id, paused=True)
    try:
        before = await pintor.job_count()
        inter = await emu.slash("imagine", {"prompt": "a fox in a paused server"})
        assert (await inter.wait_callback(timeout=3))["type"] == DEFERRED
        await pintor.until(lambda: inter.followups and inter.original is None)  # the public reply removed
        [answer] = inter.followups
        assert answer["flags"] & EPHEMERAL and "paused" in answer["content"]
        assert await pintor.job_count() == before
    finally:
        await stored.update_guild(emu.guild_id, paused=False)


async def test_a_members_settings_fill_in_the_prompt_and_keep_results_private(pintor: Harness):
    emu, stored = pintor.emu, pintor.studio.preferences_and_rules
    await stored.update_member(emu.user_id, "member", aspect="3:2", private=True)
    try:
        inter = await emu.slash("imagine", {"prompt": "a secret garden --seed 4"})
        callback = await inter.wait_callback(timeout=3)
        assert callback["type"] == DEFERRED and callback["data"]["flags"] & EPHEMERAL
        final = await inter.wait_original(is_result, timeout=90)
    finally:
        await stored.update_member(emu.user_id, aspect=None, private=False)
    assert final["flags"] & EPHEMERAL
    assert "--ar 3:2" in final["content"]
    assert (await pintor.picture(final)).size == (384, 256)


async def test_a_pasted_midjourney_prompt_is_made_and_every_change_is_said(pintor: Harness):
    emu = pintor.emu
    prompt = ("/imagine prompt: cinematic photo of a lighthouse in a storm, https://s.mj.run/Xy12ab "
              "dramatic light —ar 7:2 --v 6.0 --style raw --raw --sref 1234 --sref 5678 --chaos 150 --seed 9")
    inter = await emu.slash("imagine", {"prompt": prompt})
    assert (await inter.wait_callback(timeout=3))["type"] == DEFERRED
    final = await inter.wait_original(is_result, timeout=90)
    said = [
        "Removed “/imagine prompt:” from the start",
        "Ignored what Pintor does not have: “--raw”; “--sref 1234” (×2) — Pintor has image prompts (links at the "
        "start of the prompt, --iw), not style or character references.",
        "--ar “7:2”: used 3:1",
        "--chaos “150” is over the highest value; used 100.",
        "Removed 1 link (“s.mj.run”)",
        "Ignored “--style raw”: no model is mapped to it here",
    ]
    queued = original_edits(pintor, inter)[0].json["content"]
    for text in said:  # in the first message, and again with the result, once each
        assert queued.count(text) == 1, (text, queued)
        assert final["content"].count(text) == 1, (text, final["content"])
    # --v 6 is mapped to tiny-sdxl in the test registry: it chose the model, as --model would
    assert final["content"].startswith("**cinematic photo of a lighthouse in a storm, dramatic light** "
                                       "--ar 3:1 --chaos 100 --model tiny-sdxl")
    job = await pintor.posted(job_id_of(final))
    assert job.status == "done" and job.model == "tiny-sdxl"


async def test_strict_servers_refuse_unknown_parameters(pintor: Harness):
    emu, stored = pintor.emu, pintor.studio.preferences_and_rules
    await stored.update_guild(emu.guild_id, strict_parameters=True)
    try:
        before = await pintor.job_count()
        inter = await emu.slash("imagine", {"prompt": "a fox --raw --sref 12 --bogus 3"})
        callback = await inter.wait_callback(timeout=3)
        assert callback["type"] == MESSAGE and callback["data"]["flags"] & EPHEMERAL
        for name in ("“--raw”", "“--sref”", "“--bogus”"):
            assert name in callback["data"]["content"]
        assert await pintor.job_count() == before
    finally:
        await stored.update_guild(emu.guild_id, strict_parameters=False)


async def test_prompt_notices_never_push_the_status_line_out_of_a_message():
    from bot.limits import CONTENT, length
    from bot.results import progress_text
    from generation.prompt import parse_prompt
    from generation.registry import load_registry
    from generation.request import build_request

    prompt = "a lighthouse " * 100 + " ".join(f"--unknown{i} {'v' * 30}{i}" for i in range(60))
    request = build_request(parse_prompt(prompt), load_registry().get(None))
    text = progress_text(request, 1, "⏳ queued — position 3")
    assert length(text) <= CONTENT and text.endswith("\n⏳ queued — position 3")
    assert "ℹ️ Ignored what Pintor does not have" in text
async def test_a_result_posted_as_the_bot_stops_is_not_posted_again(pintor: Harness):
    """Nothing doubled: the bot stops the moment a result's message went out (the member sees it
    final); where it went is still stored, so the restarted bot does not post it a second time."""
    emu = pintor.emu
    inter = await emu.slash("imagine", {"prompt": "a lantern at closing time --seed 13"})
    final = await inter.wait_original(is_result, timeout=90)
    job_id = job_id_of(final)
    await pintor.restart()  # at once: the bot is still between sending the message and storing its id
    assert (await pintor.job(job_id)).message_id == int(final["id"])
    assert not pintor.requests(lambda r: r.method == "POST" and r.path == f"/channels/{emu.channel_id}/messages"
                               and f"job {job_id}" in (r.json or {}).get("content", ""))
