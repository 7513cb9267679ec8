"""Batching across members (generation.batching, Engine.generate_batch) on the tiny pipelines,
on the CPU: each job of a batch makes exactly what it makes alone, hears its own progress,
and stops on its own.

Exactness: PyTorch's CPU kernels (oneDNN convolutions, BLAS matrix products) choose their
blocking by problem size, so the same image computed in a batch of 16 and in a batch of 8 can
differ in the last bit (measured here: up to 1/255 in a few pixels at one thread). The exact
tests take that out by making the UNet compute each sample on its own and the VAE decode one
image at a time (its own `enable_slicing`): every number then comes from the same kernels at
the same sizes, so any difference left would be the engine's (a wrong embedding, seed, noise
or order) and the tests compare PNG bytes. A last test shows the plain kernels' difference
stays within that last bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bot.settings import Settings
from bot.wiring import worker_config
from generation.batching import ONE_JOB, batch_key, max_batch_images
from generation.devices import choose_device
from generation.engine import BatchJob, Engine, GenerationStopped
from generation.families import family_of
from generation.imaging import png_bytes
from generation.pipelines import PipelineTask
from generation.registry import Registry, load_registry
from generation.request import JobKind, Request
from tests.engine_helpers import picture_maker, pixels, request

CPU = choose_device("cpu")


@pytest.fixture(scope="module")
def registry(small_registry_file: Path) -> Registry:
    return load_registry(small_registry_file)  # tiny-sd at a native 64 px


@pytest.fixture(scope="module")
def engine(registry: Registry) -> Engine:
    return Engine(registry, CPU, max_models=4)


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory):
    return picture_maker(tmp_path_factory.mktemp("pictures"))


@contextlib.contextmanager
def sample_by_sample(engine: Engine, model: str, task: PipelineTask = "text2img") -> Iterator[None]:
    """While inside: the model's UNet computes each sample of a batch alone and its VAE
    decodes (and encodes) one image at a time, so results do not depend on batch size."""
    pipe = engine.pipelines.get(engine.registry.get(model), task)
    unet, forward = pipe.unet, pipe.unet.forward

    def each_sample(sample, timestep, encoder_hidden_states, *args, added_cond_kwargs=None,
                    return_dict=True, **kwargs):
        outs = []
        for i in range(sample.shape[0]):
            added = {k: v[i:i + 1] for k, v in added_cond_kwargs.items()} if added_cond_kwargs else None
            t = timestep if timestep.dim() == 0 else timestep[i:i + 1]
            outs.append(forward(sample[i:i + 1], t, encoder_hidden_states[i:i + 1], *args,
                                added_cond_kwargs=added, return_dict=False, **kwargs)[0])
        return (torch.cat(outs),)

    unet.forward = each_sample
    pipe.vae.enable_slicing()
    # the engine sets the VAE's slicing and tiling by picture size before each run (fit_vae):
    # kept as set here while inside
    fit_vae, engine.pipelines.fit_vae = engine.pipelines.fit_vae, lambda *args: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        del unet.forward  # the class's own again
        engine.pipelines.fit_vae = fit_vae  # type: ignore[method-assign]
        pipe.vae.disable_slicing()


class Recorder:
    """One job's callbacks: the steps it heard, its previews (PNG bytes), and a stop after
    `stop_after` steps."""

    def __init__(self, req: Request, stop_after: int | None = None):
        self.request, self.stop_after = req, stop_after
        self.steps: list[tuple[int, int]] = []
        self.previews: list[bytes] = []

    def on_step(self, step: int, total: int, make_preview: Any) -> None:
        self.steps.append((step, total))
        self.previews.append(png_bytes(make_preview()))

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.steps) >= self.stop_after

    def job(self) -> BatchJob:
        return BatchJob(self.request, self.on_step, self.should_stop)


def png_of(images) -> list[bytes]:
    return [png_bytes(image) for image in images]


def three_members(registry: Registry, model: str) -> list[Request]:
    """Three members' jobs that can share a call: other words, weights, emphasis, negatives,
    seeds and chaos; one of two images."""
    flags = f"--model {model} --steps 3"
    return [
        request(registry, f"a red fox in the snow --seed 42 {flags}"),
        request(registry, f"a blue whale::2 a (lighthouse:1.4) --seed 7 --chaos 80 --no fog {flags}"),
        request(registry, f"a cat at dawn --seed 4000000000 --chaos 30 {flags}").replace(count=2),
    ]


# -- the batch key and the limits ----------------------------------------------------------------


def test_what_a_batch_shares_and_what_each_job_keeps(registry, picture):
    base = request(registry, "a red fox --seed 1")
    same = [base.replace(prompt="a cat", parts=(("a cat", 1.0),)), base.replace(seed=99, chaos=100),
            base.replace(negative="fog"), base.replace(count=2), base.replace(kind=JobKind.REROLL),
            base.replace(safety_check=False)]
    assert all(batch_key(other) == batch_key(base) for other in same)
    apart = [base.replace(steps=base.steps + 1), base.replace(width=128), base.replace(height=128),
             base.replace(guidance=7.5), base.replace(guidance=0.0), base.replace(model="tiny-sdxl"),
             base.replace(kind=JobKind.VARIATION, init_image=picture(64, 64), strength=0.5)]
    assert len({batch_key(r) for r in [base, *apart]}) == len(apart) + 1
    variation = base.replace(kind=JobKind.VARIATION, init_image=picture(64, 64), strength=0.5)
    assert batch_key(variation.replace(init_image=picture(64, 64, seed=3))) == batch_key(variation)
    assert batch_key(variation.replace(strength=0.6)) != batch_key(variation)
    assert batch_key(base.replace(kind=JobKind.UPSCALE, model="tiny-upscaler")) is None


def test_a_request_field_added_later_keeps_jobs_apart(registry):
    """A field that is not known to be per job (per-job LoRAs, say) is part of the key."""

    @dataclasses.dataclass(frozen=True)
    class WithLoras(Request):
        loras: tuple[tuple[str, float], ...] = ()

    base = request(registry, "a red fox --seed 1")
    plain = WithLoras(**dataclasses.asdict(base))
    styled = dataclasses.replace(plain, loras=(("ink", 0.8),))
    assert batch_key(plain) != batch_key(styled)
    assert batch_key(styled) == batch_key(dataclasses.replace(styled, seed=5, prompt="a cat"))


def test_limits_per_family_and_device():
    assert max_batch_images("sd", "cuda") == family_of("sd").batch_images_cuda == 16
    assert max_batch_images("sdxl", "cuda") == 8
    assert max_batch_images("sd", "cpu") == max_batch_images("sdxl", "mps") == ONE_JOB
    assert max_batch_images("sd", "cpu", configured=12) == 12
    assert max_batch_images("kandinsky22", "cuda") == max_batch_images("upscale-x4", "cuda", 16) == 0


# -- the engine runs a batch ----------------------------------------------------------------------


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sdxl"])
def test_each_job_of_a_batch_makes_exactly_what_it_makes_alone(engine, registry, model):
    requests = three_members(registry, model)
    with sample_by_sample(engine, model):
        alone = [engine.generate(r, lambda *_: None, lambda: False) for r in requests]
        together = engine.generate_batch([Recorder(r).job() for r in requests])
    assert [len(result.images) for result in together] == [4, 4, 2]
    for one, batched in zip(alone, together, strict=True):
        assert batched is not None
        assert png_of(batched.images) == png_of(one.images)
        assert batched.notices == one.notices and batched.flagged == one.flagged
    # and the jobs differ from each other (a batch that repeated one job would fail above too)
    assert png_of(together[0].images) != png_of(together[1].images)


def test_variations_batch_exactly_each_from_its_own_picture(engine, registry, picture):
    requests = [request(registry, f"a red fox --seed {seed} --steps 4").replace(
        kind=JobKind.VARIATION, init_image=picture(64, 64, seed=seed), strength=0.5) for seed in (1, 2)]
    with sample_by_sample(engine, "tiny-sd", "img2img"):
        alone = [engine.generate(r, lambda *_: None, lambda: False) for r in requests]
        together = engine.generate_batch([Recorder(r).job() for r in requests])
    for one, batched in zip(alone, together, strict=True):
        assert batched is not None and png_of(batched.images) == png_of(one.images)


def test_each_job_hears_its_own_steps_and_previews(engine, registry):
    requests = three_members(registry, "tiny-sd")
    with sample_by_sample(engine, "tiny-sd"):
        alone = [Recorder(r) for r in requests]
        for recorder in alone:
            engine.generate(recorder.request, recorder.on_step, recorder.should_stop)
        together = [Recorder(r) for r in requests]
        engine.generate_batch([recorder.job() for recorder in together])
    for one, batched in zip(alone, together, strict=True):
        assert batched.steps == one.steps == [(1, 3), (2, 3), (3, 3)]
        assert batched.previews == one.previews  # each preview shows that job's images only
    assert together[0].previews[0] != together[1].previews[0]


def test_a_job_stopped_in_a_batch_is_dropped_and_the_others_go_on(engine, registry):
    requests = three_members(registry, "tiny-sd")
    with sample_by_sample(engine, "tiny-sd"):
        alone = [engine.generate(r, lambda *_: None, lambda: False) for r in requests]
        recorders = [Recorder(requests[0]), Recorder(requests[1], stop_after=1), Recorder(requests[2])]
        results = engine.generate_batch([recorder.job() for recorder in recorders])
    assert results[1] is None
    assert recorders[1].steps == [(1, 3)]  # no progress after its stop
    assert recorders[0].steps == recorders[2].steps == [(1, 3), (2, 3), (3, 3)]
    for i in (0, 2):
        assert png_of(results[i].images) == png_of(alone[i].images)


def test_a_batch_whose_jobs_all_stop_stops(engine, registry):
    recorders = [Recorder(r.replace(steps=20), stop_after=n)
                 for r, n in zip(three_members(registry, "tiny-sd"), (1, 2, 1), strict=True)]
    with pytest.raises(GenerationStopped):
        engine.generate_batch([recorder.job() for recorder in recorders])
    assert [len(recorder.steps) for recorder in recorders] == [1, 2, 1]


def test_jobs_that_cannot_share_a_call_are_refused(engine, registry):
    base = request(registry, "a red fox --seed 1")
    for other in (base.replace(steps=3), base.replace(width=128), base.replace(model="tiny-sdxl")):
        with pytest.raises(ValueError, match="cannot share one pipeline call"):
            engine.generate_batch([Recorder(base).job(), Recorder(other).job()])
    kandinsky = request(registry, "a red fox --seed 1 --model tiny-kandinsky")
    with pytest.raises(ValueError, match="one at a time"):
        engine.generate_batch([Recorder(kandinsky).job(), Recorder(kandinsky.replace(seed=2)).job()])


def test_with_the_plain_kernels_a_batch_differs_at_most_in_the_last_bit(engine, registry):
    requests = three_members(registry, "tiny-sd")
    alone = [engine.generate(r, lambda *_: None, lambda: False) for r in requests]
    together = engine.generate_batch([Recorder(r).job() for r in requests])
    for one, batched in zip(alone, together, strict=True):
        assert batched is not None
        assert np.abs(pixels(one.images) - pixels(batched.images)).max() <= 2


def test_the_operator_sets_the_limit_with_pintor_batch_images(monkeypatch):
    from_env: Any = Settings  # `_env_file` (no .env file read) is pydantic-settings' own, untyped
    monkeypatch.setenv("PINTOR_BATCH_IMAGES", "")
    assert worker_config(from_env(_env_file=None)).batch_images is None  # per family and device
    monkeypatch.setenv("PINTOR_BATCH_IMAGES", "12")
    assert worker_config(from_env(_env_file=None)).batch_images == 12
