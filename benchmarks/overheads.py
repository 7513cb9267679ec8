"""What Pintor's own machinery costs, measured side by side in one run (machines are noisy:
compare the ratios, not the seconds).

    python benchmarks/overheads.py            # CPU or GPU, whatever PINTOR_DEVICE / auto picks

1. batching: the four images of a grid as one batch vs four batch-1 runs;
2. previews: building one latent preview (linear, and TAESD's architecture) vs one denoising step;
3. the process seam: a job through LocalQueue + the worker process vs the same request through
   the engine in-process (both warm: model loaded);
4. the whole path: a job through Studio.imagine → queue → worker → PNG files → image rows vs one
   plain diffusers call doing the same work (text encoding, guided steps, VAE decode of 4
   pictures), on the true-cost SD 1.5 stand-in (benchmarks/standins.py); the overhead in percent.

Sections 1–3 use a mid-size random-weight SD UNet built in code (no downloads), so the numbers
show overheads relative to real denoising work, not image quality. `--sections 4` runs only the
fourth; `--side` and `--steps` size it (on a CPU: small, so that it ends in minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.standins import taesd  # noqa: E402
from generation.devices import choose_device  # noqa: E402
from generation.engine import Engine, latents_preview  # noqa: E402
from generation.previews import TinyDecoderPreview  # noqa: E402
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


def whole_path_vs_plain(device, side: int, steps: int, repeats: int) -> None:
    """Section 4: the SD 1.5 stand-in at side² pixels, `steps` guided steps, grids of 4."""
    from benchmarks.standins import WholePath, load_plain, plain_call, save, write_registry

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        model = save("sd15", Path(tmp) / "sd15", quick=False, device=device.device, dtype=device.dtype)
        model = dataclasses.replace(model, side=side)
        registry = write_registry(Path(tmp) / "models.toml", [model], steps=steps, guidance=7.0)
        built = time.perf_counter() - start
        print(f"4. SD 1.5 stand-in (UNet {model.params_m:.0f} M) built and saved in {built:.0f} s", flush=True)
        plain = load_plain(model.folder, "sd", device.device, device.dtype)
        prompt = "a red fox in the snow, detailed fur, morning light"
        with WholePath(Path(tmp) / "pintor", registry, device=device.device) as whole:
            whole.ready()
            warm = whole.job(f"{prompt} --seed 1")
            print(f"4. warm-up job: {warm:.2f} s (loads the model in the worker)", flush=True)
            plain_call(plain, prompt=prompt, side=side, steps=steps, guidance=7.0, count=4, seed=1,
                       device=device.device)  # warm-up
            whole_times, plain_times = [], []
            for i in range(repeats):  # in turns, so that both see the same machine load
                whole_times.append(whole.job(f"{prompt} --seed {i + 2}"))
                plain_times.append(plain_call(plain, prompt=prompt, side=side, steps=steps, guidance=7.0, count=4,
                                              seed=i + 2, device=device.device))
                print(f"4. pair {i + 1}: whole path {whole_times[-1]:.2f} s, plain {plain_times[-1]:.2f} s "
                      f"({100 * (whole_times[-1] / plain_times[-1] - 1):+.1f} %)", flush=True)
        w, p = min(whole_times), min(plain_times)
        print(f"4. {side}², {steps} steps, grid of 4: plain diffusers {p:.2f} s; Pintor's whole path (Studio.imagine → "
              f"queue → worker → PNG files → rows) {w:.2f} s; overhead {100 * (w / p - 1):+.1f} % "
              f"(all runs: plain {', '.join(f'{t:.2f}' for t in plain_times)}; "
              f"whole {', '.join(f'{t:.2f}' for t in whole_times)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="1234", help="which sections to run: 123 (together) and/or 4")
    parser.add_argument("--side", type=int, default=None, help="section 4's picture side (default 128 on a CPU, 512)")
    parser.add_argument("--steps", type=int, default=None, help="section 4's steps (default 3 on a CPU, 50)")
    parser.add_argument("--repeats", type=int, default=REPEATS)
    args = parser.parse_args()
    device = choose_device(os.environ.get("PINTOR_DEVICE", "auto"))
    if set(args.sections) & set("123"):
        sections_1_to_3(device)  # 1–3 share one model: they run together
    if "4" in args.sections:
        cpu = device.device == "cpu"
        whole_path_vs_plain(device, args.side or (128 if cpu else 512), args.steps or (3 if cpu else 50),
                            args.repeats)


def sections_1_to_3(device) -> None:
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
        tiny = TinyDecoderPreview(taesd().eval())  # TAESD's architecture, random weights
        decoded = best_of(lambda: tiny(latents, SIDE, SIDE), repeats=5)
        print(f"2. a preview: linear {preview * 1000:.1f} ms, TAESD {decoded * 1000:.0f} ms vs a step of 4 images: "
              f"{step * 1000:.0f} ms ({100 * preview / step:.1f} % and {100 * decoded / step:.1f} % of a step; "
              "at most one preview a second)")

        config = WorkerConfig(output_dir=str(Path(tmp) / "out"), registry_path=str(registry_file),
                              device=device.device)
        queued, in_process = asyncio.run(seam(config, lambda: run(4), REPEATS))
        print(f"3. in-process engine: {in_process:.2f} s; through queue + worker process (incl. PNG files): "
              f"{queued:.2f} s; ratio ×{queued / in_process:.2f}")

if __name__ == "__main__":
    main()
