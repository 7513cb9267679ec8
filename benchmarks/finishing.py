"""The work around each pipeline call (issue 35): what Pintor costs before and after the model runs,
and how long the device waits between two pipeline calls when the queue is full.

    python benchmarks/finishing.py                  # tiny SD at 64² and 512², 8 jobs each
    python benchmarks/finishing.py --sides 64 --jobs 12

The whole path runs (database, Studio, LocalQueue, the worker process, PNG files, image rows):
`--jobs` jobs are submitted at once by different members, so the queue is full. The worker
process is forked from a server that imported this module, which wraps `Engine.generate_batch` to
write when each pipeline call started and ended (time.monotonic: one clock for every process on
Linux). Printed, medians over the jobs:

- before: a job stored → its pipeline call starts (the first job only: the others wait in line);
- after: its pipeline call ends → its Done event reaches the member (files written, rows stored);
- idle: one pipeline call ends → the next one starts (the device waiting for Pintor).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROBE = "PINTOR_BENCHMARK_PROBE"  # the file the worker writes its pipeline calls' times to

if os.environ.get(PROBE):  # imported by the worker's forkserver: time every pipeline call
    from generation.engine import Engine

    _generate = Engine.generate_batch

    def _timed(self: Engine, jobs: Any) -> Any:
        start = time.monotonic()
        try:
            return _generate(self, jobs)
        finally:
            with open(os.environ[PROBE], "a", encoding="utf-8") as times:
                times.write(f"{start} {time.monotonic()}\n")

    Engine.generate_batch = _timed  # type: ignore[method-assign]


def measure(side: int, jobs: int, root: Path, probe: Path) -> dict[str, float]:
    """Medians in milliseconds: "before", "after" and "idle" (the module's docstring) and the
    pipeline call's own ("call"), for `jobs` jobs of the tiny SD model at side² pixels, 2 steps,
    with the pipeline calls' times in `probe` (one file for the run: the worker's forkserver
    reads its name once)."""
    import dataclasses

    import torch

    import generation.queue
    from benchmarks.standins import WholePath, save, write_registry
    from bot.intake import Member
    from generation.events import Done

    model = dataclasses.replace(save("sd15", root / "model", quick=True, device="cpu", dtype=torch.float32),
                                side=side)
    registry = write_registry(root / "models.toml", [model], steps=2, guidance=5.0)
    os.environ[PROBE] = str(probe)
    generation.queue.WORKER_START_METHOD = "forkserver"
    if "benchmarks.finishing" not in generation.queue.WORKER_PRELOAD:
        generation.queue.WORKER_PRELOAD = (*generation.queue.WORKER_PRELOAD, "benchmarks.finishing")
    with WholePath(root / "pintor", registry, device="cpu") as whole:
        whole.ready(timeout_s=300)
        whole.job("a warm-up")  # the model loaded, the first call's costs paid
        probe.write_text("", encoding="utf-8")

        async def full_queue() -> tuple[float, list[float]]:
            stored = time.monotonic()
            submitted = [await whole.studio.imagine(Member(100 + n, f"member {n}"), f"a lighthouse --seed {n}")
                         for n in range(jobs)]
            told: list[float] = []
            for job in submitted:
                async for event in job.events:
                    if isinstance(event, Done):
                        told.append(time.monotonic())
                        break
                else:
                    raise RuntimeError("a job ended without Done")
            return stored, told

        stored, told = whole.loop.run_until_complete(full_queue())
    calls = sorted(tuple(map(float, line.split())) for line in probe.read_text(encoding="utf-8").splitlines())
    if len(calls) != jobs:
        raise RuntimeError(f"{len(calls)} pipeline calls for {jobs} jobs (batched?): use one job per call")
    told.sort()
    return {"before": (calls[0][0] - stored) * 1000,
            "after": statistics.median(t - end for (_, end), t in zip(calls, told, strict=True)) * 1000,
            "idle": statistics.median(b[0] - a[1] for a, b in zip(calls, calls[1:], strict=False)) * 1000,
            "call": statistics.median(end - start for start, end in calls) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--jobs", type=int, default=8)
    args = parser.parse_args()
    print("side | pipeline call | stored → call starts (1st job) | call ends → member told | "
          "device idle between calls (medians, ms)")
    with tempfile.TemporaryDirectory() as run:
        probe = Path(run) / "calls.txt"
        for side in args.sides:
            with tempfile.TemporaryDirectory() as folder:
                m = measure(side, args.jobs, Path(folder), probe)
            print(f"{side}² | {m['call']:.0f} | {m['before']:.0f} | {m['after']:.0f} | {m['idle']:.1f}", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
