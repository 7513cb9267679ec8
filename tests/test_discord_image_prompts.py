"""Image prompts end to end: /imagine's image option and links at the start of the prompt. The
real bot fetches the pictures from the Discord emulator (its 127.0.0.1 host allowed explicitly
by PINTOR_FETCH_LOCAL_HOSTS, as tests/discord_harness.py sets it), checks them as /blend's
uploads, keeps them before the job is stored, and makes the grid with the tiny models: image to
image on tiny-sd, mixed through the prior on tiny-kandinsky."""

from __future__ import annotations

import io

import pytest
import pytest_asyncio
from aiohttp import web
from PIL import Image

from bot.studio import link_name
from generation.request import Request
from tests.discord_harness import Harness, is_result, job_id_in, job_id_of
from tests.local_http import served
from tests.test_inputs import bomb_png

pytestmark = pytest.mark.asyncio(loop_scope="session")

DEFERRED, DEFERRED_UPDATE, MESSAGE, EPHEMERAL = 5, 6, 4, 64


def gradient_png(size=(80, 64)) -> bytes:
    """A picture with something in it: red across, blue down (a flat colour steers little)."""
    image = Image.new("RGB", size)
    image.putdata([(x * 255 // size[0], 120, y * 255 // size[1]) for y in range(size[1]) for x in range(size[0])])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


PICTURE = gradient_png()


def inputs_listing(pintor: Harness) -> set[str]:
    folder = pintor.studio.inputs_dir
    assert folder is not None
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


async def imagine(pintor: Harness, prompt: str, **options) -> tuple:
    """Run /imagine, check the quick deferral, wait for the result: (interaction, result, job)."""
    inter = await pintor.emu.slash("imagine", {"prompt": prompt, **options})
    callback = await inter.wait_callback(timeout=3)
    assert callback["type"] == DEFERRED and callback["at"] - inter.dispatched_at < 3, callback
    final = await inter.wait_original(is_result, timeout=90)
    return inter, final, await pintor.posted(job_id_of(final))


async def refused_at_once(pintor: Harness, prompt: str, **options) -> str:
    inter = await pintor.emu.slash("imagine", {"prompt": prompt, **options})
    callback = await inter.wait_callback(timeout=3)
    assert callback["type"] == MESSAGE and callback["data"]["flags"] & EPHEMERAL, callback
    return callback["data"]["content"]


async def refused_after_deferral(pintor: Harness, inter) -> str:
    callback = await inter.wait_callback(timeout=3)
    assert callback["type"] == DEFERRED and callback["at"] - inter.dispatched_at < 3
    await pintor.until(lambda: inter.followups and inter.original is None, timeout=30)
    [answer] = inter.followups
    assert answer["flags"] & EPHEMERAL
    return answer["content"]


def checksums(job) -> list[str]:
    return [image.sha256 for image in job.images]


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def plain_grids(discord_harness: Harness) -> dict[str, list[str]]:
    """The grids of "a red fox in the snow --seed 7" without any image, per model."""
    grids = {}
    for model in ("tiny-sd", "tiny-kandinsky"):
        _, _, job = await imagine(discord_harness, f"a red fox in the snow --seed 7 --model {model}")
        grids[model] = checksums(job)
    return grids


async def test_imagine_has_an_optional_image_option(pintor: Harness):
    command = next(c for c in pintor.emu.commands[None] if c["name"] == "imagine")
    options = {o["name"]: o for o in command["options"]}
    assert options["image"]["type"] == 11 and not options["image"].get("required", False)
    assert options["prompt"]["required"]


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-kandinsky"])
async def test_an_attached_image_prompt_changes_the_grid(pintor: Harness, plain_grids, model: str):
    emu = pintor.emu
    attachment = emu.add_attachment("fox.png", PICTURE)
    _, final, job = await imagine(pintor, f"a red fox in the snow --seed 7 --model {model}", image=attachment)
    assert emu.attachment_gets.count(int(attachment["id"])) == 1
    assert checksums(job) != plain_grids[model]  # the same seed: only the picture differs
    request = Request.from_json(job.request)
    assert request.image_prompts == ("fox.png",) and job.prompt == "a red fox in the snow"
    assert pintor.studio.inputs_dir is not None
    inputs = pintor.studio.inputs_dir.resolve()
    if model == "tiny-sd":  # image to image from the picture, cropped to the grid's shape
        assert request.images == () and request.strength == 0.75 and request.init_image is not None
        assert pintor.studio.picture(request.init_image).parent.resolve() == inputs
        with Image.open(pintor.studio.picture(request.init_image)) as kept:
            assert kept.size == (request.width, request.height)
        assert "🖼️ 1 image prompt (fox.png): tiny-sd starts from the picture (image to image, strength 0.75)" \
            in final["content"]
    else:  # mixed with the text through the prior, half and half at --iw 1
        assert request.init_image is None and len(request.images) == 1
        assert pintor.studio.picture(request.images[0]).parent.resolve() == inputs
        with Image.open(pintor.studio.picture(request.images[0])) as kept:
            assert kept.size == (80, 64)  # the picture as sent
        assert request.image_weights == (0.5,) and request.parts == (("a red fox in the snow", 0.5),)
        assert "🖼️ 1 image prompt (fox.png), mixed with the text by tiny-kandinsky." in final["content"]


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def from_a_link(discord_harness: Harness) -> tuple:
    """A grid whose image prompt is a link at the start of its prompt: (link, attachment, result, job)."""
    attachment = discord_harness.emu.add_attachment("lynx.png", PICTURE)
    _, final, job = await imagine(discord_harness, f"<{attachment['url']}> a red fox in the snow --seed 7 --iw 2")
    return attachment["url"], attachment, final, job


async def test_a_link_at_the_start_is_fetched_and_taken_out_of_the_text(pintor: Harness, from_a_link: tuple):
    url, attachment, final, job = from_a_link
    assert pintor.emu.attachment_gets.count(int(attachment["id"])) == 1
    request = Request.from_json(job.request)
    assert job.prompt == "a red fox in the snow" and url not in final["content"]
    assert request.image_prompts == (link_name(url),) and "--iw 2" in request.parameters
    assert request.strength == 0.5  # --iw 2 on Stable Diffusion: 1 − 2/4
    assert f"🖼️ 1 image prompt at --iw 2 ({link_name(url)})" in final["content"]
    assert not pintor.emu.unfurled or all(u != url for _, u in pintor.emu.unfurled)


async def test_the_link_and_the_attachment_of_one_picture_make_the_same_grid(pintor: Harness, from_a_link):
    _, _, _, linked = from_a_link
    _, _, attached = await imagine(pintor, "a red fox in the snow --seed 7 --iw 2",
                                   image=pintor.emu.add_attachment("same.png", PICTURE))
    assert checksums(attached) == checksums(linked)
    assert Request.from_json(attached.request).init_image == Request.from_json(linked.request).init_image


async def test_a_comma_after_the_link_is_not_fetched_with_it(pintor: Harness, from_a_link):
    # issue 26: "…/cat.png, a cat" was fetched as "cat.png," (Discord's CDN answers 404)
    url, attachment, _, linked = from_a_link
    fetched = pintor.emu.attachment_gets.count(int(attachment["id"]))
    _, final, job = await imagine(pintor, f"{url}, a red fox in the snow --seed 7 --iw 2")
    assert pintor.emu.attachment_gets.count(int(attachment["id"])) == fetched + 1
    assert job.prompt == "a red fox in the snow" and checksums(job) == checksums(linked)
    assert Request.from_json(job.request).image_prompts == (link_name(url),)


async def test_reroll_after_the_link_is_gone_uses_the_stored_picture(pintor: Harness, from_a_link: tuple):
    emu = pintor.emu
    _, attachment, final, parent = from_a_link
    emu.remove_attachment(attachment)  # its signed URL expired
    fetched = len(emu.attachment_gets)
    click = await emu.click(int(final["id"]), f"pintor:r:{parent.id}")
    assert (await click.wait_callback(timeout=3))["type"] == DEFERRED_UPDATE
    await pintor.until(lambda: click.followups and is_result(click.followups[0]), timeout=90)
    job = await pintor.posted(job_id_of(click.followups[0]))
    request, before = Request.from_json(job.request), Request.from_json(parent.request)
    assert (job.kind, job.parent_id, job.status) == ("reroll", parent.id, "done")
    assert request.init_image == before.init_image and request.strength == before.strength
    assert request.seed != before.seed and checksums(job) != checksums(parent)
    assert emu.attachment_gets[fetched:] == []  # nothing fetched again


@pytest.mark.parametrize("prompt, says", [
    ("https://i.imgur.com/cat.png a red fox", "not from i.imgur.com"),
    ("https://s.mj.run/Xy12ab cinematic lighthouse --ar 3:2", "not from s.mj.run"),
    ("http://169.254.169.254/latest/meta-data/ a red fox", "not from 169.254.169.254"),
    ("http://cdn.discordapp.com/attachments/1/2/a.png a red fox", "over https only"),
    ("https://cdn.discordapp.com/a.png a red fox --iw 4", "--iw must be a number from 0 to 3"),
    ("https://cdn.discordapp.com/a.png --iw 1", "image links but no text"),
])
async def test_refused_links_and_weights_are_said_at_once_and_nothing_is_stored(pintor: Harness, prompt, says):
    jobs, files = await pintor.job_count(), inputs_listing(pintor)
    assert says in await refused_at_once(pintor, prompt)
    assert await pintor.job_count() == jobs and inputs_listing(pintor) == files


@pytest_asyncio.fixture(loop_scope="session")
async def redirecting():
    """A server on 127.0.0.1 (a local host of the harness) whose /r redirects to the cloud's
    metadata address, and /text serves a text file."""
    async def redirect(request):
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data/iam")

    async def malformed(request):  # a Location that is no URL (an IPv6 address never closed)
        return web.Response(status=302, headers={"Location": "http://[::1"})

    async def text(request):
        return web.Response(body=b"not a picture\n" * 20, content_type="image/png")

    app = web.Application()
    app.router.add_get("/r/cat.png", redirect)
    app.router.add_get("/text.png", text)
    app.router.add_get("/malformed/cat.png", malformed)
    async with served(app) as base:
        yield base


@pytest.mark.parametrize("path, says", [
    ("/r/cat.png", "not from 169.254.169.254"),  # a redirect into the server's network
    ("/text.png", "is not an image"),  # the same checks as /blend's uploads
    ("/malformed/cat.png", "could not be downloaded (a redirect to a link that is not valid)"),  # issue 26
])
async def test_what_fails_after_fetching_is_said_privately_and_nothing_is_stored(
        pintor: Harness, redirecting: str, path: str, says: str):
    jobs, files = await pintor.job_count(), inputs_listing(pintor)
    inter = await pintor.emu.slash("imagine", {"prompt": f"{redirecting}{path} a red fox"})
    text = await refused_after_deferral(pintor, inter)
    assert says in text, text
    assert await pintor.job_count() == jobs and inputs_listing(pintor) == files


# (the emulator reads the bomb's size for the attachment object, as Discord does)
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
async def test_a_hostile_attachment_is_refused_and_nothing_is_stored(pintor: Harness):
    jobs, files = await pintor.job_count(), inputs_listing(pintor)
    bomb = pintor.emu.add_attachment("bomb.png", bomb_png())
    inter = await pintor.emu.slash("imagine", {"prompt": "a red fox", "image": bomb})
    text = await refused_after_deferral(pintor, inter)
    assert "bomb.png" in text and "10000×10000 pixels" in text
    assert await pintor.job_count() == jobs and inputs_listing(pintor) == files


async def test_a_job_queued_with_an_image_prompt_goes_on_after_a_restart(pintor: Harness):
    emu = pintor.emu
    ahead = await emu.slash("imagine", {"prompt": "a slow lighthouse --steps 150 --model tiny-sdxl"})
    assert (await ahead.wait_callback(timeout=3))["type"] == DEFERRED
    attachment = emu.add_attachment("owl.png", PICTURE)
    inter = await emu.slash("imagine", {"prompt": "an owl at night --seed 3", "image": attachment})
    assert (await inter.wait_callback(timeout=3))["type"] == DEFERRED
    await inter.wait_original(lambda m: "queued" in m["content"], timeout=60)
    [job_id] = [job.id for job in await pintor.studio.store.unfinished() if job.prompt == "an owl at night"]
    assert (await pintor.job(job_id)).status == "queued"  # behind the slow one

    await pintor.restart(while_stopped=lambda: _expire(emu, attachment))

    job = await pintor.posted(job_id, timeout=120)
    assert job.status == "done" and len(job.images) == 4
    assert emu.attachment_gets.count(int(attachment["id"])) == 1  # fetched once, before it was queued
    posted = [m for m in emu.messages.values() if is_result(m) and job_id_in(m) == job_id]
    assert len(posted) == 1


async def _expire(emu, attachment) -> None:
    emu.remove_attachment(attachment)
