"""Images per second with batching across members vs one job at a time, for 8 waiting jobs,
measured side by side in one run (machines are noisy: compare the ratio, not the seconds).

    python benchmarks/batching.py            # CPU or GPU, whatever PINTOR_DEVICE / auto picks
    python benchmarks/batching.py --images 32 --rounds 3 --side 128

Two LocalQueues with their own worker process serve the same mid-size random-weight SD model
(built in code, no downloads): one with PINTOR_BATCH_IMAGES=4 (one job of four images per
pipeline call: Pintor without batching), one with --images (default 16: four jobs per call,
the CUDA default for SD). Each round, on each queue in turn: a first job runs, eight members
submit a job each while it runs, and the clock runs from the first job's end to the eighth
job's end: the whole path (fair order, worker, events, PNG files), not only the pipeline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.overheads import build_mid_model  # noqa: E402
from generation.devices import choose_device  # noqa: E402
from generation.events import Done, Failed  # noqa: E402
from generation.queue import LocalQueue  # noqa: E402
from generation.request import Request  # noqa: E402
from generation.worker import WorkerConfig  # noqa: E402

JOBS = 8
SIDE = {"cuda": 512, "cpu": 256}  # pixels: the mid model's native side on a CPU, SD 1.5's on a GPU
STEPS = 4


def request(seed: int, side: int) -> Request:
    prompt = f"a fox number {seed}"
    return Request(kind="imagine", model="mid", prompt=prompt, parts=((prompt, 1.0),), negative="",
                   width=side, height=side, steps=STEPS, guidance=5.0, seed=seed)


class Side:
    """One queue and its worker, and a way to time eight waiting jobs through it."""

    def __init__(self, config: WorkerConfig, side: int):
        self.queue, self.side, self.ids = LocalQueue(config), side, 0

    async def start(self) -> None:
        await self.queue.start()
        self.events = self.queue.events()

    async def wait(self, jobs: set[int]) -> None:
        async for event in self.events:
            if isinstance(event, Failed):
                raise RuntimeError(f"job {event.job_id} failed: {event.reason}")
            if isinstance(event, Done):
                jobs.discard(event.job_id)
                if not jobs:
                    return

    async def submit(self, user: int) -> int:
        self.ids += 1
        await self.queue.submit(self.ids, user, request(self.ids, self.side))
        return self.ids

    async def eight_waiting(self) -> float:
        """Seconds from the end of a running job to the end of 8 jobs submitted while it ran."""
        first = await self.submit(user=0)
        jobs = {await self.submit(user=member) for member in range(1, JOBS + 1)}
        await self.wait({first})
        start = time.perf_counter()
        await self.wait(jobs)
        return time.perf_counter() - start


async def measure(folder: Path, registry_file: Path, device: str, images: int, rounds: int, side: int) -> None:
    def config(batch_images: int, name: str) -> WorkerConfig:
        return WorkerConfig(output_dir=str(folder / name), registry_path=str(registry_file), device=device,
                            batch_images=batch_images, log_level="WARNING")

    alone, together = Side(config(4, "alone"), side), Side(config(images, "together"), side)
    for queue_side in (alone, together):
        await queue_side.start()
        await queue_side.wait({await queue_side.submit(user=0)})  # loads the model
    times: dict[str, list[float]] = {"alone": [], "together": []}
    for _ in range(rounds):  # in turns, so that both see the same machine load
        times["alone"].append(await alone.eight_waiting())
        times["together"].append(await together.eight_waiting())
    for queue_side in (alone, together):
        await queue_side.queue.close()
    best_alone, best_together = min(times["alone"]), min(times["together"])
    per_s = {name: JOBS * 4 / best for name, best in (("alone", best_alone), ("together", best_together))}
    print(f"one job at a time:        {best_alone:6.2f} s  {per_s['alone']:.2f} images/s "
          f"(rounds: {', '.join(f'{t:.2f}' for t in times['alone'])})")
    print(f"batched, up to {images:2d} images: {best_together:6.2f} s  {per_s['together']:.2f} images/s "
          f"(rounds: {', '.join(f'{t:.2f}' for t in times['together'])})")
    print(f"batching across members: ×{per_s['together'] / per_s['alone']:.2f} images per second")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16, help="most images per pipeline call when batching")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--side", type=int, help="picture side in pixels (default: 256 on a CPU, 512 on CUDA)")
    args = parser.parse_args()
    device = choose_device(os.environ.get("PINTOR_DEVICE", "auto"))
    side = args.side or SIDE.get(device.device, SIDE["cpu"])
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_mid_model(Path(tmp) / "mid", side=side)
        registry_file = Path(tmp) / "models.toml"
        registry_file.write_text(f'default = "mid"\n[models.mid]\nsource = "{folder}"\nfamily = "sd"\n'
                                 f'native_side = {side}\nsteps = {STEPS}\n')
        print(f"device: {device.name}; mid-size SD UNet, {side}², {STEPS} steps, guided; "
              f"{JOBS} waiting jobs of 4 images from {JOBS} members")
        asyncio.run(measure(Path(tmp), registry_file, device.device, args.images, args.rounds, side))


if __name__ == "__main__":
    main()
