"""What members ask for, checked and resolved before anything is stored: prompts with their
defaults, /blend's options, and the errors a member can make (each with a message for them)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass

from bot.limits import listing
from generation.availability import ModelLoadError, index_for, require, require_addition, require_controlnet
from generation.families import family_of
from generation.inputs import UploadError
from generation.prompt import CONTROL_AS_IS, MAX_SEED, ParsedPrompt, PromptError, PromptPart, parse_prompt, quote
from generation.registry import (
    ControlNetSpec,
    LoraSpec,
    ModelSpec,
    Registry,
    UnknownLoraError,
    UnknownModelError,
)
from generation.request import GRID_SIZE, Request, build_request, random_seed
from storage.models import MemberPreferences, ServerRules

MIN_BLEND_IMAGES, MAX_BLEND_IMAGES = 2, 5
BLEND_DIMENSIONS = {"square": (1, 1), "portrait": (2, 3), "landscape": (3, 2)}


class RequestError(ValueError):
    """A request that cannot be made as asked; str(err) tells the member what to change."""


class LimitError(RequestError):
    """A server rule (quota, queue limit, allowed models…) refuses the request; says which."""


class ModelUnavailable(RequestError):
    """The model's files cannot be had here (not downloaded while offline, a folder that is not a
    pipeline…). str(err): for the member, no server paths; `detail`: for the admin, with the hub
    id or path and what to do."""

    def __init__(self, member: str, detail: str):
        super().__init__(member)
        self.detail = detail


def check_model_files(registry: Registry, name: str, loras: Sequence[str] = (), controlnet: str | None = None) -> None:
    """Raise ModelUnavailable when model `name`'s files (its VAE's too) or those of the `loras`
    (configured LoRA names) or of the `controlnet` (a configured name; its depth estimator's
    too) cannot be had here: checked from the file system and the Hugging Face cache only
    (fast, no network), before a job is stored. A name the registry does not hold (Pillow's
    resampling upscale) and a remote model (a provider's API) need no files."""
    spec = registry.models.get(name)
    if spec is None or spec.is_remote:  # a provider's API makes its pictures: nothing to download
        return
    try:
        for source in filter(None, (spec.source, spec.prior, spec.clip)):
            require(spec.name, source, spec.config if source == spec.source else None,
                    weights_file=family_of(spec.family).weights_file, index=index_for(spec.family))
        if spec.vae:
            require_addition("VAE", spec.name, spec.vae)
        for lora in map(registry.lora, loras):
            require_addition("LoRA", lora.name, lora.source, lora.weight_name)
        if controlnet is not None and controlnet in registry.controlnets:
            require_controlnet(registry.controlnets[controlnet])
    except ModelLoadError as err:
        raise ModelUnavailable(str(err), err.detail) from None


def id_list(text: str | None) -> list[int]:
    return [int(v) for v in (text or "").split(",") if v.strip().isdigit()]


def name_list(text: str | None) -> list[str]:
    return [v.strip() for v in (text or "").split(",") if v.strip()]


# What a member can get wrong: each carries a message meant for them.
USER_ERRORS = (PromptError, UnknownModelError, UnknownLoraError, RequestError, UploadError)


OPERATOR_ID = 0  # the operator's member id: the `pintor` command and Python (bot/local.py)


@dataclass(frozen=True)
class Member:
    id: int
    name: str = ""



def blend_weights(text: str, count: int, *, has_text: bool) -> tuple[list[float], float]:
    """'2,1' (or '2, 1', '2 1', '2;1') → image weights (and, with one more value, the text's
    weight; default 1). Raises RequestError, quoting what was typed and the value refused: a
    value that is no number, too few or too many values, a weight not above 0 or above 100."""
    if not text.strip():
        return [1.0] * count, 1.0
    typed = [v for v in re.split(r"[,;\s]+", text) if v]
    values = []
    for value in typed:
        try:
            values.append(float(value))
        except ValueError:
            raise RequestError(f"weights must be numbers separated by commas, like 2,1: {quote(value)} in "
                               f"{quote(text.strip())} is not a number.") from None
    allowed = (count, count + 1) if has_text else (count,)
    if len(values) not in allowed:
        expected = f"{count} (one per image{', and one more for the prompt' if has_text else ''})"
        raise RequestError(f"weights: give {expected}, not {len(values)} ({quote(text.strip())}).")
    bad = [value for value, weight in zip(typed, values, strict=True) if not 0 < weight <= 100]
    if bad:
        raise RequestError(f"The weight{'s' if len(bad) > 1 else ''} {', '.join(quote(value) for value in bad)} in "
                           f"{quote(text.strip())} {'are' if len(bad) > 1 else 'is'} not allowed: each weight must "
                           "be more than 0 and at most 100 (e.g. 2,1).")
    return values[:count], values[count] if len(values) > count else 1.0


def blend_prompt(text: str, *, strict: bool = False) -> ParsedPrompt:
    """/blend's prompt: its text is optional (the images are the subject), so parameters
    alone (`--seed 5`, `--no people`) are fine. The same rules as /imagine's otherwise."""
    return parse_prompt(text, strict=strict, require_text=False)


# prompt parameter → the ParsedPrompt field it sets
PARAMETER_FIELDS = {"ar": "aspect", "seed": "seed", "no": "negative", "chaos": "chaos",
                    "stylize": "stylize", "q": "quality", "steps": "steps", "model": "model", "lora": "loras",
                    "iw": "image_weight",
                    "tile": "tile", "repeat": "repeat",
                    "cn": "control_kind", "cw": "control_weight",
                    "clip": "clip"}


def appended(defaults: MemberPreferences, *, strict: bool = False) -> ParsedPrompt:
    """A member's "always append" text, parsed by the prompt rules: its words (if any) as
    parts, its parameters as given. Raises PromptError as parse_prompt does."""
    return parse_prompt(defaults.append, strict=strict, require_text=False)


def with_defaults(parsed: ParsedPrompt, defaults: MemberPreferences, *, strict: bool = False,
                  append: bool = True) -> ParsedPrompt:
    """A member's /settings fill in what the prompt does not say; the prompt always wins.
    The words of "always append" go at the end of the prompt's text (of its last part that is
    not negative: a negative part means less of it) (without `append`: "always append" is left
    out)."""
    chosen = appended(defaults, strict=strict) if append else parse_prompt("", require_text=False)
    if chosen.parts:
        words = " ".join(part.text for part in chosen.parts)
        # the last part that says what to draw: a negative part is less of it (weight_sides)
        at = max(i for i, part in enumerate(parsed.parts) if part.weight >= 0)
        last = parsed.parts[at]
        parts = list(parsed.parts)
        parts[at] = PromptPart(f"{last.text}, {words}" if not last.text.endswith(",") else f"{last.text} {words}",
                               last.weight)
        parsed = dataclasses.replace(parsed, parts=tuple(parts))
    parsed = dataclasses.replace(parsed, notices=tuple(dict.fromkeys(parsed.notices + chosen.notices)),
                                 selectors=parsed.selectors or chosen.selectors)
    values = {PARAMETER_FIELDS[name]: getattr(chosen, PARAMETER_FIELDS[name]) for name in chosen.given}
    if defaults.model:
        values["model"] = defaults.model
    if defaults.aspect:
        w, h = defaults.aspect.split(":")
        values["aspect"] = (int(w), int(h))
    if defaults.quality is not None:
        values["quality"] = defaults.quality
    if defaults.stylize is not None:
        values["stylize"] = defaults.stylize
    names = {field: name for name, field in PARAMETER_FIELDS.items()}
    applied = {field: value for field, value in values.items() if names[field] not in parsed.given}
    return dataclasses.replace(parsed, **applied, given=parsed.given | {names[f] for f in applied})


def choose_loras(registry: Registry, parsed: ParsedPrompt, spec: ModelSpec) -> list[tuple[LoraSpec, float]]:
    """The configured LoRAs a prompt names (--lora, <lora:…>), each with its weight (the
    member's, else the entry's default). Raises UnknownLoraError for a name that is not
    configured and RequestError for one that does not fit the model's family; whether the
    server allows them is checked when the job is submitted (`Studio._check_rules`)."""
    chosen = []
    for name, weight in parsed.loras:
        lora = registry.lora(name)
        if not lora.fits(spec.family):
            fitting = [m.name for m in registry.generators() if lora.fits(m.family)]
            raise RequestError(f"The LoRA '{lora.name}' is made for {', '.join(lora.families)} models; {spec.name} "
                               f"is a {spec.family} model. Use it with --model "
                               f"{' or '.join(fitting) if fitting else '(no configured model fits it)'}, "
                               "or leave it out.")
        chosen.append((lora, lora.weight if weight is None else weight))
    return chosen


def choose_control(registry: Registry, parsed: ParsedPrompt, spec: ModelSpec,
                   has_control: bool) -> ControlNetSpec | None:
    """The configured ControlNet a request with a `control:` upload (`has_control`) uses, by
    its `--cn KIND`: of that kind for the model's family; with `--cn none` (the upload already
    is a control image) or no --cn, the family's first in models.toml. None without an upload.

    Raises RequestError (said to the member, nothing stored) for --cn/--cw without an upload,
    a model without ControlNets, a kind not configured for it, "pose" (no pose estimator
    here) and "depth" on a ControlNet without a depth `estimator`. Whether the server allows
    ControlNet is checked when the job is submitted (`Studio._check_rules`)."""
    if not has_control:
        if "cn" in parsed.given:
            raise RequestError("--cn steers the picture by a control image: attach one to the `control` option, "
                               "or leave it out.")
        return None
    fitting = [c for c in registry.controlnets.values() if c.fits(spec.family)]
    if not fitting:
        able = [m.name for m in registry.generators() if registry.control_kinds(m.family)]
        raise RequestError(f"{spec.name} has no ControlNet configured here, so it cannot follow a control image. "
                           + (f"Models that can: {', '.join(able)} (--model NAME)." if able
                              else "No model here can: ask an admin."))
    kind = parsed.control_kind
    if kind is None or kind == CONTROL_AS_IS:
        return fitting[0]
    if kind == "pose":
        raise RequestError("Pintor cannot find the pose in a photo here (no pose estimator is configured). If your "
                           "picture already is an OpenPose skeleton, send it with --cn none"
                           + (f" (it uses the ControlNet {fitting[0].name}, a {fitting[0].kind} one)." if
                              fitting[0].kind != "pose" or len(fitting) > 1 else "."))
    chosen = registry.controlnet_for(spec.family, kind)
    if chosen is None:
        raise RequestError(f"No {kind} ControlNet is configured for {spec.name}; it has: "
                           f"{', '.join(registry.control_kinds(spec.family))} (--cn KIND), or --cn none.")
    if kind == "depth" and not chosen.estimator:
        raise RequestError(f"The depth ControlNet {chosen.name} has no depth estimator configured here: send a depth "
                           "map with --cn none.")
    return chosen


def without_control_weight(parsed: ParsedPrompt) -> ParsedPrompt:
    """A prompt without a control image: its --cw is ignored, with a notice (MidJourney's
    --cw weighs a --cref, which is ignored too)."""
    if "cw" not in parsed.given:
        return parsed
    return dataclasses.replace(parsed, given=parsed.given - {"cw"}, control_weight=None, notices=parsed.notices + (
        f"Ignored --cw {parsed.control_weight:g}: it sets how strongly a control image holds (ControlNet), and "
        "none is attached.",))


def with_control(request: Request, parsed: ParsedPrompt, controlnet: ControlNetSpec | None) -> Request:
    """The request with its ControlNet, what the upload becomes (--cn, else the ControlNet's
    kind) and its weight (--cw, else 1); the upload's path is set when it is stored."""
    if controlnet is None:
        return request
    weight = 1.0 if parsed.control_weight is None else parsed.control_weight
    return request.replace(controlnet=controlnet.name, control_kind=parsed.control_kind or controlnet.kind,
                           control_weight=weight)


def abilities(registry: Registry, spec: ModelSpec, *, controlnet: bool = True) -> list[str]:
    """What a model can do here, in words (`pintor models`, /info): its entry's capabilities
    (ModelSpec.capabilities) and "ControlNet (canny, depth)" with the kinds configured for its
    family (where `controlnet`: a server that denies it shows none)."""
    can = spec.capabilities()
    kinds = registry.control_kinds(spec.family) if spec.can_generate and controlnet else []
    if kinds:
        can.append(f"ControlNet ({', '.join(kinds)})")
    return can


def allowed_loras(rules: ServerRules | None) -> list[str] | None:
    """The LoRA names a server allows (`rules`; None in DMs and the CLI): None for all, [] for none."""
    if rules is None or rules.allowed_loras is None:
        return None
    return name_list(rules.allowed_loras)


def allowed_models(rules: ServerRules | None, registry: Registry | None = None) -> list[str]:
    """The model names a server allows (`rules`; None in DMs and the CLI); empty: all. With
    the `registry`, only names still configured there count (an admin removed the others from
    models.toml): a list that names only removed models allows all, as an empty one does, and
    every view (/imagine, /settings, /info, /pintor-admin show) reads it so."""
    names = name_list(rules.allowed_models) if rules is not None else []
    return names if registry is None else [name for name in names if name in registry.models]


def stale_allow_list(rules: ServerRules | None, registry: Registry) -> str | None:
    """What a server's allow-list of models means where it names models no longer configured in
    `registry` (an admin removed them from models.toml): the one sentence /settings, /info and
    /pintor-admin show all say, so that they agree. Names no longer configured do not count
    (`allowed_models`); a list that names only such models allows every model until an admin
    sets it again. None where the list names none (or there is no list: `rules` None, or all
    allowed). The names are shortened ("… and N more") to fit any message."""
    names = name_list(rules.allowed_models) if rules is not None else []
    gone = [name for name in names if name not in registry.models]
    if not gone:
        return None
    listed = listing(gone, 300, separator=", ")
    if len(gone) == len(names):
        return (f"This server's allow-list names only models that are no longer configured ({listed}): every "
                "model is allowed until an admin sets it again (/pintor-admin models).")
    return f"This server's allow-list also names models that are no longer configured ({listed}): they do not count."


def fallback_model(registry: Registry, allowed: Sequence[str] = ()) -> str:
    """The model a prompt that names none uses where `allowed` are the server's allowed model
    names (empty: all): the registry's default where the server allows it, else the first
    allowed model that can make pictures from text (/pintor-admin models requires one)."""
    if not allowed or registry.default in allowed:
        return registry.default
    makers = [name for name in allowed if name in registry.models and registry.models[name].can_generate]
    return makers[0] if makers else registry.default  # none left in the registry: the rule refuses, naming them


def refuses_unknown_parameters(rules: ServerRules | None) -> bool:
    """Whether prompts are read strictly under a server's rules (its strict-parameters rule;
    None, in DMs and the CLI: not strict): parameters Pintor does not have are refused instead
    of ignored with a notice."""
    return rules is not None and rules.strict_parameters


def saved_model_gone(registry: Registry, name: str, allowed: Sequence[str] = ()) -> str | None:
    """Why a model a member saved in /settings can no longer be used (an admin removed it from
    models.toml, or from this server's allowed models), as "is …"; None when it can be used.
    `allowed`: the server's allowed model names (empty: all)."""
    spec = registry.models.get(name) or registry.models.get(name.lower())
    if spec is None or not spec.can_generate:
        return "is no longer available"
    if allowed and spec.name not in allowed:
        return "is not allowed on this server"
    return None


def choose_model(registry: Registry, parsed: ParsedPrompt, *, strict: bool = False) -> ParsedPrompt:
    """MidJourney's `--v N`, `--niji [N]` and `--style NAME` choose the model the registry maps
    them to (like --model; an explicit --model wins); those not mapped are ignored and said
    (refused with `strict`). Returns the prompt with `model` set and the notices added."""
    notices, model = list(parsed.notices), parsed.model
    for name, value in parsed.selectors:
        typed = f"--{name} {value}".rstrip()
        mapped = registry.for_selector(name, value)
        major = value.partition(".")[0]
        if mapped is None and major != value and (mapped := registry.for_selector(name, major)) is not None:
            # "--v 6.1" where only "--v 6" is mapped: a point release of the version the admin chose
            notices.append(f"Read {quote(typed)} as --{name} {major} (no model is mapped to {value} itself).")
        if mapped is None and strict:
            raise PromptError(f"{quote(typed)} chooses no model on this Pintor; choose one with --model: "
                              f"{', '.join(m.name for m in registry.generators())}.")
        if mapped is None:
            notices.append(f"Ignored {quote(typed)}: no model is mapped to it here; choose one with "
                           f"--model ({', '.join(m.name for m in registry.generators())}).")
        elif model is None:
            model = mapped
        elif registry.get(model).name != mapped:
            notices.append(f"Ignored {quote(typed)}: the model is {model} already.")
    return dataclasses.replace(parsed, model=model, notices=tuple(dict.fromkeys(notices)),
                               given=parsed.given | ({"model"} if model else set()))


def clip_refusal(registry: Registry, spec: ModelSpec) -> str:
    """Why --clip cannot be used with `spec`, with the models that take it."""
    able = [m.name for m in registry.generators() if m.can_clip_guide]
    why = (f"'{spec.name}' has no CLIP model configured (an admin names one as clip_model in models.toml)"
           if family_of(spec.family).clip_guidance else
           f"CLIP guidance steers Stable Diffusion models, and '{spec.name}' is a {spec.family} model")
    return (f"--clip cannot be used here: {why}. "
            + (f"Models with CLIP guidance: {', '.join(able)}." if able else "No model here has CLIP guidance."))


def prepare(registry: Registry, text: str, defaults: MemberPreferences | None = None,
            rules: ServerRules | None = None, *, strict: bool | None = None) -> Request:
    """`prepare_with_notices` under a server's `rules` (None in DMs and the CLI), without
    its notices. `strict` (default: the server's strict-parameters rule) refuses parameters
    Pintor does not have instead of ignoring them."""
    if strict is None:
        strict = refuses_unknown_parameters(rules)
    return prepare_with_notices(registry, text, defaults, allowed=allowed_models(rules, registry), strict=strict)[0]


def prepare_with_notices(registry: Registry, text: str, defaults: MemberPreferences | None = None, *,
                         allowed: Sequence[str] = (), strict: bool = False,
                         control: bool = False) -> tuple[Request, list[str]]:
    """`prepare_repeated`'s first request and notices: one grid (a --repeat asking for more is
    said in the request's notices: only /imagine makes several)."""
    requests, notices = prepare_repeated(registry, text, defaults, allowed=allowed, strict=strict, control=control)
    request = requests[0]
    if len(requests) > 1:
        request = request.replace(notices=(*request.notices, repeat_notice(len(requests))))
    return request, notices


def repeat_notice(count: int) -> str:
    """What a job that makes one grid says of a `--repeat count` (count > 1) it did not follow."""
    return f"--repeat {count} makes several grids in Discord's /imagine only: this made one."


def repeated(request: Request, count: int, *, seed_given: bool) -> list[Request]:
    """`count` requests for `--repeat count`: `request` and copies with other seeds. With a
    --seed (`seed_given`), copy k takes seed + 4k (each grid's four pictures use seed … seed +
    3, so no picture repeats another, and the command is reproducible); else random seeds."""
    return [request] + [request.replace(seed=(request.seed + GRID_SIZE * k) % (MAX_SEED + 1) if seed_given
                                        else random_seed()) for k in range(1, count)]


def prepare_repeated(registry: Registry, text: str, defaults: MemberPreferences | None = None, *,
                     allowed: Sequence[str] = (), strict: bool = False,
                     control: bool = False) -> tuple[list[Request], list[str]]:
    """Parse a prompt and resolve it against its model. Pure and fast: a front end calls it
    before acknowledging, to answer bad input with an error only its author sees.

    `defaults` (the member's /settings) fill in what the prompt does not say; `allowed` (the
    server's allowed model names, empty: all) choose the model of a prompt that names none
    (`fallback_model`). A model the member saved in /settings (or in "always append") that
    can no longer be used here is replaced by that model, and a notice for the result says
    so. `strict` (a server's rule) refuses parameters Pintor does not have instead of
    ignoring them. `control`: a control image comes with the prompt (without one, a --cw
    is ignored with a notice: MidJourney's --cw weighs its --cref) (its ControlNet is
    chosen here: `choose_control`; the upload is stored with the job later). Whether the
    rules allow the request is checked later, when it is submitted. Returns the requests
    (one per grid --repeat asks for: `repeated`; each with the prompt's own notices) and the
    notices about the member's defaults; raises the
    USER_ERRORS for bad input; one that only "always append" causes (a LoRA of another family,
    a parameter a strict server refuses …) says that it comes from /settings."""
    try:
        return _prepared(registry, text, defaults, allowed=allowed, strict=strict, control=control)
    except USER_ERRORS as err:
        if defaults is None or not (defaults.append or "").strip():
            raise
        try:  # the same prompt without the member's "always append": does it pass?
            _prepared(registry, text, defaults, allowed=allowed, strict=strict, control=control, append=False)
        except USER_ERRORS:
            raise err from None
        raise type(err)(f"Your /settings → Always append ({quote(defaults.append, 80)}) cannot be used with this "
                        f"prompt: {err.args[0] if err.args else err} Change it with /settings.") from None


def _prepared(registry: Registry, text: str, defaults: MemberPreferences | None, *, allowed: Sequence[str],
              strict: bool, control: bool, append: bool = True) -> tuple[list[Request], list[str]]:
    """`prepare_repeated`'s work; without `append`, the member's "always append" is left out."""
    parsed = parse_prompt(text, strict=strict)
    typed = parsed.given
    notices: list[str] = []
    if parsed.model is None:  # a --v/--niji/--style in the prompt beats the member's default model
        parsed = choose_model(registry, parsed, strict=strict)
    if defaults is not None:
        merged = with_defaults(parsed, defaults, strict=strict, append=append)
        gone = None
        if "model" not in parsed.given and merged.model:  # the prompt's own --model is never replaced
            gone = saved_model_gone(registry, merged.model, allowed)
        if gone:
            instead = fallback_model(registry, allowed)
            notices.append(f"Your saved model '{merged.model}' {gone}: this used {instead}. "
                           f"Choose another model with /settings.")
            merged = dataclasses.replace(merged, model=instead)
        parsed = merged
    parsed = choose_model(registry, parsed, strict=strict)
    spec = registry.get(parsed.model or fallback_model(registry, allowed))
    if not spec.can_generate:
        names = ", ".join(m.name for m in registry.generators())
        raise RequestError(f"'{spec.name}' cannot make pictures from text. Choose one of: {names}.")
    if parsed.clip and not spec.can_clip_guide:
        raise RequestError(clip_refusal(registry, spec))
    if not control:
        # a --cn/--cw of "always append" waits for a prompt that has a control image
        parsed = without_control_weight(dataclasses.replace(parsed, given=parsed.given - ({"cn", "cw"} - typed)))
    controlnet = choose_control(registry, parsed, spec, control)
    request = with_control(build_request(parsed, spec, loras=choose_loras(registry, parsed, spec)), parsed,
                           controlnet)
    return repeated(request, parsed.repeat, seed_given=parsed.seed is not None), notices
