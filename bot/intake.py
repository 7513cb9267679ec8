"""What members ask for, checked and resolved before anything is stored: prompts with their
defaults, /blend's options, and the errors a member can make (each with a message for them)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from generation.inputs import UploadError
from generation.prompt import ParsedPrompt, PromptError, parse_prompt
from generation.registry import Registry, UnknownModelError
from generation.request import Request, build_request
from storage.models import GuildSettings, MemberSettings

MIN_BLEND_IMAGES, MAX_BLEND_IMAGES = 2, 5
BLEND_DIMENSIONS = {"square": (1, 1), "portrait": (2, 3), "landscape": (3, 2)}


class RequestError(ValueError):
    """A request that cannot be made as asked; str(err) tells the member what to change."""


class LimitError(RequestError):
    """A server rule (quota, queue limit, allowed models…) refuses the request; says which."""


def id_list(text: str | None) -> list[int]:
    return [int(v) for v in (text or "").split(",") if v.strip().isdigit()]


def name_list(text: str | None) -> list[str]:
    return [v.strip() for v in (text or "").split(",") if v.strip()]


# What a member can get wrong: each carries a message meant for them.
USER_ERRORS = (PromptError, UnknownModelError, RequestError, UploadError)


@dataclass(frozen=True)
class Member:
    id: int
    name: str = ""



def blend_weights(text: str, count: int, *, has_text: bool) -> tuple[list[float], float]:
    """'2,1' → image weights (and, with one more value, the text's weight; default 1)."""
    if not text.strip():
        return [1.0] * count, 1.0
    try:
        values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise RequestError(f"weights must be numbers separated by commas, like 2,1 — not '{text[:40]}'.") from None
    allowed = (count, count + 1) if has_text else (count,)
    if len(values) not in allowed:
        expected = f"{count} (one per image{', and one more for the prompt' if has_text else ''})"
        raise RequestError(f"weights: give {expected}, not {len(values)}.")
    if any(not 0 < v <= 100 or v != v for v in values):
        raise RequestError("weights must each be more than 0 and at most 100.")
    return values[:count], values[count] if len(values) > count else 1.0


def blend_prompt(text: str) -> ParsedPrompt:
    """/blend's prompt: its text is optional (the images are the subject), so parameters
    alone (`--seed 5`, `--no people`) are fine."""
    if not text.strip():
        return ParsedPrompt(parts=())
    try:
        return parse_prompt(text)
    except PromptError:
        try:
            # a word in front fixes only the missing text; any other error stays
            with_text = parse_prompt("x " + text)
        except PromptError:
            pass
        else:
            return dataclasses.replace(with_text, parts=())
        raise


# prompt parameter → the ParsedPrompt field it sets
PARAMETER_FIELDS = {"ar": "aspect", "seed": "seed", "no": "negative", "chaos": "chaos",
                    "stylize": "stylize", "q": "quality", "steps": "steps", "model": "model"}


def with_defaults(parsed: ParsedPrompt, defaults: MemberSettings) -> ParsedPrompt:
    """A member's /settings fill in what the prompt does not say; the prompt always wins."""
    chosen = parse_prompt("x " + defaults.append) if defaults.append.strip() else ParsedPrompt(parts=())
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


def server_default(registry: Registry, rules: GuildSettings | None) -> str:
    """The model a prompt that names none uses on a server (`rules`; None in DMs and the CLI):
    the registry's default where the server allows it, else the first model of the server's
    allow-list that can make pictures from text (/pintor-admin models requires one)."""
    allowed = name_list(rules.allowed_models) if rules is not None else []
    if not allowed or registry.default in allowed:
        return registry.default
    makers = [name for name in allowed if name in registry.models and registry.models[name].can_generate]
    return makers[0] if makers else registry.default  # none left in the registry: the rule refuses, naming them


def allowed_default(defaults: MemberSettings, rules: GuildSettings | None) -> MemberSettings:
    """A member's defaults as they apply on a server: a default model the server does not allow
    is left out there (the server's default fills in), so that it does not refuse every prompt."""
    allowed = name_list(rules.allowed_models) if rules is not None else []
    if not defaults.model or not allowed or defaults.model in allowed:
        return defaults
    applied = MemberSettings.new(defaults.user_id)
    for column in MemberSettings.__table__.columns:
        setattr(applied, column.key, getattr(defaults, column.key))
    applied.model = None
    return applied


def prepare(registry: Registry, text: str, defaults: MemberSettings | None = None,
            rules: GuildSettings | None = None) -> Request:
    """Parse a prompt and resolve it against its model. Pure and fast: a front end calls it
    before acknowledging, to answer bad input with an error only its author sees.

    `defaults` (the member's /settings) fill in what the prompt does not say; `rules` (the
    server's, None in DMs) choose the model of a prompt that names none (`server_default`).
    Whether the rules allow the request is checked later, when it is submitted."""
    parsed = parse_prompt(text)
    if defaults is not None:
        parsed = with_defaults(parsed, allowed_default(defaults, rules))
    spec = registry.get(parsed.model or server_default(registry, rules))
    if not spec.can_generate:
        names = ", ".join(m.name for m in registry.generators())
        raise RequestError(f"'{spec.name}' cannot make pictures from text. Choose one of: {names}.")
    return build_request(parsed, spec)
