"""How image prompts steer a grid (bot/studio.py: image_prompt_request, image_prompt_strength,
link_name), without a worker: the figures each model family gets from --iw. End to end through
the emulator: tests/test_discord_image_prompts.py."""

from __future__ import annotations

import io

import pytest
import pytest_asyncio
from aiohttp import web
from PIL import Image

from bot.downloads import Fetcher, FetchPolicy
from bot.intake import LimitError, Member, RequestError
from bot.studio import image_prompt_request, image_prompt_strength, link_name
from generation.prompt import parse_prompt
from generation.registry import load_registry
from generation.request import build_request
from storage.models import ServerRules
from tests.local_http import served
from tests.studio_helpers import started_studio

REGISTRY = load_registry()


def request_for(text: str, model: str):
    return build_request(parse_prompt(text), REGISTRY.get(model))


@pytest.mark.parametrize("iw, strength", [(0, 1.0), (0.5, 0.875), (1, 0.75), (1.5, 0.625), (2, 0.5), (3, 0.25)])
def test_stable_diffusion_strength_falls_as_the_image_weight_rises(iw, strength):
    assert image_prompt_strength(iw) == strength


def test_stable_diffusion_starts_from_the_first_picture_and_says_so():
    request = request_for("https://a.test/x.png https://a.test/y.png a cat --iw 1.5", "sd-1.5")
    request = request.replace(image_prompts=("a.test/x.png", "a.test/y.png"))
    made = image_prompt_request(request, REGISTRY.get("sd-1.5"), 1, None)
    assert (made.strength, made.steps, made.parts) == (0.625, 30, request.parts)
    # it said "1 image prompt (x, y) … the other 1 were not used": two were given, one was used
    assert made.notices[-1] == ("🖼️ 2 image prompts at --iw 1.5 (a.test/x.png, a.test/y.png): sd-1.5 starts from "
                                "the picture (image to image, strength 0.625). It uses the first image prompt only "
                                "(a.test/x.png); a.test/y.png was not used (a Kandinsky model mixes several).")
    # a link and the image option (an upload named after it), and three pictures
    both = request.replace(image_prompts=("a.test/x.png", "cat.png"), image_weight=1.0)
    assert image_prompt_request(both, REGISTRY.get("sd-1.5"), 1, None).notices[-1] == (
        "🖼️ 2 image prompts (a.test/x.png, cat.png): sd-1.5 starts from the picture (image to image, strength "
        "0.75). It uses the first image prompt only (a.test/x.png); cat.png was not used (a Kandinsky model mixes "
        "several).")
    three = request.replace(image_prompts=("a.test/x.png", "a.test/y.png", "cat.png"))
    assert image_prompt_request(three, REGISTRY.get("sd-1.5"), 1, None).notices[-1].endswith(
        "It uses the first image prompt only (a.test/x.png); a.test/y.png, cat.png were not used (a Kandinsky "
        "model mixes several).")
    one = request.replace(image_prompts=("a.test/x.png",))
    assert image_prompt_request(one, REGISTRY.get("sd-1.5"), 1, None).notices[-1] == (
        "🖼️ 1 image prompt at --iw 1.5 (a.test/x.png): sd-1.5 starts from the picture (image to image, strength "
        "0.625).")


def test_steps_are_raised_where_steps_times_strength_is_under_one():
    # sd-turbo makes 2 steps; --iw 3 is strength 0.25: image to image would run int(0.5) = 0 steps
    request = request_for("https://a.test/x.png a cat --iw 3", "sd-turbo").replace(image_prompts=("x.png",))
    made = image_prompt_request(request, REGISTRY.get("sd-turbo"), 1, None)
    assert (made.steps, made.strength) == (4, 0.25) and int(made.steps * made.strength) >= 1
    # the member's steps changed: said (it was silent)
    assert made.notices[-1] == ("Starting from the image prompt (--iw 3) runs 25% of its steps on the picture (image "
                                "to image): 2 steps would run none, so it used 4.")
    # under a server's limit of 2 steps the strength is raised instead, and said
    rules = ServerRules(guild_id=1, max_steps=2)
    limited = image_prompt_request(request, REGISTRY.get("sd-turbo"), 1, rules)
    assert (limited.steps, limited.strength) == (2, 0.5)
    assert limited.notices[-1] == ("Starting from the image prompt (--iw 3) runs 25% of its steps on the picture "
                                   "(image to image): with this server's limit of 2 steps none would run, so it used "
                                   "strength 0.5 instead of 0.25 (further from the picture).")
    # nothing to change: nothing said beyond how the picture is used
    assert image_prompt_request(request.replace(image_weight=1.0), REGISTRY.get("sd-turbo"), 1, None).notices[-1] \
        .startswith("🖼️ 1 image prompt (x.png): sd-turbo starts from the picture")
    with pytest.raises(LimitError, match="allows 1 step per job: too few to start from a picture at --iw 3"):
        image_prompt_request(request, REGISTRY.get("sd-turbo"), 1, ServerRules(guild_id=1, max_steps=1))


@pytest.mark.parametrize("iw, text_share, image_share", [(1, 0.5, 0.5), (3, 0.25, 0.75), (0, 1.0, 0.0)])
def test_kandinsky_mixes_text_and_pictures_by_the_image_weight(iw, text_share, image_share):
    request = request_for(f"a castle::3 fog::1 --iw {iw}", "kandinsky-2.2").replace(image_prompts=("a.png", "b.png"))
    made = image_prompt_request(request, REGISTRY.get("kandinsky-2.2"), 2, None)
    assert made.parts == (("a castle", text_share * 0.75), ("fog", text_share * 0.25))
    assert made.image_weights == (image_share / 2, image_share / 2)
    assert made.strength == 0.0 and made.init_image is None
    assert sum(w for _, w in made.parts) + sum(made.image_weights) == pytest.approx(1.0)


def test_a_negative_part_keeps_its_size_against_the_text_beside_image_prompts():
    """Issue 26 item 9: the positive parts share the text's weight; a negative part (less of it)
    keeps its size against them, so the pictures' share and the part's strength are as without it."""
    request = request_for("a castle::3 fog::1 snow::-1 --iw 1", "kandinsky-2.2").replace(image_prompts=("a.png",))
    made = image_prompt_request(request, REGISTRY.get("kandinsky-2.2"), 1, None)
    assert made.parts == (("a castle", 0.375), ("fog", 0.125), ("snow", -0.125))
    assert made.image_weights == (0.5,)
    assert sum(w for _, w in made.parts if w > 0) + sum(made.image_weights) == pytest.approx(1.0)


@pytest.mark.parametrize("url, name", [
    ("https://cdn.discordapp.com/attachments/1/2/cat.png?ex=65&is=66&hm=abc", "cdn.discordapp.com/…/cat.png"),
    ("https://media.discordapp.net/cat.webp", "media.discordapp.net/cat.webp"),
    ("https://x.io/", "x.io"),
    ("https://x.io/" + "a" * 100 + ".png", "x.io/" + "a" * 54 + "…"),
])
def test_links_are_named_without_their_scheme_or_query(url, name):
    assert link_name(url) == name


# --- the Studio's way (every front end's: the CLI and `bot.local` too), on the MemoryQueue -----------

ANN = Member(1, "ann")


@pytest_asyncio.fixture
async def picture_server():
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 90)).save(buffer, format="PNG")

    async def picture(request):
        return web.Response(body=buffer.getvalue(), content_type="image/png")

    app = web.Application()
    app.router.add_get("/p/cat.png", picture)
    async with served(app) as base:
        yield base


@pytest_asyncio.fixture
async def studio(tmp_path, registry_file):
    async with started_studio(tmp_path, registry_file, worker=False) as made:
        await made.fetcher.close()
        made.fetcher = Fetcher(FetchPolicy.of(["cdn.discordapp.com"], ["127.0.0.1"]))
        yield made


async def test_the_studio_fetches_and_keeps_a_prompts_image_links(studio, picture_server):
    submitted = await studio.imagine(ANN, f"{picture_server}/p/cat.png a cat --seed 3 --model tiny-kandinsky")
    request = submitted.request
    assert request.prompt == "a cat" and request.image_prompts == ("127.0.0.1/…/cat.png",)
    assert len(request.images) == 1 and studio.inputs_dir is not None
    with Image.open(studio.picture(request.images[0])) as kept:
        assert kept.size == (40, 30) and kept.getpixel((1, 1)) == (10, 200, 90)


async def test_a_request_whose_links_were_not_fetched_is_refused(studio, picture_server):
    request = studio.prepare(f"{picture_server}/p/cat.png a cat")
    with pytest.raises(RequestError, match="not fetched"):
        await studio.submit(ANN, request)  # a front end that skipped submit_prompt
    assert await studio.store.count_unfinished(ANN.id) == 0


async def test_iw_without_an_image_prompt_is_said(studio):
    submitted = await studio.imagine(ANN, "a cat --iw 2")
    assert submitted.request.notices[-1] == ("--iw was not used: this prompt has no image prompt (links at its "
                                             "start, or the image option).")
    assert submitted.request.init_image is None and submitted.request.images == ()


async def test_blend_says_it_ignores_links_in_its_prompt(studio):
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buffer, format="PNG")
    pictures = [("a.png", buffer.getvalue()), ("b.png", buffer.getvalue())]
    submitted = await studio.blend(ANN, pictures, prompt="https://cdn.discordapp.com/x/y/c.png a cat")
    assert submitted.request.prompt == "blend of 2 images: a cat"
    assert ("Ignored the link at the start of the prompt (“cdn.discordapp.com/…/c.png”): /blend mixes the "
            "images you upload with it.") in submitted.request.notices
