"""/describe end to end through the Discord emulator: the real bot downloads the member's
upload, checks it as /blend does, keeps it, and the worker process captions it with a tiny
random-weight BLIP (and ranks style words with a tiny CLIP), loaded through the registry as
real ones are; the buttons under the prompts imagine them as the member's own /imagine.

The shared bot (tests/discord_harness.py) has no captioner, so these tests run a bot of their
own whose models.toml adds one; the shared bot answers "no captioner"."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_asyncio

from bot.discord_endpoints import point_discord_at
from bot.studio import NO_CAPTIONER
from generation.request import Request
from storage.db import open_engine
from storage.jobs import JobStore
from tests.describe_helpers import build_describers, phone_jpeg, write_describe_registry
from tests.discord_harness import Harness, bot_of_its_own, custom_ids, is_result, job_id_in, job_id_of, until_idle
from tests.test_discord_blend import noise_png, refused
from tests.test_inputs import bomb_png

pytestmark = pytest.mark.asyncio(loop_scope="session")

DEFERRED, DEFERRED_UPDATE, MESSAGE, EPHEMERAL = 5, 6, 4, 64
NUMBERS = ("1️⃣", "2️⃣", "3️⃣", "4️⃣")


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def describer(tiny_models, tmp_path_factory: pytest.TempPathFactory):
    """A bot of its own whose models.toml has the tiny captioner (with CLIP)."""
    tmp = tmp_path_factory.mktemp("pintor-describe")
    registry = write_describe_registry(tmp / "models.toml", tiny_models, build_describers(tmp / "models"))
    async with bot_of_its_own(tmp, registry) as harness:
        yield harness


@pytest_asyncio.fixture(loop_scope="session")
async def bot(describer: Harness):
    """The describing bot; after each test, the jobs it started are finished and posted."""
    point_discord_at(describer.emu.api_base, describer.emu.gateway_url)
    yield describer
    if describer.running is not None:
        await until_idle(describer)


def inputs_listing(harness: Harness) -> set[str]:
    folder = harness.studio.inputs_dir
    assert folder is not None
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


async def describe(harness: Harness, name: str, data: bytes, content_type: str = "image/jpeg") -> dict:
    """/describe an upload; checks the quick deferral and returns the posted result."""
    attachment = harness.emu.add_attachment(name, data, content_type)
    inter = await harness.emu.slash("describe", {"image": attachment})
    callback = await inter.wait_callback(timeout=3)
    assert callback["type"] == DEFERRED and callback["at"] - inter.dispatched_at < 3
    return await inter.wait_original(is_result, timeout=90)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def described(describer: Harness) -> dict:
    """A finished /describe of a phone photo: stored 48×32 with EXIF orientation 6 (shown 32×48)."""
    point_discord_at(describer.emu.api_base, describer.emu.gateway_url)
    return await describe(describer, "IMG_0042.jpg", phone_jpeg(48, 32, orientation=6))


def numbered_prompts(message: dict) -> list[str]:
    lines = message["content"].splitlines()
    return [next(line.removeprefix(f"{n} ") for line in lines if line.startswith(f"{n} ")) for n in NUMBERS]


async def press(harness: Harness, message: dict, custom_id: str, answers: int = 1) -> list[dict]:
    """Press a button; its callback within 3 s; returns the `answers` follow-ups once each is
    final (a result, or a private refusal)."""
    click = await harness.emu.click(int(message["id"]), custom_id)
    callback = await click.wait_callback(timeout=3)
    assert callback["type"] == DEFERRED_UPDATE and callback["at"] - click.dispatched_at < 3
    await harness.until(lambda: len(click.followups) >= answers and all(
        is_result(m) or m["flags"] & EPHEMERAL for m in click.followups[:answers]))
    return click.followups[:answers]


def posted_once(harness: Harness, job_id: int) -> bool:
    return len([m for m in harness.emu.messages.values() if is_result(m) and job_id_in(m) == job_id]) == 1


async def test_describe_is_registered_with_an_image_option(bot: Harness):
    command = next(c for c in bot.emu.commands[None] if c["name"] == "describe")
    [option] = command["options"]
    assert (option["name"], option["type"], option["required"]) == ("image", 11, True)  # an attachment


async def test_a_phone_photo_is_answered_with_four_numbered_prompts_and_buttons(bot: Harness, described: dict):
    job_id = job_id_of(described)
    job = await bot.posted(job_id)
    request = Request.from_json(job.request)
    assert (job.kind, job.status, job.model) == ("describe", "done", "tiny-blip")
    # the photo as a viewer shows it: turned upright by its EXIF orientation
    assert (request.width, request.height) == (32, 48)
    assert (await bot.picture(described)).size == (32, 48)
    prompts = numbered_prompts(described)
    assert prompts == job.prompts and len({p.lower() for p in prompts}) == 4
    for prompt in prompts:
        assert prompt.endswith(" --ar 2:3") and "in the style of" in prompt and "[" not in prompt
    assert "IMG\\_0042.jpg" in described["content"] and f"<@{bot.emu.user_id}>" in described["content"]
    assert custom_ids(described) == [[f"pintor:d:{job_id}:{n}" for n in range(1, 5)] + [f"pintor:d:{job_id}:a"]]
    # the upload is kept with the job (by its checksum), so restarts and /show find it
    [kept] = request.images
    assert bot.studio.picture(kept).parent == bot.studio.inputs_dir and Path(kept).name in inputs_listing(bot)
    assert posted_once(bot, job_id)


async def test_show_and_history_know_a_describe(bot: Harness, described: dict):
    job_id = job_id_of(described)
    show = await bot.emu.slash("show", {"job_id": job_id})
    again = await show.wait_original(is_result)
    assert numbered_prompts(again) == numbered_prompts(described)
    assert custom_ids(again) == custom_ids(described)
    history = await bot.emu.slash("history")
    page = await history.wait_original(lambda m: bool(m["embeds"]))
    assert any(e.get("title", "").startswith("/describe IMG") and any(f["value"] == "describe" for f in e["fields"])
               for e in page["embeds"])


async def test_button_2_imagines_prompt_2_as_the_members_own_imagine(bot: Harness, described: dict):
    describe_id = job_id_of(described)
    prompt = numbered_prompts(described)[1]
    [made] = await press(bot, described, f"pintor:d:{describe_id}:2")
    assert is_result(made) and not made["flags"] & EPHEMERAL, made["content"]
    job = await bot.posted(job_id_of(made))
    request = Request.from_json(job.request)
    assert (job.kind, job.parent_id, job.parent_index, job.status) == ("imagine", describe_id, 2, "done")
    assert job.model == "tiny-sd" and len(job.images) == 4  # the server's default model, a grid
    caption = prompt.removesuffix(" --ar 2:3")
    assert request.prompt == caption and "--ar 2:3" in request.parameters
    assert request.height > request.width  # portrait, as the photo (in the model's 64-pixel steps)
    assert f"Prompt 2 of /describe job {describe_id}" in made["content"]
    assert custom_ids(made)[0] == [f"pintor:u:{job.id}:{n}" for n in range(1, 5)] + [f"pintor:r:{job.id}"]
    assert posted_once(bot, job.id)


async def test_imagine_all_queues_the_four_prompts(bot: Harness, described: dict):
    describe_id = job_id_of(described)
    before = await bot.job_count()
    made = await press(bot, described, f"pintor:d:{describe_id}:a", answers=4)
    assert all(is_result(m) for m in made), [m["content"] for m in made]
    jobs = [await bot.posted(job_id_of(m)) for m in made]
    assert [(j.kind, j.parent_id, j.parent_index) for j in jobs] == [("imagine", describe_id, n) for n in range(1, 5)]
    prompts = [p.removesuffix(" --ar 2:3") for p in numbered_prompts(described)]
    assert [Request.from_json(j.request).prompt for j in jobs] == prompts
    assert await bot.job_count() == before + 4


async def test_imagine_all_stops_at_the_members_queue_limit(bot: Harness, described: dict):
    emu, studio = bot.emu, bot.studio
    describe_id = job_id_of(described)
    await studio.update_rules(emu.guild_id, max_queued_per_member=2)
    try:
        before = await bot.job_count()
        click = await emu.click(int(described["id"]), f"pintor:d:{describe_id}:a")
        await acked_update(click)
        await bot.until(lambda: any(m["flags"] & EPHEMERAL for m in click.followups))
        [refusal] = [m for m in click.followups if m["flags"] & EPHEMERAL]
        assert "this server allows 2" in refusal["content"], refusal["content"]
        queued = [m for m in click.followups if not m["flags"] & EPHEMERAL]
        assert len(queued) == 2 and await bot.job_count() == before + 2
        await bot.until(lambda: all(is_result(m) for m in queued))
    finally:
        await studio.update_rules(emu.guild_id, max_queued_per_member=None)


async def acked_update(click) -> None:
    callback = await click.wait_callback(timeout=3)
    assert callback["type"] == DEFERRED_UPDATE and callback["at"] - click.dispatched_at < 3


@pytest.mark.parametrize("name, data, content_type, problem", [
    pytest.param("bomb.png", bomb_png(), "image/png", "10000×10000 pixels", id="decompression-bomb",
                 marks=pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")),
    pytest.param("notes.png", b"just some text, not a picture\n" * 10, "image/png", "is not an image", id="text"),
    pytest.param("cut.jpg", phone_jpeg(480, 320)[:600], "image/jpeg", "damaged or truncated", id="truncated"),
])
async def test_a_hostile_upload_is_refused_privately_and_nothing_is_stored(
        bot: Harness, name: str, data: bytes, content_type: str, problem: str):
    jobs, files = await bot.job_count(), inputs_listing(bot)
    inter = await bot.emu.slash("describe", {"image": bot.emu.add_attachment(name, data, content_type)})
    text = await refused(bot, inter)
    assert name.replace("_", "\\_") in text and problem in text, text
    assert await bot.job_count() == jobs and inputs_listing(bot) == files


async def test_a_describe_left_queued_by_a_stop_is_answered_once_after_the_restart(bot: Harness, described: dict):
    emu = bot.emu
    made: dict[str, int] = {}

    async def as_a_stop_leaves_it() -> None:
        engine = open_engine(bot.settings.database_url)
        try:
            store = JobStore(engine)
            parent = await store.get(job_id_of(described))
            assert parent is not None
            request = Request.from_json(parent.request).replace(seed=99)
            job = await store.create_job(user_id=parent.user_id, user_name="someone", kind=request.kind,
                                         model=request.model, prompt=request.prompt, request=request.to_json(),
                                         guild_id=parent.guild_id, channel_id=parent.channel_id)
            made["queued"] = job.id
        finally:
            await engine.dispose()

    await bot.restart(while_stopped=as_a_stop_leaves_it)
    job_id = made["queued"]
    await bot.until(lambda: any(is_result(m) and job_id_in(m) == job_id for m in emu.messages.values()))
    job = await bot.posted(job_id)
    posted = next(m for m in emu.messages.values() if is_result(m) and job_id_in(m) == job_id)
    assert job.status == "done" and numbered_prompts(posted) == job.prompts and len(job.prompts) == 4
    assert f"<@{emu.user_id}>" in posted["content"] and "interaction_metadata" not in posted  # in the channel
    assert posted_once(bot, job_id)
    # its buttons work as any others (and those posted before the restart still do)
    [made_now] = await press(bot, posted, f"pintor:d:{job_id}:1")
    assert is_result(made_now) and (await bot.posted(job_id_of(made_now))).parent_id == job_id


async def test_without_a_captioner_describe_says_so_and_stores_nothing(bot: Harness, registry_file: Path):
    emu = bot.emu
    jobs, files = await bot.job_count(), inputs_listing(bot)
    original = bot.settings
    await bot.restart(original.model_copy(update={"pintor_models": registry_file}))
    try:
        inter = await emu.slash("describe", {"image": emu.add_attachment("cat.png", noise_png(), "image/png")})
        callback = await inter.wait_callback(timeout=3)
        assert callback["type"] == MESSAGE and callback["data"]["flags"] & EPHEMERAL
        assert callback["data"]["content"] == f"⚠️ {NO_CAPTIONER}"
        assert await bot.job_count() == jobs and inputs_listing(bot) == files
    finally:
        await bot.restart(original)
