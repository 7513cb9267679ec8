"""Waiting on events with timeouts (never sleep-and-hope)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from generation.events import Event

TIMEOUT_S = 90.0  # generous: the machine running the tests may be busy


async def collect_until(stream: AsyncIterator[Event], stop: Callable[[Event], bool],
                        timeout: float = TIMEOUT_S) -> list[Event]:
    """Events of `stream` up to and including the first one for which `stop` is true."""
    events: list[Event] = []

    async def run() -> None:
        async for event in stream:
            events.append(event)
            if stop(event):
                return
        raise AssertionError(f"the stream ended before the awaited event; got {events}")

    try:
        await asyncio.wait_for(run(), timeout)
    except TimeoutError:
        raise AssertionError(f"no awaited event within {timeout} s; got {events}") from None
    return events


class EventLog:
    """Reads a queue's one event stream in the background and lets tests wait on any job's events."""

    def __init__(self, stream: AsyncIterator[Event]):
        self.events: list[Event] = []
        self._changed = asyncio.Event()
        self.task = asyncio.create_task(self._read(stream))

    async def _read(self, stream: AsyncIterator[Event]) -> None:
        async for event in stream:
            self.events.append(event)
            self._changed.set()
        self._changed.set()

    def of(self, job_id: int) -> list[Event]:
        return [e for e in self.events if e.job_id == job_id]

    async def wait_for(self, job_id: int, kind: type | tuple[type, ...], where: Callable[[Event], bool] | None = None,
                       timeout: float = TIMEOUT_S) -> Event:
        """The first event of `job_id` that is a `kind` (and for which `where` is true), already
        seen or still to come."""
        async def run() -> Event:
            while True:
                found = next((e for e in self.of(job_id)
                              if isinstance(e, kind) and (where is None or where(e))), None)
                if found is not None:
                    return found
                if self.task.done():
                    raise AssertionError(f"the event stream ended; job {job_id} had {self.of(job_id)}")
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(run(), timeout)
        except TimeoutError:
            raise AssertionError(f"no {kind} for job {job_id} within {timeout} s; "
                                 f"it had {self.of(job_id)}") from None
