"""The model registry: short names → where a pipeline comes from and how to run it.

Admins write a TOML file (its path is a setting); without one, the built-in entries below
are used. A `source` is anything diffusers' `from_pretrained` accepts (a hub id or a folder), or a
single-file checkpoint (`.safetensors`, `.ckpt`) read with `from_single_file` and a `config`.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from generation.prompt import LORA_WEIGHT_RANGE, SELECTORS, selector_value
from generation.schedulers import SchedulerError, check_scheduler

# family → (native side in pixels, steps, guidance). Turbo models are distilled for 1–4
# steps without classifier-free guidance.
FAMILY_DEFAULTS: dict[str, tuple[int, int, float]] = {
    "sd": (512, 30, 7.0),
    "sd2": (768, 30, 7.0),
    "sdxl": (1024, 30, 6.0),
    "sd-turbo": (512, 2, 0.0),
    "sdxl-turbo": (512, 2, 0.0),
    "kandinsky21": (768, 40, 4.0),
    "kandinsky22": (768, 40, 4.0),
    "upscale-x4": (512, 20, 0.0),
    "esrgan": (512, 1, 0.0),  # a super-resolution network (generation/esrgan.py): no steps, no guidance
    "blip": (384, 1, 0.0),  # a captioning model for /describe (generation/captions.py): BLIP's 384-px input
}
TEXT_TO_IMAGE_FAMILIES = {"sd", "sd2", "sdxl", "sd-turbo", "sdxl-turbo", "kandinsky21", "kandinsky22"}
BLEND_FAMILIES = {"kandinsky21", "kandinsky22"}
# families whose text encoders take weighted embeddings (compel): SD emphasis works there
EMPHASIS_FAMILIES = {"sd", "sd2", "sdxl", "sd-turbo", "sdxl-turbo"}
# families whose pipelines take LoRAs, textual-inversion embeddings and a replacement VAE
# (diffusers' StableDiffusionLoraLoaderMixin / TextualInversionLoaderMixin, an AutoencoderKL)
ADDITION_FAMILIES = {"sd", "sd2", "sdxl", "sd-turbo", "sdxl-turbo"}


UPSCALER_FAMILIES = {"upscale-x4", "esrgan"}
# families whose source is one weights file read by spandrel (generation/esrgan.py), not diffusers
WEIGHTS_FILE_FAMILIES = {"esrgan"}
WEIGHTS_SUFFIXES = (".pth", ".pt", ".safetensors", ".ckpt")

# families of captioning models (/describe: generation/captions.py), transformers folders or hub
# ids (config.json, not a diffusers model_index.json)
CAPTION_FAMILIES = {"blip"}

# the families diffusers' from_single_file builds here (StableDiffusionPipeline, …XLPipeline)
SINGLE_FILE_FAMILIES = {"sd", "sd2", "sdxl", "sd-turbo", "sdxl-turbo"}
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


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
    # /describe: a CLIP model (transformers CLIPModel: a hub id such as
    # "openai/clip-vit-base-patch32", or a folder) that ranks style words for a captioner's prompts
    clip: str | None = None

    @property
    def single_file(self) -> bool:
        """True when `source` is one diffusers checkpoint file (.safetensors / .ckpt) rather than a
        pipeline (an upscaler's weights file is not one: spandrel reads it)."""
        return self.family not in WEIGHTS_FILE_FAMILIES and is_single_file(self.source)

    @property
    def can_generate(self) -> bool:
        return self.family in TEXT_TO_IMAGE_FAMILIES

    @property
    def can_blend(self) -> bool:
        return self.family in BLEND_FAMILIES

    @property
    def is_upscaler(self) -> bool:
        return self.family in UPSCALER_FAMILIES

    @property
    def is_captioner(self) -> bool:
        return self.family in CAPTION_FAMILIES


def _spec(name: str, source: str, family: str, **overrides: Any) -> ModelSpec:
    side, steps, guidance = FAMILY_DEFAULTS[family]
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
    captioner: str | None = None  # the model /describe uses (a CAPTION_FAMILIES entry); None: no /describe
    # MidJourney's model choosers → model names: ("v", "6") → "sdxl"; ("niji", "") is any --niji
    selectors: dict[tuple[str, str], str] = field(default_factory=dict)
    loras: dict[str, LoraSpec] = field(default_factory=dict)
    embeddings: dict[str, EmbeddingSpec] = field(default_factory=dict)

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
}


def _parse_entry(name: str, entry: object) -> ModelSpec:
    if not isinstance(entry, dict):
        raise RegistryError(f"model '{name}': expected a [models.{name}] table with 'source' and 'family'")
    unknown = set(entry) - _FIELDS
    if unknown:
        raise RegistryError(f"model '{name}': unknown field(s) {', '.join(sorted(unknown))}")
    if "source" not in entry or "family" not in entry:
        raise RegistryError(f"model '{name}': 'source' and 'family' are required")
    for key, value in entry.items():
        types, wanted, lowest = _FIELD_RULES.get(key, ((str,), "a string", None))
        if isinstance(value, bool) or not isinstance(value, types) or (
                lowest is not None and isinstance(value, int | float) and value < lowest):
            raise RegistryError(f"model '{name}': '{key}' must be {wanted}, not {value!r}")
    if entry["family"] not in FAMILY_DEFAULTS:
        raise RegistryError(
            f"model '{name}': unknown family '{entry['family']}' "
            f"(one of {', '.join(FAMILY_DEFAULTS)})"
        )
    if entry["family"] in BLEND_FAMILIES and not entry.get("prior"):
        raise RegistryError(f"model '{name}': Kandinsky models need a 'prior' source")
    if entry["family"] in WEIGHTS_FILE_FAMILIES:
        if not str(entry["source"]).lower().endswith(WEIGHTS_SUFFIXES) or "config" in entry:
            raise RegistryError(f"model '{name}': an {entry['family']} upscaler's source is its weights file "
                                f"({', '.join(WEIGHTS_SUFFIXES)}), e.g. \"/models/4x-UltraSharp.pth\", without "
                                "'config' (see docs/models.md)")
    elif is_single_file(str(entry["source"])) and entry["family"] not in CAPTION_FAMILIES:
        if entry["family"] not in SINGLE_FILE_FAMILIES:
            raise RegistryError(f"model '{name}': a single-file checkpoint works for the families "
                                f"{', '.join(sorted(SINGLE_FILE_FAMILIES))}, not '{entry['family']}'")
        if not entry.get("config"):
            raise RegistryError(f"model '{name}': a single-file checkpoint needs 'config', a diffusers folder "
                                "(or downloaded hub id) of the same architecture whose configs and tokenizer "
                                "it uses, e.g. \"stable-diffusion-v1-5/stable-diffusion-v1-5\" for SD 1.x "
                                "(see docs/models.md)")
    elif "config" in entry:
        raise RegistryError(f"model '{name}': 'config' is for single-file checkpoints (.safetensors, .ckpt) only")
    if "clip" in entry and entry["family"] not in CAPTION_FAMILIES:
        raise RegistryError(f"model '{name}': 'clip' ranks style words for a captioner (family "
                            f"{', '.join(sorted(CAPTION_FAMILIES))}), not for '{entry['family']}'")
    if entry["family"] in CAPTION_FAMILIES and is_single_file(str(entry["source"])):
        raise RegistryError(f"model '{name}': a captioner's source is a transformers folder or hub id "
                            "(e.g. \"Salesforce/blip-image-captioning-base\"), not a single file")
    if "vae" in entry and entry["family"] not in ADDITION_FAMILIES:
        raise RegistryError(f"model '{name}': 'vae' replaces the VAE of the families "
                            f"{', '.join(sorted(ADDITION_FAMILIES))}, not '{entry['family']}'")
    if "scheduler" in entry:
        try:
            check_scheduler(entry["scheduler"], entry["family"])
        except SchedulerError as err:
            raise RegistryError(f"model '{name}': {err}") from None
    values = {k: v for k, v in entry.items() if k not in ("source", "family")}
    try:
        return _spec(name, str(entry["source"]), entry["family"], **values)
    except TypeError as err:
        raise RegistryError(f"model '{name}': {err}") from None


def _families(where: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise RegistryError(f"{where}: 'families' must be a list of model families, e.g. [\"sd\"]")
    wrong = [v for v in value if v not in ADDITION_FAMILIES]
    if wrong:
        raise RegistryError(f"{where}: family '{wrong[0]}' takes no LoRAs or embeddings "
                            f"(one of {', '.join(sorted(ADDITION_FAMILIES))})")
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
    `variant`, `description`, `preview` (a tiny preview decoder), `vae`, `clip` (a captioner's
    style-word ranker), and `config` (required for a single-file checkpoint source);
    `[loras.NAME]` (`source`, `families`, optional `weight`, `weight_name`, `triggers`,
    `description`) and `[embeddings.NAME]` (`source`, `families`, optional `token`,
    `weight_name`, `description`). Raises RegistryError naming the entry and field.
    """
    selectors: dict[tuple[str, str], str] = {}
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
        for kind, table in (("loras", data.get("loras", {})), ("embeddings", data.get("embeddings", {}))):
            if not isinstance(table, dict):
                raise RegistryError(f"{path}: [{kind}.NAME] entries expected")
        loras = {name: _parse_lora(name, entry) for name, entry in data.get("loras", {}).items()}
        embeddings = {name: _parse_embedding(name, entry) for name, entry in data.get("embeddings", {}).items()}
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
                            f"(family {', '.join(sorted(CAPTION_FAMILIES))})")
    return Registry(models=models, default=chosen, upscaler=upscaler, origin=origin, selectors=selectors,
                    loras=loras, embeddings=embeddings, captioner=captioner)
