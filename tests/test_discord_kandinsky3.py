"""Kandinsky 3 end to end through the Discord emulator: the real bot, its worker process and a
tiny Kandinsky 3 loaded from its saved folder through the registry. /imagine posts a grid, V
makes variations of a picture (image to image), and /blend with it is refused plainly, to the
member only, with nothing stored."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_asyncio

from bot.discord_endpoints import point_discord_at
from generation.request import Request
from tests.discord_harness import Harness, bot_of_its_own, custom_ids, is_result, job_id_of
from tests.test_discord_blend import CAT, TIGER, refused
from tests.test_discord_buttons import press
from tests.tiny_models import build_kandinsky3, build_sd

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def k3(tmp_path_factory: pytest.TempPathFactory):
    """A bot of its own whose models are a tiny SD (the default) and a tiny Kandinsky 3."""
    tmp = tmp_path_factory.mktemp("k3-discord")
    registry = tmp / "models.toml"
    registry.write_text(f'''
default = "tiny-sd"

[models.tiny-sd]
source = "{build_sd(tmp / 'sd')}"
family = "sd"
native_side = 64
steps = 2

[models.tiny-kandinsky3]
source = "{build_kandinsky3(tmp / 'k3')}"
family = "kandinsky3"
native_side = 64
steps = 2
''', encoding="utf-8")
    async with bot_of_its_own(tmp, registry) as harness:
        yield harness


async def test_imagine_posts_a_grid_and_v_varies_a_picture(k3: Harness):
    point_discord_at(k3.emu.api_base, k3.emu.gateway_url)
    inter = await k3.emu.slash("imagine", {"prompt": "a red fox in the snow --model tiny-kandinsky3 --seed 3"})
    grid = await inter.wait_original(is_result, timeout=90)
    job_id = job_id_of(grid)
    job = await k3.posted(job_id)
    assert (job.kind, job.model, job.status, len(job.images)) == ("imagine", "tiny-kandinsky3", "done", 4)
    assert "tiny-kandinsky3" in grid["content"]
    assert f"pintor:v:{job_id}:1:h" in custom_ids(grid)[1]
    picture = await k3.picture(grid)
    assert picture.size == (128, 128)  # four 64² pictures

    _, varied = await press(k3, grid, f"pintor:v:{job_id}:2:h")
    variation = await k3.posted(job_id_of(varied))
    request = Request.from_json(variation.request)
    assert (variation.kind, variation.model, variation.status) == ("variation", "tiny-kandinsky3", "done")
    assert request.init_image == job.images[1].path and request.images == ()
    # image to image, no blend
    assert len(variation.images) == 4 and {i.sha256 for i in variation.images}.isdisjoint(
        {i.sha256 for i in job.images})


async def test_blend_with_kandinsky3_is_refused_plainly_and_stores_nothing(k3: Harness):
    point_discord_at(k3.emu.api_base, k3.emu.gateway_url)
    emu = k3.emu
    before = await k3.job_count()
    inputs = k3.studio.inputs_dir
    kept_before = set(inputs.iterdir()) if inputs is not None and inputs.exists() else set()
    inter = await emu.slash("blend", {"image1": emu.add_attachment("cat.png", CAT),
                                      "image2": emu.add_attachment("tiger.png", TIGER),
                                      "prompt": "a cat --model tiny-kandinsky3"})
    answer = await refused(k3, inter)
    assert "'tiny-kandinsky3' cannot blend images (Kandinsky 3 reads only text" in answer
    assert "Models that can: none configured" in answer
    assert await k3.job_count() == before
    assert (set(inputs.iterdir()) if inputs is not None and inputs.exists() else set()) == kept_before
    assert Path(k3.settings.pintor_data_dir).exists()


async def test_info_lists_what_each_model_can_do(k3: Harness):
    point_discord_at(k3.emu.api_base, k3.emu.gateway_url)
    info = await k3.emu.slash("info")
    callback = await info.wait_callback(timeout=3)
    [embed] = callback["data"]["embeds"]
    models = next(field["value"] for field in embed["fields"] if field["name"] == "models")
    assert models.splitlines() == ["`tiny-sd`: text to image, image to image (V), zoom/pan (inpaint)",
                                   "`tiny-kandinsky3`: text to image, image to image (V)"]


@pytest.mark.parametrize("button", ["z:{job}:1:20", "p:{job}:1:l", "sq:{job}:1"])
async def test_zoom_pan_and_square_on_a_kandinsky3_picture_are_refused_plainly(k3: Harness, button: str):
    point_discord_at(k3.emu.api_base, k3.emu.gateway_url)
    emu = k3.emu
    inter = await emu.slash("imagine", {"prompt": "a red fox --model tiny-kandinsky3 --seed 4 --ar 2:1"})
    grid = await inter.wait_original(is_result, timeout=90)
    _, picked = await press(k3, grid, f"pintor:u:{job_id_of(grid)}:1")
    custom_id = "pintor:" + button.format(job=job_id_of(picked))
    assert custom_id in [c for row in custom_ids(picked) for c in row]
    before = await k3.job_count()
    click = await emu.click(int(picked["id"]), custom_id)
    await k3.until(lambda: click.followups)
    [refusal] = click.followups
    assert refusal["flags"] & 64  # only the member sees it
    assert ("tiny-kandinsky3 cannot paint around a picture here: Zoom Out, Pan and Make Square need a "
            "Stable Diffusion model, or a Kandinsky 2.2 model whose entry names its inpainting decoder."
            ) in refusal["content"]
    assert await k3.job_count() == before
