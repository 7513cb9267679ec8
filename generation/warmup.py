"""The worker's warm-up: with torch.compile on, the first run of a compiled UNet compiles it
(seconds to minutes). The worker makes that run itself, before it says it is ready, so that no
member's job waits for it."""

from __future__ import annotations

import time
from typing import TypedDict

from generation.engine import Engine
from generation.request import GRID_SIZE, JobKind, Request


class WarmUp(TypedDict):
    """What the warm-up did, for /info: the compile mode, the model and how long it took."""

    compile: str
    model: str
    side: int
    seconds: float


WARM_UP_STEPS = 2  # compiled graphs do not depend on the number of steps: two are enough


def warm_up(engine: Engine, mode: str, model: str | None = None) -> WarmUp:
    """Run `model` (the registry's default for None; the first local text-to-image model where
    that is remote, and nothing where every model is) once, through the engine exactly as a job
    runs, at its native square size with a grid of GRID_SIZE pictures and its usual guidance:
    the shapes of most jobs, so their graphs are compiled here. Other sizes compile on their
    first use (torch.compile then marks the sizes dynamic, once).

    `mode`: the compile mode, for the report. Returns a WarmUp. Raises what Engine.generate
    raises (a model that cannot be loaded, a compiler that fails)."""
    spec = engine.registry.get(model)
    if spec.is_remote:  # a provider's API makes its pictures: nothing to compile, and each one costs money
        local = [m for m in engine.registry.generators() if not m.is_remote]
        if not local:
            return WarmUp(compile=mode, model="none (remote models only)", side=0, seconds=0.0)
        spec = local[0]
    side = spec.native_side // 8 * 8
    request = Request(kind=JobKind.IMAGINE, model=spec.name, prompt="warm-up", parts=(("warm-up", 1.0),),
                      negative="", width=side, height=side, steps=WARM_UP_STEPS, guidance=spec.guidance,
                      seed=0, count=GRID_SIZE, safety_check=False)
    start = time.perf_counter()
    engine.generate(request, lambda step, total, preview: None, lambda: False)
    return WarmUp(compile=mode, model=spec.name, side=side, seconds=round(time.perf_counter() - start, 1))
