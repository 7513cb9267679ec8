"""Every message Pintor builds stays inside Discord's limits and echoes member text safely, end
to end through the emulator (which refuses, as Discord does, any message over a limit, and
records every link Discord would unfurl: the `pintor` fixture fails a test that caused either).

Long prompts (issue 10.9), links (10.10), text direction (10.11), /info and /history over the
embed limits (20.12), /history's buttons after /forget (20.13).
"""

from __future__ import annotations

import asyncio
import re
import unicodedata

import pytest
from sqlalchemy import update

from bot.limits import CONTENT, EMBEDS_TOTAL, FIELD_VALUE, FSI, PDI, embeds_length, length
from storage.models import Job, JobStatus
from tests.discord_harness import Harness, acked, is_result, job_id_of

pytestmark = pytest.mark.asyncio(loop_scope="session")

MESSAGE, DEFERRED, DEFERRED_UPDATE, UPDATE = 4, 5, 6, 7
DIRECTION_CONTROLS = {"LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI"}
ESCAPED_UNDERSCORES = re.compile(r"(\\_)+…")  # a cut never splits an escape


def contents_sent(pintor: Harness, inter) -> list[str]:
    """The content of every create or edit of the interaction's messages, in order."""
    return [r.json["content"] for r in pintor.requests(lambda r: inter.token in r.path and r.method in ("PATCH", "POST")
                                                       and isinstance(r.json, dict) and r.json.get("content"))]


async def store_jobs(pintor: Harness, user_id: int, prompts: list[str], status: str = JobStatus.DONE) -> list[Job]:
    """Jobs stored directly (none runs), oldest first."""
    studio, jobs = pintor.studio, []
    for prompt in prompts:
        request = studio.prepare(prompt)
        jobs.append(await studio.store.create_job(
            user_id=user_id, user_name=f"member{user_id % 1000}", kind="imagine", model=request.model,
            prompt=request.prompt, request=request.to_json()))
    async with studio.store.session.begin() as session:
        await session.execute(update(Job).where(Job.id.in_([j.id for j in jobs])).values(status=status))
    return jobs


async def stored_job(pintor: Harness, member: int, timeout: float = 30.0) -> int:
    """The id of the member's newest job, once it is stored."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (jobs := (await pintor.studio.store.history(member, offset=0, limit=1))[0]):
        assert loop.time() < deadline, "no job was stored"
        await asyncio.sleep(0.05)
    return jobs[0].id


def button(message: dict, label: str) -> str:
    return next(c["custom_id"] for row in message["components"] for c in row["components"] if c.get("label") == label)


# -- long prompts: only the member's text is shortened ----------------------------------------------


async def test_a_990_underscore_prompt_keeps_the_mention_parameters_and_job_line(pintor: Harness):
    emu = pintor.emu
    inter = await emu.slash("imagine", {"prompt": "_" * 990 + " --ar 3:2 --seed 9"})
    await acked(inter, kind=DEFERRED)
    final = await inter.wait_original(is_result, timeout=90)
    job_id = job_id_of(final)
    mention = f"— <@{emu.user_id}>"

    sent = contents_sent(pintor, inter)
    assert len(sent) >= 2  # "queued"/"starting" at least once, then the result
    for content in sent:  # progress and result alike
        headline = content.splitlines()[0]
        assert length(content) <= CONTENT
        prompt, rest = headline[2:].split("** ", 1)
        assert ESCAPED_UNDERSCORES.fullmatch(prompt), prompt[-30:]
        assert rest == f"--ar 3:2 --model tiny-sd {mention}"
    for content in sent[:-1]:  # the state line of each progress edit is whole
        assert re.fullmatch(r"⏳ queued — position \d+|🎨 starting…|🎨 generating \d+ %", content.split("\n")[1])
    assert sent[-1] == final["content"]
    assert f"seed 9 · tiny-sd · job {job_id}" in final["content"].splitlines()


async def test_a_long_prompt_and_long_negative_share_the_room_on_a_cancelled_job(pintor: Harness):
    emu, studio = pintor.emu, pintor.studio
    member = emu._snowflake()
    long = "*" * 1000 + " --no " + "|" * 1000 + " --steps 150"
    inter = await emu.slash("imagine", {"prompt": long}, user_id=member)
    await acked(inter, kind=DEFERRED)
    job_id = await stored_job(pintor, member)
    await studio.cancel(job_id)
    ended = await inter.wait_original(lambda m: "Cancelled" in m["content"], timeout=60)
    headline, status = ended["content"].split("\n")
    assert status == f"Cancelled (job {job_id})."
    assert length(ended["content"]) <= CONTENT and headline.endswith(f"— <@{member}>")
    prompt, negative = headline.split("** ", 1)
    assert re.fullmatch(r"\*\*(\\\*)+…", prompt) and re.fullmatch(r"--no (\\\|)+… --steps 150 .*", negative)
    assert abs(length(prompt) - length(negative)) < 60  # equal shares of the room
    for content in contents_sent(pintor, inter):
        assert length(content) <= CONTENT and f"— <@{member}>" in content


# -- links: never unfurled ----------------------------------------------------------------------------


async def test_links_in_a_prompt_are_not_unfurled_in_results_or_reposts(pintor: Harness):
    emu = pintor.emu
    prompt = ("a cat https://example.com/cat_pic.png beside HTTP://evil.example/x?a=1&b=_2, "
              "[free nitro](https://scam.example) --no https://ads.example/banner --seed 3")
    inter = await emu.slash("imagine", {"prompt": prompt})
    await acked(inter, kind=DEFERRED)
    final = await inter.wait_original(is_result, timeout=90)
    content = final["content"]
    # bare links are taken out of the prompt's text (said in a notice); those left (a masked
    # link, one in --no) are echoed inside <…>
    assert content.startswith(r"**a cat beside \[free nitro\](<https://scam.example>)** --no <https://ads.example/banner>")
    assert not [url for message_id, url in emu.unfurled if message_id == int(final["id"])]

    shown = await emu.slash("show", {"job_id": job_id_of(final)})
    await acked(shown, kind=DEFERRED)
    repost = await shown.wait_original(is_result, timeout=30)
    assert repost["content"] == content
    for sent in contents_sent(pintor, inter) + contents_sent(pintor, shown):
        assert re.findall(r"(?<!<)https?://", sent, re.IGNORECASE) == []
    # (the `pintor` fixture checks emu.unfurled for every message of the test)


async def test_a_link_in_a_refused_prompt_is_not_unfurled(pintor: Harness):
    inter = await pintor.emu.slash("imagine", {"prompt": "a cat --seed https://example.com/x"})
    refusal = (await acked(inter, kind=MESSAGE))["data"]["content"]
    assert "--seed" in refusal and "example.com/x" in refusal and not re.findall(r"(?<!<)https?://", refusal)


# -- text direction: the member's text cannot reorder the line with the mention --------------------


@pytest.mark.parametrize("prompt, shown", [
    ("\u202eevil prompt\u202c --seed 4", "evil prompt"),  # RIGHT-TO-LEFT OVERRIDE at the start
    ("\u2067evil\u2069\u2069 \u200bprompt\u2066 --seed 4", "evil prompt"),  # isolates, one unpaired
    ("שלום עולם --seed 4", f"{FSI}שלום עולם{PDI}"),  # right-to-left text: isolated
])
async def test_direction_controls_in_a_prompt_do_not_reach_the_mention_line(pintor: Harness, prompt, shown):
    emu = pintor.emu
    inter = await emu.slash("imagine", {"prompt": prompt})
    await acked(inter, kind=DEFERRED)
    final = await inter.wait_original(is_result, timeout=90)
    for content in contents_sent(pintor, inter):
        headline = content.splitlines()[0]
        assert headline == f"**{shown}** --model tiny-sd — <@{emu.user_id}>"
        controls = [c for c in headline if unicodedata.bidirectional(c) in DIRECTION_CONTROLS]
        assert controls == ([FSI, PDI] if FSI in shown else [])
    assert f"· job {job_id_of(final)}" in final["content"]


# -- /info and /history stay inside the embed limits --------------------------------------------------


async def test_info_with_forty_unfinished_jobs_lists_what_fits_and_says_how_many_more(pintor: Harness):
    emu, studio = pintor.emu, pintor.studio
    member = emu._snowflake()
    jobs = await store_jobs(pintor, member, [f"a lantern number {n}" for n in range(40)], status="queued")
    try:
        info = await emu.slash("info", user_id=member)
        [embed] = (await acked(info, kind=MESSAGE))["data"]["embeds"]
        listed = next(f["value"] for f in embed["fields"] if f["name"] == "your jobs in the queue")
        assert length(listed) <= FIELD_VALUE
        *lines, more = listed.split("\n")
        assert lines == [f"job {job.id} (imagine): position None" for job in jobs[:len(lines)]]
        assert more == f"… and {40 - len(lines)} more" and len(lines) >= 20
    finally:
        for job in jobs:  # never left queued: a restart of the shared bot would run them
            await studio.store.mark_cancelled(job.id)


async def test_history_of_long_prompts_and_long_failures_fits_discords_embed_limits(pintor: Harness):
    emu, store = pintor.emu, pintor.studio.store
    member = emu._snowflake()
    prompt = "**bold** _a_ ~~b~~ `c` " + "x" * 970
    jobs = await store_jobs(pintor, member, [f"{prompt}{n} --no {'|' * 990} --seed {n}" for n in range(7)])
    for job in jobs:
        await store.mark_failed(job.id, f"job {job.id} failed: " + "a very long reason " * 100)

    inter = await emu.slash("history", user_id=member)
    await acked(inter, kind=DEFERRED)
    for page in (1, 2):
        message = await inter.wait_original(lambda m, page=page: m["embeds"] and f"page {page} of 2" in
                                            m["embeds"][-1]["footer"]["text"])
        embeds = message["embeds"]
        assert embeds_length(embeds) <= EMBEDS_TOTAL
        newest_first = list(reversed(jobs))[(page - 1) * 5:page * 5]
        assert len(embeds) == len(newest_first)
        for embed, job in zip(embeds, newest_first, strict=True):
            assert length(embed["title"]) <= 256 and embed["title"].startswith(r"\*\*bold\*\* \_a\_")
            assert embed["title"].endswith("…")
            assert re.fullmatch(r"--no (\\\|)+… --model tiny-sd --seed \d+", embed["description"])
            status = next(f["value"] for f in embed["fields"] if f["name"] == "status")
            assert status.startswith(f"failed: job {job.id} failed: a very long reason") and status.endswith("…")
            assert next(f["value"] for f in embed["fields"] if f["name"] == "job") == f"`/show job_id:{job.id}`"
        if page == 1:
            click = await emu.click(int(message["id"]), f"pintor:h:{member}:2", user_id=member)
            await acked(click, kind=UPDATE)


async def test_history_buttons_after_forget_say_there_are_no_jobs_and_go_away(pintor: Harness):
    emu = pintor.emu
    member = emu._snowflake()
    await store_jobs(pintor, member, [f"a kite number {n}" for n in range(7)])
    inter = await emu.slash("history", user_id=member)
    await acked(inter, kind=DEFERRED)
    page = await inter.wait_original(lambda m: m["embeds"])
    older = await emu.click(int(page["id"]), f"pintor:h:{member}:2", user_id=member)
    await acked(older, kind=UPDATE)

    ask = await emu.slash("forget", user_id=member)
    confirm = (await acked(ask, kind=MESSAGE))["data"]
    click = await emu.click(ask.original_id, button(emu.messages[ask.original_id], "Delete everything"),
                            user_id=member)
    await acked(click, kind=DEFERRED_UPDATE)
    await ask.wait_original(lambda m: m["content"].startswith("Done"))
    assert confirm

    # ◀ on the old page 2: the page has no jobs any more
    newer = await emu.click(int(page["id"]), f"pintor:h:{member}:1", user_id=member)
    callback = await acked(newer, kind=UPDATE)
    assert callback["data"]["content"].startswith("You have no jobs any more")
    after = emu.messages[int(page["id"])]
    assert after["content"].startswith("You have no jobs any more")
    assert after["embeds"] == [] and after["components"] == [] and after["attachments"] == []


async def test_show_of_a_job_that_failed_with_a_long_reason_fits_and_does_not_unfurl(pintor: Harness):
    emu, store = pintor.emu, pintor.studio.store
    [job] = await store_jobs(pintor, emu.user_id, ["a lantern that failed --seed 2"])
    async with store.session.begin() as session:  # made in the server, as /show expects
        await session.execute(update(Job).where(Job.id == job.id).values(guild_id=emu.guild_id))
    await store.mark_failed(job.id, "could not load https://hub.example/model_x: " + "it broke, " * 400)
    shown = await emu.slash("show", {"job_id": job.id})
    content = (await acked(shown, kind=MESSAGE))["data"]["content"]
    assert length(content) <= CONTENT and content.endswith("…")
    assert content.startswith(f"Job {job.id} failed: could not load <https://hub.example/model_x>: it broke,")
