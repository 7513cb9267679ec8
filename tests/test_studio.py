"""bot.studio: prepare → store → queue → worker → stored results, on a real SQLite file and a
real worker process. One studio (one worker) serves most of the module; the crash test builds
its own two, as a crash and a restart would."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytest_asyncio
from sqlalchemy import func, select

from bot.intake import USER_ERRORS, Member, RequestError, prepare
from bot.results import prompt_notices
from bot.studio import VARY_STRONG, VARY_SUBTLE
from generation.events import FINAL_EVENTS, Done, Event, Progress, Queued, Started
from generation.registry import load_registry
from generation.request import Request
from generation.upscale import RESAMPLE
from storage.db import open_engine, upgrade
from storage.jobs import JobStore, NewImage
from storage.models import Job
from tests.studio_helpers import db_url, make_studio, started_studio
from tests.waiting import TIMEOUT_S, collect_until

pytestmark = pytest.mark.asyncio(loop_scope="module")

ANN = Member(1, "ann")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def env(small_registry_file: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("studio")
    async with started_studio(root, small_registry_file) as studio:
        yield SimpleNamespace(studio=studio, root=root, db=studio.store.engine)


def final(event: Event) -> bool:
    return isinstance(event, FINAL_EVENTS)


async def finish(submitted) -> Done:
    events = await collect_until(submitted.events, final)
    assert isinstance(events[-1], Done), events
    return events[-1]


async def job_count(env) -> int:
    async with env.db.connect() as conn:
        return await conn.scalar(select(func.count()).select_from(Job.__table__))


def files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() and not p.name.startswith("pintor.db")}


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def parent(env) -> int:
    """A finished grid to re-roll, vary and upscale."""
    submitted = await env.studio.imagine(ANN, "a red fox in the snow --seed 11")
    await finish(submitted)
    return submitted.job_id


# -- imagine ------------------------------------------------------------------------------------


@pytest.mark.smoke
async def test_imagine_stores_the_job_before_queueing_it_then_its_results(env, monkeypatch):
    studio = env.studio
    status_when_queued = []
    queue_submit = studio.queue.submit

    async def spy(job_id: int, user_id: int, request: Request) -> int:
        row = await studio.store.get(job_id)
        status_when_queued.append(row.status if row else None)
        return await queue_submit(job_id, user_id, request)

    monkeypatch.setattr(studio.queue, "submit", spy)
    submitted = await studio.imagine(ANN, "a lighthouse at dusk --seed 21 --no fog", guild_id=5, channel_id=6)
    assert status_when_queued == ["queued"]  # in the database before anyone hears "queued"
    assert submitted.request.seed == 21 and submitted.position in (0, 1)

    # the studio's listeners are told of each event after it is stored (and before the next one)
    statuses: dict[type, str] = {}
    told_final = asyncio.Event()

    async def listener(job_id: int, event: Event) -> None:
        if job_id == submitted.job_id:
            statuses.setdefault(type(event), (await studio.job(job_id)).status)
            if final(event):
                told_final.set()

    studio.listeners.append(listener)
    try:
        events = await collect_until(submitted.events, final)
        await asyncio.wait_for(told_final.wait(), TIMEOUT_S)
    finally:
        studio.listeners.remove(listener)
    assert isinstance(events[0], Queued) and isinstance(events[-1], Done)
    assert statuses[Started] == "running" and statuses[Done] == "done"

    done = events[-1]
    job = await studio.job(submitted.job_id)
    assert (job.kind, job.model, job.prompt, job.user_id) == ("imagine", "tiny-sd", "a lighthouse at dusk", 1)
    assert (job.guild_id, job.channel_id, job.parent_id) == (5, 6, None)
    assert Request.from_json(job.request) == submitted.request
    assert job.started_at is not None and job.finished_at is not None and job.error is None
    assert [image.index for image in job.images] == [1, 2, 3, 4]
    assert [image.seed for image in job.images] == [21, 22, 23, 24]
    for image, made in zip(job.images, done.images, strict=True):
        assert (image.path, image.sha256) == (made.key, made.sha256)  # by key: no folder of this machine
        assert file_sha256(studio.picture(image.path)) == image.sha256 and (image.width, image.height) == (64, 64)
    assert job.grid_path == done.grid.key and file_sha256(studio.picture(job.grid_path)) == done.grid.sha256


@pytest.mark.parametrize(("prompt", "message"), [
    ("", "no text"),
    ("   --ar 16:9", "no text"),
    ("a cat --ar 9:0", "--ar must be"),
    ("a cat --model nope", "Unknown model 'nope'"),
    ("x" * 4001, "4001 characters long; the limit is 4000"),
    ("a cat --model tiny-upscaler", "cannot make pictures from text"),
    ("a cat --steps 0", "--steps must be"),
    ("a cat --seed -1", "got “-1”"),
    ("https://cdn.discordapp.com/attachments/1/2/cat.png", "image links but no text"),
    ("https://i.imgur.com/cat.png a cat", "not from i.imgur.com"),  # a host Pintor does not fetch from
    ("https://cdn.discordapp.com/a.png a cat --iw 3.5", "--iw must be a number from 0 to 3"),
])
async def test_bad_input_is_a_user_error_and_changes_nothing(env, prompt: str, message: str):
    jobs_before, files_before = await job_count(env), files(env.root)
    with pytest.raises(USER_ERRORS, match=message):
        await env.studio.imagine(ANN, prompt)
    assert await job_count(env) == jobs_before
    assert files(env.root) == files_before


async def test_a_pasted_prompt_is_made_and_its_notices_are_kept_with_the_job(env):
    prompt = ("/imagine prompt: a lighthouse in a storm, oil painting --ar 4:1 --v 5.2 --raw "
              "--sref 4567 --sref 8910 --chaos 150 --seed 3")
    submitted = await env.studio.imagine(ANN, prompt)
    await finish(submitted)
    job = await env.studio.job(submitted.job_id)
    request = Request.from_json(job.request)
    assert job.status == "done" and job.prompt == "a lighthouse in a storm, oil painting"
    assert (request.chaos, request.width > request.height) == (100, True)
    assert request.notices == (
        "Removed “/imagine prompt:” from the start: it is part of the command, not of the prompt.",
        "--ar “4:1”: used 3:1, the nearest ratio Pintor makes (from 3:1 to 1:3).",
        "--chaos “150” is over the highest value; used 100.",
        "Ignored what Pintor does not have: “--raw”; “--sref 4567” (×2) — Pintor has image prompts (links at "
        "the start of the prompt, --iw), not style or character references.",
        "Ignored “--v 5.2”: no model is mapped to it here; choose one with --model "
        "(tiny-sd, tiny-sdxl, tiny-kandinsky).",
        # 3:1 at a 64 px model's pixel count, in multiples of 64: the size made is said
        "tiny-sd makes 128×64 for --ar 3:1 (the nearest with sides in multiples of 64 pixels, at about its 64×64 "
        "pixels).")
    # a re-roll keeps them (the same prompt); an upscale or a variation does not say them again
    reroll = await env.studio.reroll(ANN, submitted.job_id)
    await finish(reroll)
    assert reroll.request.notices == request.notices and prompt_notices(reroll.request)
    vary = await env.studio.vary(ANN, submitted.job_id, 1, strong=False)
    await finish(vary)
    assert prompt_notices(vary.request) == []


# -- re-roll, vary, upscale ---------------------------------------------------------------------


async def test_reroll_is_the_same_request_with_a_new_seed(env, parent: int):
    studio = env.studio
    original = Request.from_json((await studio.job(parent)).request)
    submitted = await studio.reroll(ANN, parent)
    request = submitted.request
    assert request.kind == "reroll" and request.seed != original.seed
    assert request.replace(kind="imagine", seed=original.seed) == original
    await finish(submitted)
    job = await studio.job(submitted.job_id)
    assert (job.kind, job.parent_id, job.parent_index, job.status) == ("reroll", parent, None, "done")
    assert [image.seed for image in job.images] == request.seeds()


@pytest.mark.parametrize(("strong", "strength"), [(False, VARY_SUBTLE), (True, VARY_STRONG)])
async def test_vary_makes_four_from_one_image(env, parent: int, strong: bool, strength: float):
    studio = env.studio
    source = (await studio.job(parent)).images[1]
    submitted = await studio.vary(ANN, parent, 2, strong=strong)
    request = submitted.request
    assert (request.kind, request.init_image, request.strength) == (
        "variation", source.path, strength)
    assert (request.width, request.height, request.count) == (source.width, source.height, 4)
    assert int(request.steps * request.strength) >= 1  # image to image runs at least one step
    done = await finish(submitted)
    job = await studio.job(submitted.job_id)
    assert (job.kind, job.parent_id, job.parent_index) == ("variation", parent, 2)
    assert [image.seed for image in job.images] == request.seeds()
    assert all((image.width, image.height) == (64, 64) for image in done.images)


async def test_upscale_one_image_with_the_model(env, parent: int):
    studio = env.studio
    source = (await studio.job(parent)).images[2]
    submitted = await studio.upscale(ANN, parent, 3)
    request = submitted.request
    assert (request.kind, request.model, request.count) == ("upscale", "tiny-upscaler", 1)
    assert request.seed == source.seed and request.init_image == source.path
    # the request holds the picture it enlarges; the size it makes is said beside it (the CLI's header)
    assert (request.width, request.height) == (64, 64) and submitted.size == (256, 256)
    done = await finish(submitted)
    job = await studio.job(submitted.job_id)
    assert (job.kind, job.parent_id, job.parent_index) == ("upscale", parent, 3)
    assert [(image.index, image.width, image.height, image.seed) for image in job.images] == [
        (1, 256, 256, source.seed)]
    assert file_sha256(studio.picture(job.images[0].path)) == done.images[0].sha256

    # a variation of the upscaled picture runs on the default model, with that model's settings
    variation = await studio.vary(ANN, submitted.job_id, 1, strong=False)
    default = studio.registry.get(None)
    assert variation.request.model == default.name and variation.request.guidance == default.guidance
    await studio.cancel(variation.job_id)
    await collect_until(variation.events, final)


async def test_upscale_without_a_model_resamples_and_says_so(env, parent: int, monkeypatch):
    studio = env.studio
    monkeypatch.setattr(studio, "registry", dataclasses.replace(studio.registry, upscaler=None))
    submitted = await studio.upscale(ANN, parent, 4)
    assert submitted.request.model == RESAMPLE and submitted.size == (128, 128)
    await finish(submitted)
    job = await studio.job(submitted.job_id)
    assert [(image.width, image.height) for image in job.images] == [(128, 128)]
    assert "Lanczos" in job.notices

    # and the resampled picture can be varied like any other
    variation = await studio.vary(ANN, submitted.job_id, 1, strong=True)
    assert variation.request.model == studio.registry.default
    # at the model's own pixel budget, not the upscaled size
    native = studio.registry.get(None).native_side
    assert (variation.request.width, variation.request.height) == (native, native) != (128, 128)
    await studio.cancel(variation.job_id)
    await collect_until(variation.events, final)


async def test_vary_and_upscale_refuse_what_is_not_there(env, parent: int, tmp_path: Path):
    studio = env.studio
    store = studio.store
    # a finished job whose files were deleted, and a job not finished yet
    gone = await store.create_job(user_id=1, user_name="ann", kind="imagine", model="tiny-sd", prompt="gone",
                                  request=(await studio.job(parent)).request)
    await store.complete(gone.id, [NewImage(str(tmp_path / f"{i}.png"), 64, 64, i, "0" * 64) for i in range(1, 5)],
                         str(tmp_path / "grid.png"))
    waiting = await store.create_job(user_id=1, user_name="ann", kind="imagine", model="tiny-sd",
                                     prompt="later", request=(await studio.job(parent)).request)
    jobs_before = await job_count(env)
    cases = [
        (studio.vary(ANN, 999_999, 1, strong=False), "There is no job 999999"),
        (studio.upscale(ANN, 999_999, 1), "There is no job 999999"),
        (studio.reroll(ANN, 999_999), "There is no job 999999"),
        (studio.vary(ANN, parent, 5, strong=True), "has no image 5"),
        (studio.upscale(ANN, parent, 0), "has no image 0"),
        (studio.vary(ANN, gone.id, 1, strong=False), "gone from the file store"),
        (studio.upscale(ANN, gone.id, 2), "gone from the file store"),
        (studio.upscale(ANN, waiting.id, 1), "is queued, not finished"),
        (studio.reroll(ANN, waiting.id), "is queued, not finished"),
    ]
    for call, message in cases:
        with pytest.raises(RequestError, match=message):
            await call
    assert await job_count(env) == jobs_before


async def test_close_keeps_a_running_job_queued_for_the_next_start(small_registry_file: Path, tmp_path: Path):
    """On a studio of its own: it closes it, and the module's studio serves the other tests
    in any order."""
    async with started_studio(tmp_path, small_registry_file) as studio:
        submitted = await studio.imagine(ANN, "a slow lighthouse --seed 5 --steps 150")
        await collect_until(submitted.events, lambda e: isinstance(e, Progress))
        await studio.close()
        events = await collect_until(submitted.events, final)
        assert type(events[-1]).__name__ == "Interrupted"
        job = await studio.job(submitted.job_id)
        assert job is not None
        assert job.status == "queued" and job.started_at is None and job.images == []
        assert [j.id for j in await studio.store.unfinished()] == [submitted.job_id]


# -- crash recovery -----------------------------------------------------------------------------


def run_until_crash(url: str, root: Path, registry_file: Path, request: Request) -> int:
    """A Pintor process that dies mid-job: its studio stores the job and its first steps, then
    stops without any cleanup, and its worker is SIGKILLed. Runs on its own event loop (in a
    thread), so that once that loop stops nothing of the dead process can react any more."""
    loop = asyncio.new_event_loop()
    state: dict = {}

    async def live() -> None:
        db = open_engine(url)
        studio = make_studio(db, root, registry_file)
        state["queue"] = studio.queue
        await studio.start()
        submitted = await studio.submit(ANN, request)
        state["job_id"] = submitted.job_id
        await collect_until(submitted.events, lambda e: isinstance(e, Progress))
        # the process dies: nothing more is stored...
        assert studio._consumer is not None
        studio._consumer.cancel()
        await db.dispose()

    try:
        loop.run_until_complete(live())
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        # ...and its worker dies with it; with the loop stopped, the dead queue cannot restart it
        queue = state.get("queue")
        if queue is not None and queue._process is not None:
            queue.kill_worker()
            queue._process.join(30)
        loop.close()
    return state["job_id"]


@pytest.mark.asyncio(loop_scope="function")
async def test_a_job_left_running_by_a_crash_completes_after_a_restart(small_registry_file: Path, tmp_path: Path):
    url = db_url(tmp_path / "pintor.db")
    db = open_engine(url)
    await upgrade(db)
    request = prepare(load_registry(small_registry_file), "a lighthouse at dusk --seed 77 --steps 12")

    job_id = await asyncio.wait_for(
        asyncio.to_thread(run_until_crash, url, tmp_path, small_registry_file, request), TIMEOUT_S)
    store = JobStore(db)
    assert [(job.id, job.status) for job in await store.unfinished()] == [(job_id, "running")]

    studio = make_studio(db, tmp_path, small_registry_file)  # Pintor starts again
    recovered = studio.watch(job_id)
    await studio.start()
    try:
        events = await collect_until(recovered, final)
        assert isinstance(events[0], Queued) and isinstance(events[-1], Done), events
        job = await store.get(job_id)
        assert job is not None
        assert job.status == "done" and await store.unfinished() == []
        assert [image.seed for image in job.images] == request.seeds() == [77, 78, 79, 80]

        reference = await finish(await studio.submit(ANN, request))  # the same request, never interrupted
        assert [image.sha256 for image in job.images] == [image.sha256 for image in reference.images]
        assert [file_sha256(studio.picture(i.path)) for i in job.images] == [i.sha256 for i in job.images]
    finally:
        await studio.close()
        await db.dispose()
