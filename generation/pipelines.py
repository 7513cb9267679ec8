"""Loading diffusers pipelines from a model's source and keeping them while they are used.

The same code loads a hub id and a local folder: tests load tiny pipelines saved in a temp
folder through exactly this path.
"""

from __future__ import annotations

import gc
import logging
from collections import OrderedDict
from typing import Any

import torch
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForText2Image,
    KandinskyImg2ImgPipeline,
    KandinskyPipeline,
    KandinskyPriorPipeline,
    KandinskyV22Img2ImgPipeline,
    KandinskyV22Pipeline,
    KandinskyV22PriorPipeline,
    StableDiffusionPipeline,
    StableDiffusionUpscalePipeline,
    StableDiffusionXLPipeline,
)
from diffusers.loaders.single_file_utils import SingleFileComponentError

from generation.availability import ModelLoadError, explain, member_message, require
from generation.devices import DeviceChoice
from generation.registry import ModelSpec
from generation.safety import SafetyChecker
from generation.schedulers import PipelineTask, SchedulerError, fits, loop_for, replacement, scheduler_class

log = logging.getLogger(__name__)

# family → (text-to-image class, image-to-image class, prior class); other families: the
# AutoPipeline classes pick
_KANDINSKY: dict[str, tuple[Any, Any, Any]] = {
    "kandinsky21": (KandinskyPipeline, KandinskyImg2ImgPipeline, KandinskyPriorPipeline),
    "kandinsky22": (KandinskyV22Pipeline, KandinskyV22Img2ImgPipeline, KandinskyV22PriorPipeline),
}


__all__ = ["ModelLoadError", "PipelineCache", "PipelineTask"]


class PipelineCache:
    """Pipelines by model, least recently used evicted beyond `max_models`.

    Each model keeps its text-to-image pipeline and, built on demand from the same weights
    (`from_pipe`, no second copy in memory), its image-to-image and prior pipelines.
    `max_models` (at least 1) is how many models stay loaded at once; `offload` moves each
    sub-model to the GPU only for its turn (diffusers' enable_model_cpu_offload), None = on
    devices with little memory (DeviceChoice.low_vram). Not thread-safe: the worker uses it
    from one thread.
    """

    def __init__(self, device: DeviceChoice, *, max_models: int = 1, offload: bool | None = None):
        self.device = device
        self.max_models = max(1, max_models)
        # None: offload on small GPUs only. Offloading keeps each sub-model on the CPU until
        # its turn, so SDXL or Kandinsky's prior + decoder fit in 8 GB.
        self.offload = device.low_vram if offload is None else offload
        self._models: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def loaded(self) -> list[str]:
        """The names of the models loaded now, least recently used first."""
        return list(self._models)

    def get(self, spec: ModelSpec, task: PipelineTask) -> Any:
        """The diffusers pipeline for `spec` and `task` ("text2img", "img2img", "prior" or
        "upscale": PipelineTask), loaded on first use (which may unload the least recently used model) and
        placed on the device, in the device's dtype, with the configured scheduler.

        Raises ModelLoadError when the source cannot be loaded (a missing folder, a hub id not in
        the cache while offline) or the model has no prior, and ValueError for another task."""
        entry = self._models.get(spec.name)
        if entry is None:
            self._evict_for_one_more()
            entry = self._models[spec.name] = {}
        self._models.move_to_end(spec.name)
        if task not in entry:
            entry[task] = self._build(spec, task, entry)
        return entry[task]

    def safety_checker(self, spec: ModelSpec) -> SafetyChecker | None:
        """The model's NSFW checker, if it ships one (loads its text-to-image pipeline first);
        None for models without one. Raises as get() does."""
        self.get(spec, "text2img")
        return self._models[spec.name].get("safety")

    def release(self) -> None:
        """Unload every model (after running out of memory)."""
        self._models.clear()
        self._free()

    def _evict_for_one_more(self) -> None:
        while len(self._models) >= self.max_models:
            name, _ = self._models.popitem(last=False)
            log.info("unloading model %s", name)
            self._free()

    def _free(self) -> None:
        gc.collect()
        if self.device.device == "cuda":
            torch.cuda.empty_cache()

    def _build(self, spec: ModelSpec, task: PipelineTask, entry: dict[str, Any]) -> Any:
        if task == "img2img":
            base = entry.get("text2img") or self.get(spec, "text2img")
            if spec.family in _KANDINSKY:
                pipe = _KANDINSKY[spec.family][1](**base.components)
                # diffusers' Kandinsky img2img calls preprocess(image, width, height) where it takes
                # (height, width): a non-square picture comes out transposed (2.2) or fails (2.1).
                # The engine hands pictures at the request's size already: no resizing needed.
                pipe.image_processor.register_to_config(do_resize=False)
            else:
                pipe = AutoPipelineForImage2Image.from_pipe(base)
            return self._finish(pipe, spec, task, placed=True)
        if task == "prior":
            if spec.family not in _KANDINSKY:
                raise ModelLoadError(f"Model '{spec.name}' has no prior.")
            return self._finish(self._load(_KANDINSKY[spec.family][2], spec.prior, spec), spec, task)
        if task == "upscale":
            return self._finish(self._load(StableDiffusionUpscalePipeline, spec.source, spec), spec, task)
        if task == "text2img":
            cls = _KANDINSKY[spec.family][0] if spec.family in _KANDINSKY else AutoPipelineForText2Image
            pipe = self._load(cls, spec.source, spec)
            entry["safety"] = SafetyChecker.take_from(pipe)
            return self._finish(pipe, spec, task)
        raise ValueError(f"unknown task {task}")

    def _load(self, cls: Any, source: str | None, spec: ModelSpec) -> Any:
        log.info("loading %s (%s) from %s on %s", spec.name, cls.__name__, source, self.device.device)
        if source is None:
            raise ModelLoadError(f"Model '{spec.name}' has no source for {cls.__name__}.")
        config = spec.config if source == spec.source else None
        require(spec.name, source, config)  # fails at once, with what to do, when the files cannot be had
        kwargs: dict[str, Any] = {"dtype": self.device.dtype}  # `dtype`: diffusers >= 0.40 (torch_dtype is deprecated)
        if spec.single_file and source == spec.source:
            # the configuration from the entry's config, local files only: never silently from the hub
            single = StableDiffusionXLPipeline if spec.family.startswith("sdxl") else StableDiffusionPipeline
            try:
                return single.from_single_file(source, config=config, local_files_only=True, **kwargs)
            except torch.OutOfMemoryError:
                raise
            except (OSError, ValueError, KeyError, RuntimeError, SingleFileComponentError) as err:
                # config and file are both here (require): the checkpoint does not fit its config
                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                raise ModelLoadError(member_message(spec.name), (
                    f"cannot load model '{spec.name}': single-file checkpoint {source} does not fit its config "
                    f"{config} (another family or size, or parts missing?): {type(err).__name__}: {first}")) from err
        if spec.variant and self.device.dtype == torch.float16:
            kwargs["variant"] = spec.variant
        try:
            try:
                return cls.from_pretrained(source, **kwargs)
            except (OSError, ValueError):
                if "variant" not in kwargs:
                    raise
                kwargs.pop("variant")  # a source without fp16 files: load the full weights
                return cls.from_pretrained(source, **kwargs)
        except (OSError, ValueError) as err:
            raise explain(spec.name, source, err) from err

    def _finish(self, pipe: Any, spec: ModelSpec, task: PipelineTask, *, placed: bool = False) -> Any:
        # the configured scheduler replaces only the schedulers it fits: not the Kandinsky prior's
        if spec.scheduler and hasattr(pipe, "scheduler"):
            try:
                if fits(spec.scheduler, loop_for(spec.family, task)):
                    pipe.scheduler = replacement(spec.scheduler, pipe.scheduler)
                else:
                    scheduler_class(spec.scheduler)  # a name that works nowhere is still an error
            except SchedulerError as err:
                raise ModelLoadError(f"model '{spec.name}': {err}") from None
        if not placed:
            if self.offload and self.device.device == "cuda":
                pipe.enable_model_cpu_offload()
            else:
                pipe.to(self.device.device)
        pipe.set_progress_bar_config(disable=True)
        return pipe
