"""Which diffusers scheduler a model's `scheduler` setting may replace, decided before first use.

A model family runs one or two denoising loops: Stable Diffusion one; Kandinsky a decoder and a
prior. Each loop calls its scheduler in its own way, so a scheduler fits a loop only if:

- diffusers lists it as compatible with the loop's own scheduler (`_compatibles`: the DDPM-style
  samplers interchange), or it is a distilled-model sampler (LCM, TCD) and the loop is Stable
  Diffusion's, whose pipelines run them (LCM-LoRA, TCD-LoRA);
- it is not for EDM-trained models (EDMEulerScheduler), and it can be built from the
  configuration of the loop's own scheduler;
- its `step` takes every keyword the loop passes: the Kandinsky prior passes `prev_timestep`,
  which only its own `UnCLIPScheduler` takes; the Kandinsky decoders pass `generator`, which
  DEIS and UniPC do not take (Stable Diffusion's pipelines look at the signature first);
- the loop scales the model's input (`scale_model_input`) or the scheduler does not need it:
  sigma-based samplers (Euler, Heun, KDPM2) start from noise × σ_max and need that scaling,
  which Kandinsky's decoders never do.

`check_scheduler` is called when the registry file is read, so a name that cannot work stops the
start; `fits` is what the pipeline cache asks before it replaces a loaded pipeline's scheduler,
and `replacement` builds the new scheduler.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any, Literal

from generation.families import FAMILIES, Loop, Recipe, family_of

# Samplers for distilled models that diffusers' Stable Diffusion pipelines run, though not listed
# as compatible with their schedulers.
DISTILLED_SAMPLERS = frozenset({"LCMScheduler", "TCDScheduler"})
# For models trained in the EDM formulation (diffusers PR #7109: "solely intended for" them),
# which no family here is, though diffusers lists EDMEulerScheduler as compatible.
EDM_SAMPLERS = frozenset({"EDMEulerScheduler", "EDMDPMSolverMultistepScheduler"})


class SchedulerError(ValueError):
    """A scheduler name that cannot work; str(err) says why, for the admin."""


# What a model's pipelines do, one diffusers pipeline each (PipelineCache.get): text to image,
# image to image (built from the text-to-image weights), the ×4 upscale, and Kandinsky's prior.
# A Literal, not a StrEnum: it is never stored or listed, only passed as a constant, and mypy
# checks every call site's string.
PipelineTask = Literal["text2img", "img2img", "upscale", "prior", "inpaint", "esrgan", "clip", "caption"]


def recipe_for(family: str) -> Recipe:
    """The family's sampling recipe (its record's `recipe`, generation/families.py; an empty Recipe
    for a name no record has)."""
    return FAMILIES[family].recipe if family in FAMILIES else Recipe()


def check_recipe(family: str, steps: int | None, guidance: float | None) -> None:
    """Raise SchedulerError when a model entry's `steps` or `guidance` break its family's recipe."""
    recipe = recipe_for(family)
    if recipe.max_guidance is not None and guidance is not None and guidance > recipe.max_guidance:
        raise SchedulerError(f"'guidance' {guidance:g}: {family} models run without classifier-free guidance "
                             f"(at most {recipe.max_guidance:g}; their recipe is 0)")
    if recipe.max_steps is not None and steps is not None and steps > recipe.max_steps:
        raise SchedulerError(f"'steps' {steps}: {family} models are made for 1–{recipe.max_steps} steps")


def following_recipe(scheduler: Any, family: str) -> Any:
    """`scheduler`, or a copy of it with the family's `timestep_spacing` where its configuration
    says another (a scheduler without that setting is returned as it is)."""
    spacing = recipe_for(family).spacing
    if spacing is None or "timestep_spacing" not in scheduler.config or scheduler.config.timestep_spacing == spacing:
        return scheduler
    return type(scheduler).from_config(dict(scheduler.config), timestep_spacing=spacing)


def loop_for(family: str, task: PipelineTask) -> Loop:
    """The loop that runs `task` in `family`."""
    loops = family_of(family).loops
    if task == "prior":
        return next(loop for loop in loops if loop.name == "prior")
    return loops[0]


def check_scheduler(name: str, family: str) -> list[str]:
    """The names of the loops of `family` that the scheduler class `name` replaces (at least one).

    Raises SchedulerError when diffusers has no scheduler class of that name, when the class
    needs a package that is not installed (diffusers then exports a placeholder), or when it
    fits none of the family's loops (see the module's docstring).
    """
    scheduler_class(name)
    if not family_of(family).loops:
        raise KeyError(family)  # as before the records: a family without loops has no scheduler to replace
    fitting = [loop.name for loop in family_of(family).loops if fits(name, loop)]
    if not fitting:
        usable = sorted({c for loop in family_of(family).loops for c in _usable(loop)})
        loops = " and ".join(loop.name for loop in family_of(family).loops)
        raise SchedulerError(f"scheduler '{name}' fits none of the {family} family's "
                             f"{loops}; these do: {', '.join(usable)}")
    return fitting


def fits(name: str, loop: Loop) -> bool:
    """Whether the scheduler class `name` can replace `loop`'s scheduler (see the module)."""
    return name in _usable(loop)


def scheduler_class(name: str) -> type[Any]:
    """diffusers' scheduler class called `name`; SchedulerError if there is none or it cannot load."""
    import diffusers
    from diffusers import SchedulerMixin
    from diffusers.utils import DummyObject

    found = getattr(diffusers, name, None) if name.isidentifier() else None
    if isinstance(found, DummyObject):  # exported, but an optional dependency is missing
        missing = [b for b in getattr(found, "_backends", []) if importlib.util.find_spec(b) is None]
        raise SchedulerError(f"scheduler '{name}' needs {', '.join(missing) or 'a package'}, which is "
                             f"not installed (pip install {' '.join(missing)})")
    if not (isinstance(found, type) and issubclass(found, SchedulerMixin)) or found is SchedulerMixin:
        close = difflib.get_close_matches(name, _all_schedulers(), n=3)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise SchedulerError(f"unknown scheduler '{name}'{hint}: give a diffusers scheduler class name, "
                             f"such as DPMSolverMultistepScheduler")
    return found


def replacement(name: str, current: Any) -> Any:
    """A new scheduler of class `name` built from the `current` scheduler's configuration.

    A UNet that predicts a variance as well (Kandinsky 2.2's decoder: 8 channels for 4 latent
    ones, `variance_type` "learned_range") is of use only to DDPMScheduler. Others would keep
    that `variance_type` in their copied config, and the Kandinsky loops then hand them all 8
    channels (DPMSolverMultistepScheduler even cuts them to 3, for pixel-space models); without
    it the loops pass on the noise half only. Raises SchedulerError as `scheduler_class` does.
    """
    cls = scheduler_class(name)
    config = dict(current.config)
    if config.get("variance_type") in ("learned", "learned_range") and name != "DDPMScheduler":
        del config["variance_type"]  # (from_config keeps a key the class does not take, even if overridden)
    if name == "PNDMScheduler":
        # as Stable Diffusion ships it: PLMS steps only; the Runge–Kutta warm-up needs 4+ steps
        config["skip_prk_steps"] = True
    if "clip_sample" not in config and name in ("DDIMScheduler", "DDPMScheduler"):
        # their default (True) clips samples to [-1, 1]: right for pixel-space models, wrong for
        # latents (Stable Diffusion ships False; diffusers warns when it is left unset)
        config["clip_sample"] = False
    return cls.from_config(config)


@cache
def _usable(loop: Loop) -> frozenset[str]:
    import diffusers
    from diffusers.utils import DummyObject

    own = getattr(diffusers, loop.scheduler)
    names = {own.__name__, *own._compatibles} | (DISTILLED_SAMPLERS if loop.distilled else set())
    usable = set()
    for name in names:
        cls = getattr(diffusers, name, None)
        if cls is None or isinstance(cls, DummyObject) or name in EDM_SAMPLERS:
            continue
        if not loop.scales_input and not _starts_at_unit_noise(cls):
            continue
        if not _takes(cls, loop.step_keywords) or not _builds_from(cls, own):
            continue
        usable.add(name)
    return frozenset(usable)


@cache
def _starts_at_unit_noise(cls: type[Any]) -> bool:
    """Whether the scheduler starts from unscaled noise (σ = 1), i.e. needs no input scaling."""
    try:
        with _quiet_diffusers():
            return float(cls().init_noise_sigma) == 1.0
    except Exception:  # noqa: BLE001 - a scheduler that cannot even be built with defaults
        return False


@contextmanager
def _quiet_diffusers() -> Iterator[None]:
    """diffusers warns about each config key a probe's scheduler does not take: not for the logs."""
    logger = logging.getLogger("diffusers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _takes(cls: type[Any], keywords: tuple[str, ...]) -> bool:
    parameters = inspect.signature(cls.step).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return True
    return all(keyword in parameters for keyword in keywords)


def _builds_from(cls: type[Any], own: type[Any]) -> bool:
    # every key explicit, as in a model's saved scheduler_config.json
    try:
        with _quiet_diffusers():
            saved = {k: v for k, v in own().config.items() if k != "_use_default_values"}
            cls.from_config(saved)
    except Exception:  # noqa: BLE001 - whatever it raises, it cannot replace that loop's scheduler
        return False
    return True


@cache
def _all_schedulers() -> list[str]:
    import diffusers

    return [n for n in dir(diffusers) if n.endswith("Scheduler") and n != "SchedulerMixin"]
