"""Throughput of the Redis queue with 1, 2 and 4 `pintor worker` processes (CPU, tiny SD
model), as a ratio to one worker. Not a test: machines are noisy, and on a machine with fewer
cores than workers the workers share them (on the 2-core CI machine, expect about ×1.6 with two
workers and no more with four); each worker process stands for one GPU.

    python benchmarks/workers.py [JOBS] [STEPS] [COUNTS]   # defaults: 16 jobs of 8 steps at 64 px, 1,2,4

Needs `redis-server` on the PATH (Debian's package). Every run starts a throwaway Redis, the
workers (their start, model loading included, is not timed), then submits JOBS jobs from four
members at once and times until the last one is Done and acknowledged (after one warm-up job
per worker, so that model loading is not timed).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generation.events import Done, Event  # noqa: E402
from generation.files import FileStore  # noqa: E402
from generation.redis_queue import RedisQueue  # noqa: E402
from generation.request import JobKind, Request  # noqa: E402
from generation.worker import WorkerConfig  # noqa: E402
from tests.redis_server import redis_server, spawn_worker, stop_process, wait_for_workers  # noqa: E402
from tests.tiny_models import build_sd  # noqa: E402

SIDE = 64


def request(steps: int, seed: int) -> Request:
    return Request(kind=JobKind.IMAGINE, model="tiny", prompt="a fox", parts=(("a fox", 1.0),), negative="",
                   width=SIDE, height=SIDE, steps=steps, guidance=5.0, seed=seed)


async def run_jobs(queue: RedisQueue, events: AsyncIterator[Event], ids: range, steps: int) -> None:
    """Submit the jobs (from four members) at once; return when each is Done and acknowledged."""
    for job in ids:
        await queue.submit(job, job % 4, request(steps, job))
    done: set[int] = set()
    async for event in events:
        if isinstance(event, Done):
            await queue.acknowledge(event.job_id)
            done.add(event.job_id)
            if done >= set(ids):
                return


async def throughput(root: Path, registry: Path, workers: int, jobs: int, steps: int) -> float:
    """Jobs per second with `workers` worker processes (after a warm-up)."""
    with redis_server(root / f"redis-{workers}") as url:
        processes = [spawn_worker(url, WorkerConfig(output_dir=str(root / f"cache-{workers}-{n}"),
                                                    registry_path=str(registry), device="cpu"), f"w{n}")
                     for n in range(workers)]
        try:
            await wait_for_workers(url, {f"w{n}" for n in range(workers)})
            queue = RedisQueue(url, FileStore(root / f"images-{workers}"))
            await queue.start()
            try:
                events = queue.events()
                # warm-up, not timed: one job per worker, so that each loads the model
                await run_jobs(queue, events, range(1001, 1001 + workers), 1)
                start = time.perf_counter()
                await run_jobs(queue, events, range(1, jobs + 1), steps)
                return jobs / (time.perf_counter() - start)
            finally:
                await queue.close()
        finally:
            for process in processes:
                await asyncio.to_thread(stop_process, process)


async def main() -> None:
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 else 16
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    counts = [int(n) for n in sys.argv[3].split(",")] if len(sys.argv) > 3 else [1, 2, 4]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_sd(root / "tiny")
        registry = root / "models.toml"
        registry.write_text(f'default = "tiny"\n[models.tiny]\nsource = "{model}"\nfamily = "sd"\n'
                            f'native_side = {SIDE}\n')
        results = {}
        for workers in counts:
            results[workers] = await throughput(root, registry, workers, jobs, steps)
            print(f"{workers} worker(s): {results[workers]:.2f} jobs/s, ×{results[workers] / results[counts[0]]:.2f} "
                  f"of {counts[0]} ({os.cpu_count()} CPU cores)", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
