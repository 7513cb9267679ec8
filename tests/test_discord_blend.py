"""/blend end to end: the real bot downloads the members' attachments from the Discord
emulator, checks them by content, keeps them with the job, and mixes them through the tiny
Kandinsky 2.2 (the default tiny-sd cannot blend, so /blend picks tiny-kandinsky)."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from bot.discord_endpoints import point_discord_at
from generation.inputs import MAX_UPLOAD_BYTES
from generation.request import Request
from tests.discord_harness import Harness, custom_ids, is_result, job_id_of
from tests.test_inputs import bomb_png, grey16_png, mpo

pytestmark = pytest.mark.asyncio(loop_scope="session")

DEFERRED, DEFERRED_UPDATE, MESSAGE, EPHEMERAL = 5, 6, 4, 64
ATTACHMENT = 11  # the option type of an uploaded file


def png(color, size=(48, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def noise_png(side: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((side, side), 50).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


CAT, TIGER = png((200, 120, 40)), png((30, 160, 220), (64, 64))


def inputs_listing(pintor: Harness) -> set[str]:
    folder = pintor.studio.inputs_dir
    assert folder is not None
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


async def blend(pintor: Harness, options: dict, **kwargs) -> tuple:
    """Run /blend with two fresh attachments (cat, tiger) unless `options` names its own;
    check the quick deferral and wait for the result. Returns (interaction, result, attachments)."""
    emu = pintor.emu
    attachments = {"image1": emu.add_attachment("cat.png", CAT), "image2": emu.add_attachment("tiger.png", TIGER)}
    attachments = {k: v for k, v in attachments.items() if k not in options}
    inter = await emu.slash("blend", attachments | options, **kwargs)
    callback = await inter.wait_callback(timeout=3)
    assert callback["type"] == DEFERRED and callback["at"] - inter.dispatched_at < 3
    final = await inter.wait_original(is_result, timeout=90)
    return inter, final, attachments


async def refused(pintor: Harness, inter) -> str:
    """After a public deferral: the member's private answer, once the public reply is gone."""
    callback = await inter.wait_callback(timeout=3)
    if callback["type"] == MESSAGE:  # answered before deferring
        assert callback["data"]["flags"] & EPHEMERAL
        return callback["data"]["content"]
    assert callback["type"] == DEFERRED
    await pintor.until(lambda: inter.followups and inter.original is None, timeout=30)
    [answer] = inter.followups
    assert answer["flags"] & EPHEMERAL
    # the channel never sees the reason, not even for a moment, and keeps nothing of it
    assert not [m for m in pintor.emu.messages.values()
                if not m["flags"] & EPHEMERAL and answer["content"] in m["content"]]
    original = f"/{inter.token}/messages/@original"
    public_edits = pintor.requests(lambda r: r.method == "PATCH" and r.path.endswith(original))
    assert public_edits and not [e for e in public_edits if answer["content"] in e.json["content"]]
    return answer["content"]


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def blended(discord_harness: Harness) -> tuple:
    """A finished /blend of two images and a text, landscape: (interaction, message, attachments)."""
    point_discord_at(discord_harness.emu.api_base, discord_harness.emu.gateway_url)
    return await blend(discord_harness, {"prompt": "a cat tiger --seed 5", "dimensions": "landscape"})


async def test_blend_is_registered_with_attachment_options(pintor: Harness):
    command = next(c for c in pintor.emu.commands[None] if c["name"] == "blend")
    options = {o["name"]: o for o in command["options"]}
    assert [(n, o["type"], o.get("required", False)) for n, o in options.items() if n.startswith("image")] == [
        ("image1", ATTACHMENT, True), ("image2", ATTACHMENT, True), ("image3", ATTACHMENT, False),
        ("image4", ATTACHMENT, False), ("image5", ATTACHMENT, False)]
    assert [c["value"] for c in options["dimensions"]["choices"]] == ["square", "portrait", "landscape"]
    assert {"prompt", "weights"} <= set(options)


async def test_blend_of_two_pngs_gives_a_grid_with_buttons(pintor: Harness, blended: tuple):
    emu = pintor.emu
    inter, final, attachments = blended
    # the bot fetched each attachment itself
    assert all(emu.attachment_gets.count(int(a["id"])) == 1 for a in attachments.values())

    job_id = job_id_of(final)
    assert "blend of 2 images: a cat tiger" in final["content"] and "tiny-kandinsky" in final["content"]
    assert f"<@{emu.user_id}>" in final["content"] and not final["flags"] & EPHEMERAL
    assert custom_ids(final) == [[f"pintor:u:{job_id}:{n}" for n in range(1, 5)] + [f"pintor:r:{job_id}"],
                                 [f"pintor:v:{job_id}:{n}:h" for n in range(1, 5)]]

    grid = await pintor.picture(final)
    job = await pintor.posted(job_id)
    assert grid.format == "PNG"
    tile = job.images[0]
    assert tile.width > tile.height  # landscape
    assert grid.size == (2 * tile.width, 2 * tile.height) and len(job.images) == 4

    assert (job.kind, job.model, job.status, job.message_id) == ("blend", "tiny-kandinsky", "done", int(final["id"]))
    request = Request.from_json(job.request)
    data_dir = pintor.settings.pintor_data_dir.resolve()
    assert len(request.images) == 2 and request.image_weights == (1.0, 1.0)
    for key in request.images:  # kept in the file store, named by key
        path = pintor.studio.picture(key)
        assert key.startswith("inputs/") and path.is_file() and path.resolve().is_relative_to(data_dir)
        assert path.name in inputs_listing(pintor)
    with Image.open(pintor.studio.picture(request.images[0])) as kept:  # the upload itself, stored as PNG
        assert kept.format == "PNG" and kept.size == (48, 40)
        assert kept.convert("RGB").getpixel((5, 5)) == (200, 120, 40)
    assert request.parts == (("a cat tiger", 1.0),) and request.seed == 5


async def test_weights_change_the_result_and_the_same_weights_repeat_it(pintor: Harness):
    async def checksums(weights: str) -> list[str]:
        _, final, _ = await blend(pintor, {"prompt": "--seed 5", "weights": weights})
        job = await pintor.job(job_id_of(final))
        assert Request.from_json(job.request).image_weights == tuple(float(w) for w in weights.split(","))
        return [i.sha256 for i in job.images]

    first, other, again = await checksums("3,1"), await checksums("1,3"), await checksums("3,1")
    assert first == again
    assert first != other


def _hostile_cases():
    good = noise_png()
    return [
        pytest.param("bomb.png", bomb_png(), None, "10000×10000 pixels", id="decompression-bomb",
                     # (the emulator reads its size for the attachment object, as Discord does)
                     marks=pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")),
        pytest.param("notes.png", b"just some text, not a picture\n" * 10, None, "is not an image", id="text"),
        pytest.param("cut.png", good[: len(good) // 2], None, "damaged or truncated", id="truncated"),
        pytest.param("empty.png", b"", None, "is empty", id="zero-bytes"),
        pytest.param("strip.png", png((0, 0, 0), (100_000, 8)), None,
                     "100000×8 pixels; the long side may be at most 8 times the short one (8:1)", id="extreme-shape"),
        pytest.param("huge.png", b"\x89PNG" + b"\0" * 1000, MAX_UPLOAD_BYTES + 1, "larger than 10 MB",
                     id="declared-too-large"),
        pytest.param("liar.png", b"\0" * (MAX_UPLOAD_BYTES + 1), 2048, "larger than 10 MB",
                     id="downloaded-too-large"),
    ]


@pytest.mark.parametrize("name, data, declared_size, problem", _hostile_cases())
async def test_a_hostile_file_is_refused_privately_and_changes_nothing(
        pintor: Harness, name: str, data: bytes, declared_size: int | None, problem: str):
    emu = pintor.emu
    jobs, files = await pintor.job_count(), inputs_listing(pintor)
    hostile = emu.add_attachment(name, data)
    if declared_size is not None:
        hostile["size"] = declared_size  # what Discord says, not what is served
    good = emu.add_attachment("cat.png", CAT)
    inter = await emu.slash("blend", {"image1": good, "image2": hostile})
    text = await refused(pintor, inter)
    assert name in text and problem in text, text
    assert await pintor.job_count() == jobs
    assert inputs_listing(pintor) == files
    if declared_size is not None and declared_size > MAX_UPLOAD_BYTES:
        assert int(hostile["id"]) not in emu.attachment_gets  # refused on its declared size alone


async def test_phone_photos_deep_pngs_and_colour_keys_are_blended_as_a_viewer_shows_them(pintor: Harness):
    """What members really upload: a portrait photo that Pillow reads as MPO (turned by its EXIF
    orientation), a 16-bit greyscale PNG, and an RGB PNG made transparent by a colour key."""
    emu = pintor.emu
    portrait = mpo(Image.new("RGB", (60, 40), (230, 20, 20)), Image.new("RGB", (60, 40), (20, 20, 230)), 6)
    keyed = io.BytesIO()
    Image.new("RGB", (48, 48), (0, 0, 0)).save(keyed, format="PNG", transparency=(0, 0, 0))
    _, final, _ = await blend(pintor, {
        "image1": emu.add_attachment("PXL_20261129_portrait.jpg", portrait),
        "image2": emu.add_attachment("scan16.png", grey16_png(np.full((40, 40), 32768))),
        "image3": emu.add_attachment("logo.png", keyed.getvalue())})
    job = await pintor.posted(job_id_of(final))
    assert job.status == "done" and "blend of 3 images" in final["content"]
    turned, grey, clear = (Image.open(pintor.studio.picture(key)) for key in Request.from_json(job.request).images)
    r, g, b = turned.getpixel((20, 30))
    assert turned.size == (40, 60) and r > 200 and b < 60  # the main picture, upright
    assert grey.getcolors() == [(1600, (128, 128, 128))]  # mid grey, not white
    assert clear.getcolors() == [(48 * 48, (255, 255, 255))]  # white, not black


async def test_bad_weights_are_refused_privately(pintor: Harness):
    jobs, files = await pintor.job_count(), inputs_listing(pintor)
    emu = pintor.emu
    inter = await emu.slash("blend", {"image1": emu.add_attachment("a.png", CAT),
                                      "image2": emu.add_attachment("b.png", TIGER), "weights": "1,2,3"})
    text = await refused(pintor, inter)
    assert "weights" in text and "2 (one per image)" in text
    assert await pintor.job_count() == jobs and inputs_listing(pintor) == files


async def test_a_model_that_cannot_blend_is_a_clear_error(pintor: Harness):
    emu, studio = pintor.emu, pintor.studio
    jobs, files = await pintor.job_count(), inputs_listing(pintor)
    inter = await emu.slash("blend", {"image1": emu.add_attachment("a.png", CAT),
                                      "image2": emu.add_attachment("b.png", TIGER), "prompt": "--model tiny-sd"})
    text = await refused(pintor, inter)
    assert "'tiny-sd' cannot blend images" in text and "tiny-kandinsky" in text

    registry = studio.registry
    studio.registry = dataclasses.replace(registry,
                                          models={n: m for n, m in registry.models.items() if not m.can_blend})
    try:
        inter = await emu.slash("blend", {"image1": emu.add_attachment("a.png", CAT),
                                          "image2": emu.add_attachment("b.png", TIGER)})
        text = await refused(pintor, inter)
    finally:
        studio.registry = registry
    assert "No model that can blend images" in text and "ask an admin" in text
    assert await pintor.job_count() == jobs and inputs_listing(pintor) == files


async def test_a_refused_blend_keeps_no_upload(pintor: Harness):
    """A server rule refuses the job after the uploads were checked: none of them is kept."""
    emu, stored = pintor.emu, pintor.studio.preferences_and_rules
    jobs, files = await pintor.job_count(), inputs_listing(pintor)
    await stored.update_guild(emu.guild_id, paused=True)
    try:
        inter = await emu.slash("blend", {"image1": emu.add_attachment("a.png", png((1, 2, 3))),
                                          "image2": emu.add_attachment("b.png", png((4, 5, 6)))})
        text = await refused(pintor, inter)
    finally:
        await stored.update_guild(emu.guild_id, paused=False)
    assert "paused" in text
    assert await pintor.job_count() == jobs and inputs_listing(pintor) == files


async def test_a_members_private_setting_keeps_the_blend_private(pintor: Harness):
    stored = pintor.studio.preferences_and_rules
    await stored.update_member(pintor.emu.user_id, "member", private=True)
    try:
        inter, final, _ = await blend(pintor, {"prompt": "--seed 8"})
    finally:
        await stored.update_member(pintor.emu.user_id, private=False)
    assert inter.callbacks[0]["data"]["flags"] & EPHEMERAL
    assert final["flags"] & EPHEMERAL


async def press(pintor: Harness, message: dict, custom_id: str) -> dict:
    click = await pintor.emu.click(int(message["id"]), custom_id)
    callback = await click.wait_callback(timeout=3)
    assert callback["type"] == DEFERRED_UPDATE and callback["at"] - click.dispatched_at < 3
    await pintor.until(lambda: click.followups and is_result(click.followups[0]), timeout=90)
    return click.followups[0]


async def test_reroll_uses_the_stored_inputs_after_the_urls_expired(pintor: Harness, blended: tuple):
    emu = pintor.emu
    _, final, attachments = blended
    for attachment in attachments.values():
        emu.remove_attachment(attachment)
    fetched = len(emu.attachment_gets)
    parent = await pintor.job(job_id_of(final))

    result = await press(pintor, final, f"pintor:r:{parent.id}")
    job = await pintor.posted(job_id_of(result))
    assert (job.kind, job.model, job.parent_id, job.status) == ("blend", "tiny-kandinsky", parent.id, "done")
    request, before = Request.from_json(job.request), Request.from_json(parent.request)
    assert request.images == before.images and request.image_weights == before.image_weights
    assert request.parts == before.parts and request.seed != before.seed
    assert (job.images[0].width, job.images[0].height) == (parent.images[0].width, parent.images[0].height)
    assert [i.sha256 for i in job.images] != [i.sha256 for i in parent.images]
    # nothing was downloaded again (an expired URL would have answered 404)
    assert not [a for a in emu.attachment_gets[fetched:] if a in {int(v["id"]) for v in attachments.values()}]


async def test_v1_of_a_blend_makes_variations_with_kandinsky(pintor: Harness, blended: tuple):
    _, final, _ = blended
    parent = await pintor.job(job_id_of(final))
    result = await press(pintor, final, f"pintor:v:{parent.id}:1:h")
    job = await pintor.posted(job_id_of(result))
    assert (job.kind, job.model, job.parent_id, job.parent_index, job.status) == (
        "variation", "tiny-kandinsky", parent.id, 1, "done")
    request = Request.from_json(job.request)
    source = parent.images[0].path  # its key
    assert request.init_image == source and request.images == (source,)
    tile = parent.images[0]
    assert (await pintor.picture(result)).size == (2 * tile.width, 2 * tile.height)
    assert f"<@{pintor.emu.user_id}>" in result["content"]
