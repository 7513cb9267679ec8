"""Every GPU figure of issue 13 in one offline run (stand-in weights built in code, no hub):

    bash benchmarks/gpu.sh                   # a venv, `pip install -e .`, then this script
    python benchmarks/gpu.py                 # CUDA: the real sizes, within about 10 minutes
    python benchmarks/gpu.py --quick         # any machine: tiny models, 64², 2 steps (checks the script)

1. SD 1.5 architecture, 512², 50 steps, fp16: a plain diffusers call at batch 1 and 4, and a
   Pintor job (a grid of 4) through the whole path (Studio.imagine → queue → worker → files → rows);
2. the same with torch.compile (plain: the UNet compiled; Pintor: PINTOR_COMPILE, warmed up by the
   worker at start);
3. SDXL architecture, 1024², 30 steps: plain diffusers at batch 1 and 4;
4. peak VRAM of one grid with each offload mode (none, model, sequential), printed as the rows of
   the family records' peak_gib (generation/families.py), and what `auto` picks on this card;
5. a preview's cost: the linear projection vs TAESD (AutoencoderTiny), relative to one step.

Sections run in that order; one that would start after --budget-s is skipped (and says so).
Seconds are the best of --repeats runs after a warm-up; each pair is measured in turns.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diffusers
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.standins import (  # noqa: E402
    Model,
    WholePath,
    load_plain,
    plain_call,
    save,
    sdxl,
    sync,
    taesd,
    write_registry,
)
from generation.devices import GIB, FastPath, Offload, choose_device, choose_offload  # noqa: E402
from generation.engine import Engine  # noqa: E402
from generation.families import peak_gib  # noqa: E402
from generation.imaging import png_bytes  # noqa: E402
from generation.previews import TinyDecoderPreview, latents_preview  # noqa: E402
from generation.registry import load_registry  # noqa: E402
from generation.request import JobKind, Request  # noqa: E402

PROMPT = "a red fox in the snow, detailed fur, morning light"


def say(text: str = "") -> None:
    print(text, flush=True)


def best(fn: Callable[[], float], repeats: int) -> float:
    return min(fn() for _ in range(repeats))


class Run:
    """The options, the device, and the time left."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.quick = args.quick
        self.device = choose_device(args.device, "fp32" if args.quick and args.device != "cuda" else args.dtype)
        self.cuda = self.device.device == "cuda"
        self.start = time.monotonic()
        self.sd_steps = 2 if self.quick else 50
        self.xl_steps = 2 if self.quick else 30
        self.tmp = Path(tempfile.mkdtemp(prefix="pintor-gpu-bench-"))

    def left_s(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.start)

    def section(self, title: str, needs_s: float) -> bool:
        elapsed = time.monotonic() - self.start
        if self.left_s() < (0 if self.quick else needs_s):
            say(f"\n## {title}\nskipped: {elapsed:.0f} s spent, about {needs_s:.0f} s needed, "
                f"{max(0, self.left_s()):.0f} s left of --budget-s {self.args.budget_s:.0f}")
            return False
        say(f"\n## {title}   (at {elapsed:.0f} s)")
        return True

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()


def sd15_speed(run: Run, model: Model, registry: Path) -> tuple[Any, float]:
    """Section 1; returns the plain pipeline (kept for section 2) and the batch-4 time."""
    pipe = load_plain(model.folder, "sd", run.device.device, run.device.dtype)
    kwargs = dict(prompt=PROMPT, side=model.side, steps=run.sd_steps, guidance=7.0, device=run.device.device)
    plain_call(pipe, **kwargs, count=4, seed=0)  # warm-up
    plain_call(pipe, **kwargs, count=1, seed=0)
    with WholePath(run.tmp / "whole", registry, device=run.device.device, dtype=run.args.dtype_name) as whole:
        whole.ready()
        say(f"worker: {whole.worker_info}")
        whole.job(f"{PROMPT} --seed 1")  # warm-up (the worker loads the model on its first job)
        times: dict[str, list[float]] = {"plain 1": [], "plain 4": [], "whole 4": []}
        for i in range(run.args.repeats):  # in turns: every side sees the same machine
            times["plain 1"].append(plain_call(pipe, **kwargs, count=1, seed=i))
            times["plain 4"].append(plain_call(pipe, **kwargs, count=4, seed=i))
            times["whole 4"].append(whole.job(f"{PROMPT} --seed {i + 2}"))
    p1, p4, w4 = (min(times[k]) for k in ("plain 1", "plain 4", "whole 4"))
    say(f"plain diffusers, batch 1: {p1:.2f} s ({run.sd_steps / p1:.1f} steps/s)")
    say(f"plain diffusers, batch 4: {p4:.2f} s ({4 * run.sd_steps / p4:.1f} image-steps/s; ×{4 * p1 / p4:.2f} "
        "the image-steps/s of batch 1)")
    say(f"Pintor job (grid of 4) through the whole path: {w4:.2f} s; overhead vs plain batch 4: "
        f"{100 * (w4 / p4 - 1):+.1f} %  (a job is always a grid of 4: batch 1 is plain only)")
    # the worker runs with the fast path's defaults (channels-last on CUDA) and so does the plain
    # pipeline (load_plain): the overhead above is Pintor's machinery alone
    fast_path_options(run, pipe, model)
    return pipe, p4


def fast_path_options(run: Run, pipe: Any, model: Model) -> None:
    """Each fast-path option alone, on the plain pipeline (batch 4): memory format, dtype, and
    the VAE decode of one large picture whole vs tiled. Leaves `pipe` as it found it."""
    kwargs = dict(prompt=PROMPT, side=model.side, steps=run.sd_steps, guidance=7.0, device=run.device.device)

    def formatted(memory_format: torch.memory_format) -> float:
        for module in (pipe.unet, pipe.vae):
            module.to(memory_format=memory_format)
        return best(lambda: plain_call(pipe, **kwargs, count=4, seed=1), run.args.repeats)

    contiguous = formatted(torch.contiguous_format)
    channels_last = formatted(torch.channels_last)
    if not run.cuda:
        formatted(torch.contiguous_format)  # as load_plain left it: channels-last on CUDA only
    line = (f"batch 4, contiguous {contiguous:.2f} s, channels-last {channels_last:.2f} s "
            f"(×{contiguous / channels_last:.2f})")
    if run.cuda and run.device.dtype != torch.bfloat16 and torch.cuda.is_bf16_supported(including_emulation=False):
        dtype = run.device.dtype
        pipe.to(dtype=torch.bfloat16)
        bf16 = best(lambda: plain_call(pipe, **kwargs, count=4, seed=1), run.args.repeats)
        pipe.to(dtype=dtype)
        line += f"; bf16 + channels-last {bf16:.2f} s (×{channels_last / bf16:.2f} vs {run.args.dtype_name})"
    say(f"fast-path options, plain diffusers: {line}")
    side = 128 if run.quick else 1536  # the default PINTOR_VAE_TILING_PIXELS: 1536²
    latents = torch.randn(1, 4, side // 8, side // 8, device=run.device.device, dtype=run.device.dtype)

    def decode(tiled: bool) -> float:
        pipe.vae.enable_tiling() if tiled else pipe.vae.disable_tiling()
        if run.cuda:
            torch.cuda.reset_peak_memory_stats()
        sync(run.device.device)
        start = time.perf_counter()
        with torch.no_grad():
            pipe.vae.decode(latents / pipe.vae.config.scaling_factor)
        sync(run.device.device)
        return time.perf_counter() - start

    decode(False)
    whole = best(lambda: decode(False), 2)
    whole_peak = torch.cuda.max_memory_allocated() / GIB if run.cuda else float("nan")
    tiled = best(lambda: decode(True), 2)
    tiled_peak = torch.cuda.max_memory_allocated() / GIB if run.cuda else float("nan")
    pipe.vae.disable_tiling()
    say(f"VAE decode of one {side}² picture: whole {whole:.2f} s (peak {whole_peak:.1f} GiB), "
        f"tiled {tiled:.2f} s (peak {tiled_peak:.1f} GiB)")


def sd15_compiled(run: Run, pipe: Any, model: Model, registry: Path, plain_p4: float) -> None:
    """Section 2: torch.compile, plain and through the whole path."""
    mode = run.args.compile_mode
    kwargs = dict(prompt=PROMPT, side=model.side, steps=run.sd_steps, guidance=7.0, device=run.device.device)
    start = time.perf_counter()
    if run.quick:
        pipe.unet.compile(backend="eager")  # --quick: dynamo only; inductor takes minutes on a CPU
        mode = "eager backend (--quick: checks the path, not the speed)"
    else:
        pipe.unet.compile(mode=mode)
    plain_call(pipe, **kwargs, count=4, seed=0)  # compiles batch 4 (8 rows, guided)
    compile_4 = time.perf_counter() - start
    start = time.perf_counter()
    plain_call(pipe, **kwargs, count=1, seed=0)  # and batch 1
    compile_1 = time.perf_counter() - start
    p4 = best(lambda: plain_call(pipe, **kwargs, count=4, seed=1), run.args.repeats)
    p1 = best(lambda: plain_call(pipe, **kwargs, count=1, seed=1), run.args.repeats)
    say(f"plain diffusers + compile ({mode}): first call {compile_4:.0f} s (batch 4), {compile_1:.0f} s (batch 1)")
    say(f"plain diffusers + compile, batch 1: {p1:.2f} s; batch 4: {p4:.2f} s (×{plain_p4 / p4:.2f} vs uncompiled)")
    if run.quick:
        # the whole path compiles with inductor in the worker: minutes on a CPU; the warm-up's
        # scheduling is checked in-process instead (tests/test_fast_path.py does it with the worker)
        engine = Engine(load_registry(registry), run.device, fast=FastPath(compile="default"))
        engine.pipelines.compiler = lambda module, _mode: module.compile(backend="eager")
        from generation.warmup import warm_up

        say(f"engine warm-up (eager backend, in-process): {warm_up(engine, 'eager')}")
        return
    with WholePath(run.tmp / "whole-compiled", registry, device=run.device.device, dtype=run.args.dtype_name,
                   compile_mode=mode) as whole:
        whole.ready(timeout_s=max(60.0, run.left_s()))
        warm = whole.worker_info.get("warm_up", {})
        w4 = best(lambda: whole.job(f"{PROMPT} --seed 3"), run.args.repeats)
    say(f"Pintor + PINTOR_COMPILE={mode}: worker warm-up at start {warm.get('seconds', '?')} s; "
        f"job (grid of 4) {w4:.2f} s; overhead vs plain compiled batch 4: {100 * (w4 / p4 - 1):+.1f} %")


def sdxl_speed(run: Run) -> Model:
    """Section 3; returns the saved stand-in for section 4."""
    folder = run.tmp / "sdxl"
    if run.quick:
        model = save("sdxl", folder, quick=True, device=run.device.device, dtype=run.device.dtype)
        pipe = load_plain(folder, "sdxl", run.device.device, run.device.dtype)
    else:
        pipe = sdxl(run.device.device)  # built on the GPU: seconds, not the minutes of a CPU build
        pipe.to(dtype=run.device.dtype)
        pipe.set_progress_bar_config(disable=True)
        model = Model(name="sdxl", family="sdxl", folder=folder, side=1024,
                      params_m=sum(p.numel() for p in pipe.unet.parameters()) / 1e6)
    kwargs = dict(prompt=PROMPT, side=model.side, steps=run.xl_steps, guidance=6.0, device=run.device.device)
    plain_call(pipe, **kwargs, count=1, seed=0)  # warm-up
    p1 = best(lambda: plain_call(pipe, **kwargs, count=1, seed=1), run.args.repeats)
    p4 = best(lambda: plain_call(pipe, **kwargs, count=4, seed=1), max(1, run.args.repeats - 1))
    say(f"SDXL (UNet {model.params_m:.1f} M), {model.side}², {run.xl_steps} steps: "
        f"batch 1 {p1:.2f} s, batch 4 {p4:.2f} s (×{4 * p1 / p4:.2f} image-steps/s)")
    if not run.quick:
        pipe.save_pretrained(folder)  # for section 4, in the run's dtype
    pipe = None
    run.free()
    return model


def peak_vram(run: Run, models: list[Model]) -> None:
    """Section 4: one grid (4 pictures, guided, a few steps: the peak does not grow with steps)
    per offload mode, loaded fresh each time, through the engine as the worker runs it."""
    registry = load_registry(write_registry(run.tmp / "peaks.toml", models, steps=4, guidance=7.0))
    free = torch.cuda.mem_get_info()[0] if run.cuda else None
    for model in models:
        row = []
        for mode in (Offload.NONE, Offload.MODEL, Offload.SEQUENTIAL):
            run.free()
            if run.cuda:
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            engine = Engine(registry, run.device, fast=FastPath(offload=mode))
            request = Request(kind=JobKind.IMAGINE, model=model.name, prompt=PROMPT, parts=((PROMPT, 1.0),),
                              negative="", width=model.side, height=model.side, steps=4, guidance=7.0, seed=1,
                              safety_check=False)
            start = time.perf_counter()
            engine.generate(request, lambda *a: None, lambda: False)
            sync(run.device.device)
            seconds = time.perf_counter() - start
            if run.cuda:
                allocated = (torch.cuda.max_memory_allocated() - before) / GIB
                reserved = torch.cuda.max_memory_reserved() / GIB
                say(f"{model.name} {model.side}², grid of 4, offload {mode.value:<10}: peak {allocated:5.2f} GiB "
                    f"allocated, {reserved:5.2f} GiB reserved; load + 4 steps {seconds:.1f} s")
                row.append(reserved)
            else:
                chosen = ", ".join(m.value for m in engine.pipelines.offload_modes.values())
                say(f"{model.name}, offload {mode.value}: loaded with {chosen} "
                    f"(no CUDA: nothing to offload to, no VRAM to measure) in {seconds:.1f} s")
            del engine
        if row:
            say(f'    peak_gib row (reserved, rounded up): "{model.family}": '
                f"({', '.join(f'{-(-r * 2 // 1) / 2:.1f}' for r in row)}),  # measured {time.strftime('%Y-%m-%d')}, "
                f"{run.device.name}, {str(run.device.dtype).removeprefix('torch.')}")
            say(f"    PINTOR_OFFLOAD=auto here ({free / GIB:.1f} GiB free) picks: "
                f"{choose_offload('auto', model.family, free).value} (record now: {peak_gib(model.family)})")


def preview_cost(run: Run, models: list[Model]) -> None:
    """Section 5: the worker's preview (the function and its PNG) vs one UNet step of a grid."""
    decoder = taesd(run.device.device).to(run.device.dtype).eval()
    tiny = TinyDecoderPreview(decoder)
    for model in models:
        pipe = load_plain(model.folder, model.family, run.device.device, run.device.dtype)
        side = model.side // 8
        latents = torch.randn(8, 4, side, side, device=run.device.device, dtype=run.device.dtype)
        text = torch.randn(8, 77, pipe.unet.config.cross_attention_dim, device=run.device.device,
                           dtype=run.device.dtype)
        extra: dict[str, Any] = {}
        if model.family == "sdxl":  # the pooled text (its width: what the time ids leave) and 6 time ids
            config = pipe.unet.config
            pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
            extra["added_cond_kwargs"] = {
                "text_embeds": torch.randn(8, pooled, device=run.device.device, dtype=run.device.dtype),
                "time_ids": torch.randn(8, 6, device=run.device.device, dtype=run.device.dtype)}

        def step() -> float:
            sync(run.device.device)
            start = time.perf_counter()
            with torch.no_grad():
                pipe.unet(latents, 500, encoder_hidden_states=text, **extra)  # noqa: B023 - used at once
            sync(run.device.device)
            return time.perf_counter() - start

        def preview(make: Callable[..., Any]) -> float:
            sync(run.device.device)
            start = time.perf_counter()
            png_bytes(make(latents[:4], model.side, model.side))  # noqa: B023 - used at once
            sync(run.device.device)
            return time.perf_counter() - start

        step()
        preview(tiny)
        one_step = best(step, 3)
        linear = best(lambda: preview(latents_preview), 5)
        decoded = best(lambda: preview(tiny), 5)
        say(f"{model.name} {model.side}², a step of a grid (8 UNet rows): {1000 * one_step:.1f} ms; "
            f"linear preview {1000 * linear:.1f} ms ({100 * linear / one_step:.1f} % of a step), "
            f"TAESD preview {1000 * decoded:.1f} ms ({100 * decoded / one_step:.1f} %); "
            "the worker makes at most one a second")
        pipe = None
        run.free()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny models at 64², 2 steps: checks the script")
    parser.add_argument("--device", default=os.environ.get("PINTOR_DEVICE", "auto"))
    parser.add_argument("--dtype", default="fp16", help="fp16 (default), bf16 or fp32; --quick on a CPU: fp32")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode for section 2")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=570.0, help="skip sections that would start later")
    parser.add_argument("--skip", default="", help="sections to skip, e.g. 23")
    args = parser.parse_args()
    run = Run(args)
    args.dtype_name = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[run.device.dtype]
    say(f"# Pintor GPU benchmark {'(--quick) ' if run.quick else ''}{time.strftime('%Y-%m-%d %H:%M')}")
    say(f"device: {run.device.name}, {args.dtype_name}; torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"Python {platform.python_version()}; CPU threads {torch.get_num_threads()}")
    if not run.cuda and not run.quick:
        say("no CUDA GPU: use --quick here (the real sizes take hours on a CPU)")
        raise SystemExit(2)
    torch.backends.cuda.matmul.allow_tf32 = True  # what fp32 parts (the upcast SDXL VAE) use on a GPU
    steps_note = f"{run.sd_steps} steps"
    sd = save("sd15", run.tmp / "sd15", quick=run.quick, device=run.device.device, dtype=run.device.dtype)
    sd_registry = write_registry(run.tmp / "sd15.toml", [sd], steps=run.sd_steps, guidance=7.0)
    models = [sd]
    pipe, p4 = None, 0.0
    kind = "tiny SD 1.x (--quick)" if run.quick else "SD 1.5 architecture"
    if "1" not in args.skip and run.section(f"1. {kind} (UNet {sd.params_m:.1f} M), {sd.side}², {steps_note}", 60):
        pipe, p4 = sd15_speed(run, sd, sd_registry)
    if "2" not in args.skip and pipe is not None and run.section("2. the same with torch.compile", 240):
        sd15_compiled(run, pipe, sd, sd_registry, p4)
    del pipe
    run.free()
    kind = "tiny SDXL (--quick)" if run.quick else "SDXL architecture"
    if "3" not in args.skip and run.section(f"3. {kind}, {run.xl_steps} steps", 90):
        models.append(sdxl_speed(run))
    if "4" not in args.skip and run.section("4. peak VRAM of a grid per offload mode", 90):
        peak_vram(run, [m for m in models if m.folder.exists()])
    if "5" not in args.skip and run.section("5. a preview's cost (linear vs TAESD)", 20):
        preview_cost(run, [m for m in models if m.folder.exists()])
    say(f"\ndone in {time.monotonic() - run.start:.0f} s")


if __name__ == "__main__":
    main()

