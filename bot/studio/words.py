"""What a job's prompt and links look like to a member: a /blend's label, the words a form
shows to be changed (Remix, Custom Zoom), a link's short name. Pure functions of a `Request`
or a string.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from generation.request import JobKind, Request

FORM_CHARS = 4000  # what a Discord form's text field holds at most (Remix, Custom Zoom)
_BLEND_LABEL = re.compile(r"blend of [0-9]+ images(?:: (?P<words>.*))?", re.DOTALL)


def blend_label(count: int, words: str) -> str:
    """What a /blend's job shows as its prompt: "blend of 2 images: a sunset" (`own_words`
    reads the words back)."""
    return f"blend of {count} images" + (f": {words}" if words else "")


def own_words(request: Request) -> str:
    """The words of a job's prompt as the member wrote them: for a /blend's pictures (the
    blend, its U, V, Zoom…) without the "blend of 2 images" label the blend shows."""
    if request.images or request.kind == JobKind.BLEND:
        if (label := _BLEND_LABEL.fullmatch(request.prompt)) is not None:
            return label["words"] or ""
    return request.prompt


def editable_prompt(request: Request, limit: int = FORM_CHARS) -> str:
    """What a form shows of a job's prompt to be changed (Remix, Custom Zoom): its words (with
    their weights), its --no list and --tile, within `limit` characters: what `Studio.remixed`
    reads back (the model and the picture's settings are the job's and are not shown). Where
    the whole does not fit, the words are cut at a space, never the --no list or --tile; a
    form sent back unchanged makes the job's own request either way (`Studio.remixed`)."""
    tail = " ".join(filter(None, (f"--no {request.negative}" if request.negative else "",
                                  "--tile" if request.tile else "")))
    words = own_words(request)
    room = limit - len(tail) - (1 if tail and words else 0)
    if len(words) > room:
        cut = words[:max(room, 0) + 1]
        words = cut[:cut.rfind(" ")].rstrip() if " " in cut else ""
    return " ".join(filter(None, (words, tail)))[:limit]


def link_name(url: str, limit: int = 60) -> str:
    """A link as messages name it: host and file name without the scheme or query (Discord's
    signed attachment links are long; the scheme would make Discord preview them)."""
    parsed = urlsplit(url)
    path = parsed.path.rstrip("/")
    file = path.rsplit("/", 1)[-1]
    name = f"{parsed.hostname or ''}{'/…/' if path.count('/') > 1 else '/'}{file}" if file else parsed.hostname or url
    return name if len(name) <= limit else name[: limit - 1] + "…"
