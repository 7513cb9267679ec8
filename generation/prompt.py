"""Pintor's prompt language: MidJourney-style text first, then ``--parameters``.

    a castle on a hill::2 fog::0.5 --ar 16:9 --seed 7 --no people, text

``parse_prompt`` turns a user's message into a ``ParsedPrompt`` or raises
``PromptError``, whose message is written to be shown to the user as is.
``format_parameters`` writes the parameters back in canonical form, so that
``parse_prompt(p.text + " " + format_parameters(p)) == p``.

Pure stdlib on purpose: no torch/diffusers/discord here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

MAX_PROMPT_CHARS = 1000
MAX_STEPS = 150
MAX_SEED = 2**32 - 1
MAX_ASPECT_RATIO = 3  # max(W, H) / min(W, H)
MAX_ASPECT_SIDE = 10_000
MAX_WEIGHT = 10.0  # multi-prompt weights lie in [-MAX_WEIGHT, MAX_WEIGHT]


class PromptError(ValueError):
    """A prompt the user has to fix; ``str(err)`` says what and how, in plain words."""


@dataclass(frozen=True)
class PromptPart:
    text: str
    weight: float = 1.0


@dataclass(frozen=True)
class ParsedPrompt:
    parts: tuple[PromptPart, ...]
    negative: str = ""
    aspect: tuple[int, int] = (1, 1)
    seed: int | None = None
    chaos: int = 0
    stylize: int | None = None
    quality: float = 1.0
    steps: int | None = None
    model: str | None = None
    given: frozenset[str] = frozenset()

    @property
    def text(self) -> str:
        """The prompt text for display; weights are shown only for multi-prompts."""
        if len(self.parts) == 1:
            return self.parts[0].text
        return " ".join(_format_part(part) for part in self.parts)


# --------------------------------------------------------------------------
# Parameter table
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Param:
    name: str  # canonical name, as used in ParsedPrompt.given
    field: str  # the ParsedPrompt field it sets
    allowed: str  # what the value may be, for error messages
    parse: Callable[[str], object]  # raises ValueError for a bad value
    format: Callable[[object], str] = str
    multiword: bool = False  # the value runs until the next parameter


_ALIASES = {"aspect": "ar", "c": "chaos", "s": "stylize", "quality": "q"}


def _int_between(lo: int, hi: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        # ASCII digits only: int() would also take "١٢", "+5" or "1_000".
        if not (value.isascii() and value.isdigit()):
            raise ValueError(value)
        digits = value.lstrip("0") or "0"
        if len(digits) > 20:  # int() refuses very long strings; this is out of range anyway
            raise ValueError(value)
        number = int(digits)
        if not lo <= number <= hi:
            raise ValueError(value)
        return number

    return parse


def _parse_aspect(value: str) -> tuple[int, int]:
    match = re.fullmatch(r"([0-9]{1,6}):([0-9]{1,6})", value)
    if not match:
        raise ValueError(value)
    w, h = int(match[1]), int(match[2])
    if not (1 <= w <= MAX_ASPECT_SIDE and 1 <= h <= MAX_ASPECT_SIDE):
        raise ValueError(value)
    if max(w, h) > MAX_ASPECT_RATIO * min(w, h):
        raise ValueError(value)
    divisor = math.gcd(w, h)
    return (w // divisor, h // divisor)


_DECIMAL_RE = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")


def _parse_quality(value: str) -> float:
    if not _DECIMAL_RE.fullmatch(value):
        raise ValueError(value)
    quality = float(value)
    if quality not in (0.5, 1.0, 2.0):
        raise ValueError(value)
    return quality


def _parse_model(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value):
        raise ValueError(value)
    return value


def _param_table(max_steps: int) -> dict[str, _Param]:
    params = (
        _Param("ar", "aspect",
               f"W:H with whole numbers from 1 to {MAX_ASPECT_SIDE}, no wider than "
               f"{MAX_ASPECT_RATIO}:1 or taller than 1:{MAX_ASPECT_RATIO} (e.g. --ar 16:9)",
               _parse_aspect, lambda aspect: f"{aspect[0]}:{aspect[1]}"),
        _Param("seed", "seed", f"a whole number from 0 to {MAX_SEED}", _int_between(0, MAX_SEED)),
        _Param("no", "negative", "the things to leave out (e.g. --no people, text)",
               lambda value: value, multiword=True),
        _Param("chaos", "chaos", "a whole number from 0 to 100", _int_between(0, 100)),
        _Param("stylize", "stylize", "a whole number from 0 to 1000", _int_between(0, 1000)),
        _Param("q", "quality", "0.5, 1 or 2", _parse_quality, lambda quality: f"{quality:g}"),
        _Param("steps", "steps", f"a whole number from 1 to {max_steps}", _int_between(1, max_steps)),
        _Param("model", "model",
               "a model name: letters, digits, '.', '_' or '-', at most 64 characters",
               _parse_model),
    )
    return {param.name: param for param in params}


_KNOWN = ("Known parameters: --ar, --seed, --no, --chaos, --stylize, --q, --steps, --model "
          "(also --aspect, --c, --s, --quality).")


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------

# A parameter is a word that starts with "--" followed by a letter. Phones turn
# "--" into an em dash (or an en dash), so those count as "--" too; so does a dash
# followed by a hyphen ("—-ar"). A lone "--" or "—" stays plain text.
_PARAM_RE = re.compile(r"(?:--|[\u2014\u2013])-?([A-Za-z]\S*)")
# Control characters and invisible spaces (zero-width space, word joiner, BOM) count
# as whitespace, so "--seed\u200b 7" is not an unknown parameter. (Not the zero-width
# joiner: emoji sequences need it.)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b\u2060\ufeff]")
_WEIGHT_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def parse_prompt(text: str, *, max_chars: int = MAX_PROMPT_CHARS,
                 max_steps: int = MAX_STEPS) -> ParsedPrompt:
    """Parse a user's prompt; raise PromptError (and nothing else) when it is invalid."""
    words = _CONTROL_RE.sub(" ", text).split()
    prompt_words, groups = _split_words(words)
    table = _param_table(max_steps)

    values: dict[str, object] = {}
    for typed_name, args in groups:
        param = _lookup(table, typed_name)
        if param.name in values:
            raise PromptError(f"--{param.name} is given twice; give each parameter once.")
        values[param.name] = _parse_value(param, args)

    if not prompt_words:
        raise PromptError("Your prompt has no text: describe the image first, "
                          "then add parameters such as --ar 16:9.")
    parts = _split_parts(" ".join(prompt_words))
    _check_length("Your prompt", " ".join(part.text for part in parts), max_chars)
    if "no" in values:
        _check_length("--no", values["no"], max_chars)

    fields = {table[name].field: value for name, value in values.items()}
    return ParsedPrompt(parts=parts, given=frozenset(values), **fields)


def _split_words(words: list[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Split into the prompt's words and (parameter name as typed, its value words)."""
    prompt_words: list[str] = []
    groups: list[tuple[str, list[str]]] = []
    for word in words:
        match = _PARAM_RE.fullmatch(word)
        if match:
            groups.append((match[1], []))
        elif groups:
            groups[-1][1].append(word)
        else:
            prompt_words.append(word)
    return prompt_words, groups


def _lookup(table: dict[str, _Param], typed_name: str) -> _Param:
    name = typed_name.lower()
    param = table.get(_ALIASES.get(name, name))
    if param is None:
        raise PromptError(f"Unknown parameter --{_short(typed_name)}. {_KNOWN}")
    return param


def _parse_value(param: _Param, args: list[str]) -> object:
    if not args:
        raise PromptError(f"--{param.name} needs a value: {param.allowed}.")
    if param.multiword:
        return " ".join(args)
    if len(args) > 1:
        raise PromptError(
            f"Unexpected '{_short(args[1])}' after --{param.name} {_short(args[0])}: "
            "each parameter takes one value, and the prompt text goes before the parameters.")
    try:
        return param.parse(args[0])
    except ValueError:
        raise PromptError(
            f"--{param.name} must be {param.allowed}; got '{_short(args[0])}'.") from None


def _check_length(what: str, text: str, max_chars: int) -> None:
    if len(text) > max_chars:
        raise PromptError(f"{what} is {len(text)} characters long; the limit is {max_chars}.")


def _split_parts(text: str) -> tuple[PromptPart, ...]:
    """Split "a::2 b::0.5 c" into weighted parts; a single ':' is plain text."""
    chunks = text.split("::")
    if len(chunks) == 1:
        return (PromptPart(text),)

    parts = []
    pending = chunks[0]
    for chunk in chunks[1:]:
        # Whatever is glued right after '::' is the weight of the text before it.
        glued = re.match(r"\S*", chunk)[0]
        weight = _parse_weight(glued) if glued else 1.0
        parts.append(_make_part(pending, weight))
        pending = chunk[len(glued):]
    if pending.strip():
        parts.append(_make_part(pending, 1.0))

    total = sum(part.weight for part in parts)
    if not total > 0:
        raise PromptError(f"The weights after '::' add up to {total:g}; "
                          "they must add up to more than 0.")
    if len(parts) == 1:
        # A lone part's weight has nothing to be relative to.
        return (PromptPart(parts[0].text),)
    return tuple(parts)


def _make_part(text: str, weight: float) -> PromptPart:
    text = " ".join(text.split())
    if not text:
        raise PromptError("A part of your multi-prompt is empty: "
                          "write some text before each '::'.")
    return PromptPart(text, weight)


def _parse_weight(glued: str) -> float:
    weight = float(glued) if _WEIGHT_RE.fullmatch(glued) else math.nan
    if not -MAX_WEIGHT <= weight <= MAX_WEIGHT:  # also false for NaN
        raise PromptError(
            f"Invalid weight '::{_short(glued)}': after '::' write a number from "
            f"{-MAX_WEIGHT:g} to {MAX_WEIGHT:g} (e.g. castle::2 fog::0.5), or a space.")
    return weight + 0.0  # turns -0.0 into 0.0


def _short(value: str, limit: int = 30) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "…"


# --------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------


def _format_weight(weight: float) -> str:
    # repr() is the shortest text that reads back as the same float.
    text = repr(float(weight))
    return text[:-2] if text.endswith(".0") else text


def _format_part(part: PromptPart) -> str:
    # "a:" + "::2" would read back as "a" + ":::2"; a space keeps them apart.
    separator = " ::" if part.text.endswith(":") else "::"
    return f"{part.text}{separator}{_format_weight(part.weight)}"


def format_parameters(p: ParsedPrompt) -> str:
    """The parameters the user gave, canonically: "--ar 16:9 --seed 7 --no people"."""
    return " ".join(
        f"--{param.name} {param.format(getattr(p, param.field))}"
        for param in _param_table(MAX_STEPS).values()
        if param.name in p.given
    )


# --------------------------------------------------------------------------
# Image size
# --------------------------------------------------------------------------


def size_for_aspect(aspect: tuple[int, int], native_side: int,
                    multiple: int = 64) -> tuple[int, int]:
    """(width, height) of about native_side² pixels, shaped like aspect W:H.

    Both sides are multiples of ``multiple`` (at least one multiple). Of the
    roundings down/up of the ideal width and height, the one whose ratio is
    closest to W:H wins; a tie goes to the one closest in area.
    """
    w, h = aspect
    if w <= 0 or h <= 0 or native_side <= 0 or multiple <= 0:
        raise ValueError(f"bad size request: aspect={aspect}, native_side={native_side}, "
                         f"multiple={multiple}")
    area = native_side * native_side
    target = math.log(w / h)
    ideal_width = math.sqrt(area * w / h)
    ideal_height = math.sqrt(area * h / w)

    def roundings(ideal: float) -> set[int]:
        lower = math.floor(ideal / multiple) * multiple
        return {max(multiple, lower), max(multiple, lower + multiple)}

    candidates = [(cw, ch) for cw in roundings(ideal_width) for ch in roundings(ideal_height)]
    return min(candidates, key=lambda size: (abs(math.log(size[0] / size[1]) - target),
                                             abs(size[0] * size[1] - area),
                                             size))
