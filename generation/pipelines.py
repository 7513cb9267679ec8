"""Loading diffusers pipelines from a model's source and keeping them while they are used.

The same code loads a hub id and a local folder: tests load tiny pipelines saved in a temp
folder through exactly this path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import (
    AutoencoderKL,
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
    ControlNetModel,
    DiffusionPipeline,
)
from diffusers.loaders.single_file_utils import SingleFileComponentError

from generation.availability import (
    ModelLoadError,
    explain,
    member_message,
    require,
    require_addition,
    require_controlnet,
)
from generation.captions import load_captioner
from generation.clip_guidance import load_clip
from generation.control import DepthEstimator
from generation.devices import DeviceChoice, FastPath, Offload, choose_offload, is_out_of_memory
from generation.esrgan import load_esrgan
from generation.families import family_of
from generation.previews import Preview, TinyDecoderPreview, latents_preview, load_tiny_decoder
from generation.registry import ControlNetSpec, ModelSpec
from generation.safety import SafetyChecker
from generation.schedulers import (
    PipelineTask,
    SchedulerError,
    fits,
    following_recipe,
    loop_for,
    replacement,
    scheduler_class,
)

log = logging.getLogger(__name__)



def pipeline_class(spec: ModelSpec, task: str) -> Any:
    """The diffusers pipeline class the family record of `spec` names for `task`
    (`Family.pipelines`, generation/families.py), or None when the AutoPipeline classes pick it.
    Raises AttributeError when this diffusers has no class of that name."""
    name = family_of(spec.family).pipeline(task)
    return None if name is None else getattr(diffusers, name)


__all__ = ["ModelLoadError", "PipelineCache", "PipelineTask", "load_vae"]


def load_vae(spec: ModelSpec, dtype: torch.dtype) -> Any:
    """The AutoencoderKL of a model entry's `vae` override, in `dtype`: a hub id or a folder
    (`from_pretrained`: config.json and weights at its top), or one .safetensors file
    (`from_single_file`, configured from the model's own pipeline's vae/ config, local files
    only). Raises ModelLoadError when it cannot be had or does not load."""
    if spec.vae is None:
        raise ValueError(f"model '{spec.name}' has no vae override")
    require_addition("VAE", spec.name, spec.vae)
    path = Path(spec.vae).expanduser()
    try:
        if path.is_file():
            return AutoencoderKL.from_single_file(str(path), config=spec.config or spec.source, subfolder="vae",
                                                  local_files_only=True, dtype=dtype)
        return AutoencoderKL.from_pretrained(spec.vae, dtype=dtype)  # type: ignore[no-untyped-call]
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(member_message(spec.name), f"cannot load model '{spec.name}': its VAE {spec.vae} does "
                             f"not load (another family or size?): {type(err).__name__}: {first}") from err

def derived(cls: Any, base: Any, dtype: torch.dtype, **components: Any) -> Any:
    """`cls` built with `from_pipe` from `base`'s components (the same modules in memory), with
    `components` (a ControlNetModel…) added in `dtype`, every module of `base` keeping the dtype
    and device it had. diffusers' `DiffusionPipeline.from_pipe` casts the new pipeline, shared
    modules included, to its `dtype` argument, float32 when none is given
    (huggingface/diffusers#12754): a 16-bit model would turn float32 under every other pipeline
    built from it. The AutoPipeline classes' `from_pipe` casts nothing (and takes no dtype)."""
    shared = {name: module for name, module in base.components.items() if isinstance(module, torch.nn.Module)}
    before = {name: _placement(module) for name, module in shared.items()}
    if isinstance(cls, type) and issubclass(cls, DiffusionPipeline):
        pipe = cls.from_pipe(base, dtype=dtype, **components)
    else:
        pipe = cls.from_pipe(base, **components)
    for name, module in shared.items():
        (dtype_before, device_before), (dtype_now, device_now) = before[name], _placement(module)
        if dtype_now != dtype_before and dtype_before is not None:
            module.to(dtype=dtype_before)
        if device_now != device_before and device_before is not None:
            module.to(device_before)
    return pipe


def _placement(module: torch.nn.Module) -> tuple[torch.dtype | None, torch.device | None]:
    """The dtype and device of a module's first floating-point parameter (None for none)."""
    for parameter in module.parameters():
        if parameter.is_floating_point():
            return parameter.dtype, parameter.device
    return None, None


# compile(module, mode): compiles a module in place (nn.Module.compile: the module keeps its
# class, so the pipeline still reads its config); injected by tests
Compiler = Callable[[torch.nn.Module, str], None]
# the sub-models that run every step or decode pictures: channels-last memory format for these
_CONVOLUTIONAL = ("unet", "vae", "movq")


def compile_module(module: torch.nn.Module, mode: str) -> None:
    """torch.compile `module` in place with `mode` ("default", "reduce-overhead", …); the
    compiling itself happens on its first call (the worker's warm-up)."""
    module.compile(mode=mode)


def free_cuda_memory() -> int:
    """Free memory of the current CUDA device in bytes (torch.cuda.mem_get_info)."""
    return int(torch.cuda.mem_get_info()[0])


class PipelineCache:
    """Pipelines by model, least recently used evicted beyond `max_models`.

    Each model keeps its text-to-image pipeline and, built on demand from the same weights
    (`from_pipe`, no second copy in memory), its image-to-image and prior pipelines.
    `max_models` (at least 1) is how many models stay loaded at once. `fast` says how they are
    prepared on a GPU (FastPath: offload mode, channels-last, torch.compile, VAE tiling);
    `compiler` and `free_memory` (bytes free on the GPU, None without one) are injected by
    tests. Not thread-safe: the worker uses it from one thread.
    """

    def __init__(self, device: DeviceChoice, *, max_models: int = 1, fast: FastPath | None = None,
                 compiler: Compiler | None = None, free_memory: Callable[[], int | None] | None = None):
        self.device = device
        self.max_models = max(1, max_models)
        self.fast = fast or FastPath()
        self.compiler = compiler or compile_module
        on_cuda = device.device == "cuda"
        self.free_memory = free_memory or (free_cuda_memory if on_cuda else lambda: None)
        self.channels_last = on_cuda if self.fast.channels_last is None else self.fast.channels_last
        self.offload_modes: dict[str, Offload] = {}  # model name → the mode it was loaded with
        self._previews: dict[str, Preview] = {}  # model name → its preview maker
        self._estimators: dict[str, DepthEstimator] = {}  # depth estimator source → the model
        self._models: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def loaded(self) -> list[str]:
        """The names of the models loaded now, least recently used first."""
        return list(self._models)

    def get(self, spec: ModelSpec, task: PipelineTask) -> Any:
        """The diffusers pipeline for `spec` and `task` (a PipelineTask: "text2img", "img2img",
        "prior", "upscale", "inpaint"; "esrgan": the spandrel model of an ESRGAN-family entry;
        "clip": the entry's CLIP model for --clip, a generation.clip_guidance.ClipScorer),
        "caption": the generation.captions.Captioner of a captioning entry),
        loaded on first use (which may unload the least recently used model) and placed on the
        device, in the device's dtype, with the configured scheduler.

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

    def controlled(self, spec: ModelSpec, controlnet: ControlNetSpec, *, img2img: bool = False) -> Any:
        """`spec`'s pipeline steered by `controlnet`: for SD and SDXL the family's ControlNet
        pipeline (text to image, or image to image with `img2img`) built with `from_pipe` from
        the model's cached text-to-image pipeline (the same UNet, VAE and text encoders in
        memory) and the ControlNetModel loaded once and kept with the model; for Kandinsky 2.2
        the ControlNet decoder pipeline `controlnet.source` names (KandinskyV22Controlnet(Img2Img)
        Pipeline: its own UNet reads the depth hint), its prior the model's. Raises
        ModelLoadError when the ControlNet's files cannot be had or do not load, and as get()."""
        key = f"controlnet:{controlnet.name}:{'img2img' if img2img else 'text2img'}"
        entry = self._models.get(spec.name)
        if entry is not None and key in entry:
            self._models.move_to_end(spec.name)
            return entry[key]
        require_controlnet(controlnet)
        task: PipelineTask = "img2img" if img2img else "text2img"
        if family_of(spec.family).controlnet_is_pipeline:  # the ControlNet is a whole decoder
            if img2img:  # the same decoder's weights (its text-to-image pipeline's components)
                base = self.controlled(spec, controlnet)
                pipe = pipeline_class(spec, "controlnet_img2img")(**base.components)
                # as for Kandinsky's img2img (_build): pictures arrive at the request's size, and
                # its preprocess(image, width, height) swaps the sides
                pipe.image_processor.register_to_config(do_resize=False)
                pipe = self._finish(pipe, spec, task, placed=True)
            else:
                pipe = self._finish(self._load(pipeline_class(spec, "controlnet"), controlnet.source, spec), spec, task)
        else:
            base = self.get(spec, "text2img")
            entry = self._models[spec.name]
            model = entry.get(f"controlnet:{controlnet.name}") or self._load_controlnet(spec, controlnet)
            entry[f"controlnet:{controlnet.name}"] = model
            cls = pipeline_class(spec, "controlnet_img2img" if img2img else "controlnet")
            pipe = self._finish(derived(cls, base, self.device.dtype, controlnet=model), spec, task, placed=True)
        self._models[spec.name][key] = pipe
        return pipe

    def _load_controlnet(self, spec: ModelSpec, controlnet: ControlNetSpec) -> Any:
        log.info("loading ControlNet %s from %s for %s", controlnet.name, controlnet.source, spec.name)
        try:
            model = ControlNetModel.from_pretrained(controlnet.source, dtype=self.device.dtype)  # type: ignore[no-untyped-call]
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelLoadError(f"The ControlNet '{controlnet.name}' cannot be used on this server right now (its "
                                 "files do not load). An admin can see why with `pintor doctor`.",
                                 f"cannot load ControlNet '{controlnet.name}' from {controlnet.source}: "
                                 f"{type(err).__name__}: {first}") from err
        if self.channels_last:
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload, unused-ignore]
        return model.to(self.device.device)

    def depth_estimator(self, controlnet: ControlNetSpec) -> DepthEstimator:
        """The depth-estimation model a depth ControlNet names (`estimator`), loaded once (kept
        until release()). Raises ModelLoadError when it cannot be had or does not load, and
        ValueError for a ControlNet without one."""
        if not controlnet.estimator:
            raise ValueError(f"ControlNet '{controlnet.name}' has no depth estimator")
        if controlnet.estimator not in self._estimators:
            require_controlnet(controlnet)
            log.info("loading depth estimator %s", controlnet.estimator)
            try:
                self._estimators[controlnet.estimator] = DepthEstimator(controlnet.estimator, self.device.device)
            except (OSError, ValueError, KeyError, RuntimeError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise ModelLoadError(f"The depth estimator of ControlNet '{controlnet.name}' cannot be used on this "
                                     "server right now. An admin can see why with `pintor doctor`.",
                                     f"cannot load depth estimator {controlnet.estimator} of ControlNet "
                                     f"'{controlnet.name}': {type(err).__name__}: {first}") from err
        return self._estimators[controlnet.estimator]

    def safety_checker(self, spec: ModelSpec) -> SafetyChecker | None:
        """The model's NSFW checker, if it ships one (loads its text-to-image pipeline first);
        None for models without one. Raises as get() does."""
        self.get(spec, "text2img")
        return self._models[spec.name].get("safety")

    def preview(self, spec: ModelSpec) -> Preview:
        """How previews of `spec`'s latents are made: its tiny decoder (the entry's `preview`,
        loaded on first use and kept while the model is) or, without one or when it cannot be
        loaded (logged, not raised: a preview is not worth failing a job for), the linear
        latents_preview."""
        if spec.preview is None:
            return latents_preview
        if spec.name not in self._previews:
            try:
                decoder = load_tiny_decoder(spec.preview, self.device.device, self.device.dtype)
                self._previews[spec.name] = TinyDecoderPreview(decoder)
            except (OSError, ValueError) as err:
                log.warning("model %s: preview decoder %s cannot be loaded (%s); linear previews instead",
                            spec.name, spec.preview, err)
                self._previews[spec.name] = latents_preview
        return self._previews[spec.name]

    def fit_vae(self, pipe: Any, width: int, height: int, count: int) -> None:
        """Decode large pictures in tiles and large batches one picture at a time (FastPath.
        vae_tiling_pixels), small ones whole: set before each run of `pipe` for `count`
        pictures of width × height pixels. Pipelines without a tiling VAE are left alone."""
        vae = getattr(pipe, "vae", None)
        if vae is None or not hasattr(vae, "enable_tiling"):
            return
        limit = self.fast.vae_tiling_pixels
        vae.enable_tiling() if width * height > limit else vae.disable_tiling()
        vae.enable_slicing() if width * height * count > limit else vae.disable_slicing()

    @contextlib.contextmanager
    def offloaded(self) -> Iterator[None]:
        """Within the block, models load with offloading on (model offload; sequential where
        model offload was configured already): how a job that ran out of GPU memory runs again.
        Every model is unloaded before the block and after it, so the next job loads as
        configured. On a CPU offloading means nothing (choose_offload) and the job just runs again."""
        before = self.fast
        stronger = Offload.SEQUENTIAL if Offload(before.offload) == Offload.MODEL else Offload.MODEL
        self.release()
        self.fast = dataclasses.replace(before, offload=stronger)
        try:
            yield
        finally:
            self.release()
            self.fast = before

    def release(self) -> None:
        """Unload every model (after running out of memory)."""
        self._models.clear()
        self.offload_modes.clear()
        self._previews.clear()
        self._estimators.clear()
        self._free()

    def _evict_for_one_more(self) -> None:
        while len(self._models) >= self.max_models:
            name, _ = self._models.popitem(last=False)
            self.offload_modes.pop(name, None)
            self._previews.pop(name, None)
            log.info("unloading model %s", name)
            self._free()

    def _free(self) -> None:
        gc.collect()
        if self.device.device == "cuda":
            torch.cuda.empty_cache()

    def _build(self, spec: ModelSpec, task: PipelineTask, entry: dict[str, Any]) -> Any:
        if task == "img2img":
            base = entry.get("text2img") or self.get(spec, "text2img")
            decoder = pipeline_class(spec, "img2img")
            if decoder is not None and family_of(spec.family).img2img_no_resize:
                pipe = decoder(**base.components)
                # diffusers' Kandinsky img2img calls preprocess(image, width, height) where it takes
                # (height, width): a non-square picture comes out transposed (2.2) or fails (2.1).
                # The engine hands pictures at the request's size already: no resizing needed.
                pipe.image_processor.register_to_config(do_resize=False)
            elif decoder is not None:
                pipe = decoder(**base.components)
            else:
                pipe = derived(AutoPipelineForImage2Image, base, self.device.dtype)
            return self._finish(pipe, spec, task, placed=True)
        if task == "inpaint":  # Zoom Out, Pan, Make Square (generation/outpaint.py)
            if family_of(spec.family).separate_inpaint:
                # its decoder's UNet reads 4 latent channels: painting needs the inpainting
                # decoder (9: latents, masked picture, mask), which the entry must name
                if not spec.inpaint:
                    raise ModelLoadError(f"Model '{spec.name}' has no inpainting decoder ('inpaint').")
                return self._finish(self._load(pipeline_class(spec, "inpaint"), spec.inpaint, spec), spec, task)
            if spec.inpaint:  # a dedicated inpainting checkpoint (its UNet reads the mask)
                return self._finish(self._load(AutoPipelineForInpainting, spec.inpaint, spec), spec, task)
            base = entry.get("text2img") or self.get(spec, "text2img")
            return self._finish(derived(AutoPipelineForInpainting, base, self.device.dtype), spec, task, placed=True)
        if task == "prior":
            prior = pipeline_class(spec, "prior")
            if prior is None:
                raise ModelLoadError(f"Model '{spec.name}' has no prior.")
            return self._finish(self._load(prior, spec.prior, spec), spec, task)
        if task == "upscale":
            pipe = self._finish(self._load(pipeline_class(spec, "upscale"), spec.source, spec), spec, task)
            # the sizes Pintor sends it (a 512-pixel cell: a 2048-pixel decode) fit 8 GB with a
            # tiled decode. No attention slicing: diffusers' default attention (PyTorch's SDPA) is
            # as memory-efficient, and the sliced one computes scores and softmax in the weights'
            # 16 bits (9–11/255 from the plain pipeline in bfloat16: tests/test_fidelity_table.py)
            pipe.vae.enable_tiling()
            return pipe
        if task == "clip":  # --clip: the entry's CLIP model (generation/clip_guidance.py)
            if spec.clip_model is None:
                raise ModelLoadError(f"Model '{spec.name}' has no CLIP model for --clip.")
            require_addition("CLIP model", spec.name, spec.clip_model)
            try:
                return load_clip(spec.clip_model, self.device.device, self.device.dtype)
            except (OSError, ValueError) as err:
                raise explain(spec.name, spec.clip_model, err) from err
        if task == "esrgan":  # an ESRGAN-family network (spandrel), not a diffusers pipeline
            return load_esrgan(spec.name, spec.source, self.device)
        if task == "caption":  # /describe: BLIP (and CLIP) from transformers, not a diffusers pipeline
            return load_captioner(spec, self.device)
        if task == "text2img":
            cls = pipeline_class(spec, "text2img") or AutoPipelineForText2Image
            pipe = self._load(cls, spec.source, spec)
            checker = entry["safety"] = SafetyChecker.take_from(pipe)
            pipe = self._finish(pipe, spec, task)
            if checker is not None:  # taken out before placing: placed here, on the pipeline's device
                checker.place(self.device.device, resident=self.offload_modes[spec.name] == Offload.NONE)
            return pipe
        raise ValueError(f"unknown task {task}")

    def _load(self, cls: Any, source: str | None, spec: ModelSpec) -> Any:
        log.info("loading %s (%s) from %s on %s", spec.name, cls.__name__, source, self.device.device)
        if source is None:
            raise ModelLoadError(f"Model '{spec.name}' has no source for {cls.__name__}.")
        config = spec.config if source == spec.source else None
        require(spec.name, source, config)  # fails at once, with what to do, when the files cannot be had
        kwargs: dict[str, Any] = {"dtype": self.device.dtype}  # `dtype`: diffusers >= 0.40 (torch_dtype is deprecated)
        if spec.vae and source == spec.source:
            kwargs["vae"] = load_vae(spec, self.device.dtype)
        if spec.single_file and source == spec.source:
            # the configuration from the entry's config, local files only: never silently from the hub
            single = pipeline_class(spec, "single_file")
            try:
                return single.from_single_file(source, config=config, local_files_only=True, **kwargs)
            except (OSError, ValueError, KeyError, RuntimeError, SingleFileComponentError) as err:
                if is_out_of_memory(err):  # the CPU allocator's RuntimeError too: memory, not a misfit
                    raise
                # config and file are both here (require): the checkpoint does not fit its config
                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                raise ModelLoadError(member_message(spec.name), (
                    f"cannot load model '{spec.name}': single-file checkpoint {source} does not fit its config "
                    f"{config} (another family or size, or parts missing?): {type(err).__name__}: {first}")) from err
        if spec.variant and self.device.half:  # fp16 weight files serve bf16 too (cast on load)
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
        if hasattr(pipe, "scheduler") and task != "prior":
            # the family's recipe (Turbo: 'trailing'), not what the configuration it was read with says
            pipe.scheduler = following_recipe(pipe.scheduler, spec.family)
        if not placed:
            if self.channels_last:
                for name in _CONVOLUTIONAL:
                    module = getattr(pipe, name, None)
                    if isinstance(module, torch.nn.Module):
                        module.to(memory_format=torch.channels_last)  # type: ignore[call-overload, unused-ignore]  # (not in torch 2.13's stubs)
            mode = self.offload_modes[spec.name] = choose_offload(self.fast.offload, spec.family, self.free_memory())
            log.info("model %s (%s): offload %s, channels-last %s", spec.name, task, mode.value, self.channels_last)
            if mode == Offload.MODEL:
                pipe.enable_model_cpu_offload(device=self.device.device)
            elif mode == Offload.SEQUENTIAL:
                pipe.enable_sequential_cpu_offload(device=self.device.device)
            else:
                pipe.to(self.device.device)
            if self.fast.compile and task == "text2img" and isinstance(getattr(pipe, "unet", None), torch.nn.Module):
                if mode == Offload.NONE:
                    self.compiler(pipe.unet, self.fast.compile)  # img2img shares this UNet (from_pipe)
                else:  # offload hooks move weights between calls: not what a compiled graph expects
                    log.warning("model %s: not compiled, it is offloaded (%s)", spec.name, mode.value)
        pipe.set_progress_bar_config(disable=True)
        return pipe
