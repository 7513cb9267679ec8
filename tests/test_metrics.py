"""bot.metrics on its own: how job events become numbers (every outcome, a job queued again
after a worker crash, jobs queued before the process watched), and the HTTP server's answers
(503 with the problems, a failing check) and the settings' defaults (off, loopback)."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.metrics import Metrics, WorkerStatus, serve
from bot.settings import Settings
from generation.events import Cancelled, Done, Failed, ImageFile, Interrupted, Progress, Queued, Started
from tests.test_discord_metrics import Samples, value

GRID = ImageFile("/g.png", 64, 64, 1, "0" * 64)


def samples(metrics: Metrics) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(metrics.exposition().decode()) for s in family.samples}


async def test_each_outcome_is_counted_by_kind():
    kinds = {1: "imagine", 2: "upscale", 3: "blend", 4: "imagine"}

    async def kind_of(job_id: int) -> str | None:
        return kinds.get(job_id)

    metrics = Metrics(kind_of=kind_of)
    for job_id in kinds:
        await metrics.on_event(job_id, Queued(job_id, job_id))
    assert value(samples(metrics), "pintor_queue_depth") == 4
    await metrics.on_event(1, Started(1))
    for step in (1, 2, 3):
        await metrics.on_event(1, Progress(1, step, 3))
    got = samples(metrics)
    assert (value(got, "pintor_queue_depth"), value(got, "pintor_jobs_running")) == (3, 1)
    await metrics.on_event(1, Done(1, (GRID,), GRID))
    await metrics.on_event(2, Started(2))
    await metrics.on_event(2, Failed(2, "out of memory"))
    await metrics.on_event(3, Cancelled(3))  # cancelled while waiting
    await metrics.on_event(4, Started(4))
    await metrics.on_event(4, Interrupted(4))  # Pintor stopped: queued again at the next start
    got = samples(metrics)
    assert [value(got, "pintor_jobs_total", kind=k, outcome=o) for k, o in [
        ("imagine", "done"), ("upscale", "failed"), ("blend", "cancelled"), ("imagine", "interrupted")]] == [1] * 4
    assert value(got, "pintor_steps_total") == 3 and value(got, "pintor_steps_per_second") > 0
    # time queued for the three that started; time generating for the one done only
    assert value(got, "pintor_job_queued_seconds_count", kind="imagine") == 2
    assert value(got, "pintor_job_queued_seconds_count", kind="upscale") == 1
    assert value(got, "pintor_job_queued_seconds_count", kind="blend") == 0
    assert value(got, "pintor_job_generating_seconds_count", kind="imagine") == 1
    assert value(got, "pintor_job_generating_seconds_count", kind="upscale") == 0
    assert (value(got, "pintor_queue_depth"), value(got, "pintor_jobs_running")) == (0, 0)


async def test_a_job_queued_again_after_a_crash_is_one_job():
    """The worker died mid-job: the queue queues it again first (Queued), it starts again and
    ends once. Its steps are not counted twice; its kind is asked once."""
    asked: list[int] = []

    async def kind_of(job_id: int) -> str | None:
        asked.append(job_id)
        return "imagine"

    metrics = Metrics(kind_of=kind_of)
    await metrics.on_event(7, Queued(7, 1))
    await metrics.on_event(7, Started(7))
    await metrics.on_event(7, Progress(7, 1, 2))
    await metrics.on_event(7, Queued(7, 1))  # the worker died: queued again
    assert value(samples(metrics), "pintor_queue_depth") == 1
    await metrics.on_event(7, Started(7))
    await metrics.on_event(7, Progress(7, 1, 2))
    await metrics.on_event(7, Progress(7, 2, 2))
    await metrics.on_event(7, Done(7, (GRID,), GRID))
    got = samples(metrics)
    assert value(got, "pintor_jobs_total", kind="imagine", outcome="done") == 1
    assert value(got, "pintor_job_queued_seconds_count", kind="imagine") == 2  # each wait measured
    assert value(got, "pintor_steps_total") == 1 + 2
    assert asked == [7]


async def test_a_job_seen_first_running_and_a_failing_kind_lookup():
    async def broken(job_id: int) -> str | None:
        raise ConnectionError("the database is gone")

    metrics = Metrics(kind_of=broken, workers=lambda: [WorkerStatus("gpu0", "busy"), WorkerStatus("gpu1", "down")])
    await metrics.on_event(3, Started(3))  # queued before this process watched
    await metrics.on_event(3, Done(3, (GRID,), GRID))
    got = samples(metrics)
    assert value(got, "pintor_jobs_total", kind="unknown", outcome="done") == 1
    assert [value(got, "pintor_workers", state=s) for s in ("starting", "idle", "busy", "down")] == [0, 0, 1, 1]
    assert value(got, "pintor_worker_up", worker="gpu1", state="down") == 1


async def get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as response:
        return response.status, await response.text()


async def test_healthz_says_what_is_wrong_with_503():
    problems: dict[str, str] = {"database": "the database does not answer (OperationalError)"}

    async def health() -> dict[str, str]:
        if problems.get("raise"):
            raise RuntimeError("the check broke")
        return dict(problems)

    async with serve(Metrics(), health, host="127.0.0.1", port=0) as port:
        status, body = await get(port, "/healthz")
        assert (status, json.loads(body)) == (503, {"status": "unhealthy", "problems": problems})
        problems["raise"] = "yes"
        status, body = await get(port, "/healthz")
        assert status == 503 and json.loads(body)["problems"] == {"check": "RuntimeError: the check broke"}
        problems.clear()
        assert await get(port, "/healthz") == (200, json.dumps({"status": "ok", "problems": {}}))
        status, page = await get(port, "/metrics")
        assert status == 200 and "pintor_queue_depth 0.0" in page
        assert (await get(port, "/elsewhere"))[0] == 404
    with pytest.raises(aiohttp.ClientConnectionError):  # stopped with its context
        await get(port, "/healthz")


def test_off_and_on_loopback_by_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.delenv("PINTOR_METRICS_PORT", raising=False)
    monkeypatch.delenv("PINTOR_METRICS_HOST", raising=False)
    defaults = Settings()
    assert (defaults.pintor_metrics_port, defaults.pintor_metrics_host) == (None, "127.0.0.1")
    monkeypatch.setenv("PINTOR_METRICS_PORT", "")  # as .env.example leaves it
    assert Settings().pintor_metrics_port is None
    monkeypatch.setenv("PINTOR_METRICS_PORT", "9464")
    assert Settings().pintor_metrics_port == 9464
