"""What the worker side tells the front end about a job. Small, typed, frozen dataclasses,
each with a JSON codec and a type tag (`event_to_json`/`event_from_json`): they cross a
process boundary (a pipe) and a network (Redis) in the same shape."""

from __future__ import annotations

import base64
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ImageFile:
    """A picture the worker made, by its file-store key (`generation.files.FileStore`), e.g.
    "jobs/12/1.png"; `data` is its PNG bytes where the picture travels with the event (a
    worker on another machine), None where it is already in the front end's file store."""

    key: str
    width: int
    height: int
    seed: int
    sha256: str
    flagged: bool = False  # by the NSFW check: blurred, to be shown behind a spoiler
    data: bytes | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Queued:
    job_id: int
    position: int  # 1 = next to run


@dataclass(frozen=True)
class Started:
    job_id: int
    notices: tuple[str, ...] = ()  # e.g. what the text encoder had to cut from the prompt
    worker: str = ""  # the name of the worker that runs it (Redis workers say it)


@dataclass(frozen=True)
class Progress:
    job_id: int
    step: int
    total: int
    preview: bytes | None = None  # a small PNG of the grid forming, every few steps


@dataclass(frozen=True)
class Done:
    job_id: int
    images: tuple[ImageFile, ...]  # none for a /describe: its grid is the picture it described
    grid: ImageFile
    notices: tuple[str, ...] = field(default=())
    # the control image a ControlNet job was steered by ("jobs/12/control.png"), shown beside the grid
    control: ImageFile | None = None
    captions: tuple[str, ...] = field(default=())  # /describe: the prompts written for the picture


@dataclass(frozen=True)
class Failed:
    job_id: int
    reason: str  # says what went wrong in words a member understands


@dataclass(frozen=True)
class Cancelled:
    job_id: int


@dataclass(frozen=True)
class Interrupted:
    """The worker stopped (shutdown) before the job ended: it stays queued for the next start."""

    job_id: int


Event = Queued | Started | Progress | Done | Failed | Cancelled | Interrupted
FINAL_EVENTS = (Done, Failed, Cancelled, Interrupted)

# the type tag of each event on the wire
EVENT_TYPES: dict[str, type[Event]] = {
    "queued": Queued, "started": Started, "progress": Progress, "done": Done,
    "failed": Failed, "cancelled": Cancelled, "interrupted": Interrupted,
}
_TAGS = {kind: tag for tag, kind in EVENT_TYPES.items()}


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text, validate=True)


def _image_to_dict(image: ImageFile) -> dict[str, Any]:
    fields = {f.name: getattr(image, f.name) for f in dataclasses.fields(image)}
    fields["data"] = _b64(image.data)
    return fields


def _image_from_dict(data: dict[str, Any]) -> ImageFile:
    return ImageFile(key=str(data["key"]), width=int(data["width"]), height=int(data["height"]),
                     seed=int(data["seed"]), sha256=str(data["sha256"]), flagged=bool(data.get("flagged", False)),
                     data=_unb64(data.get("data")))


def event_to_json(event: Event) -> str:
    """One event as a JSON object with its type tag ("type": "done", …); bytes (a Progress
    preview, an ImageFile's data) as base64 strings. Inverse: event_from_json."""
    data: dict[str, Any] = {"type": _TAGS[type(event)]}
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        if isinstance(value, ImageFile):
            value = _image_to_dict(value)
        elif f.name == "images":
            value = [_image_to_dict(image) for image in value]
        elif isinstance(value, bytes):
            value = _b64(value)
        elif isinstance(value, tuple):
            value = list(value)
        data[f.name] = value
    return json.dumps(data)


def event_from_json(text: str | bytes) -> Event:
    """The event `event_to_json` wrote. Raises ValueError for text that is not such an event
    (unknown type tag, missing or unknown fields, bad base64)."""
    try:
        data = json.loads(text)
        kind = EVENT_TYPES[data.pop("type")]
        if kind is Done:
            return Done(job_id=int(data["job_id"]), images=tuple(_image_from_dict(i) for i in data["images"]),
                        grid=_image_from_dict(data["grid"]), notices=tuple(data.get("notices", ())),
                        control=_image_from_dict(data["control"]) if data.get("control") else None,
                        captions=tuple(str(c) for c in data.get("captions", ())))
        if kind is Progress:
            return Progress(int(data["job_id"]), int(data["step"]), int(data["total"]), _unb64(data.get("preview")))
        if kind is Started:
            return Started(int(data["job_id"]), tuple(data.get("notices", ())), str(data.get("worker", "")))
        return kind(**data)
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as err:
        raise ValueError(f"not a Pintor event: {err}") from err
