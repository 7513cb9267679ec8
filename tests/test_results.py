"""bot/results.py: the text of a result, a progress state or a failure stays inside Discord's
2,000 characters with its fixed parts whole, whatever the member wrote and whatever a notice or
a failure quotes. (End to end through the emulator: tests/test_discord_messages.py.)"""

from __future__ import annotations

import re

import pytest

from bot.limits import CONTENT, length
from bot.results import ending_message, progress_text, result_message
from generation.events import Cancelled, Failed
from generation.prompt import parse_prompt
from generation.registry import load_registry
from generation.request import build_request
from storage.models import Job
from tests.discord_emulator import unfurled_links

SD15 = load_registry().get("sd-1.5")
MEMBER = 123456789012345678
LONG = "_" * 1000 + " --no " + "*" * 1000 + " --ar 3:2 --seed 9"


def job_for(text: str, **values) -> Job:
    request = build_request(parse_prompt(text), SD15)
    return Job(id=77, user_id=MEMBER, kind="imagine", model="sd-1.5", prompt=request.prompt,
               request=request.to_json(), images=[], **values)


def test_a_failure_with_a_long_reason_keeps_the_mention_and_shortens_the_reason():
    reason = "the model could not load from https://hub.example/x_y because " + "it broke " * 400
    content = ending_message(job_for(LONG), Failed(77, reason)).content
    headline, failure = content.split("\n")
    assert length(content) <= CONTENT and headline.endswith(f"… --model sd-1.5 — <@{MEMBER}>")
    assert re.match(r"\*\*(\\_)+…\*\* --ar 3:2 --no (\\\*)+… --model", headline)
    assert failure.startswith(r"❌ the model could not load from <https://hub.example/x_y> because it broke")
    assert failure.endswith("…") and unfurled_links(content) == []


def test_a_cancelled_job_with_a_long_prompt_says_so_in_full():
    content = ending_message(job_for(LONG), Cancelled(77)).content
    assert length(content) <= CONTENT and content.endswith(f"— <@{MEMBER}>\nCancelled (job 77).")


@pytest.mark.parametrize("line", ["⏳ queued — position 12", "🎨 generating 45 %"])
def test_progress_of_a_long_prompt_keeps_its_state_line(line):
    request = build_request(parse_prompt(LONG), SD15)
    content = progress_text(request, MEMBER, line)
    assert length(content) <= CONTENT and content.endswith(f"— <@{MEMBER}>\n{line}")


async def test_a_result_with_long_notices_quoting_the_prompt_keeps_its_seed_line():
    cut = "https://example.com/a_b " + "_" * 990
    notices = f"The text encoder reads 77 tokens; this part of the prompt was cut: “{cut}”\nA second notice."
    job = job_for(LONG, notices=notices)  # no parent: result_message never asks the studio
    out = await result_message(None, job, size_limit=10 * 1024 * 1024)  # type: ignore[arg-type]
    lines = out.content.split("\n")
    assert length(out.content) <= CONTENT and lines[0].endswith(f"— <@{MEMBER}>")
    assert lines[1] == "seed 9 · sd-1.5 · job 77"
    assert lines[2] == "The picture files of this job are gone from the file store."
    assert re.fullmatch(r"⚠️ The text encoder reads 77 tokens; this part of the prompt was cut: “<https://example"
                        r"\.com/a_b> (\\_)+…", lines[3])
    assert lines[4] == "⚠️ A second notice."
    assert unfurled_links(out.content) == []


def test_a_servers_rules_with_hundreds_of_channels_and_models_fit_one_message(registry_file):
    from bot.cogs.admin import describe
    from generation.registry import load_registry
    from storage.models import ServerRules

    channels = [str(10**18 + n) for n in range(300)]
    rules = ServerRules(guild_id=1, channel_ids=",".join(channels),
                          allowed_models=",".join(f"model-{n}" for n in range(300)))
    content = describe(rules, load_registry(registry_file))  # 300 allowed models no longer configured
    assert length(content) <= CONTENT
    answers_in = next(line for line in content.split("\n") if line.startswith("answers in: "))
    shown = re.findall(r"<#(\d+)>", answers_in)
    assert shown == channels[:len(shown)] and answers_in.endswith(f", … and {300 - len(shown)} more")
    # names no longer configured do not count (all are allowed), and are listed as such, shortened
    assert re.search(r"models allowed: all \(This server's allow-list names only models that are no longer "
                     r"configured \(model-0, model-1, .*, … and \d+ more\): every model is allowed", content)


@pytest.mark.parametrize("kind, outpaint, name", [
    ("pick", None, "U3"),
    ("outpaint", (0.5, 0.5, 0.5, 0.5), "Zoom Out 2x"),
    ("outpaint", (0.25, 0.25, 0.25, 0.25), "Zoom Out 1.5x"),
    ("outpaint", (0.5, 0.0, 0.0, 0.0), "Pan ⬅️"),
    ("outpaint", (0.0, 0.0, 0.0, 0.5), "Pan ⬇️"),
    ("outpaint", (0.25, 0.0, 0.25, 0.0), "Make Square"),
    ("upscale", None, "upscale"),
    ("variation", None, "variation"),
])
def test_history_names_u_and_zoom_jobs_as_their_buttons(kind, outpaint, name):
    """/history called a U press "pick" and a Zoom Out or Pan "outpaint": names members never
    see on a button. (`pintor history` prints the same names: tests/test_cli_jobs.py.)"""
    from bot.cogs.history import job_embed
    from generation.request import Request, kind_name

    job = job_for("a lighthouse --seed 3", status="done", parent_id=70, parent_index=3)
    request = Request.from_json(job.request).replace(kind=kind, outpaint=outpaint)
    job.kind, job.request = kind, request.to_json()
    assert kind_name(kind, outpaint, 3) == name
    fields = {field.name: field.value for field in job_embed(job).fields}
    assert fields["kind"] == name
