"""`Request`: what the worker makes, fully resolved (pixels, steps, seeds), JSON-serialisable.

A request is stored with its job before the job is queued, so a job that is re-run after a
crash makes the same pictures: the seed is chosen here, not in the worker.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from generation.families import family_of
from generation.prompt import (
    MAX_SEED,
    ParsedPrompt,
    format_parameters,
    format_weight,
    has_emphasis,
    plain_text,
    quote,
    size_for_aspect,
)
from generation.registry import LoraSpec, ModelSpec, nearest_size
from generation.schedulers import recipe_for

GRID_SIZE = 4


class JobKind(StrEnum):
    """What a job makes. A StrEnum: stored (the `jobs.kind` column, the request JSON) and
    compared as its plain value."""

    IMAGINE = "imagine"  # a grid from a prompt
    REROLL = "reroll"  # 🔄: a prompt's grid again with a new seed
    VARIATION = "variation"  # V: a grid made from one picture (image to image)
    UPSCALE = "upscale"  # U: one picture, larger
    BLEND = "blend"  # a grid mixed from uploaded images (and a text)
    PICK = "pick"  # U: one picture of a grid, alone, at its size (from the file store: no worker job)
    OUTPAINT = "outpaint"  # Zoom Out, Pan, Make Square: a grid from a picture on a larger canvas
    DESCRIBE = "describe"  # /describe: four prompts for an uploaded picture, by the captioner (no pictures made)


KINDS = tuple(JobKind)


def outpaint_name(extension: tuple[float, float, float, float]) -> str:
    """What a canvas extension was asked as: Zoom Out 2x, Pan ⬅️, Make Square."""
    left, top, right, bottom = extension
    if left == top == right == bottom:
        return f"Zoom Out {1 + 2 * left:g}x"
    ways = [emoji for share, emoji in ((left, "⬅️"), (right, "➡️"), (top, "⬆️"), (bottom, "⬇️")) if share > 0]
    if len(ways) == 1:
        return f"Pan {ways[0]}"
    return "Make Square"


def kind_name(kind: str, outpaint: tuple[float, float, float, float] | None = None,
              index: int | None = None) -> str:
    """A job's kind as members know it from the buttons, for lists (/history, `pintor
    history`): a U press (PICK) of picture `index` is "U2", a canvas extension (`outpaint`) its
    button's name ("Zoom Out 2x", "Pan ⬅️", "Make Square"); the other kinds by their value
    (imagine, variation, upscale …)."""
    if kind == JobKind.PICK:
        return f"U{index}" if index else "U"
    if kind == JobKind.OUTPAINT:
        return outpaint_name(outpaint) if outpaint is not None else "Zoom Out"
    return str(kind)


@dataclass(frozen=True)
class Request:
    kind: JobKind
    model: str
    prompt: str  # the display text
    parts: tuple[tuple[str, float], ...]  # (text, weight) for multi-prompts
    negative: str
    width: int
    height: int
    steps: int
    guidance: float
    seed: int
    chaos: int = 0
    count: int = GRID_SIZE
    parameters: str = ""  # canonical "--ar 3:2 --no people ..." (all but the seed), shown with results
    # The input pictures (init_image, images, control) are named by file-store keys
    # ("inputs/<sha256>.png", "jobs/12/3.png": generation/files.py), never by a path of the
    # machine that stored the job; requests stored before that name absolute paths, which
    # FileStore.local still reads. `with_inputs` maps them (to local files, for the engine).
    init_image: str | None = None  # image-to-image / upscale / outpaint source (a file-store key)
    strength: float = 0.0  # image-to-image: how far from init_image (0–1)
    images: tuple[str, ...] = ()  # blend inputs, the picture a /describe describes (file-store keys)
    image_weights: tuple[float, ...] = ()
    safety_check: bool = True  # run the model's NSFW check where it has one (a server setting)
    loras: tuple[tuple[str, float], ...] = ()  # (configured LoRA name, weight), applied for this job only
    notices: tuple[str, ...] = ()  # what was changed or ignored in the prompt, said with the job
    # Upscale (Creative): the upscaler (a model name, or "resample") run before the image-to-image
    # pass that `model` makes at `strength`; None for Upscale (Subtle), where `model` is the upscaler
    upscaler: str | None = None
    # Zoom Out, Pan, Make Square: how far the canvas extends beyond init_image on each side
    # (left, top, right, bottom), as fractions of its width and height
    outpaint: tuple[float, float, float, float] | None = None
    # Image prompts (/imagine's image option, links at the start of the prompt): where each came
    # from (the link, or the attachment's file name), shown with the prompt; their pictures are
    # kept in the file store and named by `images` (Kandinsky: mixed through the prior with
    # `image_weights`) or `init_image` (Stable Diffusion: image to image at `strength`). The
    # links are never fetched again: they expire, the stored pictures stay.
    image_prompts: tuple[str, ...] = ()
    image_weight: float = 1.0  # --iw (0–3): how much the image prompts count against the text
    # --tile: the pictures repeat seamlessly (circular padding in the UNet's and VAE's convolutions)
    tile: bool = False
    # ControlNet: the stored upload (a file-store key) the worker makes the control image from, what
    # it becomes (generation.prompt.CONTROL_KINDS, or "none": it is one already), the configured
    # ControlNet (a registry name) and its controlnet_conditioning_scale (0–2)
    control: str | None = None
    control_kind: str | None = None
    controlnet: str | None = None
    control_weight: float = 1.0
    # --clip: CLIP guidance strength (0: off; generation/clip_guidance.py)
    clip: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", JobKind(self.kind))  # a stored or given "imagine" → JobKind.IMAGINE

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Request:
        data = json.loads(text)
        data["parts"] = tuple((str(t), float(w)) for t, w in data["parts"])
        data["images"] = tuple(data.get("images", ()))
        data["image_weights"] = tuple(data.get("image_weights", ()))
        data["notices"] = tuple(data.get("notices", ()))
        data["image_prompts"] = tuple(data.get("image_prompts", ()))
        data["loras"] = tuple((str(n), float(w)) for n, w in data.get("loras", ()))
        if data.get("outpaint") is not None:
            left, top, right, bottom = (float(v) for v in data["outpaint"])
            data["outpaint"] = (left, top, right, bottom)
        return cls(**data)

    def inputs(self) -> list[str]:
        """The pictures the request starts from, as stored (keys; absolute paths in requests
        stored before keys): init_image, then images, then control."""
        return [name for name in (self.init_image, *self.images, self.control) if name]

    def with_inputs(self, resolve: Callable[[str], str]) -> Request:
        """The request with each input picture's name (init_image, images, control) replaced by
        `resolve(name)`: a key by its local file (the worker), a path by its key, etc."""
        return dataclasses.replace(
            self, init_image=resolve(self.init_image) if self.init_image else self.init_image,
            images=tuple(resolve(name) for name in self.images),
            control=resolve(self.control) if self.control else self.control)

    def seeds(self) -> list[int]:
        """The seed of each image: image i is reproducible from (seed, chaos, i)."""
        return [(self.seed + i) % (MAX_SEED + 1) for i in range(self.count)]

    def replace(self, **changes: Any) -> Request:
        return dataclasses.replace(self, **changes)


def random_seed() -> int:
    return random.SystemRandom().randint(0, MAX_SEED)


def guidance_for(spec: ModelSpec, stylize: int | None) -> float:
    """--stylize (0–1000, MidJourney's default 100) → classifier-free guidance scale.

    100 keeps the model's own default; the scale grows with the square root (400 doubles it).
    Models run without guidance (Turbo: 0) keep it off, whatever the stylize value.
    """
    if stylize is None or spec.guidance <= 1.0:
        return spec.guidance
    return round(min(20.0, max(1.0, spec.guidance * float((stylize / 100) ** 0.5))), 2)


def steps_for(spec: ModelSpec, parsed: ParsedPrompt) -> int:
    """The steps a prompt asks of `spec`: its --steps, else the model's steps × --q (at least 1).
    Not yet capped to the family's recipe (`capped_steps`)."""
    if parsed.steps is not None:
        return parsed.steps
    return max(1, round(spec.steps * parsed.quality))


# the parser's notice for a --steps over MAX_STEPS (generation.prompt._int_between), with what was typed
_PARSER_STEPS_CAP = re.compile(r"--steps “(.*)” is over the highest value; used [0-9]+\.$")


def capped_steps(spec: ModelSpec, parsed: ParsedPrompt) -> tuple[ParsedPrompt, int, str | None]:
    """The steps a job of `spec` runs for `parsed` (`steps_for`), capped to the most its family's
    recipe is made for (generation.schedulers: Turbo's 1–4), as --steps over the parser's
    highest value is: (the prompt as the job used it, the steps, the notice that says so or
    None). A capped prompt shows `--steps N` (the steps used) instead of the --steps or --q typed."""
    steps = steps_for(spec, parsed)
    most = recipe_for(spec.family).max_steps
    if most is None or steps <= most:
        return parsed, steps, None
    typed = next((match[1] for notice in parsed.notices if (match := _PARSER_STEPS_CAP.match(notice))), None)
    asked = (f"--steps {quote(typed or str(parsed.steps))}" if parsed.steps is not None
             else f"--q {parsed.quality:g} ({steps} steps)")
    notice = (f"{asked} is over the highest value for {spec.name} ({spec.family} models are made for "
              f"1–{most} steps); used {most}.")
    return dataclasses.replace(parsed, steps=most, given=(parsed.given - {"q"}) | {"steps"}), most, notice


NEGATIVE_MIN_GUIDANCE = 1.5  # the least guidance at which a --no list still acts


def with_triggers(parsed: ParsedPrompt, loras: Sequence[tuple[LoraSpec, float]]) -> tuple[ParsedPrompt, list[str]]:
    """The prompt with the trigger words of its LoRAs added at the end of its last part that is
    not negative (those not in the prompt already, in any case), and the notices that say so."""
    written = " ".join(part.text for part in parsed.parts).lower()
    notices = []
    added: list[str] = []
    for lora, _ in loras:
        missing = [t for t in lora.triggers if t.lower() not in written and t not in added]
        if missing:
            added += missing
            notices.append(f"Added the trigger words {', '.join(quote(t) for t in missing)} of the LoRA {lora.name}.")
    if not added or not parsed.parts:
        return parsed, notices
    # the last part that says what to draw: a negative part is less of it (weight_sides)
    at = max(i for i, part in enumerate(parsed.parts) if part.weight >= 0)
    last = parsed.parts[at]
    text = last.text + ("" if last.text.endswith(",") else ",") + " " + ", ".join(added)
    parts = list(parsed.parts)
    parts[at] = dataclasses.replace(last, text=text)
    return dataclasses.replace(parsed, parts=tuple(parts)), notices


def _negative_parts(parsed: ParsedPrompt) -> str:
    """The negative parts of a prompt as a notice names them: "The negative part “x::-0.5” was"."""
    named = [quote(f"{part.text}::{format_weight(part.weight)}") for part in parsed.parts if part.weight < 0]
    return f"The negative part {named[0]} was" if len(named) == 1 else f"The negative parts {', '.join(named)} were"


def without_negative_parts(parsed: ParsedPrompt) -> ParsedPrompt:
    """The prompt without its parts of negative weight (for a model that cannot use them: the
    caller says so); a lone remaining part gets weight 1, as parse_prompt gives a lone part."""
    kept = tuple(part for part in parsed.parts if part.weight >= 0)
    if len(kept) == 1:
        kept = (dataclasses.replace(kept[0], weight=1.0),)
    return dataclasses.replace(parsed, parts=kept)


def build_request(parsed: ParsedPrompt, spec: ModelSpec, *, kind: JobKind = JobKind.IMAGINE,
                  loras: Sequence[tuple[LoraSpec, float]] = ()) -> Request:
    """Resolve a parsed prompt against a model: pixel size, steps, guidance and the seed.

    `loras`: the configured LoRAs the prompt names with their weights, already checked against
    the model's family (`bot.intake` does); their trigger words are added to the prompt.

    What the model cannot do with the prompt is said in the request's notices (after the
    parser's): emphasis on a model without weighted embeddings, in the prompt's parts or its --no
    list, is read as plain words; a --no
    list or a negative `::` part (less of it: generation.prompt.weight_sides) on a model that
    runs without classifier-free guidance (Turbo) or a provider's API is not applied and not
    listed (not shown in the prompt either); where only a low --stylize would turn guidance
    off, guidance stays at 1.5; an --ar whose ratio the size made does not keep exactly (sides
    in multiples of 64, or a provider's few sizes) is said with the size made.
    """
    seed = parsed.seed if parsed.seed is not None else random_seed()
    width, height = size_for_aspect(parsed.aspect, spec.native_side)
    parsed, added = with_triggers(parsed, loras)
    notices = list(parsed.notices) + added
    count = GRID_SIZE
    if (limits := spec.remote_limits) is not None:
        # a provider makes a few sizes only: the one nearest the aspect ratio; no seed, no negative
        width, height = nearest_size(limits, width, height)
        count = spec.images
        if "ar" in parsed.given and width * parsed.aspect[1] != height * parsed.aspect[0]:
            notices.append(f"{spec.name} makes {width}×{height} for --ar {parsed.aspect[0]}:{parsed.aspect[1]} "
                           "(the nearest of the sizes it makes).")
        words = " ".join(plain_text(part.text) for part in parsed.parts)
        if len(words) > limits.max_prompt_chars:
            notices.append(f"{spec.name} reads {limits.max_prompt_chars} characters of a prompt; this part was cut: "
                           f"{quote(words[limits.max_prompt_chars:])}")
        if parsed.seed is not None:
            notices.append(f"{spec.name} takes no seed: --seed {parsed.seed} will not make the same pictures again.")
        if parsed.negative:
            notices.append(f"--no {quote(parsed.negative)} was not applied: {spec.name}'s API takes no "
                           "negative prompt.")
            parsed = dataclasses.replace(parsed, negative="", given=parsed.given - {"no"})
        if any(part.weight < 0 for part in parsed.parts):
            notices.append(f"{_negative_parts(parsed)} not applied: {spec.name}'s API takes no negative prompt.")
            parsed = without_negative_parts(parsed)
    elif "ar" in parsed.given and width * parsed.aspect[1] != height * parsed.aspect[0]:
        # sides in multiples of 64 at about the model's pixel count: most ratios come out near, not exact
        notices.append(f"{spec.name} makes {width}×{height} for --ar {parsed.aspect[0]}:{parsed.aspect[1]} (the "
                       f"nearest with sides in multiples of 64 pixels, at about its {spec.native_side}×"
                       f"{spec.native_side} pixels).")
    guidance = guidance_for(spec, parsed.stylize)
    parsed, steps, capped = capped_steps(spec, parsed)
    if capped is not None:  # said once: instead of the parser's own cap of a --steps over MAX_STEPS
        notices = [notice for notice in notices if not _PARSER_STEPS_CAP.match(notice)] + [capped]
    if not family_of(spec.family).emphasis:
        # the parts and the --no list alike: each text with emphasis is read as its plain words
        emphasised = [quote(part.text) for part in parsed.parts if has_emphasis(part.text)]
        if has_emphasis(parsed.negative):
            emphasised.append(f"--no {quote(parsed.negative)}")
        if emphasised:
            named = emphasised[0] if len(emphasised) == 1 else f"{', '.join(emphasised[:-1])} and {emphasised[-1]}"
            notices.append(f"{spec.name} cannot weight words: the emphasis in {named} is read as plain words.")
            parsed = dataclasses.replace(parsed, parts=tuple(
                dataclasses.replace(part, text=plain_text(part.text)) for part in parsed.parts),
                negative=plain_text(parsed.negative) if has_emphasis(parsed.negative) else parsed.negative)
    lessened = any(part.weight < 0 for part in parsed.parts)
    if (parsed.negative or lessened) and guidance <= 1.0:
        if spec.guidance <= 1.0:
            if parsed.negative:
                notices.append(f"--no {quote(parsed.negative)} was not applied: {spec.name} runs without "
                               "guidance, which a negative prompt needs.")
                parsed = dataclasses.replace(parsed, negative="", given=parsed.given - {"no"})
            if lessened:
                notices.append(f"{_negative_parts(parsed)} not applied: {spec.name} runs without guidance, "
                               "which a negative weight needs.")
                parsed = without_negative_parts(parsed)
        else:
            applied = f"--no {quote(parsed.negative)} applies" if parsed.negative else "the negative weights apply"
            notices.append(f"--stylize {parsed.stylize} would turn guidance off; it is kept at "
                           f"{NEGATIVE_MIN_GUIDANCE:g} so that {applied}.")
            guidance = NEGATIVE_MIN_GUIDANCE
    return Request(
        kind=kind,
        model=spec.name,
        prompt=parsed.text,
        parts=tuple((p.text, p.weight) for p in parsed.parts),
        negative=parsed.negative,
        width=width,
        height=height,
        steps=steps,
        guidance=guidance,
        seed=seed,
        chaos=parsed.chaos,
        # the seed is shown on its own: a re-roll keeps these parameters with a new seed; a
        # request is one grid, --repeat is the command's (Studio.submit_many)
        parameters=format_parameters(dataclasses.replace(
            parsed, model=spec.name, given=(parsed.given | {"model"}) - {"seed", "repeat"}, selectors=())),
        count=count,
        notices=tuple(dict.fromkeys(notices)),
        loras=tuple((lora.name, weight) for lora, weight in loras),
        image_prompts=parsed.image_urls,
        image_weight=parsed.image_weight,
        tile=parsed.tile,
        clip=float(parsed.clip),
    )
