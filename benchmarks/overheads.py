"""What Pintor's own machinery costs, measured side by side in one run (machines are noisy:
compare the ratios, not the seconds).

    python benchmarks/overheads.py            # CPU or GPU, whatever PINTOR_DEVICE / auto picks

1. batching: the four images of a grid as one batch vs four batch-1 runs;
2. previews: building one latent preview vs one denoising step;
3. the process seam: a job through LocalQueue + the worker process vs the same request through
   the engine in-process (both warm: model loaded).

It uses a mid-size random-weight SD UNet built in code (no downloads), so the numbers show
overheads relative to real denoising work, not image quality.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generation.devices import choose_device  # noqa: E402
from generation.engine import Engine, latents_preview  # noqa: E402
from generation.queue import LocalQueue  # noqa: E402
from generation.registry import load_registry  # noqa: E402
from generation.request import Request  # noqa: E402
from generation.worker import WorkerConfig  # noqa: E402
from tests.tiny_models import TEXT_WIDTH, build_sd  # noqa: E402

SIDE, STEPS, REPEATS = 256, 4, 3


def build_mid_model(folder: Path, side: int = SIDE) -> Path:
    """The tiny SD pipeline with an 18 M-parameter UNet (random weights) whose native side is
    `side` pixels, saved into `folder`."""
    build_sd(folder)
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    torch.manual_seed(0)
    pipe.unet = UNet2DConditionModel(
        sample_size=side // 8, in_channels=4, out_channels=4, layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(64, 128, 256), cross_attention_dim=TEXT_WIDTH, attention_head_dim=8)
    pipe.save_pretrained(folder)
    return folder


def request(count: int = 4, seed: int = 1) -> Request:
    return Request(kind="imagine", model="mid", prompt="a fox", parts=(("a fox", 1.0),), negative="",
                   width=SIDE, height=SIDE, steps=STEPS, guidance=5.0, seed=seed, count=count)


def best_of(fn, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


async def seam(config: WorkerConfig, in_process, repeats: int) -> tuple[float, float]:
    """Best time of a job through LocalQueue + worker and of the same request in-process,
    taken in turns so that both see the same machine load."""
    queue = LocalQueue(config)
    await queue.start()
    events = queue.events()

    async def queued(job_id: int) -> float:
        start = time.perf_counter()
        await queue.submit(job_id, 1, request(seed=job_id))
        async for event in events:
            if type(event).__name__ in ("Done", "Failed"):
                assert type(event).__name__ == "Done", event
                return time.perf_counter() - start
        raise RuntimeError("the queue closed")

    await queued(0)  # loads the model in the worker
    queue_times, local_times = [], []
    for job_id in range(1, repeats + 1):
        queue_times.append(await queued(job_id))
        local_times.append(best_of(in_process, repeats=1))
    await queue.close()
    return min(queue_times), min(local_times)


def main() -> None:
    device = choose_device(os.environ.get("PINTOR_DEVICE", "auto"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_mid_model(Path(tmp) / "mid")
        registry_file = Path(tmp) / "models.toml"
        registry_file.write_text(f'default = "mid"\n[models.mid]\nsource = "{folder}"\nfamily = "sd"\n'
                                 f'native_side = {SIDE}\nsteps = {STEPS}\n')
        engine = Engine(load_registry(registry_file), device)
        step_times: list[float] = []
        last = [time.perf_counter()]

        def on_step(step, total, make_preview):
            now = time.perf_counter()
            step_times.append(now - last[0])
            last[0] = now

        def run(count: int) -> None:
            last[0] = time.perf_counter()
            engine.generate(request(count), on_step, lambda: False)

        run(4)  # warm-up: loads the model
        batch, single = float("inf"), float("inf")
        for _ in range(REPEATS):  # in turns, so that both see the same machine load
            batch = min(batch, best_of(lambda: run(4), repeats=1))
            single = min(single, best_of(lambda: [run(1) for _ in range(4)], repeats=1))
        unet = engine.pipelines.get(engine.registry.get("mid"), "text2img").unet
        print(f"device: {device.name}; UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.0f} M parameters, "
              f"{SIDE}², {STEPS} steps")
        print(f"1. one batch of 4: {batch:.2f} s; four batches of 1: {single:.2f} s; "
              f"batching speed-up ×{single / batch:.2f}")

        step_times.clear()
        run(4)
        step = sorted(step_times)[len(step_times) // 2]
        latents = torch.randn(4, 4, SIDE // 8, SIDE // 8)
        preview = best_of(lambda: latents_preview(latents, SIDE, SIDE), repeats=20)
        print(f"2. a preview: {preview * 1000:.1f} ms vs a step of 4 images: {step * 1000:.0f} ms "
              f"({100 * preview / step:.1f} % of a step; at most one preview a second)")

        config = WorkerConfig(output_dir=str(Path(tmp) / "out"), registry_path=str(registry_file),
                              device=device.device)
        queued, in_process = asyncio.run(seam(config, lambda: run(4), REPEATS))
        print(f"3. in-process engine: {in_process:.2f} s; through queue + worker process (incl. PNG files): "
              f"{queued:.2f} s; ratio ×{queued / in_process:.2f}")

if __name__ == "__main__":
    main()
