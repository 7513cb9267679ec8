"""What the worker side tells the front end about a job. Small, typed and picklable: they
cross a process boundary now and may cross a network later."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ImageFile:
    path: str
    width: int
    height: int
    seed: int
    sha256: str
    flagged: bool = False  # by the NSFW check: blurred, to be shown behind a spoiler


@dataclass(frozen=True)
class Queued:
    job_id: int
    position: int  # 1 = next to run


@dataclass(frozen=True)
class Started:
    job_id: int
    notices: tuple[str, ...] = ()  # e.g. what the text encoder had to cut from the prompt


@dataclass(frozen=True)
class Progress:
    job_id: int
    step: int
    total: int
    preview: bytes | None = None  # a small PNG of the grid forming, every few steps


@dataclass(frozen=True)
class Done:
    job_id: int
    images: tuple[ImageFile, ...]
    grid: ImageFile
    notices: tuple[str, ...] = field(default=())


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
