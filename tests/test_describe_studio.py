"""The Studio's /describe (bot/studio.py) in front of the worker, on the MemoryQueue (its
pretend captioner writes plain prompts): stored before queued, cancellable, refused with
nothing stored where there is no captioner or the upload is bad, under the server's rules,
forgotten with /forget; its prompts imagined as the member's own /imagine."""

from __future__ import annotations

import io

import pytest
import pytest_asyncio
from PIL import Image

from bot.intake import LimitError, Member, RequestError
from bot.studio import NO_CAPTIONER
from generation.events import Cancelled, Done, Progress
from generation.inputs import UploadError
from generation.request import Request
from storage.models import ServerRules
from tests.describe_helpers import build_describers, phone_jpeg, write_describe_registry
from tests.studio_helpers import finish, started_studio
from tests.waiting import collect_until

pytestmark = pytest.mark.asyncio(loop_scope="module")


def png(size=(200, 100), colour=(20, 120, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def studio(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("describe-studio")
    registry = write_describe_registry(root / "models.toml", tiny_models, build_describers(root / "models"))
    async with started_studio(root, registry, worker=False) as studio:
        yield studio


def inputs(studio) -> set[str]:
    return {p.name for p in studio.inputs_dir.iterdir()} if studio.inputs_dir.exists() else set()


async def count_jobs(studio, member: Member) -> int:
    return (await studio.history(member.id, offset=0, limit=1))[1]


async def test_a_describe_is_stored_queued_and_done_with_its_prompts(studio):
    member = Member(101, "ann")
    submitted = await studio.describe(member, "IMG_1.jpg", phone_jpeg(48, 32, orientation=6))
    stored = await studio.job(submitted.job_id)
    assert stored is not None and stored.status in ("queued", "running") and stored.kind == "describe"
    request = Request.from_json(stored.request)
    assert (request.model, request.width, request.height, request.count) == ("tiny-blip", 32, 48, 4)
    assert request.prompt == "/describe IMG_1.jpg" and studio.picture(request.images[0]).is_file()
    events = [event async for event in submitted.events]
    assert isinstance(events[-1], Done) and len(events[-1].captions) == 4
    job = await studio.job(submitted.job_id)
    assert job.status == "done" and job.prompts == list(events[-1].captions) and not job.images
    assert job.grid_path is not None and studio.picture(job.grid_path).is_file()


async def test_a_describes_prompts_are_imagined_as_the_members_own_imagine(studio):
    member = Member(102, "bo")
    await studio.update_preferences(member.id, member.name, aspect="16:9")
    described = await finish(studio, await studio.describe(member, "wide.png", png()))
    made = await finish(studio, await studio.imagine_described(member, described.id, 3))
    request = Request.from_json(made.request)
    assert (made.kind, made.parent_id, made.parent_index) == ("imagine", described.id, 3)
    assert request.prompt == described.prompts[2] and request.width > request.height  # their /settings
    with pytest.raises(RequestError, match="has no prompt 5"):
        await studio.imagine_described(member, described.id, 5)
    with pytest.raises(RequestError, match="is not a /describe"):
        await studio.imagine_described(member, made.id, 1)


async def test_a_queued_describe_can_be_cancelled(studio):
    """Queued behind a running job, so that it is still queued when cancelled (alone in line it
    could end before the cancel came, on a loaded machine)."""
    member = Member(103, "cy")
    long = await studio.imagine(Member(190, "zed"), "a long wait --steps 150")
    await collect_until(long.events, lambda event: isinstance(event, Progress))
    submitted = await studio.describe(member, "cat.png", png(colour=(1, 2, 3)))
    assert submitted.position == 1
    assert await studio.cancel(submitted.job_id, member=member)
    events = [event async for event in submitted.events]
    assert isinstance(events[-1], Cancelled)
    job = await studio.job(submitted.job_id)
    assert job.status == "cancelled" and job.prompts == []
    assert await studio.cancel(long.job_id)
    async for _event in long.events:
        pass


@pytest.mark.parametrize("name, data, error", [
    ("notes.png", b"not a picture at all" * 10, "is not an image"),
    ("cut.jpg", phone_jpeg(480, 320)[:600], "damaged or truncated"),
    ("empty.png", b"", "is empty"),
])
async def test_a_bad_upload_is_refused_and_nothing_is_stored(studio, name, data, error):
    member = Member(104, "di")
    before, files = await count_jobs(studio, member), inputs(studio)
    with pytest.raises(UploadError, match=error):
        await studio.describe(member, name, data)
    assert await count_jobs(studio, member) == before and inputs(studio) == files


async def test_without_a_captioner_nothing_is_stored(studio, monkeypatch):
    import dataclasses

    member = Member(105, "ed")
    monkeypatch.setattr(studio, "registry", dataclasses.replace(studio.registry, captioner=None))
    files = inputs(studio)
    with pytest.raises(RequestError) as refused:
        await studio.describe(member, "cat.png", png(colour=(9, 9, 9)))
    assert str(refused.value) == NO_CAPTIONER
    assert await count_jobs(studio, member) == 0 and inputs(studio) == files


async def test_server_rules_for_pictures_do_not_refuse_a_describe_but_a_pause_does(studio):
    member = Member(106, "fay")
    rules = ServerRules.new(7)
    rules.allowed_models, rules.max_side = "tiny-sd", 64  # a picture of 200 px, the captioner not listed
    described = await finish(studio, await studio.describe(member, "big.png", png((200, 100), (5, 6, 7)),
                                                           rules=rules, guild_id=7))
    assert described.guild_id == 7
    rules.paused = True
    files = inputs(studio)
    with pytest.raises(LimitError, match="paused"):
        await studio.describe(member, "other.png", png((90, 60), (8, 8, 8)), rules=rules, guild_id=7)
    assert inputs(studio) == files


async def test_forget_deletes_a_describes_upload_and_picture(studio):
    member = Member(107, "gus")
    described = await finish(studio, await studio.describe(member, "mine.png", png((64, 64), (77, 1, 1))))
    upload, picture = Request.from_json(described.request).images[0], described.grid_path
    assert picture is not None and upload.startswith("inputs/")  # a key of the file store
    upload_file, picture_file = studio.picture(upload), studio.picture(picture)
    assert upload_file.is_file() and picture_file.is_file()
    assert await studio.forget(member) >= 2
    assert not upload_file.exists() and not picture_file.exists()
