"""Member settings, server rules and privacy: storage, migration and the studio's checks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import text

from bot.intake import USER_ERRORS, LimitError, Member, allowed_models, fallback_model, prepare, with_defaults
from generation.prompt import parse_prompt
from generation.registry import load_registry
from storage.db import current_revision, open_engine, upgrade
from storage.jobs import JobStore
from storage.models import MemberPreferences, ServerRules
from storage.settings import PreferencesAndRulesStore
from tests.studio_helpers import started_studio


@pytest.fixture
async def engine(tmp_path: Path):
    engine = open_engine(f"sqlite+aiosqlite:///{tmp_path / 'pintor.db'}")
    await upgrade(engine)
    yield engine
    await engine.dispose()


async def test_upgrade_from_the_first_schema_keeps_the_data(tmp_path: Path):
    engine = open_engine(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")
    await upgrade(engine, "0001")
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO users (id, name, created_at) VALUES (42, 'ann', CURRENT_TIMESTAMP)"))
        await conn.execute(text(
            "INSERT INTO jobs (user_id, kind, model, prompt, request, status, created_at) "
            "VALUES (42, 'imagine', 'sd-turbo', 'a fox', '{}', 'done', CURRENT_TIMESTAMP)"))
    await upgrade(engine)
    current, head = await current_revision(engine)
    assert current == head != "0001"
    jobs, total = await JobStore(engine).history(42, offset=0, limit=10)
    assert total == 1 and jobs[0].prompt == "a fox"
    preferences = await PreferencesAndRulesStore(engine).update_member(42, private=True, aspect="16:9")
    assert (await PreferencesAndRulesStore(engine).member(42)).private and preferences.aspect == "16:9"
    await engine.dispose()


async def test_servers_stored_before_loras_get_a_new_servers_lora_rules(tmp_path: Path):
    engine = open_engine(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")
    await upgrade(engine, "0005")
    async with engine.begin() as conn:
        await conn.execute(text(
            "INSERT INTO guild_settings (guild_id, buttons_author_only, nsfw_check, paused, strict_parameters, "
            "updated_at) VALUES (9, 0, 1, 0, 0, CURRENT_TIMESTAMP)"))
    await upgrade(engine)
    stored = await PreferencesAndRulesStore(engine).guild(9)
    new = ServerRules.new(10)
    assert (stored.allowed_loras, stored.max_loras) == (new.allowed_loras, new.max_loras) == (None, 2)
    await engine.dispose()


# every value each settings field can take from a command: None (no limit, the server's or
# model's default), zero and other falsy values, and ordinary ones
FIRST_WRITES = {
    ServerRules: {"allowed_models": [None, "tiny-sd"], "channel_ids": [None, "1,2"],
                    "max_queued_per_member": [None, 1, 1000], "daily_quota": [None, 1, 7],
                    "max_steps": [None, 1, 150], "max_side": [None, 64, 8192],
                    "buttons_author_only": [True, False], "nsfw_check": [True, False], "paused": [True, False],
                    "strict_parameters": [True, False], "allowed_loras": [None, "", "ink,glow"],
                    "max_loras": [None, 0, 1, 8], "remote_models": [True, False],
                    "allow_controlnet": [True, False], "clip_guidance": [True, False]},
    MemberPreferences: {"model": [None, "tiny-sdxl"], "aspect": [None, "16:9"], "quality": [None, 0.5, 2.0],
                     "stylize": [None, 0, 1000], "private": [True, False], "append": ["", "--no fog"],
                     "remix": [True, False]},
}


@pytest.mark.parametrize("table", [ServerRules, MemberPreferences], ids=lambda t: t.__name__)
async def test_a_first_write_stores_exactly_what_was_asked(engine, table):
    """Each field, each value, as the first write of a new row: the row returned and the row
    read back later hold the value asked for, never the column's default."""
    columns = {c.name for c in table.__table__.columns} - {"guild_id", "user_id", "updated_at"}
    assert set(FIRST_WRITES[table]) == columns, "every field is tried"
    store = PreferencesAndRulesStore(engine)
    key = 100
    for field, values in FIRST_WRITES[table].items():
        for value in values:
            key += 1
            if table is ServerRules:
                returned = await store.update_guild(key, **{field: value})
                stored = await PreferencesAndRulesStore(engine).guild(key)
            else:
                returned = await store.update_member(key, f"m{key}", **{field: value})
                stored = await PreferencesAndRulesStore(engine).member(key)
            assert (getattr(returned, field), getattr(stored, field)) == (value, value), (field, value)
            again = await store.update_guild(key, **{field: value}) if table is ServerRules else \
                await store.update_member(key, f"m{key}", **{field: value})
            assert getattr(again, field) == value  # the second write agrees with the first


async def test_history_pages_over_250_jobs(engine):
    store = JobStore(engine)
    for i in range(250):
        await store.create_job(user_id=7, user_name="bo", kind="imagine", model="m", prompt=f"p{i}", request="{}")
    await store.create_job(user_id=8, user_name="cy", kind="imagine", model="m", prompt="other", request="{}")
    seen = []
    for page in range(25):
        jobs, total = await store.history(7, offset=page * 10, limit=10)
        assert total == 250 and len(jobs) == 10
        seen += [job.prompt for job in jobs]
    assert seen == [f"p{i}" for i in reversed(range(250))]  # newest first, every job once
    assert (await store.history(7, offset=250, limit=10))[0] == []


def test_member_defaults_fill_what_the_prompt_does_not_say():
    defaults = MemberPreferences.new(1)
    defaults.aspect, defaults.stylize, defaults.append = "16:9", 300, "--no text --chaos 20"
    merged = with_defaults(parse_prompt("a fox --chaos 5"), defaults)
    assert merged.aspect == (16, 9) and merged.stylize == 300 and merged.negative == "text"
    assert merged.chaos == 5  # the prompt wins
    assert with_defaults(parse_prompt("a fox --ar 1:2"), defaults).aspect == (1, 2)


@pytest.mark.parametrize("append, prompt, text, negative", [
    ("highly detailed, 35mm film", "a fox in the snow --ar 3:2", "a fox in the snow, highly detailed, 35mm film", ""),
    ("highly detailed --no text, watermark", "a fox", "a fox, highly detailed", "text, watermark"),
    ("--no text", "a fox --no trees", "a fox", "trees"),  # the prompt wins
    ("soft light", "castle::2 fog::1", "castle::2 fog, soft light::1", ""),
    # a negative part is less of it: the words go to the last part that says what to draw
    ("soft light", "castle::2 fog::-.5", "castle, soft light::2 fog::-0.5", ""),
    ("soft light", "castle::2 tower::1 fog::-.5 rain::-.5", "castle::2 tower, soft light::1 fog::-0.5 rain::-0.5", ""),
    ("", "a fox", "a fox", ""),
])
def test_always_append_adds_its_words_too(append, prompt, text, negative):
    defaults = MemberPreferences.new(1)
    defaults.append = append
    merged = with_defaults(parse_prompt(prompt), defaults)
    assert (merged.text, merged.negative) == (text, negative)


def test_always_append_follows_the_prompt_rules():
    defaults = MemberPreferences.new(1)
    defaults.append = "sharp focus --raw --chaos 150"
    merged = with_defaults(parse_prompt("a fox --ar 16:9"), defaults)
    assert merged.text == "a fox, sharp focus" and merged.chaos == 100 and merged.aspect == (16, 9)
    assert merged.notices == ("--chaos “150” is over the highest value; used 100.",
                              "Ignored what Pintor does not have: “--raw”.")
    with pytest.raises(USER_ERRORS, match="“--raw”"):
        with_defaults(parse_prompt("a fox"), defaults, strict=True)


def test_midjourney_model_choosers_follow_the_registry(registry_file):
    registry = load_registry(registry_file)  # "--v 6" → tiny-sdxl, any "--niji" → tiny-sd
    assert prepare(registry, "a fox --v 6.0").model == "tiny-sdxl"
    assert prepare(registry, "a fox --niji 6").model == "tiny-sd"
    assert prepare(registry, "a fox --v 6 --model tiny-kandinsky").model == "tiny-kandinsky"
    request = prepare(registry, "a fox --v 6 --model tiny-kandinsky")
    assert request.notices == ("Ignored “--v 6”: the model is tiny-kandinsky already.",)
    request = prepare(registry, "a fox --v 5.2 --style raw")
    assert request.model == "tiny-sd" and "--v" not in request.parameters
    assert request.notices == (
        "Ignored “--v 5.2”: no model is mapped to it here; "
        "choose one with --model (tiny-sd, tiny-sdxl, tiny-kandinsky).",
        "Ignored “--style raw”: no model is mapped to it here; "
        "choose one with --model (tiny-sd, tiny-sdxl, tiny-kandinsky).")
    with pytest.raises(USER_ERRORS, match="“--v 5.2” chooses no model"):
        prepare(registry, "a fox --v 5.2", strict=True)
    assert prepare(registry, "a fox --v 6", strict=True).model == "tiny-sdxl"
    # a chooser in the prompt beats the member's default model, like --model does
    defaults = MemberPreferences.new(1)
    defaults.model = "tiny-kandinsky"
    assert prepare(registry, "a fox --v 6", defaults).model == "tiny-sdxl"
    assert prepare(registry, "a fox", defaults).model == "tiny-kandinsky"


def test_a_point_release_of_a_mapped_version_chooses_its_model(registry_file):
    """Gallery prompts say "--v 6.1"; with only "--v 6" mapped it was ignored ("no model is
    mapped to it here") and the grid made by the default model."""
    registry = load_registry(registry_file)  # "--v 6" → tiny-sdxl
    request = prepare(registry, "a fox --v 6.1")
    assert request.model == "tiny-sdxl"
    assert request.notices == ("Read “--v 6.1” as --v 6 (no model is mapped to 6.1 itself).",)
    assert prepare(registry, "a fox --v 6.1", strict=True).model == "tiny-sdxl"
    assert prepare(registry, "a fox --v 5.2").model == "tiny-sd"  # no "--v 5": still ignored, and said
    assert prepare(registry, "a fox --v 61").model == "tiny-sd"


def test_prepare_applies_member_defaults_and_names_them(registry_file):
    registry = load_registry(registry_file)
    defaults = MemberPreferences.new(1)
    defaults.model, defaults.aspect = "tiny-sdxl", "2:1"
    request = prepare(registry, "a fox", defaults)
    assert request.model == "tiny-sdxl" and request.width == 2 * request.height
    assert "--ar 2:1" in request.parameters and "--model tiny-sdxl" in request.parameters


def test_the_servers_default_model_is_the_first_allowed_that_makes_pictures(registry_file):
    registry = load_registry(registry_file)  # default tiny-sd
    rules = ServerRules.new(1)
    assert fallback_model(registry, allowed_models(None)) == "tiny-sd"
    assert fallback_model(registry, allowed_models(rules)) == "tiny-sd"
    for allowed, default in [("tiny-sdxl,tiny-sd", "tiny-sd"), ("gone,tiny-sdxl", "tiny-sdxl"),
                             ("tiny-upscaler,tiny-kandinsky,tiny-sdxl", "tiny-kandinsky")]:
        rules.allowed_models = allowed
        assert fallback_model(registry, allowed_models(rules)) == default
        assert prepare(registry, "a fox", rules=rules).model == default
        assert prepare(registry, "a fox --model tiny-sd", rules=rules).model == "tiny-sd"  # the rule refuses it later
    # a member's own default the server does not allow gives way to the server's; elsewhere it stays
    defaults = MemberPreferences.new(1)
    defaults.model, defaults.aspect = "tiny-sd", "2:1"
    rules.allowed_models = "tiny-sdxl"
    request = prepare(registry, "a fox", defaults, rules)
    assert request.model == "tiny-sdxl" and request.width == 2 * request.height
    assert prepare(registry, "a fox", defaults).model == "tiny-sd" and defaults.model == "tiny-sd"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def studio(tmp_path_factory, registry_file: Path):
    """One studio (and worker process) for the tests below: each uses its own members."""
    async with started_studio(tmp_path_factory.mktemp("rules"), registry_file, worker=False) as studio:
        yield studio


@pytest.mark.asyncio(loop_scope="module")
async def test_twenty_simultaneous_requests_with_a_limit_of_three_queue_three(studio):
    rules = ServerRules.new(1)
    rules.max_queued_per_member = 3
    member = Member(5, "dee")
    # many steps: none of the three finishes while the twenty arrive
    request = studio.prepare("a fox --steps 150")
    results = await asyncio.gather(*(studio.submit(member, request, rules=rules, guild_id=1) for _ in range(20)),
                                   return_exceptions=True)
    accepted = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, Exception)]
    assert len(accepted) == 3 and len(refused) == 17
    assert all(isinstance(r, LimitError) and "allows 3" in str(r) for r in refused)
    assert await studio.store.count_unfinished(member.id) == 3
    for submitted in accepted:
        await studio.cancel(submitted.job_id)


@pytest.mark.asyncio(loop_scope="module")
async def test_rules_refuse_with_a_reason_and_store_nothing(studio):
    member = Member(6, "eve")
    cases = [
        (dict(daily_quota=0), "resets at 00:00 UTC"),
        (dict(allowed_models="tiny-sdxl"), "not allowed on this server"),
        (dict(max_steps=1), "over this server's limit of 1"),
        (dict(max_side=64), "limit of 64 pixels"),
        (dict(paused=True), "paused"),
        (dict(channel_ids="111,222"), "<#111>"),
    ]
    for values, message in cases:
        rules = ServerRules.new(1)
        for key, value in values.items():
            setattr(rules, key, value)
        with pytest.raises(LimitError, match=message):
            await studio.submit(member, studio.prepare("a fox"), rules=rules, channel_id=333)
    assert await studio.store.count_unfinished(member.id) == 0
    assert (await studio.store.history(member.id, offset=0, limit=5))[1] == 0


@pytest.mark.asyncio(loop_scope="module")
async def test_cancel_only_ones_own_job_and_forget_removes_rows_and_files(studio):
    ann, bob = Member(11, "ann"), Member(12, "bob")
    done = await studio.imagine(ann, "a fox --seed 3")
    async for _ in done.events:
        pass
    job = await studio.job(done.job_id)
    files = [studio.picture(job.grid_path)] + [studio.picture(i.path) for i in job.images]
    assert job.status == "done" and all(f.is_file() for f in files)

    waiting = await studio.imagine(ann, "a slow fox --steps 150")
    assert not await studio.cancel(waiting.job_id, member=bob)  # not bob's
    assert await studio.forget(ann) == len(files)
    assert not any(f.exists() for f in files)
    assert await studio.job(done.job_id) is None and await studio.job(waiting.job_id) is None
    assert (await studio.store.history(ann.id, offset=0, limit=5))[1] == 0
    with pytest.raises(USER_ERRORS):
        await studio.upscale(bob, done.job_id, 1)


@pytest.mark.asyncio(loop_scope="module")
async def test_max_side_counts_the_size_an_upscale_makes(studio):
    member = Member(13, "gus")
    grid = await studio.imagine(member, "a fox --seed 4")
    async for _ in grid.events:
        pass
    rules = ServerRules.new(1)
    rules.max_side = 300  # a 128 px tile passes, its ×4 upscale (512 px) does not
    with pytest.raises(LimitError, match="512×512 is over this server's limit of 300"):
        await studio.upscale(member, grid.job_id, 1, rules=rules)
    rules.max_side = 512
    upscale = await studio.upscale(member, grid.job_id, 1, rules=rules)
    await studio.cancel(upscale.job_id)


@pytest.mark.asyncio(loop_scope="module")
async def test_two_forgets_at_once_delete_each_file_once(studio):
    member = Member(14, "hal")
    done = await studio.imagine(member, "a lamp --seed 5")
    async for _ in done.events:
        pass
    job = await studio.job(done.job_id)
    files = [studio.picture(job.grid_path)] + [studio.picture(i.path) for i in job.images]
    assert sorted(await asyncio.gather(studio.forget(member), studio.forget(member))) == [0, len(files)]
    assert not any(f.exists() for f in files)


@pytest.mark.asyncio(loop_scope="module")
async def test_repeat_is_all_or_nothing_within_the_daily_quota_and_the_queue_limit(studio):
    member = Member(13, "rita")
    requests, _ = studio.prepare_repeated("a fox --repeat 3 --steps 150")
    assert len(requests) == 3 and len({r.seed for r in requests}) == 3
    rules = ServerRules.new(1)
    rules.daily_quota = 2
    with pytest.raises(LimitError, match="--repeat 3 makes 3 jobs; you have 2 of your 2 jobs for today left"):
        await studio.submit_many(member, requests, rules=rules, guild_id=1)
    rules.daily_quota, rules.max_queued_per_member = None, 4
    first = await studio.submit(member, requests[0], rules=rules, guild_id=1)
    with pytest.raises(LimitError, match="with the 1 you have queued or running that is over this server's limit of 4"):
        await studio.submit_many(member, [*requests, requests[0]], rules=rules, guild_id=1)
    assert await studio.store.count_unfinished(member.id) == 1  # nothing of the refused command stored
    made = await studio.submit_many(member, requests[1:], rules=rules, guild_id=1)
    assert [s.request.seed for s in made] == [r.seed for r in requests[1:]]
    assert await studio.store.count_unfinished(member.id) == 3
    for submitted in [first, *made]:
        await studio.cancel(submitted.job_id)
