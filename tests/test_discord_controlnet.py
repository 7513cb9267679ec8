"""ControlNet end to end: /imagine with a `control:` upload and --cn/--cw, through the real bot,
the Discord emulator and the worker process, on the tiny SD and its tiny ControlNet (and the
tiny Kandinsky 2.2 ControlNet decoder for /blend). Its own bot: the registry names ControlNets."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from bot.discord_endpoints import point_discord_at
from bot.intake import Member
from generation.events import Done
from generation.files import CONTROL_FILE
from generation.request import Request
from tests.controlnet_helpers import build_controlnets, write_controlnet_registry
from tests.discord_harness import Harness, bot_of_its_own, is_result, job_id_of, until_idle
from tests.test_discord_blend import refused
from tests.test_inputs import bomb_png
from tests.waiting import collect_until

pytestmark = pytest.mark.asyncio(loop_scope="session")

DEFERRED, DEFERRED_UPDATE = 5, 6


def shapes_png(ground: int = 20) -> bytes:
    """A photo-like upload with edges to find: two blocks on a dark ground, not square."""
    pixels = np.full((60, 90, 3), ground, np.uint8)
    pixels[10:50, 20:45] = (250, 200, 30)
    pixels[25:35, 55:85] = (40, 90, 240)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def cn(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """A bot whose models.toml has ControlNets (SD canny and depth, Kandinsky depth)."""
    tmp = tmp_path_factory.mktemp("pintor-controlnet")
    controlnets = build_controlnets(tiny_models, tmp / "controlnets")
    registry = write_controlnet_registry(tmp / "models.toml", tiny_models, controlnets)
    async with bot_of_its_own(tmp, registry) as harness:
        yield harness


@pytest_asyncio.fixture(loop_scope="session")
async def pintor(cn: Harness):
    point_discord_at(cn.emu.api_base, cn.emu.gateway_url)
    yield cn
    await until_idle(cn)


def inputs_listing(pintor: Harness) -> set[str]:
    folder = pintor.studio.inputs_dir
    assert folder is not None
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


async def imagine(pintor: Harness, prompt: str, control: bytes | None = None) -> dict:
    """/imagine (with a control upload): the quick deferral, then the finished message."""
    options: dict = {"prompt": prompt}
    if control is not None:
        options["control"] = pintor.emu.add_attachment("photo.png", control)
    inter = await pintor.emu.slash("imagine", options)
    callback = await inter.wait_callback(timeout=3)
    assert callback["type"] == DEFERRED and callback["at"] - inter.dispatched_at < 3
    return await inter.wait_original(is_result, timeout=90)


async def pictures(pintor: Harness, message: dict) -> dict[str, Image.Image]:
    found: dict[str, Image.Image] = {}
    for attachment in message["attachments"]:
        image = Image.open(io.BytesIO(await pintor.fetch(attachment)))
        image.load()
        found[attachment["filename"]] = image
    return found


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def canny_grid(cn: Harness) -> dict:
    point_discord_at(cn.emu.api_base, cn.emu.gateway_url)
    return await imagine(cn, "a red fox --seed 11 --cn canny", shapes_png())


async def test_imagine_offers_a_control_attachment(pintor: Harness):
    command = next(c for c in pintor.emu.commands[None] if c["name"] == "imagine")
    options = {o["name"]: o for o in command["options"]}
    assert options["control"]["type"] == 11 and not options["control"].get("required", False)


async def test_canny_control_posts_the_grid_and_the_control_image(pintor: Harness, canny_grid: dict):
    job = await pintor.job(job_id_of(canny_grid))
    request = Request.from_json(job.request)
    assert (request.controlnet, request.control_kind, request.control_weight) == ("sd-canny", "canny", 1.0)
    assert request.control is not None and pintor.studio.picture(request.control).parent == pintor.studio.inputs_dir
    shown = await pictures(pintor, canny_grid)
    assert set(shown) == {f"pintor-{job.id}.png", f"pintor-{job.id}-control.png"}
    control = np.asarray(shown[f"pintor-{job.id}-control.png"])
    assert control.shape == (64, 64, 3) and set(np.unique(control)) == {0, 255}  # white edges on black
    assert "Steered by the canny control image" in canny_grid["content"] and "--cn canny" in canny_grid["content"]
    assert job.grid_path is not None and pintor.studio.picture(job.grid_path).with_name(CONTROL_FILE).is_file()


async def test_the_control_changes_the_result_and_cw_0_does_not(pintor: Harness, canny_grid: dict):
    controlled = np.asarray(await pintor.picture(await imagine(pintor, "a red fox --seed 11")), np.float32)
    steered = np.asarray((await pictures(pintor, canny_grid))[f"pintor-{job_id_of(canny_grid)}.png"], np.float32)
    assert np.abs(steered - controlled).max() > 5
    weightless = await imagine(pintor, "a red fox --seed 11 --cn canny --cw 0", shapes_png())
    unsteered = np.asarray((await pictures(pintor, weightless))[f"pintor-{job_id_of(weightless)}.png"], np.float32)
    assert np.abs(unsteered - controlled).max() <= 1  # --cw 0: every ControlNet residual × 0


async def test_reroll_of_a_controlled_grid_keeps_the_control(pintor: Harness, canny_grid: dict):
    grid_id = job_id_of(canny_grid)
    click = await pintor.emu.click(int(canny_grid["id"]), f"pintor:r:{grid_id}")
    callback = await click.wait_callback(timeout=3)
    assert callback["type"] == DEFERRED_UPDATE
    await pintor.until(lambda: click.followups and is_result(click.followups[0]), timeout=90)
    [result] = click.followups
    job = await pintor.job(job_id_of(result))
    original = Request.from_json((await pintor.job(grid_id)).request)
    again = Request.from_json(job.request)
    assert job.kind == "reroll" and (again.control, again.controlnet) == (original.control, original.controlnet)
    assert f"pintor-{job.id}-control.png" in {a["filename"] for a in result["attachments"]}


async def test_variation_of_a_controlled_grid_keeps_the_control(pintor: Harness, canny_grid: dict):
    grid_id = job_id_of(canny_grid)
    click = await pintor.emu.click(int(canny_grid["id"]), f"pintor:v:{grid_id}:2:h")
    callback = await click.wait_callback(timeout=3)
    assert callback["type"] == DEFERRED_UPDATE
    await pintor.until(lambda: click.followups and is_result(click.followups[0]), timeout=90)
    [result] = click.followups
    job = await pintor.job(job_id_of(result))
    varied = Request.from_json(job.request)
    assert job.kind == "variation" and varied.init_image is not None
    assert varied.controlnet == "sd-canny" and varied.control is not None
    assert f"pintor-{job.id}-control.png" in {a["filename"] for a in result["attachments"]}


async def test_info_says_what_each_model_can_do(pintor: Harness):
    emu, studio = pintor.emu, pintor.studio

    async def models_field() -> str:
        inter = await emu.slash("info")
        callback = await inter.wait_callback(timeout=3)
        [embed] = callback["data"]["embeds"]
        return next(f["value"] for f in embed["fields"] if f["name"] == "models")

    lines = {line.split(":")[0]: line for line in (await models_field()).splitlines()}
    assert lines["`tiny-sd`"].startswith("`tiny-sd`: text to image, image to image (V)")
    assert lines["`tiny-sd`"].endswith(", ControlNet (canny, depth)")
    assert lines["`tiny-kandinsky`"].endswith("blend, ControlNet (depth)")
    await studio.update_rules(emu.guild_id, allow_controlnet=False)
    try:
        assert "ControlNet" not in await models_field()  # where a server denies it
    finally:
        await studio.update_rules(emu.guild_id, allow_controlnet=True)


async def test_show_of_a_controlled_grid_shows_its_control_image(pintor: Harness, canny_grid: dict):
    grid_id = job_id_of(canny_grid)
    inter = await pintor.emu.slash("show", {"job_id": grid_id})
    final = await inter.wait_original(is_result, timeout=10)
    assert f"pintor-{grid_id}-control.png" in {a["filename"] for a in final["attachments"]}


async def test_depth_control_uses_the_depth_estimator(pintor: Harness):
    message = await imagine(pintor, "a red fox --seed 2 --cn depth --cw 0.5", shapes_png())
    job_id = job_id_of(message)
    depth = np.asarray((await pictures(pintor, message))[f"pintor-{job_id}-control.png"])
    assert len(np.unique(depth)) > 10  # grey levels, not edges
    assert Request.from_json((await pintor.job(job_id)).request).controlnet == "sd-depth"


@pytest.mark.parametrize("prompt, problem", [
    ("a fox --cn pose", "no pose estimator is configured"),
    ("a fox --cn lineart", "No lineart ControlNet is configured for tiny-sd; it has: canny, depth"),
    ("a fox --cn sketch", "--cn must be what the control: image becomes"),
    ("a fox --model tiny-sd-turbo --cn canny", "Unknown model"),
    ("a fox --model tiny-upscaler", "cannot make pictures from text"),
])
async def test_a_control_request_that_cannot_be_made_is_refused_privately(pintor: Harness, prompt: str,
                                                                          problem: str):
    jobs, files = await pintor.job_count(), inputs_listing(pintor)
    inter = await pintor.emu.slash("imagine", {"prompt": prompt,
                                               "control": pintor.emu.add_attachment("a.png", shapes_png())})
    text = await refused(pintor, inter)
    assert problem in text, text
    assert await pintor.job_count() == jobs and inputs_listing(pintor) == files


async def test_cn_without_a_control_image_is_refused(pintor: Harness):
    inter = await pintor.emu.slash("imagine", {"prompt": "a fox --cn canny"})
    assert "attach one to the `control` option" in await refused(pintor, inter)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
async def test_a_bomb_control_upload_is_refused_and_nothing_is_stored(pintor: Harness):
    jobs, files = await pintor.job_count(), inputs_listing(pintor)
    inter = await pintor.emu.slash("imagine", {"prompt": "a fox --cn canny",
                                               "control": pintor.emu.add_attachment("bomb.png", bomb_png())})
    text = await refused(pintor, inter)
    assert "bomb.png" in text and "10000×10000 pixels" in text
    assert await pintor.job_count() == jobs and inputs_listing(pintor) == files


async def test_a_server_that_denies_controlnet_refuses_it_clearly(pintor: Harness):
    emu, studio = pintor.emu, pintor.studio
    await studio.update_rules(emu.guild_id, allow_controlnet=False)
    try:
        jobs, files = await pintor.job_count(), inputs_listing(pintor)
        inter = await emu.slash("imagine", {"prompt": "a fox --seed 3",
                                            "control": emu.add_attachment("c.png", shapes_png())})
        assert "ControlNet (a control image with --cn) is not allowed on this server" in await refused(pintor, inter)
        assert await pintor.job_count() == jobs and inputs_listing(pintor) == files
    finally:
        await studio.update_rules(emu.guild_id, allow_controlnet=True)


async def test_admins_switch_controlnet_with_pintor_admin(pintor: Harness):
    emu, studio = pintor.emu, pintor.studio
    inter = await emu.slash("pintor-admin", {"on": False}, subcommand="controlnet", permissions=str(1 << 5))
    await inter.wait_callback(timeout=3)
    try:
        await pintor.until(lambda: inter.original is not None or inter.followups, timeout=10)
        assert (await studio.rules(emu.guild_id)).allow_controlnet is False
    finally:
        await studio.update_rules(emu.guild_id, allow_controlnet=True)


async def test_blend_takes_a_control_image_for_kandinsky_depth(pintor: Harness):
    emu = pintor.emu
    cat, tiger = (emu.add_attachment(n, shapes_png(ground)) for n, ground in (("cat.png", 0), ("tiger.png", 60)))
    inter = await emu.slash("blend", {"image1": cat, "image2": tiger, "prompt": "--seed 5",
                                      "control": emu.add_attachment("depth.png", shapes_png())})
    callback = await inter.wait_callback(timeout=3)
    assert callback["type"] == DEFERRED
    final = await inter.wait_original(is_result, timeout=90)
    job = await pintor.job(job_id_of(final))
    request = Request.from_json(job.request)
    assert (request.model, request.controlnet, request.control_kind) == ("tiny-kandinsky", "kandinsky-depth", "depth")
    assert len(request.images) == 2 and request.control not in request.images
    assert f"pintor-{job.id}-control.png" in {a["filename"] for a in final["attachments"]}


async def test_forget_deletes_the_control_upload_and_the_control_image(pintor: Harness):
    studio = pintor.studio
    member = Member(pintor.emu._snowflake(), "leaving")
    request, notices = studio.prepare_with_notices("a fox --seed 9 --cn canny", control=True)
    submitted = await studio.controlled(member, request, ("mine.png", shapes_png(90)), notices=notices)
    await collect_until(submitted.events, lambda e: isinstance(e, Done))
    job = await pintor.job(submitted.job_id)
    assert job.grid_path is not None
    control = studio.picture(job.grid_path).with_name(CONTROL_FILE)
    upload = studio.picture(str(Request.from_json(job.request).control))
    assert control.is_file() and upload.is_file()
    await studio.forget(member)
    assert not control.exists() and not upload.exists() and not control.parent.exists()
