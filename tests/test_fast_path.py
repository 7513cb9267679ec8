"""The GPU fast path's choices, checked on the CPU with the tiny pipelines: the dtype, the offload
mode chosen from free memory, channels-last, VAE tiling and slicing, and torch.compile's warm-up
(with the compiler injected: a real compile of even the tiny UNet takes minutes on these CPUs;
benchmarks/gpu.py compiles for real)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from bot.settings import Settings
from bot.wiring import worker_config
from generation.devices import (
    GIB,
    HEADROOM_BYTES,
    FastPath,
    Offload,
    choose_device,
    choose_offload,
    cuda_dtype,
)
from generation.engine import Engine
from generation.families import peak_gib
from generation.registry import Registry, load_registry
from generation.warmup import WARM_UP_STEPS, warm_up
from tests.engine_helpers import pixels, request, run

CPU = choose_device("cpu")


@pytest.fixture(scope="module")
def registry(small_registry_file: Path) -> Registry:
    return load_registry(small_registry_file)


# -- dtype ----------------------------------------------------------------------------------------


def test_cuda_dtype_is_bf16_where_the_card_has_it_fp32_on_gtx_16xx_else_fp16():
    assert cuda_dtype("NVIDIA A100-SXM4-80GB", bf16_supported=True) == torch.bfloat16
    assert cuda_dtype("NVIDIA GeForce RTX 2080 Ti", bf16_supported=False) == torch.float16
    assert cuda_dtype("NVIDIA GeForce GTX 1660 SUPER", bf16_supported=False) == torch.float32


def test_dtype_choice_on_the_cpu():
    assert choose_device("cpu").dtype == torch.float32
    assert choose_device("cpu", "bf16").dtype == torch.bfloat16
    assert choose_device("cpu", "bf16").half
    with pytest.raises(ValueError, match="fp16 on the CPU"):
        choose_device("cpu", "fp16")
    with pytest.raises(ValueError, match="PINTOR_DTYPE"):
        choose_device("cpu", "fp64")


# -- offload --------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["sd", "sdxl", "kandinsky22"])
def test_auto_offload_takes_the_fastest_mode_whose_measured_peak_fits(family):
    none, model, sequential = peak_gib(family)

    def fits(peak: float) -> int:
        return int(peak * GIB) + HEADROOM_BYTES

    assert choose_offload("auto", family, fits(none)) == Offload.NONE
    assert choose_offload("auto", family, fits(none) - 1) == Offload.MODEL
    assert choose_offload("auto", family, fits(model)) == Offload.MODEL
    assert choose_offload("auto", family, fits(model) - 1) == Offload.SEQUENTIAL
    assert choose_offload("auto", family, fits(sequential) - 1) == Offload.SEQUENTIAL  # the least there is


def test_sdxl_needs_more_than_sd_and_an_unknown_family_is_taken_for_the_largest():
    nine_gib = 9 * GIB
    assert choose_offload("auto", "sd", nine_gib) == Offload.NONE
    assert choose_offload("auto", "sdxl", nine_gib) == Offload.MODEL
    assert choose_offload("auto", "some-new-family", nine_gib) == choose_offload("auto", "sdxl", nine_gib)


def test_an_8_gb_card_runs_sd_whole_and_sdxl_with_model_offloading():
    """What the 10 GB rule of earlier versions did for SDXL (and SD 1.5 now without offloading)."""
    free_on_8_gb = int(7.6 * GIB)  # what an 8 GB card has free with the CUDA context loaded
    assert choose_offload("auto", "sd", free_on_8_gb) == Offload.NONE
    assert choose_offload("auto", "sdxl", free_on_8_gb) == Offload.MODEL


def test_an_explicit_offload_mode_is_kept_and_the_cpu_never_offloads():
    assert choose_offload("sequential", "sd", 80 * GIB) == Offload.SEQUENTIAL
    assert choose_offload(Offload.NONE, "sdxl", 1 * GIB) == Offload.NONE
    assert choose_offload("model", "sd", None) == Offload.NONE  # no GPU: nothing to offload to
    with pytest.raises(ValueError):
        choose_offload("halfway", "sd", GIB)


def test_the_cache_loads_with_the_mode_auto_chose_from_free_memory_and_runs(registry):
    free = {"bytes": int(peak_gib("sd")[1] * GIB) + HEADROOM_BYTES}  # fits model offloading, not all at once
    engine = Engine(registry, CPU)
    engine.pipelines.free_memory = lambda: free["bytes"]
    offloaded, _, _ = run(engine, request(registry, "a red fox --seed 7"))
    assert engine.pipelines.offload_modes == {"tiny-sd": Offload.MODEL}
    pipe = engine.pipelines.get(registry.get("tiny-sd"), "text2img")
    assert pipe._offload_device is not None  # diffusers' model offload hooks are installed
    plain, _, _ = run(Engine(registry, CPU), request(registry, "a red fox --seed 7"))
    assert np.array_equal(pixels(offloaded.images), pixels(plain.images))  # same pictures either way


# -- channels-last, VAE tiling and slicing --------------------------------------------------------


def test_channels_last_is_applied_to_unet_and_vae_when_set_and_not_on_the_cpu_by_default(registry):
    spec = registry.get("tiny-sd")
    fast = Engine(registry, CPU, fast=FastPath(channels_last=True))
    default = Engine(registry, CPU)
    for engine, wanted in ((fast, True), (default, False)):
        pipe = engine.pipelines.get(spec, "text2img")
        for weight in (pipe.unet.conv_in.weight, pipe.vae.decoder.conv_in.weight):
            assert weight.is_contiguous(memory_format=torch.channels_last) == wanted
    a, _, _ = run(fast, request(registry, "a red fox --seed 7"))
    b, _, _ = run(default, request(registry, "a red fox --seed 7"))
    assert np.abs(pixels(a.images) - pixels(b.images)).max() <= 2  # the same pictures, up to rounding


def test_large_pictures_are_decoded_in_tiles_and_large_batches_one_by_one(registry):
    engine = Engine(registry, CPU, fast=FastPath(vae_tiling_pixels=100 * 100))
    pipe = engine.pipelines.get(registry.get("tiny-sd"), "text2img")
    engine.pipelines.fit_vae(pipe, 64, 64, 4)  # 4096 px each, 16384 in all: one at a time
    assert (pipe.vae.use_tiling, pipe.vae.use_slicing) == (False, True)
    engine.pipelines.fit_vae(pipe, 64, 64, 1)
    assert (pipe.vae.use_tiling, pipe.vae.use_slicing) == (False, False)
    engine.pipelines.fit_vae(pipe, 128, 128, 1)
    assert (pipe.vae.use_tiling, pipe.vae.use_slicing) == (True, True)


def test_slicing_decodes_the_same_pictures_and_tiling_still_makes_whole_ones(registry):
    sliced = Engine(registry, CPU, fast=FastPath(vae_tiling_pixels=64 * 64 * 2))  # a grid of 64² slices
    whole = Engine(registry, CPU)
    a, _, _ = run(sliced, request(registry, "a red fox --ar 1:1 --seed 7"))
    b, _, _ = run(whole, request(registry, "a red fox --ar 1:1 --seed 7"))
    assert sliced.pipelines.get(registry.get("tiny-sd"), "text2img").vae.use_slicing
    assert np.abs(pixels(a.images) - pixels(b.images)).max() <= 1
    # 128² pictures with a 64-pixel tile (the tiny VAE's sample size): decoded in overlapping tiles
    tiled = Engine(registry, CPU, fast=FastPath(vae_tiling_pixels=64 * 64))
    result, _, _ = run(tiled, request(registry, "a red fox --seed 7", width=128, height=128))
    assert tiled.pipelines.get(registry.get("tiny-sd"), "text2img").vae.use_tiling
    assert [image.size for image in result.images] == [(128, 128)] * 4


# -- torch.compile and its warm-up ----------------------------------------------------------------


class Recorder:
    """An injected compiler: records what it was asked to compile (compiling for real takes
    minutes on these CPUs)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, module: torch.nn.Module, mode: str) -> None:
        self.calls.append((type(module).__name__, mode))


def test_compile_is_applied_once_to_the_unet_and_shared_by_image_to_image(registry, tmp_path):
    engine = Engine(registry, CPU, fast=FastPath(compile="max-autotune"))
    engine.pipelines.compiler = compiler = Recorder()
    spec = registry.get("tiny-sd")
    engine.pipelines.get(spec, "text2img")
    img2img = engine.pipelines.get(spec, "img2img")
    assert compiler.calls == [("UNet2DConditionModel", "max-autotune")]
    assert img2img.unet is engine.pipelines.get(spec, "text2img").unet


def test_an_offloaded_model_is_not_compiled(registry):
    engine = Engine(registry, CPU, fast=FastPath(compile="default", offload=Offload.MODEL))
    engine.pipelines.compiler = compiler = Recorder()
    engine.pipelines.free_memory = lambda: 80 * GIB  # as if on a GPU: offloading is real there
    engine.pipelines.get(registry.get("tiny-sd"), "text2img")
    assert compiler.calls == []


def test_the_warm_up_runs_the_default_model_at_its_native_grid_before_any_job(registry):
    engine = Engine(registry, CPU, fast=FastPath(compile="default"))
    engine.pipelines.compiler = compiler = Recorder()
    shapes: list[tuple[int, ...]] = []
    original = engine.pipelines.get

    def watched(spec, task):
        pipe = original(spec, task)
        if not hasattr(pipe.unet, "_watched"):
            pipe.unet._watched = pipe.unet.register_forward_pre_hook(
                lambda module, args: shapes.append(tuple(args[0].shape)))
        return pipe

    engine.pipelines.get = watched  # type: ignore[method-assign]
    report = warm_up(engine, "default")
    spec = registry.get(None)
    side = spec.native_side
    assert report["model"] == spec.name and report["side"] == side and report["compile"] == "default"
    assert report["seconds"] >= 0
    assert compiler.calls == [("UNet2DConditionModel", "default")]
    # a grid of four, guided: eight latents a step, at the native size, as a job's
    assert shapes == [(8, 4, side // 8, side // 8)] * WARM_UP_STEPS
    # the first member's job finds the model loaded and compiled: nothing is compiled again
    run(engine, request(registry, "a red fox --seed 7"))
    assert compiler.calls == [("UNet2DConditionModel", "default")]


# -- settings reach the worker --------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_env_file(tmp_path, monkeypatch):
    """Settings read the environment only: no `.env` where the tests run."""
    monkeypatch.chdir(tmp_path)


def test_settings_become_the_workers_fast_path(monkeypatch):
    for name in ("PINTOR_DTYPE", "PINTOR_OFFLOAD", "PINTOR_COMPILE", "PINTOR_CHANNELS_LAST"):
        monkeypatch.delenv(name, raising=False)
    default = worker_config(Settings())
    assert (default.dtype, default.offload, default.compile, default.channels_last) == ("auto", "auto", None, None)
    monkeypatch.setenv("PINTOR_DTYPE", "BF16")
    monkeypatch.setenv("PINTOR_OFFLOAD", "sequential")
    monkeypatch.setenv("PINTOR_COMPILE", "on")
    monkeypatch.setenv("PINTOR_CHANNELS_LAST", "false")
    monkeypatch.setenv("PINTOR_VAE_TILING_PIXELS", "1000000")
    config = worker_config(Settings())
    assert (config.dtype, config.offload, config.compile, config.channels_last, config.vae_tiling_pixels) == (
        "bf16", "sequential", "default", False, 1_000_000)


@pytest.mark.parametrize(("written", "mode"), [("", "auto"), ("true", "model"), ("false", "none"), ("Model", "model")])
def test_offload_setting_reads_the_old_yes_no_values(monkeypatch, written, mode):
    monkeypatch.setenv("PINTOR_OFFLOAD", written)
    assert Settings().pintor_offload == mode


@pytest.mark.parametrize(("name", "value"), [("PINTOR_OFFLOAD", "halfway"), ("PINTOR_COMPILE", "fast"),
                                             ("PINTOR_DTYPE", "fp8")])
def test_a_bad_fast_path_setting_is_refused_by_name(monkeypatch, name, value):
    from pydantic import ValidationError

    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name):
        Settings()


def test_the_worker_config_is_plain_values(monkeypatch):
    """The front end pickles it to the worker and never imports torch for it."""
    config = worker_config(Settings(pintor_compile="max-autotune"))
    for field in dataclasses.fields(config):
        assert isinstance(getattr(config, field.name), str | int | float | bool | type(None))


def test_the_worker_warms_up_before_it_says_ready_and_the_first_job_compiles_nothing(
        small_registry_file, tmp_path, monkeypatch):
    """The worker itself (in a thread here, so that the compiler can be injected), sent a job
    at once: the warm-up compiles before "ready", then the job runs without compiling."""
    import multiprocessing
    import threading

    import generation.pipelines
    from generation.events import Done
    from generation.worker import WorkerConfig, _Worker

    compiler = Recorder()
    monkeypatch.setattr(generation.pipelines, "compile_module", compiler)
    here, there = multiprocessing.Pipe()
    config = WorkerConfig(output_dir=str(tmp_path), registry_path=str(small_registry_file), device="cpu",
                          compile="reduce-overhead")
    worker = threading.Thread(target=_Worker(there, config).run, daemon=True)
    worker.start()
    registry = load_registry(small_registry_file)
    here.send(("run", [(1, request(registry, "a red fox --seed 7").to_json())]))  # before the worker is ready
    assert here.poll(120)
    kind, info = here.recv()
    assert kind == "ready"
    assert info["warm_up"]["compile"] == "reduce-overhead" and info["warm_up"]["model"] == registry.default
    calls_at_ready = list(compiler.calls)
    assert calls_at_ready == [("UNet2DConditionModel", "reduce-overhead")]
    events: list[object] = []
    while not events or not isinstance(events[-1], Done):
        assert here.poll(120)
        kind, event = here.recv()
        events.append(event)
    assert compiler.calls == calls_at_ready
    here.send(("stop",))
    worker.join(30)


def test_info_shows_the_device_and_the_compile_warm_up():
    from bot.cogs.account import device_line

    plain = {"device": "cuda", "device_name": "NVIDIA H100 (79.1 GiB)", "dtype": "bfloat16", "offload": "auto"}
    assert device_line(plain) == "NVIDIA H100 (79.1 GiB) (bfloat16)"
    warmed = plain | {"warm_up": {"compile": "max-autotune", "model": "sd-1.5", "side": 512, "seconds": 73.4}}
    assert device_line(warmed) == ("NVIDIA H100 (79.1 GiB) (bfloat16) · torch.compile (max-autotune) warmed up "
                                   "at start on sd-1.5 (512²) in 73 s")
    assert device_line({}) == "?"
