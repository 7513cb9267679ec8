"""Prometheus metrics and a health check, served over HTTP on a port of the operator's choice
(`PINTOR_METRICS_PORT`; off by default, loopback by default).

`Metrics` holds one process's metrics in its own registry (prometheus-client): the Studio's
job events feed it (`Metrics.on_event`, a Studio listener), and what is true now (the workers'
state) is read when Prometheus scrapes. `serve` runs `/metrics` (the text exposition format)
and `/healthz` (200 or 503 with the checks as JSON) on the running event loop with aiohttp.
A worker process can make its own `Metrics` and `serve` it the same way. This module imports
neither discord.py nor torch.

Metric names follow Prometheus' conventions: a `pintor_` prefix, `_total` for counters,
`_seconds` for durations (https://prometheus.io/docs/practices/naming/).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from generation.events import Cancelled, Done, Event, Failed, Interrupted, Progress, Queued, Started

log = logging.getLogger(__name__)

# Seconds: from a job's seconds on a big GPU to a long wait behind twenty grids on a CPU.
TIME_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
WORKER_STATES = ("starting", "idle", "busy", "down")
OUTCOMES = {Done: "done", Failed: "failed", Cancelled: "cancelled", Interrupted: "interrupted"}


@dataclass(frozen=True)
class WorkerStatus:
    """One worker as the metrics show it: a name (e.g. "local" or a host and device) and its
    state, one of WORKER_STATES."""

    name: str
    state: str


@dataclass
class _Tracked:
    kind: str
    queued_at: float
    started_at: float | None = None
    steps: int = 0


class _WorkersCollector(Collector):
    """`pintor_workers{state}` and `pintor_worker_up{worker,state}`, read at each scrape."""

    def __init__(self, workers: Callable[[], Iterable[WorkerStatus] | Awaitable[Iterable[WorkerStatus]]]):
        self.workers = workers
        self.snapshot: list[WorkerStatus] | None = None  # set by Metrics.refresh_workers

    def collect(self) -> Iterator[Metric]:
        statuses = self.snapshot if self.snapshot is not None else list(self.workers())  # type: ignore[arg-type]
        counts = GaugeMetricFamily("pintor_workers", "Generation workers by state", labels=["state"])
        for state in WORKER_STATES:
            counts.add_metric([state], sum(s.state == state for s in statuses))
        yield counts
        each = GaugeMetricFamily("pintor_worker_up", "1 for each known worker, with its state",
                                 labels=["worker", "state"])
        for status in statuses:
            each.add_metric([status.name, status.state], 1)
        yield each


class Metrics:
    """One process's metrics. `kind_of(job_id)` (async) names a job's kind (imagine, upscale…)
    for jobs this process did not see queued; `workers()` lists the workers now (a plain or an
    async function: the workers of a Redis queue are asked over the network, before each scrape)."""

    def __init__(self, *, kind_of: Callable[[int], Awaitable[str | None]] | None = None,
                 workers: Callable[[], Iterable[WorkerStatus] | Awaitable[Iterable[WorkerStatus]]] = tuple):
        self.registry = CollectorRegistry()
        self._kind_of = kind_of
        self._jobs: dict[int, _Tracked] = {}
        r = self.registry
        self.queue_depth = Gauge("pintor_queue_depth", "Jobs waiting in the queue (not running)", registry=r)
        self.queue_depth.set_function(lambda: sum(t.started_at is None for t in self._jobs.values()))
        self.running = Gauge("pintor_jobs_running", "Jobs being generated now", registry=r)
        self.running.set_function(lambda: sum(t.started_at is not None for t in self._jobs.values()))
        self.jobs = Counter("pintor_jobs", "Jobs that ended, by kind and outcome "
                            "(done, failed, cancelled, interrupted: stopped with Pintor, queued again at start)",
                            ["kind", "outcome"], registry=r)
        self.queued_seconds = Histogram("pintor_job_queued_seconds", "Time from queued to started, by kind",
                                        ["kind"], buckets=TIME_BUCKETS, registry=r)
        self.generating_seconds = Histogram("pintor_job_generating_seconds",
                                            "Time from started to done, by kind (done jobs only)",
                                            ["kind"], buckets=TIME_BUCKETS, registry=r)
        self.steps = Counter("pintor_steps", "Denoising steps made (rate() of it: steps per second)", registry=r)
        self.steps_per_second = Gauge("pintor_steps_per_second",
                                      "Steps per second of the last job that finished (0 before the first)",
                                      registry=r)
        self.discord_errors = Counter("pintor_discord_errors", "Requests Discord refused or failed, by HTTP status",
                                      ["status"], registry=r)
        self._workers = _WorkersCollector(workers)
        r.register(self._workers)

    async def on_event(self, job_id: int, event: Event) -> None:
        """A Studio listener: each job event after it is stored."""
        now = time.monotonic()
        tracked = self._jobs.get(job_id)
        if isinstance(event, Queued):
            if tracked is None or tracked.started_at is not None:  # new, or queued again after a crash
                kind = tracked.kind if tracked else await self._kind(job_id)
                self._jobs[job_id] = _Tracked(kind, now)
            return
        if tracked is None:  # queued before this process started watching: measure what can be
            tracked = self._jobs[job_id] = _Tracked(await self._kind(job_id), now)
        if isinstance(event, Started):
            tracked.started_at = now
            self.queued_seconds.labels(tracked.kind).observe(now - tracked.queued_at)
        elif isinstance(event, Progress):
            self.steps.inc(max(0, event.step - tracked.steps))
            tracked.steps = max(tracked.steps, event.step)
        elif isinstance(event, tuple(OUTCOMES)):
            del self._jobs[job_id]
            self.jobs.labels(tracked.kind, OUTCOMES[type(event)]).inc()
            if isinstance(event, Done) and tracked.started_at is not None:
                took = now - tracked.started_at
                self.generating_seconds.labels(tracked.kind).observe(took)
                if tracked.steps and took > 0:
                    self.steps_per_second.set(tracked.steps / took)

    async def _kind(self, job_id: int) -> str:
        if self._kind_of is not None:
            with contextlib.suppress(Exception):  # a metric is no reason to fail a job's events
                return await self._kind_of(job_id) or "unknown"
        return "unknown"

    def discord_error(self, status: int) -> None:
        """Count one request Discord answered with an error (4xx/5xx) or that failed (status 0)."""
        self.discord_errors.labels(str(status)).inc()

    async def refresh_workers(self) -> None:
        """Ask `workers()` now (awaited when it is async); the next exposition shows the answer."""
        answer = self._workers.workers()
        if inspect.isawaitable(answer):
            answer = await answer
        self._workers.snapshot = list(answer)

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format, as /metrics serves them."""
        return generate_latest(self.registry)


HealthCheck = Callable[[], Awaitable[dict[str, str]]]


def _app(metrics: Metrics, health: HealthCheck) -> web.Application:
    async def metrics_page(_request: web.Request) -> web.Response:
        await metrics.refresh_workers()
        response = web.Response(body=metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def healthz(_request: web.Request) -> web.Response:
        try:
            problems = await asyncio.wait_for(health(), timeout=10)
        except Exception as err:  # noqa: BLE001 - the check itself failing is unhealthy, said
            problems = {"check": f"{type(err).__name__}: {err}"}
        body = {"status": "unhealthy" if problems else "ok", "problems": problems}
        return web.Response(status=503 if problems else 200, text=json.dumps(body),
                            content_type="application/json")

    app = web.Application()
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/healthz", healthz)
    return app


@contextlib.asynccontextmanager
async def serve(metrics: Metrics, health: HealthCheck, *, host: str, port: int) -> AsyncIterator[int]:
    """Serve `/metrics` and `/healthz` on `host`:`port` (port 0: a free one) while the context
    runs; yields the port it listens on. `health()` returns the problems found ({} when all is
    well: 200; else 503 with them). Raises OSError when the port cannot be had."""
    runner = web.AppRunner(_app(metrics, health), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = int(runner.addresses[0][1])  # the port asked for, or the free one chosen for 0
        log.info("metrics and health on http://%s:%s/metrics and /healthz", host, bound)
        yield bound
    finally:
        await runner.cleanup()
