"""Pintor's prompt language: MidJourney-style text first, then ``--parameters``.

    a castle on a hill::2 fog::0.5 --ar 16:9 --seed 7 --no people, text

``parse_prompt`` turns a member's message into a ``ParsedPrompt`` or raises ``PromptError``,
whose message is written to be shown to the member as is. It reads prompts as members really
paste them from MidJourney and Stable Diffusion galleries:

* parameters Pintor does not have (``--sref …``, ``--weird 50``, ``--w 1080``) are ignored, each
  named once in ``ParsedPrompt.notices`` with what to type instead where Pintor has an
  equivalent; with ``strict=True`` (a server's choice) they are refused instead;
* ``--v N``, ``--niji [N]`` and ``--style NAME`` are kept in ``ParsedPrompt.selectors`` for the
  model registry to map to a model (``bot.intake`` does);
* values outside a range whose intent is plain are brought inside it, with a notice
  (``--ar 7:2`` → 3:1, ``--q 4`` → 2, ``--chaos 150`` → 100, two ``--no`` lists merged);
* links at the start of a prompt are image prompts (MidJourney's order:
  ``https://…/a.png https://…/b.png a cat --iw 1.5``): taken out of the text into
  ``ParsedPrompt.image_urls``; ``--iw`` (0–3, default 1) is their weight against the text. Which
  hosts may be fetched is the bot's business (``bot.downloads``), not the parser's;
* leftovers of copy and paste are cleaned, with a notice: a leading ``/imagine prompt:``,
  dashes that phones turn into ``—``, links further on in the text, ``<lyco:…>``,
  ``BREAK`` and ``[a|b]``;
* ``<lora:NAME:0.7>`` (the form Stable Diffusion galleries paste) means ``--lora NAME:0.7``: both
  end up in ``ParsedPrompt.loras`` as (name, weight or None for the LoRA's own default);
* Stable Diffusion emphasis — ``(word:1.3)``, ``((word))``, ``[word]`` — stays in the text;
  ``emphasis_segments`` turns it into (text, weight) fragments for weighted embeddings.

Every notice quotes, between “ and ”, what it is about exactly as it appears in the input.
``format_parameters`` writes the parameters back in canonical form, so that
``parse_prompt(p.text + " " + format_parameters(p))`` gives ``p`` again (without notices, but
for the one that says how each negative ``::`` part is read).

Pure stdlib on purpose: no torch/diffusers/discord here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Generic, TypeVar

# Only text over this many characters is refused (an abuse limit): what the text encoder
# cannot read of a shorter prompt is cut when the pictures are made, and the result says so.
MAX_PROMPT_CHARS = 4000
MAX_STEPS = 150
MAX_SEED = 2**32 - 1  # --seed's range, as MidJourney's: 0 to 4294967295 (what a torch.Generator takes)
MAX_ASPECT_RATIO = 3  # max(W, H) / min(W, H)
MAX_ASPECT_SIDE = 10_000
QUALITIES = (0.5, 1.0, 2.0)
# AUTOMATIC1111's emphasis: (word) multiplies the weight by 1.1, [word] divides it by 1.1
EMPHASIS_STEP = 1.1
# a LoRA's weight as members may give it; beyond this the picture is noise (AUTOMATIC1111 and
# ComfyUI sliders go to about ±2; a negative weight reverses a LoRA)
LORA_WEIGHT_RANGE = (-2.0, 2.0)
MAX_LORAS = 8  # LoRAs one prompt may name (an abuse limit; a server's own limit is lower)
MAX_IMAGE_PROMPTS = 5  # links at the start of a prompt (as /blend's images: more dilute each one to nothing)
# --iw: how much the image prompts count against the text (MidJourney's range for v6/v7: 0–3, default 1)
IMAGE_WEIGHT_RANGE = (0.0, 3.0)
# grids one command may make with --repeat (each a job of its own, counted by a server's limits);
# MidJourney allows 40 on its largest plans, Pintor's worker is one GPU shared by a server
MAX_REPEAT = 4
# ControlNet: what a control image shows (--cn KIND; the lllyasviel ControlNet 1.1 names), and
# "none" for an upload that already is a control image; --cw is diffusers'
# controlnet_conditioning_scale (0: no effect, 1: as trained; beyond 2 the picture breaks up)
CONTROL_KINDS = ("canny", "depth", "pose", "scribble", "lineart")
CONTROL_AS_IS = "none"
CONTROL_WEIGHT_RANGE = (0.0, 2.0)
# --clip's highest strength (generation/clip_guidance.py: diffusers' CLIP-guided example uses 100)
MAX_CLIP_STRENGTH = 1000
# A negative `::` weight means "less of this", as --no does: MidJourney documents `--no x` as
# `x::-.5`, so a negative part at half the weight of the positive parts counts as a --no list.
NO_WEIGHT = 0.5


class PromptError(ValueError):
    """A prompt the member has to fix; ``str(err)`` says what and how, in plain words."""


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
    # MidJourney's model choosers as given, canonical: ("v", "6"), ("niji", ""), ("style", "raw")
    selectors: tuple[tuple[str, str], ...] = ()
    # --lora NAME[:weight] and <lora:NAME:weight>, in order, once per name; None: the LoRA's default
    loras: tuple[tuple[str, float | None], ...] = ()
    # image prompts: the links at the start of the prompt, in order (without <…>), and --iw
    image_urls: tuple[str, ...] = ()
    image_weight: float = 1.0
    tile: bool = False  # --tile: pictures that repeat seamlessly (circular padding)
    repeat: int = 1  # --repeat N: the command makes N grids (N jobs)
    # --cn KIND (a CONTROL_KINDS name or "none") and --cw weight: how a control: upload steers
    control_kind: str | None = None
    control_weight: float | None = None
    clip: int = 0  # --clip: CLIP guidance strength, 0 (off) to MAX_CLIP_STRENGTH
    # what Pintor changed or ignored, one sentence each, for the member
    notices: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """The prompt text for display; weights are shown only for multi-prompts."""
        if len(self.parts) == 1:
            return self.parts[0].text
        return " ".join(_format_part(part) for part in self.parts)


def quote(text: str, limit: int = 40) -> str:
    """“text”, cut to `limit` characters with “…” (a notice's way of naming member text)."""
    return f"“{_short(text, limit)}”"


def _short(value: str, limit: int = 30) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "…"


# --------------------------------------------------------------------------
# Pintor's parameters
# --------------------------------------------------------------------------


_Value = TypeVar("_Value")


@dataclass(frozen=True)
class _Param(Generic[_Value]):
    name: str  # canonical name, as used in ParsedPrompt.given
    field: str  # the ParsedPrompt field it sets, of type _Value
    allowed: str  # what the value may be, for error messages
    # (value as typed, notices) → the value; raises ValueError for nonsense, appends a
    # notice when it brings the value into range
    parse: Callable[[str, list[str]], _Value]
    format: Callable[[_Value], str] = str
    multiword: bool = False  # the value runs until the next parameter
    flag: bool = False  # takes no value: given means True (--tile)


_ALIASES = {"aspect": "ar", "c": "chaos", "s": "stylize", "quality": "q", "r": "repeat"}


def _whole_number(value: str) -> int:
    # ASCII digits only: int() would also take "١٢", "+5" or "1_000".
    if not (value.isascii() and value.isdigit()):
        raise ValueError(value)
    digits = value.lstrip("0") or "0"
    if len(digits) > 20:  # int() refuses very long strings; nothing here is that large
        raise ValueError(value)
    return int(digits)


def _int_between(name: str, lo: int, hi: int, *, clamp: bool) -> Callable[[str, list[str]], int]:
    """A whole number from lo to hi; with `clamp`, one above hi becomes hi (with a notice)."""
    def parse(value: str, notices: list[str]) -> int:
        number = _whole_number(value)
        if number < lo or (number > hi and not clamp):
            raise ValueError(value)
        if number > hi:
            notices.append(f"--{name} {quote(value)} is over the highest value; used {hi}.")
            return hi
        return number

    return parse


_DECIMAL_RE = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")


def _parse_aspect(value: str, notices: list[str]) -> tuple[int, int]:
    match = re.fullmatch(r"([0-9.]{1,12}):([0-9.]{1,12})", value)
    if not match or not all(_DECIMAL_RE.fullmatch(side) for side in match.groups()):
        raise ValueError(value)
    w, h = Fraction(match[1]), Fraction(match[2])
    if w <= 0 or h <= 0:
        raise ValueError(value)
    ratio = w / h
    if ratio > MAX_ASPECT_RATIO or ratio < Fraction(1, MAX_ASPECT_RATIO):
        ratio = Fraction(MAX_ASPECT_RATIO) if ratio > 1 else Fraction(1, MAX_ASPECT_RATIO)
    elif max(ratio.numerator, ratio.denominator) > MAX_ASPECT_SIDE:
        ratio = ratio.limit_denominator(MAX_ASPECT_SIDE // MAX_ASPECT_RATIO)
    aspect = (ratio.numerator, ratio.denominator)
    if Fraction(*aspect) != w / h or (w.denominator, h.denominator) != (1, 1):
        how = "the nearest ratio Pintor makes" if Fraction(*aspect) != w / h else "the same ratio"
        notices.append(f"--ar {quote(value)}: used {aspect[0]}:{aspect[1]}, {how} "
                       f"(from {MAX_ASPECT_RATIO}:1 to 1:{MAX_ASPECT_RATIO}).")
    return aspect


def _parse_quality(value: str, notices: list[str]) -> float:
    if not _DECIMAL_RE.fullmatch(value):
        raise ValueError(value)
    typed = float(value)
    # the nearest allowed quality; a tie goes to the higher one
    quality = min(QUALITIES, key=lambda q: (abs(q - typed), -q))
    if quality != typed:
        notices.append(f"--q {quote(value)}: used the nearest quality, {quality:g} "
                       f"(one of {', '.join(f'{q:g}' for q in QUALITIES)}).")
    return quality


def _parse_model(value: str, notices: list[str]) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value):
        raise ValueError(value)
    return value


def _parse_lora(value: str, notices: list[str]) -> tuple[str, float | None]:
    """"NAME" or "NAME:0.7" → (name, weight or None); a weight beyond LORA_WEIGHT_RANGE is
    brought inside it, with a notice."""
    name, colon, typed = value.partition(":")
    _parse_model(name, notices)  # the same names as models
    if not colon:
        return name, None
    if not _WEIGHT_RE.fullmatch(typed) or not math.isfinite(float(typed)):
        raise ValueError(value)
    low, high = LORA_WEIGHT_RANGE
    weight = float(typed) + 0.0
    if not low <= weight <= high:
        weight = min(high, max(low, weight))
        notices.append(f"--lora {quote(value)}: a LoRA's weight is from {low:g} to {high:g}; used {weight:g}.")
    return name, weight


def _parse_image_weight(value: str, notices: list[str]) -> float:
    """--iw's value: a number from 0 to 3 (IMAGE_WEIGHT_RANGE); anything else is refused, not
    brought into range: a weight of 4 or -1 says something Pintor cannot guess."""
    if not _DECIMAL_RE.fullmatch(value):
        raise ValueError(value)
    weight = float(value)
    low, high = IMAGE_WEIGHT_RANGE
    if not low <= weight <= high:
        raise ValueError(value)
    return weight
def _parse_control_kind(value: str, notices: list[str]) -> str:
    kind = value.lower()
    if kind not in (*CONTROL_KINDS, CONTROL_AS_IS):
        raise ValueError(value)
    return kind


def _parse_control_weight(value: str, notices: list[str]) -> float:
    """0–2 (CONTROL_WEIGHT_RANGE); a number above 2 becomes 2, with a notice."""
    if not _DECIMAL_RE.fullmatch(value):
        raise ValueError(value)
    low, high = CONTROL_WEIGHT_RANGE
    weight = float(value)
    if weight > high:
        notices.append(f"--cw {quote(value)} is over the highest value; used {high:g}.")
        return high
    return max(low, weight)


def _format_loras(loras: tuple[tuple[str, float | None], ...]) -> str:
    # one --lora per LoRA: format_parameters writes "--lora " before the first
    return " --lora ".join(name if weight is None else f"{name}:{_format_weight(weight)}" for name, weight in loras)


def _param_table(max_steps: int) -> dict[str, _Param[Any]]:
    # each parameter's value has its own type (tuple[int, int], int, float, str): the table holds
    # them as _Param[Any], and ParsedPrompt's fields take them by name
    params: tuple[_Param[Any], ...] = (
        _Param("ar", "aspect",
               f"W:H with two positive numbers (e.g. --ar 16:9); ratios beyond "
               f"{MAX_ASPECT_RATIO}:1 or 1:{MAX_ASPECT_RATIO} are brought to those",
               _parse_aspect, lambda aspect: f"{aspect[0]}:{aspect[1]}"),
        _Param("seed", "seed", f"a whole number from 0 to {MAX_SEED}",
               _int_between("seed", 0, MAX_SEED, clamp=False)),
        _Param("no", "negative", "the things to leave out (e.g. --no people, text)",
               lambda value, notices: value, multiword=True),
        _Param("chaos", "chaos", "a whole number from 0 to 100", _int_between("chaos", 0, 100, clamp=True)),
        _Param("stylize", "stylize", "a whole number from 0 to 1000",
               _int_between("stylize", 0, 1000, clamp=True)),
        _Param("q", "quality", "a number: 0.5, 1 or 2", _parse_quality, lambda quality: f"{quality:g}"),
        _Param("steps", "steps", f"a whole number from 1 to {max_steps}",
               _int_between("steps", 1, max_steps, clamp=True)),
        _Param("model", "model",
               "a model name: letters, digits, '.', '_' or '-', at most 64 characters",
               _parse_model),
        _Param("lora", "loras", "a LoRA's name, and its weight after a colon if you want another "
               f"(e.g. --lora pixel-art:0.7; from {LORA_WEIGHT_RANGE[0]:g} to {LORA_WEIGHT_RANGE[1]:g})",
               _parse_lora, _format_loras),
        _Param("iw", "image_weight",
               f"a number from {IMAGE_WEIGHT_RANGE[0]:g} to {IMAGE_WEIGHT_RANGE[1]:g}: how much the image prompts "
               "count against the text (default 1)", _parse_image_weight, lambda weight: _format_weight(weight)),
        _Param("tile", "tile", "given alone, without a value", lambda value, notices: True, flag=True),
        _Param("repeat", "repeat", f"a whole number from 1 to {MAX_REPEAT}",
               _int_between("repeat", 1, MAX_REPEAT, clamp=True)),
        _Param("cn", "control_kind", f"what the control: image becomes: {', '.join(CONTROL_KINDS)}, or "
               f"{CONTROL_AS_IS} when it already is a control image (e.g. --cn canny)", _parse_control_kind),
        _Param("cw", "control_weight", f"a number from {CONTROL_WEIGHT_RANGE[0]:g} to {CONTROL_WEIGHT_RANGE[1]:g}: "
               "how strongly the control image holds (default 1)", _parse_control_weight, _format_weight),
        _Param("clip", "clip", f"a whole number from 0 (off) to {MAX_CLIP_STRENGTH}: how strongly CLIP guidance "
               "steers towards the prompt (e.g. --clip 100)", _int_between("clip", 0, MAX_CLIP_STRENGTH, clamp=True)),
    )
    return {param.name: param for param in params}


KNOWN_PARAMETERS = ("Pintor's parameters: --ar, --seed, --no, --chaos, --stylize, --q, --steps, --model, --lora, --iw, "
                    "--tile, --repeat, --cn, --cw, --clip (also --aspect, --c, --s, --quality, --r).")


# --------------------------------------------------------------------------
# MidJourney's parameters that Pintor does not have
# --------------------------------------------------------------------------

_NONE, _ONE, _OPTIONAL, _MANY = "none", "one", "optional", "many"
_IMAGES = "Pintor has image prompts (links at the start of the prompt, --iw), not style or character references"
_MODEL = "choose a model with --model"
_ASPECT = "use --ar for the shape"


@dataclass(frozen=True)
class _Foreign:
    values: str  # _NONE, _ONE, _OPTIONAL (a value only if it looks like one) or _MANY
    advice: str = ""


# After MidJourney's parameter list (docs.midjourney.com, "Parameter List"), v4 to v7 and niji.
_FOREIGN: dict[str, _Foreign] = {
    **{name: _Foreign(_NONE) for name in (
        "raw", "uplight", "upbeta", "upanime", "turbo", "relax", "fast", "draft", "hd",
        "test", "testp", "creative", "video", "loop", "stealth", "public")},
    **{name: _Foreign(_ONE) for name in (
        "stop", "weird", "exp", "sameseed", "motion", "bs", "sv")},
    "v": _Foreign(_ONE, _MODEL), "version": _Foreign(_ONE, _MODEL),
    "niji": _Foreign(_OPTIONAL, _MODEL), "style": _Foreign(_ONE, _MODEL),
    "w": _Foreign(_ONE, _ASPECT), "h": _Foreign(_ONE, _ASPECT),
    "width": _Foreign(_ONE, _ASPECT), "height": _Foreign(_ONE, _ASPECT),
    "sw": _Foreign(_ONE, _IMAGES),
    "ow": _Foreign(_ONE, _IMAGES),
    "sref": _Foreign(_MANY, _IMAGES), "cref": _Foreign(_MANY, _IMAGES), "oref": _Foreign(_MANY, _IMAGES),
    "p": _Foreign(_MANY), "personalize": _Foreign(_MANY), "profile": _Foreign(_MANY),
    "end": _Foreign(_MANY),
}
# the parameters whose value the model registry may map to a model (docs/models.md)
SELECTORS = {"v": "v", "version": "v", "niji": "niji", "style": "style"}

_NUMBER_RE = re.compile(r"[0-9]+(?:\.[0-9]+)?|\.[0-9]+")
_URL_RE = re.compile(r"<?https?://\S+", re.IGNORECASE)
# a value of --sref/--p…: a link, a number or code with a digit, "random", maybe "::weight"
_CODE_RE = re.compile(r"(?:<?https?://\S+|random|[A-Za-z0-9_-]*[0-9][A-Za-z0-9_-]*)(?:::\S*)?", re.IGNORECASE)


# What ends a sentence or a clause after a link, never its last character (as Discord and
# GitHub linkify): ASCII and the CJK and typographic forms phones type. Closing brackets are
# the link's own only when it opens them too (a Wikipedia title "Cat_(animal)").
_AFTER_LINK = frozenset(".,:;!?'\"…。、，．！？；：」』”’»")
_BRACKETS = {")": "(", "]": "[", "}": "{"}


def image_link(word: str) -> str | None:
    """The link that a word of a prompt (split at white space) is: without the punctuation
    after it that ends a sentence or a clause ("https://…/cat.png," → "https://…/cat.png"),
    without closing brackets it does not open, and without the <…> that keeps Discord from
    showing a preview. None when the word is no http(s) link."""
    end = len(word)
    while end:
        last = word[end - 1]
        if last in _AFTER_LINK or last == ">" or (
                last in _BRACKETS and word.count(_BRACKETS[last], 0, end) < word.count(last, 0, end)):
            end -= 1
        else:
            break
    link = word[:end].removeprefix("<")
    return link if _URL_RE.fullmatch(link) and len(link) > link.index("://") + 3 else None


def selector_value(value: str) -> str:
    """A selector's value, canonical: numbers as written without a trailing '.0' ("6.0" → "6"),
    names in lower case."""
    if _NUMBER_RE.fullmatch(value):
        whole, _, fraction = value.partition(".")
        whole, fraction = whole.lstrip("0") or "0", fraction.rstrip("0")
        return f"{whole}.{fraction}" if fraction else whole
    return value.lower()


# --------------------------------------------------------------------------
# Words
# --------------------------------------------------------------------------

# Control characters and invisible spaces (zero-width space, word joiner, BOM) count
# as whitespace, so "--seed\u200b 7" is not an unknown parameter. (Not the zero-width
# joiner: emoji sequences need it.)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b\u2060\ufeff]")
# Dash-like characters: phones turn "--" into "—" or "–"; others come from copy and paste.
_DASHES = "-\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d"
_FLAG_RE = re.compile(f"([{_DASHES}]{{1,3}})([A-Za-z]\\S*)")
_LONE_DASHES_RE = re.compile(f"[{_DASHES}]{{1,3}}")
_GLUED_RE = re.compile(r"(ar|aspect|seed|chaos|c|s|stylize|q|quality|steps)([0-9.][0-9.:]*)", re.IGNORECASE)
_EQUALS_RE = re.compile(r"([A-Za-z][^=\s]*)=(\S*)")
_GLUED_AFTER_WEIGHT_RE = re.compile(f"::(?=[{_DASHES}]{{1,3}}[A-Za-z])")
_IMAGINE_RE = re.compile(r"\s*/?imagine\s+prompt\s*:\s*", re.IGNORECASE)
_WEIGHT_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _canonical(typed_name: str) -> str:
    name = typed_name.lower()
    return _ALIASES.get(name, name)


def _is_known(name: str, table: dict[str, _Param[Any]]) -> bool:
    return name in table or name in _FOREIGN


def _words(text: str) -> list[str]:
    """The text's words; "castle::--ar" is two: a parameter glued after '::' is a parameter,
    not the next part's text."""
    words = []
    for word in text.split():
        glued = None if word.startswith("--") else _GLUED_AFTER_WEIGHT_RE.search(word)
        words += [word[:glued.start() + 2], word[glued.start() + 2:]] if glued else [word]
    return words


@dataclass
class _Group:
    typed: str  # the word that started it, as typed ("—ar", "--sref")
    name: str  # canonical name
    args: list[str] = field(default_factory=list)


def _split_words(words: list[str], table: dict[str, _Param[Any]], notices: list[str]) -> tuple[list[str], list[_Group]]:
    """Split into the prompt's words and the parameters with the words after each."""
    prompt_words: list[str] = []
    groups: list[_Group] = []
    i = 0
    while i < len(words):
        word = words[i]
        match = _FLAG_RE.fullmatch(word)
        if match and (glued := _GLUED_RE.fullmatch(match[2])):
            # "--ar16:9": the value glued to the name
            notices.append(f"Read {quote(word)} as --{_canonical(glued[1])} {glued[2]}.")
            groups.append(_Group(word, _canonical(glued[1]), [glued[2]]))
        elif match and (equals := _EQUALS_RE.fullmatch(match[2])) and _is_known(_canonical(equals[1]), table):
            # "--seed=42", "--no=text": a command line's habit
            name = _canonical(equals[1])
            notices.append(f"Read {quote(word)} as --{name} {equals[2]}".rstrip() + ".")
            groups.append(_Group(f"{match[1]}{equals[1]}", name, [equals[2]] if equals[2] else []))
        elif match and (match[1] == "--" or _is_known(_canonical(match[2]), table)):
            groups.append(_Group(word, _canonical(match[2])))
        elif (_LONE_DASHES_RE.fullmatch(word) and len(word) > 1 and i + 1 < len(words)
              and len(words[i + 1]) > 1 and _is_known(_canonical(words[i + 1]), table)
              and (word == "--" or _canonical(words[i + 1]) != "no")):
            # "-- ar 16:9": a space after the dashes. Not for one letter ("-- c") nor after
            # phone dashes for "no" ("—— no"): those are often prose.
            notices.append(f"Read {quote(word + ' ' + words[i + 1])} as --{_canonical(words[i + 1])} "
                           f"(write parameters without a space after the dashes).")
            groups.append(_Group(f"{word} {words[i + 1]}", _canonical(words[i + 1])))
            i += 1
        elif groups:
            groups[-1].args.append(word)
        else:
            prompt_words.append(word)
        i += 1
    return prompt_words, groups


# What a pasted prompt leaves after a one-word value: the comma of the sentence ("--ar 16:9,
# --v 6"), its full stop ("--seed 5."), and a CJK keyboard's full-width colon ("--ar 16：9").
_VALUE_TAIL_RE = re.compile(r"[,;.\uff0c\uff1b\u3001\u3002]+$")
_NAME_TAIL_RE = re.compile(r"[,;\uff0c\uff1b\u3001\u3002]+$")  # a model's or LoRA's name may end in "."


def _tidy_value(group: _Group, tidied: list[str], *, number: bool = False) -> None:
    """Take the sentence's punctuation off a one-word value (group.args[0]), adding what was
    typed to `tidied` (said once for all); with `number`, only where what is left is a number
    (else the word is prompt text, left as is)."""
    typed = group.args[0]
    tail = _NAME_TAIL_RE if group.name in ("model", "lora") else _VALUE_TAIL_RE
    value = tail.sub("", typed).replace("\uff1a", ":")
    if value and value != typed and (not number or _NUMBER_RE.fullmatch(value)):
        group.args[0] = value
        tidied.append(quote(group.typed + " " + typed))


def _take_values(group: _Group, table: dict[str, _Param[Any]], tidied: list[str]) -> list[str]:
    """How many of a group's words are its value; the rest are prompt text (returned). A
    one-word value loses the punctuation a sentence puts after it (listed in `tidied`)."""
    param = table.get(group.name)
    foreign = _FOREIGN.get(group.name)
    one_word = (not (param.flag or param.multiword) if param
                else foreign is not None and foreign.values in (_ONE, _OPTIONAL))
    if group.args and one_word:
        _tidy_value(group, tidied, number=foreign is not None and foreign.values == _OPTIONAL)
    if param:
        count = 0 if param.flag else len(group.args) if param.multiword else 1
        rest = group.args[count:]
        del group.args[count:]
        return rest
    if foreign is None:  # a parameter nobody knows: its value runs to the next parameter
        return []
    if foreign.values == _NONE:
        count = 0
    elif foreign.values == _ONE:
        count = 1
    elif foreign.values == _OPTIONAL:
        count = 1 if group.args and _NUMBER_RE.fullmatch(group.args[0]) else 0
    else:
        count = 0
        while count < len(group.args) and _CODE_RE.fullmatch(group.args[count]):
            count += 1
    rest = group.args[count:]
    del group.args[count:]
    return rest


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------


def parse_prompt(text: str, *, max_chars: int = MAX_PROMPT_CHARS, max_steps: int = MAX_STEPS,
                 strict: bool = False, require_text: bool = True) -> ParsedPrompt:
    """Parse a member's prompt.

    Takes the text as typed (any string); `max_chars` is the abuse limit on its length,
    `max_steps` the highest --steps, and `strict` (a server's choice) refuses parameters Pintor
    does not have instead of ignoring them; without `require_text`, parameters alone are fine
    (/blend's prompt, a member's "always append"): the parts are then empty. Returns a
    ParsedPrompt whose `notices` say every change made and everything ignored. Raises
    PromptError (and nothing else) for what cannot be read: no text, a nonsense value (shown in
    the message), weights adding up to 0 or less.
    """
    if len(text) > max_chars:
        raise PromptError(f"Your prompt is {len(text)} characters long; the limit is {max_chars}.")
    notices: list[str] = []
    text = _CONTROL_RE.sub(" ", text)
    if (imagine := _IMAGINE_RE.match(text)) and (text[imagine.end():].strip() or not require_text):
        notices.append(f"Removed {quote(' '.join(imagine[0].split()))} from the start: it is part of the "
                       "command, not of the prompt.")
        text = text[imagine.end():]
    table = _param_table(max_steps)
    words = _words(text)
    image_urls: list[str] = []
    while words and (link := image_link(words[0])):  # image prompts: the links before any word
        image_urls.append(link)
        words.pop(0)
    if len(image_urls) > MAX_IMAGE_PROMPTS:
        raise PromptError(f"Your prompt starts with {len(image_urls)} links; at most {MAX_IMAGE_PROMPTS} "
                          "image prompts can be used at once.")
    prompt_words, groups = _split_words(words, table, notices)

    values: dict[str, Any] = {}  # canonical name → its _Param's parsed value
    negatives: list[str] = []  # each --no, merged into one below
    loras: list[tuple[str, float | None]] = []  # each --lora and <lora:…> tag
    selectors: list[tuple[str, str]] = []
    ignored: dict[str, list[str]] = {}  # canonical name → each use, as typed
    tidied: list[str] = []  # values typed with a comma or full stop after them
    for group in groups:
        prompt_words += _moved_to_text(group, _take_values(group, table, tidied), notices)
        if group.name in table:
            _set_value(values, negatives, loras, table[group.name], group, notices)
        elif group.name in SELECTORS and (group.args or _FOREIGN[group.name].values == _OPTIONAL):
            selectors.append((SELECTORS[group.name], selector_value(group.args[0]) if group.args else ""))
        else:
            ignored.setdefault(group.name, []).append(" ".join([group.typed, *group.args]))
    if tidied:
        notices.append(f"Read {', '.join(tidied)} without the punctuation after the value.")
    if len(negatives) > 1:
        notices.append(f"Merged the --no lists {', '.join(quote(v) for v in negatives)} into one.")
    if negatives:
        values["no"] = ", ".join(negatives)
    if ignored:
        if strict:
            names = ", ".join(quote(uses[0].split()[0]) for uses in ignored.values())
            raise PromptError(f"Pintor does not have {'this parameter' if len(ignored) == 1 else 'these parameters'}"
                              f": {names}. " + KNOWN_PARAMETERS)
        notices.append(_ignored_notice(ignored))

    prompt_text = " ".join(prompt_words)
    loras += _lora_tags(prompt_text, notices)
    prompt_text = _clean_text(prompt_text, notices)
    if loras:
        values["lora"] = _distinct_loras(loras, notices)
    if not prompt_text.strip() and not require_text:
        parts: tuple[PromptPart, ...] = ()
    elif not prompt_text.strip():
        if image_urls:
            raise PromptError("Your prompt has image links but no text: after the links, describe the picture "
                              "you want, e.g. https://…/cat.png a cat in a spacesuit --iw 1.5.")
        raise PromptError("Your prompt has no text: describe the image first, "
                          "then add parameters such as --ar 16:9."
                          + (" (A link is an image prompt only at the start of the prompt.)"
                             if _URL_RE.search(text) else ""))
    else:
        parts = _split_parts(prompt_text, notices, typed=text)
        for part in parts:
            # "—ar::.5" is text only while glued to its '::': the part alone would read as --ar
            # (and the prompt as shown would not read back as what the job used)
            _, flags = _split_words(part.text.split(), table, [])
            if flags:
                raise PromptError(f"{quote(flags[0].typed)} before '::' reads as a parameter: write the parts' "
                                  "words first and parameters after them (e.g. a castle::2 fog::1 --ar 16:9).")
    fields = {table[name].field: value for name, value in values.items()}
    return ParsedPrompt(parts=parts, given=frozenset(values), selectors=tuple(selectors),
                        image_urls=tuple(image_urls), notices=tuple(dict.fromkeys(notices)), **fields)


def _moved_to_text(group: _Group, rest: list[str], notices: list[str]) -> list[str]:
    if rest:
        notices.append(f"Read {quote(' '.join(rest))} after {quote(group.typed)} as prompt text.")
    return rest


def _set_value(values: dict[str, Any], negatives: list[str], loras: list[tuple[str, float | None]],
               param: _Param[Any], group: _Group, notices: list[str]) -> None:
    if param.flag:  # --tile --tile: still one
        values[param.name] = True
        return
    if not group.args:
        raise PromptError(f"--{param.name} needs a value: {param.allowed}.")
    if param.multiword:  # --no people --no text: one list (said once all are read)
        negatives.append(" ".join(group.args))
        return
    if param.name == "lora":  # several LoRAs: one --lora each
        try:
            loras.append(param.parse(group.args[0], notices))
        except ValueError:
            raise PromptError(f"--lora must be {param.allowed}; got {quote(group.args[0])}.") from None
        return
    if param.name in values:
        raise PromptError(f"--{param.name} is given twice ({quote(group.typed + ' ' + group.args[0])} "
                          "the second time); give it once.")
    try:
        values[param.name] = param.parse(group.args[0], notices)
    except ValueError:
        raise PromptError(f"--{param.name} must be {param.allowed}; got {quote(group.args[0])}.") from None


def _ignored_notice(ignored: dict[str, list[str]]) -> str:
    """One sentence naming every ignored parameter once, with advice where Pintor has some."""
    by_advice: dict[str, list[str]] = {}
    shown_at_most = 12  # keeps the notice short whatever is pasted
    for name, uses in list(ignored.items())[:shown_at_most]:
        shown = quote(uses[0]) + (f" (×{len(uses)})" if len(uses) > 1 else "")
        foreign = _FOREIGN.get(name)
        by_advice.setdefault(foreign.advice if foreign else "", []).append(shown)
    pieces = [", ".join(shown) + (f" — {advice}" if advice else "") for advice, shown in by_advice.items()]
    more = len(ignored) - shown_at_most
    return ("Ignored what Pintor does not have: " + "; ".join(pieces)
            + (f"; and {more} more." if more > 0 else "."))


# --------------------------------------------------------------------------
# Cleaning the text: links, LoRA tags, BREAK, [a|b]
# --------------------------------------------------------------------------

_LORA_RE = re.compile(r"<(?:lyco|hypernet):[^<>\s]*>", re.IGNORECASE)
# <lora:NAME>, <lora:NAME:0.7>; AUTOMATIC1111's extra fields (<lora:NAME:0.7:0.5>) are read past
_LORA_TAG_RE = re.compile(r"<lora:([^:<>\s]*)(?::([^:<>\s]*))?((?::[^<>\s]*)?)>", re.IGNORECASE)


def _lora_tags(text: str, notices: list[str]) -> list[tuple[str, float | None]]:
    """The LoRAs that <lora:…> tags in the text name (the tags are removed by _clean_text)."""
    found = []
    for match in _LORA_TAG_RE.finditer(text):
        value = match[1] + (f":{match[2]}" if match[2] is not None else "")
        try:
            found.append(_parse_lora(value, notices))
        except ValueError:
            raise PromptError(f"{quote(match[0])} must be <lora:NAME> or <lora:NAME:0.7> with a LoRA's name and "
                              f"a weight from {LORA_WEIGHT_RANGE[0]:g} to {LORA_WEIGHT_RANGE[1]:g}.") from None
        if match[3]:
            notices.append(f"Read {quote(match[0])} as --lora {value}: the weights after the first are not used.")
    return found


def _distinct_loras(loras: list[tuple[str, float | None]], notices: list[str]) -> tuple[tuple[str, float | None], ...]:
    """Each LoRA once (the first mention wins, said), at most MAX_LORAS."""
    chosen: dict[str, float | None] = {}
    for name, weight in loras:
        key = name.lower()
        if key in chosen:
            notices.append(f"The LoRA {quote(name)} is named twice; used it once, as first given.")
        else:
            chosen[key] = weight
    if len(chosen) > MAX_LORAS:
        raise PromptError(f"Your prompt names {len(chosen)} LoRAs; at most {MAX_LORAS} can be used at once.")
    names = {name.lower(): name for name, _ in reversed(loras)}  # as first written
    return tuple((names[key], weight) for key, weight in chosen.items())
_ALTERNATION_RE = re.compile(r"\[([^\[\]|]*(?:\|[^\[\]|]*)+)\]")


def _clean_text(text: str, notices: list[str]) -> str:
    links = [word for word in text.split() if _URL_RE.match(word)]
    if links:
        hosts = ", ".join(dict.fromkeys(quote(_host(link)) for link in links))
        notices.append(f"Removed {len(links)} link{'s' if len(links) > 1 else ''} ({hosts}) from the prompt: "
                       "a link is an image prompt only at the start of the prompt, and elsewhere not words "
                       "to draw.")
        text = " ".join(word for word in text.split() if not _URL_RE.match(word))
    for tag in dict.fromkeys(_LORA_RE.findall(text)):
        notices.append(f"Removed {quote(tag)}: LyCORIS and hypernetwork tags are not supported; "
                       "LoRAs are: <lora:NAME:0.7> or --lora NAME:0.7.")
    text = _LORA_TAG_RE.sub(" ", _LORA_RE.sub(" ", text))
    if re.search(r"(?<!\S)BREAK(?!\S)", text):
        notices.append(f"Read {quote('BREAK')} as a comma: Pintor does not split the prompt into chunks.")
        text = re.sub(r"\s*(?<!\S)BREAK(?!\S)\s*", ", ", text).strip(" ,")
    for match in dict.fromkeys(_ALTERNATION_RE.findall(text)):
        notices.append(f"Read {quote('[' + match + ']')} as its words separated by commas: Pintor does "
                       "not alternate words from step to step.")
    text = _ALTERNATION_RE.sub(lambda m: ", ".join(c.strip() for c in m[1].split("|") if c.strip()), text)
    return " ".join(text.split())


def _host(link: str) -> str:
    match = re.match(r"<?https?://([^/\s>?#]+)", link, re.IGNORECASE)
    return match[1] if match else link


# --------------------------------------------------------------------------
# Multi-prompts: text::weight
# --------------------------------------------------------------------------


def _split_parts(text: str, notices: list[str], typed: str | None = None) -> tuple[PromptPart, ...]:
    """Split "a::2 b::0.5 c" into weighted parts; a single ':' is plain text.

    A weight is a number glued after '::', maybe with the comma that separates the parts
    (`apple::2, leaves::1,`); anything else after '::' is text (`a::b` means `a:: b`). Weights
    are relative (`castle::20 fog::5` is 4:1) and must add up to more than 0. A negative
    weight means less of that part, as MidJourney reads it (`weight_sides`); each is said in
    `notices`. A part of weight 0 adds nothing (weights are relative): it is left out, and
    said. Raises PromptError, quoting the part as typed, for an empty part, a weight that is
    no number, no part with a weight above 0, or weights that add up to 0 or less. `typed`:
    the prompt as the member typed it (before links, tags and alternations were read), which
    the notices quote from (default: `text`).
    """
    flat = " ".join((typed if typed is not None else text).split())
    chunks = text.split("::")
    if len(chunks) == 1:
        return (PromptPart(text),)

    parts = []
    typed_parts: list[str] = []  # each part's text and weight as typed, for refusals
    # each part as a notice names it: its text and its weight quoted apart, as each is in the
    # input (a parameter may stand between them: "fog --ar 2:1 ::0"); a text Pintor rewrote
    # ("[a|b]" read as "a, b", said) by its weight alone
    named: list[str] = []

    def name(part: str, number: str) -> str:
        weight = quote("::" + number)
        return f"{quote(part)} ({weight})" if part in flat else f"the part before {weight}"

    pending = chunks[0]
    for chunk in chunks[1:]:
        glued = re.split(r"\s", chunk, maxsplit=1)[0]  # what is glued to '::' (maybe nothing)
        number = glued.rstrip(",;")
        if number and not _WEIGHT_RE.fullmatch(number):
            glued = number = ""  # "a::b": the text after '::' starts right away
        weight = _parse_weight(number, " ".join(pending.split())) if number else 1.0
        parts.append(_make_part(pending, weight, "::" + number, typed_parts[-1] if typed_parts else None))
        typed_parts.append(" ".join(f"{pending}::{number}".split()))
        named.append(name(parts[-1].text, number))
        pending = chunk[len(glued):]
    if pending.strip():
        parts.append(_make_part(pending, 1.0, "", None))
        typed_parts.append(" ".join(pending.split()))
        named.append(quote(parts[-1].text) if parts[-1].text in flat else "the last part")

    if not any(part.weight > 0 for part in parts):
        listed = ", ".join(quote(as_typed) for as_typed in typed_parts)
        raise PromptError(f"No part of your multi-prompt has a weight above 0 ({listed}): at least one part must "
                          "say what to draw, with a positive weight; a negative weight means less of that part "
                          "(as --no does) and a weight of 0 adds nothing (e.g. still life::1 fruit::-0.5).")
    zero = [name for part, name in zip(parts, named, strict=True) if part.weight == 0]
    if zero:
        one = len(zero) == 1
        notices.append(f"Left out {', '.join(zero)}: a weight of 0 adds none of {'it' if one else 'them'} "
                       "(weights are relative).")
        typed_parts = [as_typed for part, as_typed in zip(parts, typed_parts, strict=True) if part.weight != 0]
        named = [name for part, name in zip(parts, named, strict=True) if part.weight != 0]
        parts = [part for part in parts if part.weight != 0]
    total = sum(part.weight for part in parts)
    if not total > 0:
        listed = ", ".join(quote(as_typed) for as_typed in typed_parts)
        raise PromptError(f"The weights of {listed} add up to {total:g}; "
                          "they must add up to more than 0: a negative part means less of it and cannot outweigh "
                          "the rest (e.g. castle::1 fog::-0.5).")
    lessened = [name for part, name in zip(parts, named, strict=True) if part.weight < 0]
    if lessened:
        one = len(lessened) == 1
        notices.append(f"Read {', '.join(lessened)} as less of {'it' if one else 'each'}, as --no does: "
                       f"{'it goes' if one else 'they go'} to the negative side (::-{NO_WEIGHT:g} beside parts "
                       "weighing 1 counts as much as --no).")
    if len(parts) == 1:
        # A lone part's weight has nothing to be relative to.
        return (PromptPart(parts[0].text),)
    return tuple(parts)


@dataclass(frozen=True)
class WeightSides:
    """A multi-prompt read as MidJourney reads its weights (weight_sides).

    `positive`: (text, share) of each part with a weight ≥ 0, the shares adding up to 1 (or
    nothing, for a request without text); `negative`: (text, share) of the --no list (first,
    share 1 before scaling) and of each negative part, the shares adding up to 1 at most;
    `rest` = 1 − their sum: the share of the model's own empty negative."""

    positive: tuple[tuple[str, float], ...]
    negative: tuple[tuple[str, float], ...]

    @property
    def rest(self) -> float:
        return max(0.0, 1.0 - sum(share for _, share in self.negative))

    @property
    def plain_negative(self) -> str | None:
        """The negative side as one text when it is one: "" for none, the text when one text
        has it all (a --no list alone, or one part at -NO_WEIGHT of the positive weight or
        beyond it); None when it is a mix, which the engine makes of embeddings."""
        if not self.negative:
            return ""
        if len(self.negative) == 1 and self.negative[0][1] >= 1.0:
            return self.negative[0][0]
        return None


def weight_sides(parts: Sequence[tuple[str, float]], negative: str = "") -> WeightSides:
    """Split a request's parts ((text, weight), …) and its --no list into the two sides of
    classifier-free guidance, as MidJourney reads a negative weight ("less of this", as --no).

    The positive side mixes the parts of weight ≥ 0 by weight / P, where P is their total. On
    the negative side the --no list counts 1 and a part of weight −m counts (m / P) / NO_WEIGHT
    (so `x::-0.5` beside weights adding up to 1 counts as `--no x`); when these add up to more
    than 1 they are scaled to add up to 1, else the model's empty negative takes the rest.
    E.g. `still life::1 fruit::-0.25` → positive (still life, 1), negative (fruit, 0.5) and
    rest 0.5. Returns WeightSides. Raises ValueError when parts are given but none is
    positive (parse_prompt refuses those prompts first)."""
    positive = [(text, weight) for text, weight in parts if weight >= 0]
    total = sum(weight for _, weight in positive)
    if parts and not total > 0:
        raise ValueError("a multi-prompt needs a part with a positive weight")
    counted = ([(negative, 1.0)] if negative else []) + [
        (text, -weight / total / NO_WEIGHT) for text, weight in parts if weight < 0]
    scale = max(1.0, sum(share for _, share in counted))
    return WeightSides(positive=tuple((text, weight / total) for text, weight in positive),
                       negative=tuple((text, share / scale) for text, share in counted))


def positive_parts(parts: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    """The parts ((text, weight), …) that say what to draw: those of weight ≥ 0, in order (a
    negative part means less of it: weight_sides)."""
    return [(text, weight) for text, weight in parts if weight >= 0]


def _make_part(text: str, weight: float, marker: str, before: str | None) -> PromptPart:
    """A part of a multi-prompt: its text (spaces tidied) and weight. `marker`: the '::' and
    weight typed after it; `before`: the part typed before it (None: it is the first), to name
    an empty one."""
    text = " ".join(text.split())
    if not text:
        where = f"after {quote(before)}" if before is not None else "at the start"
        raise PromptError(f"A part of your multi-prompt is empty: {quote(marker or '::')} {where} has no text "
                          "before it. Write some text before each '::' (e.g. castle::2 fog::0.5).")
    return PromptPart(text, weight)


def _parse_weight(glued: str, part: str) -> float:
    """The weight typed after '::' (`glued`) for the part whose text is `part` (named when it
    is refused)."""
    weight = float(glued)
    if not math.isfinite(weight):
        where = f" after {quote(part)}" if part else ""
        raise PromptError(f"The weight {quote('::' + glued)}{where} is too large to use: weights are "
                          "relative, so small numbers say the same (e.g. castle::2 fog::0.5).")
    return weight + 0.0  # turns -0.0 into 0.0


# --------------------------------------------------------------------------
# Stable Diffusion emphasis: (word:1.3), ((word)), [word]
# --------------------------------------------------------------------------

# "(word:1.3)"; not "(ratio 16:9)": a weight follows a colon that does not follow a digit
_EXPLICIT_WEIGHT_RE = re.compile(r"(?<![0-9]):\s*(" + _NUMBER_RE.pattern + r")\s*$")


def has_emphasis(text: str) -> bool:
    """Whether a text uses Stable Diffusion emphasis: any weighted or doubled parentheses or
    square brackets. Single (parentheses) alone are prose, as in MidJourney prompts."""
    segments = emphasis_segments(text)
    return any(weight != 1.0 for _, weight in segments) and (
        "((" in text or "[" in text or bool(re.search(r"(?<![0-9]):\s*[0-9.]+\s*\)", text)))


def emphasis_segments(text: str) -> tuple[tuple[str, float], ...]:
    """A text's fragments with AUTOMATIC1111's emphasis weights.

    `(x)` multiplies x's weight by 1.1, `[x]` divides it by 1.1, `(x:1.3)` sets it to 1.3 times
    the enclosing weight; `\\(` is a literal parenthesis; brackets without a partner are text.
    Returns ((fragment, weight), …) whose fragments, joined with spaces, are the plain words.
    Never raises.
    """
    segments: list[tuple[str, float]] = []

    def add(fragment: str, weight: float) -> None:
        fragment = " ".join(fragment.split())
        if not fragment:
            return
        if segments and segments[-1][1] == weight:
            segments[-1] = (segments[-1][0] + " " + fragment, weight)
        else:
            segments.append((fragment, weight))

    def walk(start: int, end: int, weight: float) -> None:
        i, buffer = start, ""
        while i < end:
            char = text[i]
            if char == "\\" and i + 1 < end and text[i + 1] in "()[]":
                buffer += text[i + 1]
                i += 2
                continue
            if char in "([":
                close = _partner(text, i, end)
                if close is not None:
                    add(buffer, weight)
                    buffer = ""
                    inner_end, factor = close, (EMPHASIS_STEP if char == "(" else 1 / EMPHASIS_STEP)
                    if char == "(":
                        explicit = _EXPLICIT_WEIGHT_RE.search(text, i + 1, close)
                        if explicit:
                            inner_end, factor = explicit.start(), float(explicit[1])
                    walk(i + 1, inner_end, weight * factor)
                    i = close + 1
                    continue
            buffer += char
            i += 1
        add(buffer, weight)

    walk(0, len(text), 1.0)
    return tuple((fragment, round(weight, 4)) for fragment, weight in segments)


def _partner(text: str, start: int, end: int) -> int | None:
    """The index of the bracket closing the one at `start` (same kind, nesting counted)."""
    opening = text[start]
    closing = ")" if opening == "(" else "]"
    depth, i = 0, start
    while i < end:
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == opening:
            depth += 1
        elif char == closing:
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def plain_text(text: str) -> str:
    """A text with its emphasis markup removed (for models that read only plain words), and
    the escapes of literal brackets read ("makima \\(chainsaw man\\)": "makima (chainsaw man)"),
    as the weighted path reads them."""
    if has_emphasis(text):
        return " ".join(fragment for fragment, _ in emphasis_segments(text))
    return _ESCAPED_BRACKET_RE.sub(r"\1", text)


_ESCAPED_BRACKET_RE = re.compile(r"\\([()\[\]])")


# --------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------


def format_weight(weight: float) -> str:
    """A weight as Pintor writes it back: the shortest text that reads as the same float
    (repr), without a trailing ".0" (2.0 → "2", -0.5 → "-0.5")."""
    text = repr(float(weight))
    return text[:-2] if text.endswith(".0") else text


_format_weight = format_weight


def _format_part(part: PromptPart) -> str:
    # "a:" + "::2" would read back as "a" + ":::2"; a space keeps them apart.
    separator = " ::" if part.text.endswith(":") else "::"
    return f"{part.text}{separator}{_format_weight(part.weight)}"


def format_parameters(p: ParsedPrompt) -> str:
    """The parameters the member gave, canonically: "--ar 16:9 --seed 7 --no people --v 6"."""
    known = [f"--{param.name}" if param.flag else f"--{param.name} {param.format(getattr(p, param.field))}"
             for param in _param_table(MAX_STEPS).values() if param.name in p.given]
    chosen = [f"--{name} {value}".rstrip() for name, value in p.selectors]
    return " ".join(known + chosen)


_PARAMETER_START = re.compile(r"\s+(?=--[A-Za-z])")  # "--ar 3:2 --no a b" → "--ar 3:2", "--no a b"


def edit_parameters(parameters: str, changes: dict[str, str | None]) -> str:
    """A canonical parameter string ("--ar 3:2 --no people --model x", `format_parameters`)
    with each named parameter (canonical name, no dashes) set to its new canonical text
    ("--no cars", "--tile") or, for None, removed: what a job that changes or drops a
    parameter of the job it comes from shows. Parameters keep the table's order."""
    chunks = [chunk for chunk in _PARAMETER_START.split(parameters.strip()) if chunk]
    named: dict[str, str] = {}
    for chunk in chunks:  # a parameter given once per value (--lora a --lora b) stays whole
        name = chunk.split()[0][2:].lower()
        named[name] = f"{named[name]} {chunk}" if name in named else chunk
    for name, text in changes.items():
        if text is None:
            named.pop(name, None)
        else:
            named[name] = text
    order = list(_param_table(MAX_STEPS))
    return " ".join(named[name] for name in sorted(named, key=lambda n: order.index(n) if n in order else len(order)))


def without_loras(parameters: str, names: Collection[str]) -> str:
    """A canonical parameter string (`format_parameters`) without the --lora of each LoRA named
    in `names` (in any case, whatever weight it was given with): what a job shows when it does
    not use those LoRAs. The other parameters, the other LoRAs included, are kept as they were."""
    dropped = {name.lower() for name in names}
    chunks = [chunk for chunk in _PARAMETER_START.split(parameters.strip()) if chunk]
    return " ".join(chunk for chunk in chunks if not (
        chunk.split()[0].lower() == "--lora" and len(chunk.split()) > 1
        and chunk.split()[1].split(":")[0].lower() in dropped))


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
