"""The model registry: short names → where a pipeline comes from and how to run it.

Admins write a TOML file (its path is a setting); without one, the built-in entries below
are used. A `source` is anything diffusers' `from_pretrained` accepts (a hub id or a folder), or a
single-file checkpoint (`.safetensors`, `.ckpt`) read with `from_single_file` and a `config`.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from generation.families import FAMILIES, family_of, names_where
from generation.prompt import CONTROL_KINDS, LORA_WEIGHT_RANGE, SELECTORS, selector_value
from generation.schedulers import SchedulerError, check_recipe, check_scheduler

# family names admins write that no library here can run, and what to use instead: said when
# the registry file is read (docs/models.md). Kandinsky 2.0 was published only as its authors'
# own code (ai-forever/Kandinsky-2, never on PyPI); diffusers has 2.1, 2.2 and 3.
KANDINSKY_20 = ("Kandinsky 2.0 exists neither in diffusers nor as a package on PyPI (only as its "
                "authors' research code), so Pintor cannot run it. Use Kandinsky 2.1 (family "
                "\"kandinsky21\"), 2.2 (\"kandinsky22\", which also blends images) or 3 (\"kandinsky3\") "
                "instead; see docs/models.md.")
UNAVAILABLE_FAMILIES = {name: KANDINSKY_20 for name in (
    "kandinsky2", "kandinsky20", "kandinsky2.0", "kandinsky-2", "kandinsky-2.0", "kandinsky-20")}
WEIGHTS_SUFFIXES = (".pth", ".pt", ".safetensors", ".ckpt")

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")

@dataclass(frozen=True)
class RemoteLimits:
    """What one of OpenAI's image models can do, from its API reference (platform.openai.com/
    docs/api-reference/images, November 2026): `sizes` (width, height) in pixels it makes,
    `max_n` images per request, the longest prompt in characters (`max_prompt_chars`), whether
    it has the variations call (`varies`) and the edits call (`edits`), and whether it takes
    `response_format` (gpt-image models always answer with base64 and refuse the parameter).

    What those two calls take as their `image` (generation/remote.py: `input_picture` fits a
    picture to it): files of fewer than `input_bytes` bytes, `square_input` pictures only, and
    (Pintor's choice, not the API's rule) no side longer than `input_side` pixels: the largest
    picture the model makes, so a larger one carries nothing it uses."""

    sizes: tuple[tuple[int, int], ...]
    max_n: int
    max_prompt_chars: int
    varies: bool = False
    edits: bool = False
    response_format: bool = True
    input_bytes: int | None = None
    square_input: bool = False
    input_side: int | None = None


OPENAI_MODELS: dict[str, RemoteLimits] = {
    # createImageVariation and createImageEdit, `image` for dall-e-2: "Must be a valid PNG file,
    # less than 4MB, and square" (platform.openai.com/docs/api-reference/images/createVariation).
    # 4 MB read as 4,000,000 bytes, the stricter of its two readings.
    "dall-e-2": RemoteLimits(sizes=((256, 256), (512, 512), (1024, 1024)), max_n=10, max_prompt_chars=1000,
                             varies=True, edits=True, input_bytes=4_000_000, square_input=True, input_side=1024),
    "dall-e-3": RemoteLimits(sizes=((1024, 1024), (1792, 1024), (1024, 1792)), max_n=1, max_prompt_chars=4000),
    # createImageEdit, `image` for gpt-image-1: "each image should be a png, webp, or jpg file
    # less than 50MB" (platform.openai.com/docs/api-reference/images/createEdit)
    "gpt-image-1": RemoteLimits(sizes=((1024, 1024), (1536, 1024), (1024, 1536)), max_n=10,
                                max_prompt_chars=32000, edits=True, response_format=False,
                                input_bytes=50_000_000, input_side=1536),
}
# images per grid an admin may set with `images`: a grid of four, or one picture
REMOTE_IMAGES = (1, 4)


def nearest_size(limits: RemoteLimits, width: int, height: int) -> tuple[int, int]:
    """The size of `limits.sizes` whose aspect ratio is nearest to width:height (compared as
    the logarithm of the ratio, so 2:1 and 1:2 are as far from 1:1); among sizes of the same
    ratio (dall-e-2's squares) the one nearest in pixel count. Returns (width, height) in pixels."""
    wanted = math.log(width / height)
    return min(limits.sizes, key=lambda size: (round(abs(math.log(size[0] / size[1]) - wanted), 6),
                                              abs(size[0] * size[1] - width * height)))


def is_single_file(source: str) -> bool:
    return source.lower().endswith(SINGLE_FILE_SUFFIXES)


class UnknownModelError(LookupError):
    """A model name that is not configured; str(err) lists the names that are."""


class UnknownLoraError(LookupError):
    """A LoRA name that is not configured; str(err) lists the names that are."""


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA an admin configured (`[loras.NAME]`): `source` is a .safetensors file or a hub id
    (with `weight_name`, the file in that repo); `families` the model families it fits;
    `weight` the strength when a member gives none; `triggers` words added to the prompt."""

    name: str
    source: str
    families: tuple[str, ...]
    weight: float = 1.0
    weight_name: str | None = None
    triggers: tuple[str, ...] = ()
    description: str = ""

    def fits(self, family: str) -> bool:
        return family in self.families


@dataclass(frozen=True)
class EmbeddingSpec:
    """A textual-inversion embedding (`[embeddings.NAME]`): `source` a file (.safetensors, .pt,
    .bin) or a hub id (with `weight_name`); `token` the word members write in a prompt or --no
    to use it (default: the entry's name); `families` the model families it fits."""

    name: str
    source: str
    token: str
    families: tuple[str, ...]
    weight_name: str | None = None
    description: str = ""

    def fits(self, family: str) -> bool:
        return family in self.families


# ControlNet conditioning kinds (the lllyasviel ControlNet 1.1 names). What makes the control
# image from an upload (generation/control.py): "canny", "scribble", "lineart" with OpenCV,
# "depth" with the entry's depth `estimator`; "pose" has no estimator here: a pose ControlNet
# takes an OpenPose skeleton the member sends (--cn none).


@dataclass(frozen=True)
class ControlNetSpec:
    """A ControlNet an admin configured (`[controlnets.NAME]`): `source` a hub id or folder of a
    diffusers ControlNetModel (for `family = "kandinsky22"`: a KandinskyV22ControlnetPipeline
    decoder folder or hub id, e.g. "kandinsky-community/kandinsky-2-2-controlnet-depth");
    `family` the model family it was trained for ("sd", "sdxl", "kandinsky22"); `kind` what
    its control image shows (CONTROL_KINDS); `estimator` (depth only) a transformers
    depth-estimation model (DPT, Depth Anything: hub id or folder) that makes depth maps."""

    name: str
    source: str
    family: str
    kind: str
    estimator: str | None = None
    description: str = ""

    def fits(self, family: str) -> bool:
        """Whether this ControlNet steers models of `family` (sdxl-turbo shares SDXL's)."""
        return family in family_of(self.family).controlnet_families


class RegistryError(ValueError):
    """The registry file is malformed; str(err) says which entry and field."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str
    family: str
    prior: str | None = None  # Kandinsky: the prior pipeline's source
    native_side: int = 512
    steps: int = 30
    guidance: float = 7.0
    # a diffusers scheduler class name, e.g. "EulerAncestralDiscreteScheduler"; it replaces the
    # schedulers of the loops it fits (generation/schedulers.py): on Kandinsky the decoder's only
    scheduler: str | None = None
    variant: str | None = None  # e.g. "fp16" weights on the hub
    description: str = ""
    # a single-file checkpoint's pipeline configuration (configs, tokenizer, scheduler): a
    # diffusers folder or a downloaded hub id of the same architecture; never fetched silently
    config: str | None = None
    # a tiny decoder for progress previews (diffusers' AutoencoderTiny: "madebyollin/taesd" for
    # SD 1.x/2.x, "madebyollin/taesdxl" for SDXL, or a folder); None: the linear preview
    preview: str | None = None
    # a VAE replacing the pipeline's own (e.g. "madebyollin/sdxl-vae-fp16-fix"): a hub id or
    # folder of an AutoencoderKL, or a single .safetensors file
    vae: str | None = None
    # Zoom Out, Pan, Make Square: a dedicated inpainting pipeline (hub id or folder, e.g.
    # "stable-diffusion-v1-5/stable-diffusion-inpainting"); without one the model's own
    # components paint (diffusers' AutoPipelineForInpainting.from_pipe)
    inpaint: str | None = None
    # a remote family's (a family whose record says `remote`): the provider's model name ("dall-e-3"), its API's base
    # URL when not the operator's (OPENAI_BASE_URL), and the pictures per grid (4, or 1: no grid)
    model: str | None = None
    base_url: str | None = None
    images: int = 4
    # --clip: the CLIP model that steers generation towards the prompt (a hub id or folder of a
    # transformers CLIPModel with its tokenizer and image processor, e.g.
    # "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", what diffusers' CLIP-guided example uses); None:
    # --clip is refused for this model
    clip_model: str | None = None
    # /describe: a CLIP model (transformers CLIPModel: a hub id such as
    # "openai/clip-vit-base-patch32", or a folder) that ranks style words for a captioner's prompts
    clip: str | None = None

    @property
    def single_file(self) -> bool:
        """True when `source` is one diffusers checkpoint file (.safetensors / .ckpt) rather than a
        pipeline (an upscaler's weights file is not one: spandrel reads it)."""
        return not family_of(self.family).weights_file and is_single_file(self.source)

    @property
    def can_generate(self) -> bool:
        return family_of(self.family).text_to_image

    @property
    def can_blend(self) -> bool:
        return family_of(self.family).blend

    @property
    def is_upscaler(self) -> bool:
        return family_of(self.family).upscaler

    @property
    def is_remote(self) -> bool:
        """True when a provider's API makes the pictures (a family whose record says `remote`): nothing to download."""
        return family_of(self.family).remote

    @property
    def remote_limits(self) -> RemoteLimits | None:
        """What the provider's model can do (OPENAI_MODELS); None for a local model."""
        return OPENAI_MODELS.get(self.model or "") if self.is_remote else None

    @property
    def can_clip_guide(self) -> bool:
        """True when --clip works with this model: a Stable Diffusion family and a `clip_model`."""
        return family_of(self.family).clip_guidance and self.clip_model is not None

    @property
    def can_outpaint(self) -> bool:
        """True when Zoom Out, Pan and Make Square work with this model: a Stable Diffusion
        family (an inpainting pipeline from its parts, or its entry's `inpaint`), or Kandinsky
        2.2 whose entry names its inpainting decoder (`inpaint`)."""
        return family_of(self.family).inpaint or (family_of(self.family).separate_inpaint and self.inpaint is not None)

    @property
    def can_repaint(self) -> bool:
        """True when Upscale (Creative) repaints this model's enlarged pictures (image to image
        over tiles, with weighted embeddings: the Stable Diffusion families); the others'
        pictures get Upscale (Subtle) only."""
        return family_of(self.family).emphasis

    def capabilities(self) -> list[str]:
        """What members can do with this model, in words (`pintor models`, /info): "text to
        image", "image to image (V)", "blend", "zoom/pan (inpaint)", "CLIP guidance", "upscale";
        a remote model's: a grid of four or one picture, V by the API's variations or edits call
        or none, upscale (here, as any picture)."""
        if (limits := self.remote_limits) is not None:
            vary = ("vary (API variations)" if limits.varies else "vary (API edits)" if limits.edits
                    else "no vary (the API has no variation or edit call)")
            return ["imagine (a grid of 4)" if self.images == 4 else "imagine (1 picture, no grid)", vary,
                    "upscale (here, as any picture)"]
        can = [what for what, on in (
            ("text to image", self.can_generate), ("image to image (V)", self.can_generate),
            ("blend", self.can_blend), ("zoom/pan (inpaint)", self.can_outpaint),
            ("CLIP guidance (--clip)", self.can_clip_guide), ("upscale", self.is_upscaler),
            ("describe", self.is_captioner)) if on]
        return can

    @property
    def is_captioner(self) -> bool:
        return family_of(self.family).caption


def _spec(name: str, source: str, family: str, **overrides: Any) -> ModelSpec:
    record = family_of(family)
    side, steps, guidance = record.side, record.steps, record.guidance
    values = {"native_side": side, "steps": steps, "guidance": guidance} | overrides
    return ModelSpec(name=name, source=source, family=family, **values)


BUILTIN_MODELS: tuple[ModelSpec, ...] = (
    _spec("sd-turbo", "stabilityai/sd-turbo", "sd-turbo",
          description="SD 2.1 Turbo: 1–4 steps, fast on CPUs and small GPUs"),
    _spec("sdxl-turbo", "stabilityai/sdxl-turbo", "sdxl-turbo", variant="fp16",
          description="SDXL Turbo: 1–4 steps, needs about 8 GB VRAM"),
    _spec("sd-1.5", "stable-diffusion-v1-5/stable-diffusion-v1-5", "sd",
          description="Stable Diffusion 1.5"),
    _spec("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", "sdxl", variant="fp16",
          description="Stable Diffusion XL 1.0"),
    _spec("kandinsky-2.2", "kandinsky-community/kandinsky-2-2-decoder", "kandinsky22",
          prior="kandinsky-community/kandinsky-2-2-prior",
          description="Kandinsky 2.2: mixes a text and images (/blend)"),
    _spec("upscaler", "stabilityai/stable-diffusion-x4-upscaler", "upscale-x4",
          description="Stable Diffusion x4 upscaler (U1–U4)"),
)
BUILTIN_DEFAULT = "sd-turbo"


@dataclass(frozen=True)
class Registry:
    models: dict[str, ModelSpec]
    default: str
    upscaler: str | None = None
    origin: str = "built-in"  # where the entries came from, for `pintor models`
    captioner: str | None = None  # the model /describe uses (of a `caption` family); None: no /describe
    # MidJourney's model choosers → model names: ("v", "6") → "sdxl"; ("niji", "") is any --niji
    selectors: dict[tuple[str, str], str] = field(default_factory=dict)
    loras: dict[str, LoraSpec] = field(default_factory=dict)
    embeddings: dict[str, EmbeddingSpec] = field(default_factory=dict)
    controlnets: dict[str, ControlNetSpec] = field(default_factory=dict)

    def controlnet_for(self, family: str, kind: str | None) -> ControlNetSpec | None:
        """The first configured ControlNet (in models.toml's order) that fits `family` and is of
        `kind` (None: of any kind); None when there is none."""
        return next((c for c in self.controlnets.values() if c.fits(family) and kind in (None, c.kind)), None)

    def control_kinds(self, family: str) -> list[str]:
        """The kinds of ControlNet configured for `family`, in CONTROL_KINDS order."""
        kinds = {c.kind for c in self.controlnets.values() if c.fits(family)}
        return [k for k in CONTROL_KINDS if k in kinds]

    def lora(self, name: str) -> LoraSpec:
        """The named LoRA (exact name, else in any case); UnknownLoraError names the choices."""
        spec = self.loras.get(name) or next((s for s in self.loras.values() if s.name.lower() == name.lower()), None)
        if spec is None:
            available = ", ".join(self.loras) or "none are configured"
            raise UnknownLoraError(f"Unknown LoRA '{name}'. Available: {available}.")
        return spec

    def for_selector(self, name: str, value: str) -> str | None:
        """The model an admin mapped `--name value` to (or `--name` with any value); None if none."""
        return self.selectors.get((name, value)) or self.selectors.get((name, ""))

    def get(self, name: str | None) -> ModelSpec:
        """The named model, or the default for None; UnknownModelError names the choices."""
        key = name or self.default
        spec = self.models.get(key) or self.models.get(key.lower())
        if spec is None:
            raise UnknownModelError(f"Unknown model '{key}'. Available: {', '.join(self.names)}.")
        return spec

    @property
    def names(self) -> list[str]:
        return list(self.models)

    def generators(self) -> list[ModelSpec]:
        return [m for m in self.models.values() if m.can_generate]


_FIELDS = {f.name for f in fields(ModelSpec)} - {"name"}


# field → (accepted types, what the value must be, its lowest value); a bad value is an error
# when the file is read, not a crash when a member first uses the model
_FIELD_RULES: dict[str, tuple[tuple[type, ...], str, float | None]] = {
    "native_side": ((int,), "a whole number of pixels, at least 64", 64),
    "steps": ((int,), "a whole number, at least 1", 1),
    "guidance": ((int, float), "a number, at least 0", 0),
    "images": ((int,), "1 or 4", 1),
}
# the fields of a remote entry (the rest are about local pipelines)
_REMOTE_FIELDS = {"family", "model", "base_url", "images", "native_side", "description"}
_REMOTE_ONLY = {"model", "base_url", "images"}


def _parse_entry(name: str, entry: object) -> ModelSpec:
    if not isinstance(entry, dict):
        raise RegistryError(f"model '{name}': expected a [models.{name}] table with 'source' and 'family'")
    unknown = set(entry) - _FIELDS
    if unknown:
        raise RegistryError(f"model '{name}': unknown field(s) {', '.join(sorted(unknown))}")
    if isinstance(entry.get("family"), str) and entry["family"] in names_where(lambda f: f.remote):
        return _parse_remote(name, entry)
    if set(entry) & _REMOTE_ONLY:
        raise RegistryError(f"model '{name}': {', '.join(sorted(set(entry) & _REMOTE_ONLY))} "
                            f"belong to remote families ({', '.join(sorted(names_where(lambda f: f.remote)))}) only")
    if "source" not in entry or "family" not in entry:
        raise RegistryError(f"model '{name}': 'source' and 'family' are required")
    for key, value in entry.items():
        types, wanted, lowest = _FIELD_RULES.get(key, ((str,), "a string", None))
        if isinstance(value, bool) or not isinstance(value, types) or (
                lowest is not None and isinstance(value, int | float) and value < lowest):
            raise RegistryError(f"model '{name}': '{key}' must be {wanted}, not {value!r}")
    if str(entry["family"]).lower() in UNAVAILABLE_FAMILIES:
        raise RegistryError(f"model '{name}': {UNAVAILABLE_FAMILIES[str(entry['family']).lower()]}")
    if entry["family"] not in FAMILIES:
        raise RegistryError(
            f"model '{name}': unknown family '{entry['family']}' "
            f"(one of {', '.join(FAMILIES)})"
        )
    if entry["family"] in names_where(lambda f: f.blend) and not entry.get("prior"):
        raise RegistryError(f"model '{name}': Kandinsky models need a 'prior' source")
    if "prior" in entry and entry["family"] not in names_where(lambda f: f.blend):
        reason = FAMILIES[entry["family"]].no_prior_why
        raise RegistryError(f"model '{name}': 'prior' is for Kandinsky 2.1 and 2.2; the {entry['family']} "
                            "family has none" + (f" ({reason})" if reason else ""))
    if "clip_model" in entry and entry["family"] not in names_where(lambda f: f.clip_guidance):
        raise RegistryError(f"model '{name}': 'clip_model' (CLIP guidance, --clip) works with the families "
                            f"{', '.join(sorted(names_where(lambda f: f.clip_guidance)))}, not '{entry['family']}'")
    if entry["family"] in names_where(lambda f: f.weights_file):
        if not str(entry["source"]).lower().endswith(WEIGHTS_SUFFIXES) or "config" in entry:
            raise RegistryError(f"model '{name}': an {entry['family']} upscaler's source is its weights file "
                                f"({', '.join(WEIGHTS_SUFFIXES)}), e.g. \"/models/4x-UltraSharp.pth\", without "
                                "'config' (see docs/models.md)")
    elif is_single_file(str(entry["source"])) and entry["family"] not in names_where(lambda f: f.caption):
        if entry["family"] not in names_where(lambda f: f.single_file):
            raise RegistryError(f"model '{name}': a single-file checkpoint works for the families "
                                f"{', '.join(sorted(names_where(lambda f: f.single_file)))}, not '{entry['family']}'")
        if not entry.get("config"):
            raise RegistryError(f"model '{name}': a single-file checkpoint needs 'config', a diffusers folder "
                                "(or downloaded hub id) of the same architecture whose configs and tokenizer "
                                "it uses, e.g. \"stable-diffusion-v1-5/stable-diffusion-v1-5\" for SD 1.x "
                                "(see docs/models.md)")
    elif "config" in entry:
        raise RegistryError(f"model '{name}': 'config' is for single-file checkpoints (.safetensors, .ckpt) only")
    if "clip" in entry and entry["family"] not in names_where(lambda f: f.caption):
        raise RegistryError(f"model '{name}': 'clip' ranks style words for a captioner (family "
                            f"{', '.join(sorted(names_where(lambda f: f.caption)))}), not for '{entry['family']}'")
    if entry["family"] in names_where(lambda f: f.caption) and is_single_file(str(entry["source"])):
        raise RegistryError(f"model '{name}': a captioner's source is a transformers folder or hub id "
                            "(e.g. \"Salesforce/blip-image-captioning-base\"), not a single file")
    if "vae" in entry and entry["family"] not in names_where(lambda f: f.additions):
        raise RegistryError(f"model '{name}': 'vae' replaces the VAE of the families "
                            f"{', '.join(sorted(names_where(lambda f: f.additions)))}, not '{entry['family']}'")
    if "scheduler" in entry:
        try:
            check_scheduler(entry["scheduler"], entry["family"])
        except SchedulerError as err:
            raise RegistryError(f"model '{name}': {err}") from None
    try:
        check_recipe(entry["family"], entry.get("steps"), entry.get("guidance"))
    except SchedulerError as err:
        raise RegistryError(f"model '{name}': {err}") from None
    values = {k: v for k, v in entry.items() if k not in ("source", "family")}
    try:
        return _spec(name, str(entry["source"]), entry["family"], **values)
    except TypeError as err:
        raise RegistryError(f"model '{name}': {err}") from None


def _parse_remote(name: str, entry: dict[str, Any]) -> ModelSpec:
    """A `family = "openai"` entry: `model` (one of OPENAI_MODELS), optional `base_url`,
    `images` (1 or 4), `native_side` (the pixel budget that picks among sizes of one shape:
    256 gives dall-e-2's cheapest) and `description`; its `source` is "openai:<model>"."""
    unknown = set(entry) - _REMOTE_FIELDS
    if unknown:
        raise RegistryError(f"model '{name}': a remote ({entry['family']}) entry has no "
                            f"{', '.join(sorted(unknown))} (its fields: {', '.join(sorted(_REMOTE_FIELDS))})")
    model = entry.get("model")
    if model not in OPENAI_MODELS:
        raise RegistryError(f"model '{name}': 'model' must be one of {', '.join(OPENAI_MODELS)} "
                            f"(OpenAI's image models Pintor knows the limits of), not {model!r}")
    images = entry.get("images", 4)
    if isinstance(images, bool) or images not in REMOTE_IMAGES:
        raise RegistryError(f"model '{name}': 'images' must be 1 (one picture, no grid) or 4 (a grid), "
                            f"not {images!r}")
    side = entry.get("native_side", family_of(entry["family"]).side)
    if isinstance(side, bool) or not isinstance(side, int) or side < 64:
        raise RegistryError(f"model '{name}': 'native_side' must be a whole number of pixels, at least 64, "
                            f"not {side!r}")
    for key in ("base_url", "description"):
        if key in entry and not isinstance(entry[key], str):
            raise RegistryError(f"model '{name}': '{key}' must be a string, not {entry[key]!r}")
    base_url = entry.get("base_url") or None
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        raise RegistryError(f"model '{name}': 'base_url' must be an http(s) URL, e.g. \"https://api.openai.com/v1\"")
    return _spec(name, f"openai:{model}", entry["family"], model=model, base_url=base_url, images=images,
                 native_side=side, description=entry.get("description", ""))


def _families(where: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise RegistryError(f"{where}: 'families' must be a list of model families, e.g. [\"sd\"]")
    wrong = [v for v in value if v not in names_where(lambda f: f.additions)]
    if wrong:
        raise RegistryError(f"{where}: family '{wrong[0]}' takes no LoRAs or embeddings "
                            f"(one of {', '.join(sorted(names_where(lambda f: f.additions)))})")
    return tuple(dict.fromkeys(value))


def _check_fields(where: str, entry: object, allowed: set[str], required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise RegistryError(f"{where}: expected a table with {', '.join(required)}")
    unknown = set(entry) - allowed
    if unknown:
        raise RegistryError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    missing = [key for key in required if key not in entry]
    if missing:
        raise RegistryError(f"{where}: {', '.join(repr(k) for k in missing)} required")
    for key in ("source", "weight_name", "description", "token"):
        if key in entry and (not isinstance(entry[key], str) or not entry[key].strip()):
            raise RegistryError(f"{where}: '{key}' must be a non-empty string, not {entry[key]!r}")
    return entry


_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # as --model and --lora read names


def _parse_lora(name: str, entry: object) -> LoraSpec:
    where = f"LoRA '{name}'"
    if not _NAME_RE.fullmatch(name):
        raise RegistryError(f"{where}: a name is letters, digits, '.', '_' or '-' (at most 64 characters)")
    table = _check_fields(where, entry, {"source", "families", "weight", "weight_name", "triggers", "description"},
                          ("source", "families"))
    weight = table.get("weight", 1.0)
    low, high = LORA_WEIGHT_RANGE
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not low <= weight <= high:
        raise RegistryError(f"{where}: 'weight' must be a number from {low:g} to {high:g}, not {weight!r}")
    triggers = table.get("triggers", [])
    if isinstance(triggers, str):
        triggers = [triggers]
    if not isinstance(triggers, list) or not all(isinstance(t, str) and t.strip() for t in triggers):
        raise RegistryError(f"{where}: 'triggers' must be a list of words, e.g. [\"pixel art\"]")
    return LoraSpec(name=name, source=table["source"], families=_families(where, table["families"]),
                    weight=float(weight), weight_name=table.get("weight_name"),
                    triggers=tuple(t.strip() for t in triggers), description=table.get("description", ""))


def _parse_embedding(name: str, entry: object) -> EmbeddingSpec:
    where = f"embedding '{name}'"
    table = _check_fields(where, entry, {"source", "families", "token", "weight_name", "description"},
                          ("source", "families"))
    token = table.get("token", name)
    if not isinstance(token, str) or not token.strip() or len(token.split()) != 1:
        raise RegistryError(f"{where}: 'token' must be one word (what members write), not {token!r}")
    return EmbeddingSpec(name=name, source=table["source"], token=token, families=_families(where, table["families"]),
                         weight_name=table.get("weight_name"), description=table.get("description", ""))


def _parse_controlnet(name: str, entry: object) -> ControlNetSpec:
    where = f"ControlNet '{name}'"
    if not _NAME_RE.fullmatch(name):
        raise RegistryError(f"{where}: a name is letters, digits, '.', '_' or '-' (at most 64 characters)")
    table = _check_fields(where, entry, {"source", "family", "kind", "estimator", "description"},
                          ("source", "family", "kind"))
    family, kind = table["family"], table["kind"]
    controlled = [name for name, record in FAMILIES.items() if record.controlnet_families]
    if family not in controlled:
        raise RegistryError(f"{where}: 'family' must be one of {', '.join(controlled)}, not {family!r}")
    if kind not in CONTROL_KINDS:
        raise RegistryError(f"{where}: 'kind' must be one of {', '.join(CONTROL_KINDS)}, not {kind!r}")
    if kind not in family_of(family).control_kinds:
        raise RegistryError(f"{where}: Kandinsky 2.2's ControlNet takes depth maps only (kind = \"depth\")")
    estimator = table.get("estimator")
    if estimator is not None and (not isinstance(estimator, str) or not estimator.strip() or kind != "depth"):
        raise RegistryError(f"{where}: 'estimator' is a depth-estimation model (hub id or folder) "
                            "of a kind = \"depth\" ControlNet")
    return ControlNetSpec(name=name, source=table["source"], family=family, kind=kind, estimator=estimator,
                          description=table.get("description", ""))


_SELECTOR_KEY_RE = re.compile(r"--([A-Za-z]+)(?:\s+(\S+))?")


def _parse_selectors(table: object, models: dict[str, ModelSpec]) -> dict[tuple[str, str], str]:
    """[midjourney] "--v 6" = "sdxl", "--niji" = "anime" (any --niji), "--style raw" = "sd-1.5"."""
    if not isinstance(table, dict):
        raise RegistryError("[midjourney]: expected a table of \"--v 6\" = \"model name\" entries")
    selectors = {}
    for key, model in table.items():
        match = _SELECTOR_KEY_RE.fullmatch(key.strip())
        if not match or match[1].lower() not in SELECTORS:
            raise RegistryError(f"[midjourney]: '{key}' is not one of --v N, --niji [N], --style NAME")
        if not isinstance(model, str) or model not in models or not models[model].can_generate:
            raise RegistryError(f"[midjourney]: '{key}' maps to '{model}', which is not a configured "
                                "text-to-image model")
        selectors[(SELECTORS[match[1].lower()], selector_value(match[2] or ""))] = model
    return selectors


def load_registry(path: Path | None = None, default: str | None = None) -> Registry:
    """The registry from a TOML file (see docs/models.md), or the built-in one for None.

    File layout: `default = "name"`, optional `upscaler = "name"`, optional `captioner = "name"`
    (/describe's model; else the first entry of a caption family) and `[models.NAME]` tables
    with `source`, `family` and optional `prior`, `native_side`, `steps`, `guidance`, `scheduler`,
    `variant`, `description`, `preview` (a tiny preview decoder), `vae`, `clip_model` (--clip), `clip` (a captioner's
    style-word ranker),
    and `config` (required for a single-file checkpoint source); a remote entry (`family =
    "openai"`) has `model` and optional `base_url`, `images`, `native_side`, `description`
    instead (_parse_remote);
    `[loras.NAME]` (`source`, `families`, optional `weight`, `weight_name`, `triggers`,
    `description`) and `[embeddings.NAME]` (`source`, `families`, optional `token`,
    `weight_name`, `description`); `[controlnets.NAME]` (`source`, `family`, `kind`, optional
    `estimator` for depth, `description`). Raises RegistryError naming the entry and field.
    """
    selectors: dict[tuple[str, str], str] = {}
    controlnets: dict[str, ControlNetSpec] = {}
    loras: dict[str, LoraSpec] = {}
    embeddings: dict[str, EmbeddingSpec] = {}
    file_default: str | None
    upscaler: str | None
    captioner: str | None = None
    if path is None:
        models = {m.name: m for m in BUILTIN_MODELS}
        file_default, upscaler, origin = BUILTIN_DEFAULT, "upscaler", "built-in"
    else:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise RegistryError(f"cannot read model registry {path}: {err}") from None
        tables = data.get("models") or {}
        if not isinstance(tables, dict) or not tables:
            raise RegistryError(f"{path}: no [models.NAME] entries")
        models = {name: _parse_entry(name, entry) for name, entry in tables.items()}
        generators = [m.name for m in models.values() if m.can_generate]
        file_default = data.get("default") or (generators[0] if generators else None)
        upscaler = data.get("upscaler") or next((m.name for m in models.values() if m.is_upscaler), None)
        captioner = data.get("captioner") or next((m.name for m in models.values() if m.is_captioner), None)
        origin = str(path)
        selectors = _parse_selectors(data.get("midjourney", {}), models)
        for kind, table in (("loras", data.get("loras", {})), ("embeddings", data.get("embeddings", {})),
                            ("controlnets", data.get("controlnets", {}))):
            if not isinstance(table, dict):
                raise RegistryError(f"{path}: [{kind}.NAME] entries expected")
        loras = {name: _parse_lora(name, entry) for name, entry in data.get("loras", {}).items()}
        embeddings = {name: _parse_embedding(name, entry) for name, entry in data.get("embeddings", {}).items()}
        controlnets = {name: _parse_controlnet(name, entry) for name, entry in data.get("controlnets", {}).items()}
        tokens = [e.token for e in embeddings.values()]
        twice = [t for t in tokens if tokens.count(t) > 1]
        if twice:
            raise RegistryError(f"{path}: two embeddings have the token '{twice[0]}'")
    chosen = default or file_default
    if not isinstance(chosen, str) or chosen not in models or not models[chosen].can_generate:
        raise RegistryError(
            f"default model '{chosen}' is not a configured text-to-image model "
            f"(configured: {', '.join(models)})"
        )
    if upscaler is not None and (not isinstance(upscaler, str) or upscaler not in models
                                 or not models[upscaler].is_upscaler):
        raise RegistryError(f"upscaler '{upscaler}' is not a configured upscale model")
    if captioner is not None and (not isinstance(captioner, str) or captioner not in models
                                  or not models[captioner].is_captioner):
        raise RegistryError(f"captioner '{captioner}' is not a configured captioning model "
                            f"(family {', '.join(sorted(names_where(lambda f: f.caption)))})")
    return Registry(models=models, default=chosen, upscaler=upscaler, origin=origin, selectors=selectors,
                    loras=loras, embeddings=embeddings, controlnets=controlnets,
                    captioner=captioner)
