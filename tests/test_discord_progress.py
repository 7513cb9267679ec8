"""bot.progress.ProgressReporter: throttled, coalesced progress edits; the final event returned."""

from __future__ import annotations

import asyncio

from bot.progress import ProgressReporter, status_line
from generation.events import Done, Failed, ImageFile, Progress, Queued, Started

INTERVAL_S = 0.5


class Screen:
    """What a message would show: each edit, with the loop time it went out."""

    def __init__(self, fail_first: int = 0):
        self.edits: list[tuple[str, bytes | None, float]] = []
        self.fail_first = fail_first
        self.changed = asyncio.Event()

    async def show(self, text: str, preview: bytes | None) -> None:
        if self.fail_first:
            self.fail_first -= 1
            raise RuntimeError("Discord said no")
        self.edits.append((text, preview, asyncio.get_running_loop().time()))
        self.changed.set()

    async def wait_edits(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self.edits) < count:
                self.changed.clear()
                await self.changed.wait()


def stream(queue: asyncio.Queue):
    async def events():
        while (event := await queue.get()) is not None:
            yield event
    return events()


def describe(event) -> str | None:
    return status_line(event)


DONE = Done(1, (), ImageFile("grid.png", 2, 2, 0, ""))


async def test_status_lines():
    assert status_line(Queued(1, 3)) == "⏳ queued — position 3"
    assert status_line(Started(1)) == "🎨 starting…"
    assert status_line(Progress(1, 2, 5)) == "🎨 generating 40 %"
    assert status_line(Progress(1, 3, 4), doing="describing") == "🎨 describing 75 %"
    assert status_line(DONE) is None


async def test_a_burst_of_steps_becomes_one_edit_with_the_newest_state_and_preview():
    screen, queue = Screen(), asyncio.Queue()
    reporter = ProgressReporter(screen.show, interval_s=INTERVAL_S)
    for step in range(1, 6):
        queue.put_nowait(Progress(1, step, 10, preview=b"preview-2" if step == 2 else None))
    await reporter.show_now("queued")
    task = asyncio.create_task(reporter.run(stream(queue), describe))
    await screen.wait_edits(2)
    (first, _, first_at), (text, preview, at) = screen.edits
    assert first == "queued"
    assert text == "🎨 generating 50 %" and preview == b"preview-2"  # step 5's text, step 2's preview kept
    assert at - first_at >= INTERVAL_S * 0.95
    queue.put_nowait(DONE)
    assert await task == DONE
    assert len(screen.edits) == 2  # the final is the caller's to show


async def test_the_final_event_comes_back_at_once_and_pending_steps_are_dropped():
    screen, queue = Screen(), asyncio.Queue()
    reporter = ProgressReporter(screen.show, interval_s=INTERVAL_S)
    await reporter.show_now("queued")
    for event in (Started(1), Progress(1, 1, 2), Failed(1, "out of memory")):
        queue.put_nowait(event)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await reporter.run(stream(queue), describe) == Failed(1, "out of memory")
    assert loop.time() - started < INTERVAL_S  # did not wait for the next allowed edit
    assert [text for text, _, _ in screen.edits] == ["queued"]


async def test_a_step_is_shown_while_the_next_event_is_awaited():
    screen, queue = Screen(), asyncio.Queue()
    reporter = ProgressReporter(screen.show, interval_s=INTERVAL_S)
    task = asyncio.create_task(reporter.run(stream(queue), describe))
    queue.put_nowait(Queued(1, 2))
    await screen.wait_edits(1)  # the first edit goes out at once
    queue.put_nowait(Progress(1, 1, 4))
    await screen.wait_edits(2)  # and the next after the interval, with no further event
    assert [text for text, _, _ in screen.edits] == ["⏳ queued — position 2", "🎨 generating 25 %"]
    assert screen.edits[1][2] - screen.edits[0][2] >= INTERVAL_S * 0.95
    queue.put_nowait(DONE)
    assert await task == DONE


async def test_a_failed_edit_does_not_stop_the_reporting():
    screen, queue = Screen(fail_first=1), asyncio.Queue()
    reporter = ProgressReporter(screen.show, interval_s=0.05)
    await reporter.show_now("queued")  # refused
    task = asyncio.create_task(reporter.run(stream(queue), describe))
    queue.put_nowait(Progress(1, 1, 2))
    await screen.wait_edits(1)
    assert screen.edits[0][0] == "🎨 generating 50 %"
    queue.put_nowait(None)  # the stream ends without a final event
    assert await task is None
