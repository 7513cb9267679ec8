"""/pintor-admin end to end, with the real bot, studio and worker, through the Discord emulator:
who may use it, and that each rule it sets is applied to members' jobs.

The bot is shared by the whole session: every test puts the server's rules back as they were.
"""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio
from sqlalchemy import func, select, update

from storage.models import Job, JobStatus, ServerRules
from tests.discord_harness import Harness, acked, is_result, job_id_of

pytestmark = pytest.mark.asyncio(loop_scope="session")

MESSAGE, DEFERRED, DEFERRED_UPDATE = 4, 5, 6
EPHEMERAL = 64
MANAGE_GUILD = str(1 << 5)
RULES = ("allowed_models", "channel_ids", "max_queued_per_member", "daily_quota", "max_steps", "max_side",
         "buttons_author_only", "nsfw_check", "paused", "strict_parameters", "allowed_loras", "max_loras",
         "allow_controlnet", "clip_guidance")


async def admin(pintor: Harness, subcommand: str, options: dict | None = None, *,
                permissions: str = MANAGE_GUILD) -> dict:
    """Run /pintor-admin <subcommand>; its answer (always ephemeral)."""
    inter = await pintor.emu.slash("pintor-admin", options, subcommand=subcommand, permissions=permissions,
                                   user_id=pintor.emu._snowflake())
    callback = await acked(inter, kind=MESSAGE)
    assert callback["data"]["flags"] & EPHEMERAL
    return callback["data"]


async def refusal(pintor: Harness, inter) -> str:
    """What the member was told privately after their public "thinking…" reply was removed."""
    await acked(inter, kind=DEFERRED)
    await pintor.until(lambda: inter.followups and inter.original is None)
    [answer] = inter.followups
    assert answer["flags"] & EPHEMERAL
    return answer["content"]


async def rules_now(pintor: Harness) -> tuple:
    rules = await pintor.studio.preferences_and_rules.guild(pintor.emu.guild_id)
    return tuple(getattr(rules, name) for name in RULES)


@pytest_asyncio.fixture(loop_scope="session")
async def server(pintor: Harness):
    """The harness, with the server's rules put back as they were after the test."""
    before = dict(zip(RULES, await rules_now(pintor), strict=True))
    yield pintor
    await pintor.studio.preferences_and_rules.update_guild(pintor.emu.guild_id, **before)


async def jobs_of(pintor: Harness, member: int) -> list[Job]:
    async with pintor.studio.store.session() as session:
        return list((await session.scalars(select(Job).where(Job.user_id == member).order_by(Job.id))).all())


async def stored_jobs(pintor: Harness, member: int, count: int, timeout: float = 10.0) -> list[Job]:
    """A member's jobs, once `count` are stored (for jobs accepted after the acknowledgement)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(jobs := await jobs_of(pintor, member)) < count:
        assert loop.time() < deadline, f"{len(jobs)} jobs of member {member} stored, not {count}"
        await asyncio.sleep(0.05)
    return jobs


async def test_the_group_is_for_server_managers_only(pintor: Harness):
    [group] = [c for c in pintor.emu.commands[None] if c["name"] == "pintor-admin"]
    assert str(group["default_member_permissions"]) == MANAGE_GUILD
    assert group.get("contexts") == [0] or group.get("dm_permission") is False
    assert {o["name"] for o in group["options"]} == {
        "show", "models", "loras", "channels", "limits", "buttons", "nsfw-check", "strict-parameters", "remote-models",
        "controlnet", "clip-guidance",
        "pause",
        "resume"}


@pytest.mark.parametrize("subcommand, options", [
    ("show", None), ("models", {"names": "tiny-sdxl"}), ("channels", {"channels": "all"}),
    ("limits", {"max_queued": 1, "daily_quota": 1}), ("buttons", {"author_only": True}),
    ("nsfw-check", {"on": False}), ("strict-parameters", {"on": True}), ("pause", None), ("resume", None)])
async def test_a_member_without_manage_server_is_refused(server: Harness, subcommand: str, options):
    before = await rules_now(server)
    inter = await server.emu.slash("pintor-admin", options, subcommand=subcommand, permissions="0",
                                   user_id=server.emu._snowflake())
    callback = await acked(inter, kind=MESSAGE)
    assert callback["data"]["flags"] & EPHEMERAL
    assert callback["data"]["content"] == "Only members with Manage Server can change Pintor's settings."
    # an admin's command after it is answered in full: by then, anything more for this one was sent too
    await admin(server, "show")
    assert not inter.followups, "a refusal is all the member hears"
    assert await rules_now(server) == before


async def test_it_is_refused_in_direct_messages(pintor: Harness):
    inter = await pintor.emu.slash("pintor-admin", subcommand="pause", guild=False, permissions=MANAGE_GUILD)
    callback = await acked(inter, kind=MESSAGE)
    assert callback["data"]["flags"] & EPHEMERAL and "Manage Server" in callback["data"]["content"]
    await admin(pintor, "show")
    assert not inter.followups


async def test_show_describes_the_servers_rules(server: Harness):
    await server.studio.preferences_and_rules.update_guild(server.emu.guild_id, max_queued_per_member=5,
                                                           daily_quota=None, allowed_models=None, channel_ids=None,
                                                           paused=False)
    content = (await admin(server, "show"))["content"]
    assert content.splitlines()[0] == "**Pintor on this server**"
    assert "models allowed: all" in content and "answers in: all channels" in content
    assert "jobs one member may have queued: 5" in content and "jobs per member per day: no limit" in content


async def test_at_most_max_queued_jobs_of_twenty_simultaneous_imagines(server: Harness):
    emu, studio = server.emu, server.studio
    answer = await admin(server, "limits", {"max_queued": 3, "max_steps": 150})
    assert "jobs one member may have queued: 3" in answer["content"]
    assert (await studio.preferences_and_rules.guild(emu.guild_id)).max_queued_per_member == 3

    member = emu._snowflake()
    inters = await asyncio.gather(*(
        emu.slash("imagine", {"prompt": f"a crowd, person {n} --steps 150"}, user_id=member) for n in range(20)))
    try:
        for inter in inters:
            await acked(inter, kind=DEFERRED)
        await server.until(lambda: sum(bool(i.followups) for i in inters) == 17)
        refused = [i for i in inters if i.followups]
        for inter in refused:
            [answer] = inter.followups
            assert answer["flags"] & EPHEMERAL
            assert "You already have 3 jobs queued or running; this server allows 3" in answer["content"]
        jobs = await jobs_of(server, member)
        assert len(jobs) == 3 and all(job.status in ("queued", "running") for job in jobs)
    finally:
        for job in await jobs_of(server, member):
            await studio.cancel(job.id)

    # over max_steps
    await admin(server, "limits", {"max_steps": 10})
    steps = await emu.slash("imagine", {"prompt": "a slow crowd --steps 20"}, user_id=emu._snowflake())
    assert "20 steps is over this server's limit of 10" in await refusal(server, steps)

    # 0 = no limit
    content = (await admin(server, "limits", {"max_queued": 0, "max_steps": 0}))["content"]
    assert "jobs one member may have queued: no limit" in content and "max steps: no limit" in content
    rules = await studio.preferences_and_rules.guild(emu.guild_id)
    assert (rules.max_queued_per_member, rules.max_steps) == (None, None)


async def test_the_daily_quota_says_when_it_resets(server: Harness):
    emu, studio = server.emu, server.studio
    await admin(server, "limits", {"daily_quota": 2})
    member = emu._snowflake()
    request = studio.prepare("an earlier picture")
    for _ in range(2):
        await studio.store.create_job(user_id=member, user_name="early", kind="imagine", model=request.model,
                                      prompt=request.prompt, request=request.to_json(), guild_id=emu.guild_id)
    async with studio.store.session.begin() as session:
        await session.execute(update(Job).where(Job.user_id == member).values(status=JobStatus.DONE))

    inter = await emu.slash("imagine", {"prompt": "one picture too many"}, user_id=member)
    text = await refusal(server, inter)
    assert "You have used your 2 jobs for today. The quota resets at 00:00 UTC, in " in text
    assert len(await jobs_of(server, member)) == 2


async def test_only_allowed_models_may_be_used(server: Harness):
    emu = server.emu
    answer = await admin(server, "models", {"names": "nope, tiny-sd"})
    assert "Unknown model(s): nope" in answer["content"]
    assert (await server.studio.preferences_and_rules.guild(emu.guild_id)).allowed_models is None

    assert "models allowed: tiny-sd" in (await admin(server, "models", {"names": "tiny-sd"}))["content"]
    member = emu._snowflake()
    inter = await emu.slash("imagine", {"prompt": "a fox --model tiny-sdxl"}, user_id=member)
    text = await refusal(server, inter)
    assert "The model 'tiny-sdxl' is not allowed on this server. Allowed: tiny-sd." in text
    assert not await jobs_of(server, member)

    assert "models allowed: all" in (await admin(server, "models", {"names": "all"}))["content"]
    assert (await server.studio.preferences_and_rules.guild(emu.guild_id)).allowed_models is None


async def test_an_allow_list_of_removed_models_reads_the_same_in_every_view(server: Harness):
    """Issue 27 item 10, the views: an allow-list that names only models removed from models.toml
    allows every model (names no longer configured do not count), and /pintor-admin show,
    /settings and /info say so in the same words; one that also names a configured model allows
    that one, and each view says the removed names do not count."""
    emu, stored = server.emu, server.studio.preferences_and_rules
    member = emu._snowflake()

    async def views() -> tuple[str, str, dict[str, str]]:
        shown = (await admin(server, "show"))["content"]
        settings = await emu.slash("settings", user_id=member)
        settings_text = (await acked(settings, kind=MESSAGE))["data"]["content"]
        info = await emu.slash("info", user_id=member)
        [embed] = (await acked(info, kind=MESSAGE))["data"]["embeds"]
        return shown, settings_text, {f["name"]: f["value"] for f in embed.get("fields", [])}

    await stored.update_guild(emu.guild_id, allowed_models="removed-model,gone-too")
    only_removed = ("This server's allow-list names only models that are no longer configured (removed-model, "
                    "gone-too): every model is allowed until an admin sets it again (/pintor-admin models).")
    shown, settings, info = await views()
    assert f"models allowed: all ({only_removed})" in shown and "prompts without --model use tiny-sd" in shown
    assert f"ℹ️ {only_removed}" in settings and "model: `tiny-sd (server default)`" in settings
    assert info["allow-list"] == only_removed and info["default model"] == "tiny-sd"
    assert "`tiny-sdxl`" in info["models"] and "`tiny-sd`" in info["models"]  # every model, as said

    await stored.update_guild(emu.guild_id, allowed_models="removed-model,tiny-sdxl")
    also = ("This server's allow-list also names models that are no longer configured (removed-model): they do "
            "not count.")
    shown, settings, info = await views()
    assert f"models allowed: tiny-sdxl ({also})" in shown
    assert f"ℹ️ {also}" in settings and "model: `tiny-sdxl (server default)`" in settings
    assert info["allow-list"] == also and "`tiny-sdxl`" in info["models"] and "`tiny-sd`" not in info["models"]

    await stored.update_guild(emu.guild_id, allowed_models="tiny-sdxl")  # nothing removed: nothing said
    shown, settings, info = await views()
    assert "no longer configured" not in shown + settings and "allow-list" not in info


async def test_loras_allowed_and_per_job_limit_are_stored_and_unknown_ones_refused(server: Harness):
    emu = server.emu
    before = await server.studio.preferences_and_rules.guild(emu.guild_id)
    answer = await admin(server, "loras", {"names": "nope", "max_per_job": 1})
    assert "Not changed: unknown LoRA(s): nope. Configured: none. Or write 'all' or 'none'." in answer["content"]
    stored = await server.studio.preferences_and_rules.guild(emu.guild_id)
    assert (stored.allowed_loras, stored.max_loras) == (before.allowed_loras, before.max_loras)

    answer = await admin(server, "loras", {"names": "none", "max_per_job": 1})
    assert "LoRAs allowed: none · at most 1 per job" in answer["content"]
    stored = await server.studio.preferences_and_rules.guild(emu.guild_id)
    assert (stored.allowed_loras, stored.max_loras) == ("", 1)
    answer = await admin(server, "loras", {"names": "all", "max_per_job": 0})
    assert "LoRAs allowed: all (none are configured) · at most 8 per job" in answer["content"]
    stored = await server.studio.preferences_and_rules.guild(emu.guild_id)
    assert (stored.allowed_loras, stored.max_loras) == (None, None)

    # a member's LoRA that is not configured: a private message, nothing stored
    member = emu._snowflake()
    inter = await emu.slash("imagine", {"prompt": "a fox <lora:pixel-art:0.7>"}, user_id=member)
    callback = await inter.wait_callback(timeout=3)
    assert callback["type"] == MESSAGE and callback["data"]["flags"] & EPHEMERAL
    assert "Unknown LoRA 'pixel-art'. Available: none are configured." in callback["data"]["content"]
    assert not await jobs_of(server, member)


async def test_pintor_answers_only_in_the_chosen_channels(server: Harness):
    emu, studio = server.emu, server.studio
    elsewhere = emu._snowflake()  # another channel of this server
    emu.channels[elsewhere] = emu._guild_channel(elsewhere) | {"name": "art"}
    assert "`the` (not a channel mention)" in (await admin(server, "channels", {"channels": "the fun one"}))["content"]
    answer = await admin(server, "channels", {"channels": f"<#{elsewhere}>"})
    assert f"answers in: <#{elsewhere}>" in answer["content"]

    member = emu._snowflake()
    inter = await emu.slash("imagine", {"prompt": "a fox in the wrong channel"}, user_id=member)
    assert f"Pintor does not answer in this channel. Use one of: <#{elsewhere}>." in await refusal(server, inter)
    assert not await jobs_of(server, member)

    await admin(server, "channels", {"channels": f"<#{elsewhere}> <#{emu.channel_id}>"})
    assert (await studio.preferences_and_rules.guild(emu.guild_id)).channel_ids == f"{elsewhere},{emu.channel_id}"
    accepted = await emu.slash("imagine", {"prompt": "a fox in the right channel --steps 150"}, user_id=member)
    await acked(accepted, kind=DEFERRED)
    [job] = await stored_jobs(server, member, 1)
    await studio.cancel(job.id)
    assert "all channels" in (await admin(server, "channels", {"channels": "all"}))["content"]


async def test_pause_resume_and_author_only_buttons(server: Harness):
    emu, studio = server.emu, server.studio
    member, other = emu._snowflake(), emu._snowflake()
    assert "⏸ **paused**" in (await admin(server, "pause"))["content"]
    inter = await emu.slash("imagine", {"prompt": "a fox on a paused server"}, user_id=member)
    assert "Pintor is paused on this server by its admins" in await refusal(server, inter)
    assert not await jobs_of(server, member)

    assert "paused" not in (await admin(server, "resume"))["content"]
    inter = await emu.slash("imagine", {"prompt": "a fox on a working server --seed 12"}, user_id=member)
    await acked(inter, kind=DEFERRED)
    grid = await inter.wait_original(is_result, timeout=90)
    job_id = job_id_of(grid)

    assert "buttons: only the author" in (await admin(server, "buttons", {"author_only": True}))["content"]
    async with studio.store.session() as session:
        before = await session.scalar(select(func.count()).select_from(Job))
    click = await emu.click(int(grid["id"]), f"pintor:u:{job_id}:1", user_id=other)
    await acked(click, kind=DEFERRED_UPDATE)
    await server.until(lambda: click.followups)
    [answer] = click.followups
    assert answer["flags"] & EPHEMERAL
    assert answer["content"] == f"Only <@{member}>, who asked for job {job_id}, can use its buttons."
    async with studio.store.session() as session:
        assert await session.scalar(select(func.count()).select_from(Job)) == before
    assert "buttons: everyone" in (await admin(server, "buttons", {"author_only": False}))["content"]


async def test_the_nsfw_check_switch_is_stored(server: Harness):
    emu, studio = server.emu, server.studio
    assert "NSFW check: off" in (await admin(server, "nsfw-check", {"on": False}))["content"]
    assert (await studio.preferences_and_rules.guild(emu.guild_id)).nsfw_check is False
    member = emu._snowflake()
    inter = await emu.slash("imagine", {"prompt": "an unchecked fox --steps 150"}, user_id=member)
    await acked(inter, kind=DEFERRED)
    [job] = await stored_jobs(server, member, 1)
    await studio.cancel(job.id)
    assert '"safety_check": false' in job.request
    assert "NSFW check: on" in (await admin(server, "nsfw-check", {"on": True}))["content"]
    async with studio.store.session() as session:
        assert (await session.get(ServerRules, emu.guild_id)).nsfw_check is True


async def test_controlnet_switch_is_stored_and_shown(server: Harness):
    emu, studio = server.emu, server.studio
    assert "ControlNet (control images): allowed" in (await admin(server, "show"))["content"]  # the default
    answer = (await admin(server, "controlnet", {"on": False}))["content"]
    assert "ControlNet (control images): not allowed" in answer
    assert (await studio.preferences_and_rules.guild(emu.guild_id)).allow_controlnet is False
    answer = (await admin(server, "controlnet", {"on": True}))["content"]
    assert "ControlNet (control images): allowed" in answer


async def test_strict_parameters_switch_is_stored_and_applied(server: Harness):
    emu, studio = server.emu, server.studio
    answer = (await admin(server, "strict-parameters", {"on": True}))["content"]
    assert "parameters Pintor does not have: refused (strict)" in answer
    assert (await studio.preferences_and_rules.guild(emu.guild_id)).strict_parameters is True
    try:
        inter = await emu.slash("imagine", {"prompt": "a fox --raw --v 5"}, user_id=emu._snowflake())
        callback = await acked(inter, kind=MESSAGE)
        assert "“--raw”" in callback["data"]["content"] and callback["data"]["flags"] & EPHEMERAL
    finally:
        answer = (await admin(server, "strict-parameters", {"on": False}))["content"]
    assert "parameters Pintor does not have: ignored, with a notice" in answer
    assert (await studio.preferences_and_rules.guild(emu.guild_id)).strict_parameters is False


async def test_clip_guidance_switch_is_stored_and_shown(server: Harness):
    emu, studio = server.emu, server.studio
    assert "CLIP guidance (--clip): allowed (models that have it: none)" in (await admin(server, "show"))["content"]
    try:
        answer = (await admin(server, "clip-guidance", {"on": False}))["content"]
        assert "CLIP guidance (--clip): refused" in answer
        assert (await studio.preferences_and_rules.guild(emu.guild_id)).clip_guidance is False
    finally:
        answer = (await admin(server, "clip-guidance", {"on": True}))["content"]
    assert "CLIP guidance (--clip): allowed" in answer
    assert (await studio.preferences_and_rules.guild(emu.guild_id)).clip_guidance is True
