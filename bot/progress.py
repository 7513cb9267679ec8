"""A job's progress as edits of one message, throttled.

Discord does not publish its edit limits (in practice about five edits per five seconds per
channel), and a member needs no more than one update every couple of seconds. So the first
state goes out at once, then at most one edit per `interval_s`, carrying the newest state:
steps in between are coalesced, and the newest preview picture is kept until it is shown.
The final state is not shown here: the caller sends it at once, always.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from generation.events import FINAL_EVENTS, Event, Progress, Queued, Started

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 2.0

Show = Callable[[str, bytes | None], Awaitable[None]]  # (text, a new preview PNG or None)


def status_line(event: Event, *, doing: str = "generating") -> str | None:
    """What a progress message says about a job now (`doing`: what its steps do, "describing"
    for a /describe); None for events that change nothing."""
    if isinstance(event, Queued):
        return queued_line(event.position)
    if isinstance(event, Started):
        return "🎨 starting…"
    if isinstance(event, Progress):
        percent = round(100 * event.step / event.total) if event.total else 0
        return f"🎨 {doing} {percent} %"
    return None


def queued_line(position: int) -> str:
    return f"⏳ queued — position {position}" if position > 0 else "🎨 starting…"


class ProgressReporter:
    """Shows one job's events through `show`, throttled; returns the final event unshown."""

    def __init__(self, show: Show, *, interval_s: float = PROGRESS_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self._show = show
        self.interval_s = interval_s
        self._clock = clock
        self._text: str | None = None  # the newest state not shown yet
        self._preview: bytes | None = None  # the newest preview not shown yet
        self._last_shown_at = -math.inf

    async def show_now(self, text: str) -> None:
        """Show a state at once (the first one: 'queued — position N')."""
        self._text = text
        await self._flush()

    async def run(self, events: AsyncIterator[Event], describe: Callable[[Event], str | None]) -> Event | None:
        """Show `describe(event)` for each event until the final one, which is returned.
        None if the stream ended without one."""
        iterator = aiter(events)
        next_event: asyncio.Future = asyncio.ensure_future(anext(iterator))
        try:
            while True:
                timeout = None
                if self._text is not None:
                    timeout = max(0.0, self._last_shown_at + self.interval_s - self._clock())
                # The next event is awaited in its own task, so that a due edit can go out
                # while it waits (an async generator must not be cancelled mid-step).
                done, _ = await asyncio.wait({next_event}, timeout=timeout)
                if not done:
                    await self._flush()
                    continue
                try:
                    event = next_event.result()
                except StopAsyncIteration:
                    return None
                if isinstance(event, FINAL_EVENTS):
                    return event
                text = describe(event)
                if text is not None:
                    self._text = text
                if isinstance(event, Progress) and event.preview:
                    self._preview = event.preview
                next_event = asyncio.ensure_future(anext(iterator))
        finally:
            next_event.cancel()

    async def _flush(self) -> None:
        text, preview = self._text, self._preview
        self._text = self._preview = None
        if text is None:
            return
        try:
            await self._show(text, preview)
        except Exception:  # noqa: BLE001 - a lost progress edit is not worth stopping for
            log.warning("a progress update could not be shown", exc_info=True)
        self._last_shown_at = self._clock()
