"""One `Family` record per model family: everything that is true of a family, in one place.

Plain data (no torch, no diffusers): the front end, the registry and the worker all read it.
A model entry names its family (`family = "sdxl"`); `family_of(name)` gives its record, and a
capability check reads the record (`family_of(spec.family).emphasis`), never a list of names.
Pipeline classes are diffusers' class names as strings: the worker resolves them.

How to add a family: its record below (and in FAMILIES), a runner in the engine where its loop
differs from one that exists, a tiny config in tests/tiny_models.py and a test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Loop:
    """One denoising loop of a family's pipelines (generation/schedulers.py checks a model's
    `scheduler` against it)."""

    name: str  # in messages: "denoising loop", "decoder", "prior"
    scheduler: str  # the scheduler class its pipelines ship with (diffusers' class name)
    scales_input: bool  # whether it calls scheduler.scale_model_input on the model's input
    step_keywords: tuple[str, ...] = ()  # what it passes to scheduler.step whatever its signature
    distilled: bool = False  # whether DISTILLED_SAMPLERS run in it


@dataclass(frozen=True)
class Recipe:
    """How a family's weights must be sampled, whatever the configuration they were read with:
    `spacing` the schedulers' `timestep_spacing` (None: the model's own), `max_guidance` the
    most classifier-free guidance, `max_steps` the most steps a model entry may set (None: any).

    Turbo models (SD-Turbo, SDXL-Turbo: adversarial diffusion distillation) are sampled from the
    last timestep, 'trailing', in 1–4 steps without guidance (their model cards: guidance_scale
    0.0; their hub schedulers: EulerDiscrete / EulerAncestralDiscrete with 'trailing'). A Turbo
    read from a single file takes its scheduler from the `config` it names, usually an SD or
    SDXL base whose 'leading' spacing starts one step at t = 1 instead of 999: noise."""

    spacing: str | None = None
    max_guidance: float | None = None
    max_steps: int | None = None


TURBO = Recipe(spacing="trailing", max_guidance=1.0, max_steps=4)


@dataclass(frozen=True)
class Family:
    """What is true of every model of one family.

    - `name`: what a model entry writes as its `family`.
    - `side`, `steps`, `guidance`: the defaults: native side in pixels, denoising steps,
      classifier-free guidance scale (0: none).
    - `text_to_image`: makes pictures from words (/imagine). `blend`: mixes a text with images
      (/blend: a prior turns both into one image embedding). `clip_guidance`: its text-to-image and
      image-to-image runs take CLIP guidance (--clip). `inpaint`: its parts make an inpainting
      pipeline (Zoom Out, Pan, Make Square) without a separate model. `emphasis`: its text
      encoders take weighted embeddings (compel), so SD emphasis works. `additions`: its
      pipelines take LoRAs, textual-inversion embeddings and a replacement VAE. `single_file`:
      diffusers' from_single_file builds it from one checkpoint. `upscaler`: it upscales
      pictures (U). `weights_file`: its source is one weights file read by spandrel, not
      diffusers. `caption`: a captioning model (/describe). `remote`: a provider's API makes its
      pictures (nothing downloaded or loaded here).
    - `controlnet_families`: for a ControlNet trained for this family, the model families it
      steers (empty: no ControlNet pipeline); `control_kinds` the ControlNet kinds its ControlNet
      pipeline takes (generation.prompt.CONTROL_KINDS; Kandinsky 2.2's takes depth "hint"s
      only). `separate_inpaint`: a model entry may name a
      separate inpainting decoder (`inpaint`) that gives it Zoom Out and Pan.
      `controlnet_is_pipeline`: its ControlNets are whole decoder pipelines (hub repos pulled and
      checked as models), not diffusers ControlNetModels. `outpaint_multiple`: the multiple in
      pixels a Zoom Out or Pan canvas is rounded to (8, the latent grid; 64 for Kandinsky 2.2,
      whose decoders round their latents up to 64 pixels).
    - `no_prior_why`, `no_blend_why`: said (in parentheses) when an entry of the family names a
      `prior`, and when a member asks it to blend; empty: nothing more to say.
    - `runner`: which of the engine's loops runs its text-to-image and image-to-image jobs
      ("stable_diffusion", "kandinsky": prior then decoder, "kandinsky_3": T5 text into the UNet; "": none, its jobs
      are of another kind). `decoder_reads_text`: its decoder takes the prompt's text as well
      as the prior's embeddings (Kandinsky 2.1).
    - `pipelines`: diffusers pipeline class names by task where the AutoPipeline classes do not
      pick them (strings, resolved in the worker by generation/pipelines.py): "text2img",
      "img2img" (built from the text-to-image pipeline's components), "prior", "inpaint",
      "single_file" (from_single_file), "controlnet", "controlnet_img2img", "upscale".
      `img2img_no_resize`: its image-to-image pipeline's resizing is switched off (diffusers'
      Kandinsky img2img calls preprocess(image, width, height) where it takes (height, width):
      the engine hands pictures at the request's size already).
    - `peak_gib`: peak GPU memory in GiB of one grid per offload mode (none, model, sequential);
      None: no measured row, the largest ("sdxl"'s) is used.
    - `loops`: its denoising loops, the first makes the pictures; `recipe`: how it must be sampled.
    - `batch_images_cuda`: images per pipeline call on CUDA when jobs of several members share
      one (0: its jobs never share a call).
    """

    name: str
    side: int
    steps: int
    guidance: float
    text_to_image: bool = False
    blend: bool = False
    clip_guidance: bool = False
    inpaint: bool = False
    emphasis: bool = False
    additions: bool = False
    single_file: bool = False
    upscaler: bool = False
    weights_file: bool = False
    caption: bool = False
    remote: bool = False
    controlnet_families: tuple[str, ...] = ()
    separate_inpaint: bool = False
    controlnet_is_pipeline: bool = False
    outpaint_multiple: int = 8
    no_prior_why: str = ""
    no_blend_why: str = ""
    control_kinds: tuple[str, ...] = ("canny", "depth", "pose", "scribble", "lineart")
    runner: str = ""
    decoder_reads_text: bool = False
    pipelines: tuple[tuple[str, str], ...] = ()
    img2img_no_resize: bool = False
    peak_gib: tuple[float, float, float] | None = None
    loops: tuple[Loop, ...] = ()
    recipe: Recipe = Recipe()
    batch_images_cuda: int = 0

    def pipeline(self, task: str) -> str | None:
        """The diffusers class name of the family's pipeline for `task` (see `pipelines`), or None
        when the AutoPipeline classes pick it."""
        return dict(self.pipelines).get(task)

    @property
    def batches(self) -> bool:
        """True when jobs of several members may share one pipeline call (batch_images_cuda > 0)."""
        return self.batch_images_cuda > 0


# Stable Diffusion's one loop. From diffusers 0.42's pipelines: KandinskyV22Pipeline,
# KandinskyPipeline (and their img2img and prior pipelines), Kandinsky3Pipeline,
# StableDiffusion(XL)Pipeline, StableDiffusionUpscalePipeline.
_SD = (Loop("denoising loop", "EulerDiscreteScheduler", scales_input=True, distilled=True),)
_PRIOR = Loop("prior", "UnCLIPScheduler", scales_input=False, step_keywords=("generator", "prev_timestep"))

# The Stable Diffusion families share their capabilities (SD below, the others are copies of
# it with their differences): compel emphasis, CLIP guidance, inpainting from their own parts,
# LoRAs/embeddings/VAEs, single files, batching (their pipelines take a list of generators and
# per-image prompt embeddings).

# Peak GPU memory in GiB of one grid (a batch of 4, guided: 8 UNet rows) at the family's native
# size in fp16/bf16, per offload mode (none, model, sequential), weights included, with the VAE
# decoding as fit_vae sets it (SDXL grids one picture at a time). SD 1.5 and SDXL are what
# benchmarks/gpu.py measures (its section 4 prints these rows to paste here); until a GPU run
# replaces them, every row is an estimate: the 16-bit weights from the parameter counts (SD 1.5:
# 1.07 G parameters = 2.0 GiB; SD 2: 1.3 G; SDXL: 3.5 G = 6.5 GiB, its UNet alone 4.8 GiB;
# Kandinsky 2.2 prior + decoder: 2.2 G; Kandinsky 3: 11.9 G), for "model" the largest sub-model,
# plus activations and the VAE decode, rounded up; "sequential" holds one layer at a time, so
# activations dominate.
#
# Images per call on CUDA: SD 1.x/2.x four jobs of four (public figures: most of the batching
# gain is reached by then), SDXL two (its 1024² latents take four times the memory).
_SD_PIPELINES = (("single_file", "StableDiffusionPipeline"), ("controlnet", "StableDiffusionControlNetPipeline"),
                 ("controlnet_img2img", "StableDiffusionControlNetImg2ImgPipeline"))
_SDXL_PIPELINES = (("single_file", "StableDiffusionXLPipeline"),
                   ("controlnet", "StableDiffusionXLControlNetPipeline"),
                   ("controlnet_img2img", "StableDiffusionXLControlNetImg2ImgPipeline"))
SD = Family("sd", 512, 30, 7.0, text_to_image=True, clip_guidance=True, inpaint=True, emphasis=True,
            additions=True, single_file=True, loops=_SD, runner="stable_diffusion", controlnet_families=("sd",),
            pipelines=_SD_PIPELINES, peak_gib=(5.0, 3.5, 1.5), batch_images_cuda=16)
SD2 = replace(SD, name="sd2", side=768, controlnet_families=(), peak_gib=(6.0, 4.0, 2.5))
SDXL = replace(SD, name="sdxl", side=1024, guidance=6.0, controlnet_families=("sdxl", "sdxl-turbo"),
               pipelines=_SDXL_PIPELINES, peak_gib=(10.0, 6.5, 3.0), batch_images_cuda=8)
# Turbo models are distilled for 1–4 steps without classifier-free guidance.
SD_TURBO = replace(SD, name="sd-turbo", steps=2, guidance=0.0, controlnet_families=(), recipe=TURBO)
SDXL_TURBO = replace(SDXL, name="sdxl-turbo", side=512, steps=2, guidance=0.0, controlnet_families=(),
                     peak_gib=(8.5, 6.0, 2.5), recipe=TURBO, batch_images_cuda=16)
# Kandinsky's prior runs per prompt, so its jobs stay one call each.
KANDINSKY21 = Family(
    "kandinsky21", 768, 40, 4.0, text_to_image=True, blend=True, runner="kandinsky", decoder_reads_text=True,
    pipelines=(("text2img", "KandinskyPipeline"), ("img2img", "KandinskyImg2ImgPipeline"),
               ("prior", "KandinskyPriorPipeline")),
    img2img_no_resize=True, peak_gib=(7.0, 4.5, 2.5),
    loops=(Loop("decoder", "DDIMScheduler", scales_input=False, step_keywords=("generator",)), _PRIOR))
KANDINSKY22 = Family(
    "kandinsky22", 768, 40, 4.0, text_to_image=True, blend=True, runner="kandinsky",
    controlnet_families=("kandinsky22",), control_kinds=("depth",), img2img_no_resize=True,
    controlnet_is_pipeline=True, outpaint_multiple=64,
    pipelines=(("text2img", "KandinskyV22Pipeline"), ("img2img", "KandinskyV22Img2ImgPipeline"),
               ("prior", "KandinskyV22PriorPipeline"), ("inpaint", "KandinskyV22InpaintPipeline"),
               ("controlnet", "KandinskyV22ControlnetPipeline"),
               ("controlnet_img2img", "KandinskyV22ControlnetImg2ImgPipeline")),
    separate_inpaint=True, peak_gib=(7.0, 4.5, 2.5),
    loops=(Loop("decoder", "DDPMScheduler", scales_input=False, step_keywords=("generator",)), _PRIOR))
# kandinsky-community/kandinsky-3's own defaults (its pipelines: 1024², 25 steps, guidance 3).
# Kandinsky 3 has no prior (its UNet reads T5 text embeddings only): it cannot blend. Peak: 11.9 G
# parameters, the FLAN-UL2 T5 encoder alone 8.6 G (16 GiB in 16 bits), the UNet 3 G (5.6 GiB): an
# estimate, as the rows above. Kandinsky3Pipeline: one loop, DDPM, no input scaling, `generator`
# passed to step.
KANDINSKY3 = Family(
    "kandinsky3", 1024, 25, 3.0, text_to_image=True, runner="kandinsky_3",
    no_prior_why="Kandinsky 3 reads the text itself",
    no_blend_why="Kandinsky 3 reads only text: it has no prior to mix images with",
    pipelines=(("text2img", "Kandinsky3Pipeline"), ("img2img", "Kandinsky3Img2ImgPipeline")),
    peak_gib=(25.0, 18.0, 4.0),
    loops=(Loop("denoising loop", "DDPMScheduler", scales_input=False, step_keywords=("generator",)),))
# stabilityai/stable-diffusion-x4-upscaler's model card (its pipeline's defaults): 75 steps, guidance 9
UPSCALE_X4 = Family("upscale-x4", 512, 75, 9.0, upscaler=True,
                    pipelines=(("upscale", "StableDiffusionUpscalePipeline"),), peak_gib=(8.0, 7.0, 5.0),
                    loops=(Loop("upscaler", "DDIMScheduler", scales_input=True),))
# a super-resolution network (generation/esrgan.py): no steps, no guidance
ESRGAN = Family("esrgan", 512, 1, 0.0, upscaler=True, weights_file=True)
# OpenAI's image API (generation/remote.py): one request, no steps, no guidance; each job costs
# the operator money
OPENAI = Family("openai", 1024, 1, 0.0, text_to_image=True, remote=True)
# a captioning model for /describe (generation/captions.py): BLIP's 384-px input; transformers
# folders or hub ids (config.json, not a diffusers model_index.json)
BLIP = Family("blip", 384, 1, 0.0, caption=True)

FAMILIES: dict[str, Family] = {family.name: family for family in (
    SD, SD2, SDXL, SD_TURBO, SDXL_TURBO, KANDINSKY21, KANDINSKY22, KANDINSKY3, UPSCALE_X4, ESRGAN, OPENAI, BLIP)}


def family_of(name: str) -> Family:
    """The record of the family called `name`. Raises KeyError for a name no record has (the
    registry refuses such names when it reads its file, so a model entry's family always has one)."""
    return FAMILIES[name]


def peak_gib(name: str) -> tuple[float, float, float]:
    """Peak GPU memory in GiB of one grid of the family `name` per offload mode (none, model,
    sequential): its record's `peak_gib`; for a family without a row (or a name without a record),
    the largest row of the Stable Diffusion families, SDXL's."""
    record = FAMILIES.get(name)
    if record is not None and record.peak_gib is not None:
        return record.peak_gib
    return SDXL.peak_gib or (0.0, 0.0, 0.0)


def names_where(test: Callable[[Family], bool]) -> frozenset[str]:
    """The names of the families whose record passes `test` (e.g. `lambda f: f.emphasis`)."""
    return frozenset(name for name, family in FAMILIES.items() if test(family))
