"""Exploratory trial: Pintor used as new members, admins and operators would, end to end through
the emulator and the `pintor` command, looking for faults (prompts pasted from phones and
galleries, odd uploads, /history after /forget, restarts, output names, database URLs)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.discord_harness import Harness, acked, custom_ids, is_result, job_id_of
from tests.test_cli import env  # noqa: F401 - the CLI tests' fixture
from tests.test_cli import pintor as pintor_cli
from tests.test_discord_forget import forget, grid_of
from tests.test_discord_members import (
    DEFERRED,
    EPHEMERAL,
    MESSAGE,
    MODAL,
    UPDATE,
    press,
)

# the Discord tests run on the session loop of the shared bot; the CLI tests are plain functions
session_loop = pytest.mark.asyncio(loop_scope="session")


async def history_text(pintor: Harness, member: int) -> str:
    inter = await pintor.emu.slash("history", user_id=member)
    callback = await inter.wait_callback(timeout=5)
    if callback["type"] == MESSAGE:
        data = callback["data"]
    else:
        data = await inter.wait_original(lambda m: bool(m["content"] or m.get("embeds")))
    return data["content"] + "".join(str(e) for e in data.get("embeds") or [])


@session_loop
async def test_a_990_underscore_prompt_is_shown_within_discords_sizes(pintor: Harness):
    member = pintor.emu._snowflake()
    prompt = "_" * 990 + " --steps 1 --seed 3"
    grid = await grid_of(pintor, member, prompt)
    assert len(grid["content"]) <= 2000
    assert f"<@{member}>" in grid["content"] and "seed 3" in grid["content"]
    history = await history_text(pintor, member)
    assert str(job_id_of(grid)) in history


@session_loop
async def test_rtl_override_and_links_are_shown_safely(pintor: Harness):
    member = pintor.emu._snowflake()
    pasted = "\u202egnp.exe a cat https://evil.example/x.png [click](https://evil.example) @everyone --steps 1"
    grid = await grid_of(pintor, member, pasted)
    content = grid["content"]
    assert "\u202e" not in content
    assert "](https://evil" not in content
    assert "<https://evil.example>" in content  # shown as written, unfurl-proof


@session_loop
async def test_history_after_forget_is_empty(pintor: Harness):
    member = pintor.emu._snowflake()
    grid = await grid_of(pintor, member, "a forgotten lighthouse --steps 1")
    assert str(job_id_of(grid)) in await history_text(pintor, member)
    await forget(pintor, member)
    history = await history_text(pintor, member)
    assert str(job_id_of(grid)) not in history and "lighthouse" not in history


def deep_png() -> bytes:
    import numpy as np
    buf = io.BytesIO()
    Image.fromarray(np.full((60, 100), 40000, dtype=np.uint16)).save(buf, "PNG")
    return buf.getvalue()


def mpo_jpeg() -> bytes:
    buf = io.BytesIO()
    second = Image.new("RGB", (80, 60), "blue")
    Image.new("RGB", (80, 60), "red").save(buf, "MPO", save_all=True, append_images=[second])
    return buf.getvalue()


def rotated_jpeg() -> bytes:
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (120, 80), (200, 30, 30)).save(buf, "JPEG", exif=exif)
    return buf.getvalue()


@session_loop
async def test_blend_of_phone_photos_with_lying_content_types(pintor: Harness):
    emu = pintor.emu
    member = emu._snowflake()
    one = emu.add_attachment("IMG_0001.HEIC.png", deep_png(), "image/png")
    two = emu.add_attachment("photo.jpg", mpo_jpeg(), "image/png")  # the type Discord was told, not the file's
    three = emu.add_attachment("rotated", rotated_jpeg(), "application/octet-stream")
    inter = await emu.slash("blend", {"image1": one, "image2": two, "image3": three,
                                      "prompt": "—seed 4 a new animal"}, user_id=member)
    await acked(inter, kind=DEFERRED)
    result = await inter.wait_original(is_result, timeout=90)
    assert "seed 4" in result["content"]
    ids = [c for row in custom_ids(result) for c in row]
    assert any(i and i.startswith("pintor:u:") for i in ids)


# -- always append, buttons, /show of unfinished jobs, uploads that fail ---------------------------


APPEND = "Added to every prompt: words, --parameters"


async def set_append(pintor: Harness, member: int, text: str) -> None:
    emu = pintor.emu
    inter = await emu.slash("settings", user_id=member)
    await acked(inter, kind=MESSAGE)
    opened = await press(pintor, inter.original_id, member, "Always append…", kind=MODAL)
    saved = await emu.submit_modal(opened, {APPEND: text})
    await acked(saved, kind=UPDATE)


def seed_of(message: dict) -> int:
    import re
    return int(re.search(r"seed (\d+)", message["content"])[1])


@session_loop
async def test_reroll_gets_a_new_seed_when_always_append_holds_a_seed(pintor: Harness):
    emu = pintor.emu
    member = emu._snowflake()
    await set_append(pintor, member, "film grain --seed 5")
    grid = await grid_of(pintor, member, "a fox --steps 1")
    assert seed_of(grid) == 5
    job_id = job_id_of(grid)
    click = await emu.click(int(grid["id"]), f"pintor:r:{job_id}", user_id=member)
    await acked(click)
    await pintor.until(lambda: click.followups)
    followup = int(click.followups[0]["id"])
    await pintor.until(lambda: is_result(emu.messages[followup]))
    again = emu.messages[followup]
    assert seed_of(again) != 5, again["content"]


@session_loop
async def test_show_of_another_members_queued_job(pintor: Harness):
    emu, studio = pintor.emu, pintor.studio
    author, other = emu._snowflake(), emu._snowflake()
    from storage.models import Job  # noqa: F401
    request = studio.prepare("a queued harbour")
    job = await studio.store.create_job(user_id=author, user_name="author", kind="imagine", model=request.model,
                                        prompt=request.prompt, request=request.to_json(),
                                        guild_id=emu.guild_id, channel_id=emu.channel_id)
    try:
        inter = await emu.slash("show", {"job_id": job.id}, user_id=other)
        callback = await inter.wait_callback(timeout=5)
        await pintor.until(lambda: inter.followups or (inter.original and inter.original["content"]))
        answer = (inter.followups or [inter.original])[-1]
        assert "not finished" in answer["content"].lower() or "queued" in answer["content"].lower(), answer["content"]
        assert callback["at"] - inter.dispatched_at < 3
    finally:  # stored directly, in no queue (studio.cancel finds nothing): marked, never left queued
        await studio.store.mark_cancelled(job.id)


@session_loop
async def test_blend_with_an_expired_upload_says_which(pintor: Harness):
    emu = pintor.emu
    member = emu._snowflake()
    one = emu.add_attachment("cat.png", rotated_jpeg(), "image/jpeg")
    two = emu.add_attachment("tiger.png", deep_png(), "image/png")
    emu.remove_attachment(two)
    before = await pintor.job_count()
    inter = await emu.slash("blend", {"image1": one, "image2": two}, user_id=member)
    await acked(inter, kind=DEFERRED)
    await pintor.until(lambda: inter.followups)
    assert "tiger.png" in inter.followups[-1]["content"], inter.followups[-1]["content"]
    assert inter.followups[-1]["flags"] & EPHEMERAL
    assert await pintor.job_count() == before


@session_loop
async def test_blend_of_the_same_upload_twice(pintor: Harness):
    emu = pintor.emu
    member = emu._snowflake()
    one = emu.add_attachment("cat.jpg", rotated_jpeg(), "image/jpeg")
    inter = await emu.slash("blend", {"image1": one, "image2": one, "prompt": "--seed 2"}, user_id=member)
    await acked(inter, kind=DEFERRED)
    await pintor.until(lambda: inter.followups or (inter.original and is_result(inter.original)), timeout=90)


# -- the terminal ------------------------------------------------------------------------------



def test_cli_history_and_show_print_no_direction_controls(env: dict[str, str], tmp_path):  # noqa: F811 - the imported fixture
    """A member's (or a pasted) prompt with a right-to-left override must not reorder the
    operator's terminal line: `pintor history` and `pintor show` print it cleaned, as Discord does."""
    pasted = "\u202egnp.exe\u200b a cat\u2066 --steps 1 --seed 1"
    made = pintor_cli(env, "imagine", pasted, "-o", "cat.png", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    history = pintor_cli(env, "history", cwd=tmp_path)
    shown = pintor_cli(env, "show", "1", cwd=tmp_path)
    for out in (history.stdout, shown.stdout):
        assert "gnp.exe a cat" in out
        assert not any(c in out for c in "\u202e\u200b\u2066"), ascii(out)


@session_loop
async def test_buttons_and_show_of_a_grid_whose_author_forgot_everything(pintor: Harness):
    emu = pintor.emu
    author, other = emu._snowflake(), emu._snowflake()
    grid = await grid_of(pintor, author, "a forgotten harbour --steps 1")
    job_id = job_id_of(grid)
    await forget(pintor, author)
    before = await pintor.job_count()
    for custom_id in (f"pintor:u:{job_id}:1", f"pintor:v:{job_id}:2:h", f"pintor:r:{job_id}"):
        click = await emu.click(int(grid["id"]), custom_id, user_id=other)
        await acked(click)
        await pintor.until(lambda click=click: click.followups)
        assert click.followups[-1]["flags"] & EPHEMERAL, click.followups
        assert await pintor.job_count() == before
    show = await emu.slash("show", {"job_id": job_id}, user_id=other)
    await show.wait_callback(timeout=5)
    await pintor.until(lambda: show.followups or (show.original and show.original["content"]))
    answer = (show.followups or [show.original])[-1]
    assert answer["flags"] & EPHEMERAL and not answer["attachments"], answer


@session_loop
async def test_a_restart_in_the_middle_of_an_imagine_and_a_queued_blend_posts_each_once(pintor: Harness):
    import re
    emu = pintor.emu
    member = emu._snowflake()
    running = await emu.slash("imagine", {"prompt": "a slow lighthouse --steps 150 --seed 9"}, user_id=member)
    await acked(running, kind=DEFERRED)
    one = emu.add_attachment("cat.jpg", rotated_jpeg(), "image/jpeg")
    two = emu.add_attachment("tiger.png", deep_png(), "image/png")
    blend = await emu.slash("blend", {"image1": one, "image2": two, "prompt": "a queued animal --seed 4"},
                            user_id=member)
    await acked(blend, kind=DEFERRED)
    await pintor.until(lambda: running.original and "%" in running.original["content"])
    await pintor.until(lambda: blend.original and "queue" in blend.original["content"].lower())
    emu.remove_attachment(one)  # Discord's links to the uploads may expire meanwhile
    emu.remove_attachment(two)
    await pintor.restart()

    def results(word: str) -> list[dict]:
        return [m for m in emu.messages.values() if is_result(m) and word in m["content"]
                and f"<@{member}>" in m["content"]]

    await pintor.until(lambda: results("slow lighthouse") and results("queued animal"), timeout=120)
    for word in ("slow lighthouse", "queued animal"):
        ids = {re.search(r"job (\d+)", m["content"])[1] for m in results(word)}
        assert len(ids) == 1, [m["content"] for m in results(word)]
        assert len(results(word)) == 1, [m["content"] for m in results(word)]


@session_loop
async def test_history_and_info_of_many_markdown_heavy_prompts_fit(pintor: Harness):
    from tests.test_discord_members import store_jobs
    emu, studio = pintor.emu, pintor.studio
    member = emu._snowflake()
    prompts = ["_" * 990, "*" * 990 + " --no " + "~" * 900, "\u202e" + "|" * 990, "<@&1>" * 190, "`" * 990,
               "אבג " * 240 + "a cat"] * 3
    await store_jobs(pintor, member, prompts)
    history = await history_text(pintor, member)
    assert history
    # /info while this member's long prompts wait in the queue
    queued = []
    for prompt in prompts[:4]:
        request = studio.prepare(prompt + " --steps 150")
        queued.append(await studio.store.create_job(
            user_id=member, user_name="a" * 32, kind="imagine", model=request.model, prompt=request.prompt,
            request=request.to_json()))
    try:
        inter = await emu.slash("info", user_id=member)
        callback = await acked(inter)
        assert callback["type"] in (MESSAGE, DEFERRED)
    finally:  # stored directly, in no queue (studio.cancel finds nothing): marked, never left queued
        for job in queued:
            await studio.store.mark_cancelled(job.id)


def format_of(path) -> str | None:
    with Image.open(path) as picture:
        return picture.format


def test_cli_writes_the_format_the_output_name_asks_for(env: dict[str, str], tmp_path):  # noqa: F811 - the imported fixture
    """`-o fox.jpg` is a JPEG file and `-o fox.webp` a WebP one, not PNG bytes under another name
    (photo apps and upload forms go by the name); a name without a known image extension gets PNG."""
    made = pintor_cli(env, "imagine", "a fox --steps 1 --seed 2", "-o", "fox.jpg", "--separate", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert format_of(tmp_path / "fox.jpg") == "JPEG"
    assert format_of(tmp_path / "fox-3.jpg") == "JPEG"
    for name, kind in (("fox.webp", "WEBP"), ("FOX.JPEG", "JPEG"), ("fox.png", "PNG"), ("fox", "PNG")):
        shown = pintor_cli(env, "show", "1", "-o", name, cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        assert format_of(tmp_path / name) == kind, name


@pytest.mark.parametrize("url", ["postgresql+asyncpg://pintor:hunter2@localhost:1/pintor",  # driver not installed
                                 "postgresql://pintor:hunter2@localhost:1/pintor",  # no async driver named
                                 "not a database url hunter2"])
def test_doctor_and_health_name_a_database_url_they_cannot_use(env: dict[str, str], tmp_path, url: str):  # noqa: F811 - the imported fixture
    """`pintor doctor` lists what is wrong (it does not stop at the database) and `pintor
    health` prints its one line; neither shows the password."""
    doctor = pintor_cli(env | {"DATABASE_URL": url}, "doctor", cwd=tmp_path)
    assert doctor.returncode == 1
    assert "[PROBLEM] database" in doctor.stdout and "data folder" in doctor.stdout, doctor.stdout + doctor.stderr
    health = pintor_cli(env | {"DATABASE_URL": url}, "health", cwd=tmp_path)
    assert health.returncode == 1 and health.stdout.startswith("unhealthy: cannot open the database"), health
    assert "hunter2" not in doctor.stdout + doctor.stderr + health.stdout + health.stderr


def test_health_creates_no_database_where_there_is_none(env: dict[str, str], tmp_path):  # noqa: F811 - the imported fixture
    """A health check of a volume that is not mounted left an empty database behind (which the
    next start would have taken for the real one); now it says so and creates nothing."""
    missing = tmp_path / "not-mounted" / "pintor.db"
    health = pintor_cli(env | {"DATABASE_URL": f"sqlite+aiosqlite:///{missing}"}, "health", cwd=tmp_path)
    assert health.returncode == 1 and f"there is no database at {missing}" in health.stdout, health
    doctor = pintor_cli(env | {"DATABASE_URL": f"sqlite+aiosqlite:///{missing}"}, "doctor", cwd=tmp_path)
    assert "does not exist yet, created on first start" in doctor.stdout, doctor.stdout + doctor.stderr
    assert not missing.parent.exists()


# -- a gallery prompt as members paste it (commas after values and weights, =, newlines) -----------


@session_loop
async def test_a_gallery_prompt_pasted_with_commas_and_equals_signs_makes_its_grid(pintor: Harness):
    """Refused before ("--ar must be W:H …; got “16:9,”"), or its weights and --seed silently lost."""
    member = pintor.emu._snowflake()
    pasted = ("“Ethereal” lighthouse::2, stormy sea — 🌊✨::1,\nultra detailed, 8k,\n"
              "--ar 16:9, --stylize 750, --chaos 20, --seed=7 --no text, watermark --steps 1")
    grid = await grid_of(pintor, member, pasted)
    content = grid["content"]
    assert "seed 7" in content and "--ar 16:9" in content and "--chaos 20" in content, content
    assert "without the punctuation after the value" in content and "Read “--seed=7” as --seed 7." in content
    job = await pintor.job(job_id_of(grid))
    from generation.request import Request
    request = Request.from_json(job.request)
    assert [weight for _, weight in request.parts] == [2.0, 1.0, 1.0] and request.seed == 7  # the rest: 1
    assert request.width > request.height and request.negative == "text, watermark"
