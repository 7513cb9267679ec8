"""`/metrics` and `/healthz` of the running bot (the shared harness serves them on a free
loopback port, as `PINTOR_METRICS_PORT` makes `pintor run` do): scraped over HTTP while members
use /imagine, the numbers move with the jobs."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import discord
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.discord_harness import Harness, acked, is_result

pytestmark = pytest.mark.asyncio(loop_scope="session")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def url(pintor: Harness, path: str) -> str:
    assert pintor.running is not None and pintor.running.metrics_port is not None
    return f"http://127.0.0.1:{pintor.running.metrics_port}{path}"


async def scrape(pintor: Harness) -> Samples:
    """Every sample of /metrics, keyed by name and sorted labels, as Prometheus would read it."""
    async with aiohttp.ClientSession() as session, session.get(url(pintor, "/metrics")) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        page = await response.text()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(page) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_the_numbers_move_with_jobs(pintor: Harness):
    emu = pintor.emu
    before = await scrape(pintor)
    members = [emu._snowflake() for _ in range(4)]
    # four members at once: one job runs, the others wait, and the queue depth shows them
    inters = [await emu.slash("imagine", {"prompt": f"a metered lighthouse {i} --seed {i}"}, user_id=member)
              for i, member in enumerate(members)]
    for inter in inters:
        await acked(inter, kind=5)
    deepest = 0.0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 90
    while not all(inter.original is not None and is_result(inter.original) for inter in inters):
        deepest = max(deepest, value(await scrape(pintor), "pintor_queue_depth"))
        assert loop.time() < deadline, "the jobs did not finish"
        await asyncio.sleep(0.01)
    assert deepest >= 1, "no scrape saw a job waiting"

    after = await scrape(pintor)
    grew = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)  # noqa: E731
    assert grew("pintor_jobs_total", kind="imagine", outcome="done") == 4
    assert grew("pintor_job_queued_seconds_count", kind="imagine") == 4
    assert grew("pintor_job_generating_seconds_count", kind="imagine") == 4
    assert grew("pintor_job_generating_seconds_sum", kind="imagine") > 0
    assert grew("pintor_steps_total") == 4 * 2  # tiny-sd makes each grid in 2 steps
    assert value(after, "pintor_steps_per_second") > 0
    assert value(after, "pintor_queue_depth") == 0 and value(after, "pintor_jobs_running") == 0
    # the one local worker, idle again (its state is read at the scrape)
    assert value(after, "pintor_workers", state="idle") == 1
    assert value(after, "pintor_worker_up", worker="local", state="idle") == 1
    assert sum(value(after, "pintor_workers", state=s) for s in ("starting", "busy", "down")) == 0


async def test_requests_discord_refuses_are_counted_by_status(pintor: Harness):
    before = await scrape(pintor)
    with pytest.raises(discord.NotFound):  # a message that does not exist, through discord.py's own client
        await pintor.bot.http.get_message(pintor.emu._snowflake(), pintor.emu._snowflake())
    after = await scrape(pintor)
    assert value(after, "pintor_discord_errors_total", status="404") - \
        value(before, "pintor_discord_errors_total", status="404") == 1


async def test_healthz_is_ok_while_the_bot_runs(pintor: Harness):
    async with aiohttp.ClientSession() as session, session.get(url(pintor, "/healthz")) as response:
        body = json.loads(await response.text())
        assert (response.status, body) == (200, {"status": "ok", "problems": {}})
    assert pintor.settings.pintor_metrics_host == "127.0.0.1"  # loopback unless told otherwise
