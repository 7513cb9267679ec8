"""Discord's size limits, and member-written text echoed safely inside Pintor's messages.

Every message builder (results, progress, errors, /info, /history, /show, admin replies) puts
its fixed parts (the mention, "seed · model · job N", the status line) and the member's text
through here:

- `compose(*parts)` joins fixed text and `Echo(member_text)` pieces into a message content of
  at most 2,000 characters. Only the echoed pieces are shortened (the longest first, each
  ending in "…"), never the fixed parts; a message whose fixed parts alone are too long is cut
  at its end as a last resort.
- An echo is cleaned, escaped and isolated (`echo`):
  * control characters and line breaks become spaces; Unicode's explicit direction controls
    (LRE … RLO, PDF, LRI … PDI, LRM, RLM, ALM) and invisible characters (zero-width space,
    word joiner, BOM, Hangul fillers, tag characters outside emoji flags) are removed: they
    could reorder or hide the fixed parts of the line that carries the member's mention.
    ZWJ/ZWNJ stay (emoji sequences, Persian and Indic scripts need them);
  * text with right-to-left letters is wrapped in a first-strong isolate (U+2068 … U+2069),
    so that it cannot reorder the fixed text around it; left-to-right text is left without
    invisible characters (members copy prompts back from results);
  * markdown that could restyle it or make a masked link or a mention is escaped;
  * URLs are wrapped in <…>, which Discord never unfurls into a preview. (The
    SUPPRESS_EMBEDS flag would do it too, but discord.py cannot set it when it edits an
    interaction's response, which is how most of Pintor's messages are written.)
  * shortening cuts the member's text, then escapes it: an escape is never split.

Lengths are counted in UTF-16 code units (`length`): Discord does not say how it counts, and
UTF-16 units are never fewer than code points, so a message that fits here fits there.
Limits from https://discord.com/developers/docs/resources/message (content, embeds) and
…/interactions/message-components (buttons, select menus).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CONTENT = 2000  # a message's content
EMBED_TITLE = 256
EMBED_DESCRIPTION = 4096
EMBED_FIELDS = 25
FIELD_NAME = 256
FIELD_VALUE = 1024
EMBED_FOOTER = 2048
EMBED_AUTHOR = 256
EMBEDS_TOTAL = 6000  # title + description + field names and values + footer + author, all embeds together
EMBEDS_PER_MESSAGE = 10
BUTTON_LABEL = 80
CUSTOM_ID = 100
SELECT_OPTIONS = 25
SELECT_OPTION_TEXT = 100  # an option's label, value and description each
SELECT_PLACEHOLDER = 150

ELLIPSIS = "…"
MORE = "… and {} more"

FSI, PDI = "\u2068", "\u2069"  # first-strong isolate, pop directional isolate
_DIRECTION_CONTROLS = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_INVISIBLE = "\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b\u2060-\u2064\u206a-\u206f\u3164\ufeff\uffa0"
_REMOVED = re.compile(f"[{_DIRECTION_CONTROLS}{_INVISIBLE}]")
_FLAG_TAGS = re.compile("\U0001f3f4[\U000e0020-\U000e007e]+\U000e007f")  # 🏴 + tags: England, Scotland, Wales
_TAGS = re.compile("[\U000e0000-\U000e007f]")
_SPACES = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# A URL as Discord's markdown finds one (it does not end in . , : ; " ' ) ]), without <>
_URL = re.compile(r"https?://[^\s<>]*[^\s<>.,:;\"')\]]", re.IGNORECASE)
_MARKDOWN = re.compile(r"([\\*_~|`\[\]<])")  # what could restyle it, make a masked link or a <@mention>
_RIGHT_TO_LEFT = {"R", "AL", "AN"}
_DANGLING = re.compile("[\\s\u200c\u200d\ufe0e\ufe0f\U0001f3f4\U000e0020-\U000e007f]+$")


def length(text: str) -> int:
    """Characters as Discord may count them: UTF-16 code units (an emoji outside the BMP is 2)."""
    return len(text) + sum(1 for c in text if ord(c) > 0xFFFF)


def clean(text: str) -> str:
    """Member text without direction controls, invisible characters or line breaks."""
    kept, last = [], 0
    for flag in _FLAG_TAGS.finditer(text):  # emoji flags keep their tags; all other tags go
        kept += [_TAGS.sub("", _REMOVED.sub("", text[last:flag.start()])), flag.group()]
        last = flag.end()
    kept.append(_TAGS.sub("", _REMOVED.sub("", text[last:])))
    return _SPACES.sub(" ", "".join(kept))


def _escape(text: str) -> str:
    """Markdown escaped, URLs wrapped in <…> (unescaped inside: Discord shows them as written)."""
    out, last = [], 0
    for url in _URL.finditer(text):
        out += [_MARKDOWN.sub(r"\\\1", text[last:url.start()]), f"<{url.group()}>"]
        last = url.end()
    out.append(_MARKDOWN.sub(r"\\\1", text[last:]))
    return "".join(out)


def _prefix(cleaned: str, n: int) -> str:
    """The first `n` characters, without a space, joiner or emoji modifier left dangling at the end."""
    return _DANGLING.sub("", cleaned[:n])


def _render(cleaned: str, cut: bool) -> str:
    text = _escape(cleaned) + (ELLIPSIS if cut else "")
    if any(unicodedata.bidirectional(c) in _RIGHT_TO_LEFT for c in cleaned):
        text = FSI + text + PDI
    return text


def echo(text: str, max_chars: int | None = None) -> str:
    """Member text as it can be shown inside a message: cleaned, escaped, links unfurl-proof,
    isolated if it has right-to-left letters, and at most `max_chars` long (UTF-16 units)
    with "…" where it was cut; "" when not even "…" fits."""
    cleaned = clean(text).strip()
    full = _render(cleaned, cut=False)
    if max_chars is None or length(full) <= max_chars:
        return full
    low, high = 0, len(cleaned)  # the longest prefix whose rendering fits
    while low < high:
        middle = (low + high + 1) // 2
        if length(_render(_prefix(cleaned, middle), cut=True)) <= max_chars:
            low = middle
        else:
            high = middle - 1
    shown = _render(_prefix(cleaned, low), cut=True)
    return shown if length(shown) <= max_chars else ""


@dataclass(frozen=True)
class Echo:
    """A piece of member-written text inside `compose`: shortened first when a message is too long."""

    text: str


def compose(*parts: str | Echo | None, limit: int = CONTENT) -> str:
    """Fixed text and echoed member text joined into at most `limit` characters.

    The room left by the fixed parts is shared among the echoes: an echo shorter than its
    share keeps all of it and leaves the rest to the others; longer ones are cut to an equal
    share. If the fixed parts alone are longer than `limit`, the end of the message is cut.
    """
    pieces = [p for p in parts if p]
    fixed = sum(length(p) for p in pieces if isinstance(p, str))
    echoes = [i for i, p in enumerate(pieces) if isinstance(p, Echo)]
    full = {i: echo(pieces[i].text) for i in echoes}  # type: ignore[union-attr]  # (echoes are Echo)
    budget = dict(zip(echoes, shares([length(full[i]) for i in echoes], limit - fixed), strict=False))
    rendered = []
    for i, piece in enumerate(pieces):
        if isinstance(piece, Echo):
            rendered.append(full[i] if length(full[i]) <= budget[i] else echo(piece.text, budget[i]))
        else:
            rendered.append(piece)
    return clip("".join(rendered), limit)


def shares(wanted: Sequence[int], room: int) -> list[int]:
    """`room` characters shared among texts that want `wanted` each: a text that wants less
    than an equal share gets what it wants and leaves the rest to the others ("water-filling")."""
    given = [0] * len(wanted)
    room = max(0, room)
    for n, i in enumerate(sorted(range(len(wanted)), key=lambda i: wanted[i])):
        given[i] = min(wanted[i], room // (len(wanted) - n))
        room -= given[i]
    return given


def clip(text: str, limit: int) -> str:
    """Pintor's own text cut to `limit` characters, ending in "…" where it was cut."""
    if length(text) <= limit:
        return text
    text = text[:max(0, limit - 1)]  # never too few: a code point is one or two units
    while length(text) > limit - 1:
        text = text[:-1]
    return text + ELLIPSIS


def plain(text: str, limit: int = CONTENT) -> str:
    """A sentence of Pintor's that may quote member text (an error message): no direction
    controls or invisible characters, bare URLs wrapped in <…>, at most `limit` long."""
    text = _REMOVED.sub("", _TAGS.sub("", text))
    text = re.sub(r"(?<!<)" + _URL.pattern, lambda m: f"<{m.group()}>", text, flags=re.IGNORECASE)
    return clip(text, limit)


def listing(lines: Sequence[str], limit: int, *, empty: str = "none", separator: str = "\n") -> str:
    """As many `lines` as fit in `limit` characters, then "… and N more" for the rest."""
    if not lines:
        return empty
    shown: list[str] = []
    for n, line in enumerate(lines):
        rest = len(lines) - n - 1
        tail = separator + MORE.format(rest) if rest else ""
        candidate = separator.join([*shown, line])
        if length(candidate + tail) > limit:
            break
        shown.append(line)
    else:
        return separator.join(shown)
    return clip(separator.join([*shown, MORE.format(len(lines) - len(shown))]), limit)


def embeds_length(embeds: Iterable[Mapping[str, Any]]) -> int:
    """The characters Discord counts toward the 6,000 of all of a message's embeds (from their
    dict form: title, description, field names and values, footer text, author name)."""
    total = 0
    for embed in embeds:
        total += length(embed.get("title") or "") + length(embed.get("description") or "")
        total += sum(length(f.get("name") or "") + length(f.get("value") or "") for f in embed.get("fields") or [])
        total += length((embed.get("footer") or {}).get("text") or "")
        total += length((embed.get("author") or {}).get("name") or "")
    return total
