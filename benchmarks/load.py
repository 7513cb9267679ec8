"""Load: many /imagine in bursts while the worker is busy, through the Discord emulator and the
real bot (PintorBot, Studio, worker process, SQLite) — every one acknowledged within Discord's
3 seconds, each queued or refused with its limit, none dropped — and fair order measured.

    python benchmarks/load.py                          # 500 /imagine from 50 members, 5 bursts
    python benchmarks/load.py --members 20 --per-member 5 --bursts 5

Prints the time to acknowledge (defer) at p50/p99/max, how many were queued and refused (with
the limits named), and the fairness figure: a member's first job, sent behind 100 queued jobs of
another member, starts after how many other jobs. `tests/test_reliability_load.py` runs a short
version (100 from 20 members) on the suite's shared bot. Jobs left are cancelled at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from generation.events import Event, Started  # noqa: E402
from tests.discord_emulator import DiscordEmulator, Interaction  # noqa: E402

QUEUED = re.compile(r"queued — position \d+|starting…|generating|step \d+", re.IGNORECASE)
DEFERRED = 5


@dataclass
class LoadReport:
    sent: int = 0
    ack_s: list[float] = field(default_factory=list)  # dispatch → callback, per interaction
    late: int = 0  # acknowledged after 3 s, or never
    queued: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # the refusal texts (their limit)
    dropped: int = 0  # neither queued nor refused within the wait
    behind: int = 0  # fairness: the jobs of one member queued before a newcomer's first
    newcomer_position: int | None = None  # fairness: the position in line the newcomer was told
    jobs_before_newcomer: int | None = None  # fairness: jobs waiting in line when it came that started first
    problems: list[str] = field(default_factory=list)

    def percentile(self, p: float) -> float:
        ordered = sorted(self.ack_s)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")

    def summary(self) -> str:
        refused = "; ".join(f"{n}× {text[:90]!r}" for text, n in self.refused.most_common(3))
        return (f"{self.sent} /imagine: acknowledged p50 {self.percentile(50) * 1000:.0f} ms, p99 "
                f"{self.percentile(99) * 1000:.0f} ms, max {max(self.ack_s, default=0) * 1000:.0f} ms; "
                f"{self.late} late; {self.queued} queued, {sum(self.refused.values())} refused ({refused}); "
                f"{self.dropped} dropped. Fairness: a newcomer behind {self.behind} jobs of one member was told "
                f"position {self.newcomer_position}; {self.jobs_before_newcomer} of the jobs waiting in line when it "
                f"came started before it. Problems: {self.problems or 'none'}")


def outcome(inter: Interaction) -> str | None:
    """"queued", the refusal's text, or None while neither is known."""
    for message in inter.followups:
        if message["flags"] & 64:  # ephemeral: a refusal only the member sees
            return message["content"]
    original = inter.original
    if original is not None and (QUEUED.search(original["content"]) or original["attachments"]):
        return "queued"
    return None


async def bursts(emu: DiscordEmulator, *, members: list[int], per_member: int, rounds: int,
                 channel_id: int | None = None, report: LoadReport) -> list[Interaction]:
    """`rounds` bursts; in each, every member sends per_member/rounds /imagine at once."""
    sent: list[Interaction] = []
    each = max(1, per_member // rounds)
    for round_ in range(rounds):
        sends = [emu.slash("imagine", {"prompt": f"load {member % 997} round {round_} #{i} --seed {i + 1}"},
                           user_id=member, channel_id=channel_id)
                 for member in members for i in range(each)]
        sent += await asyncio.gather(*sends)
        await asyncio.sleep(0.2)  # the next burst
    report.sent += len(sent)
    return sent


async def settle(emu: DiscordEmulator, sent: list[Interaction], report: LoadReport, *, wait_s: float) -> None:
    """Wait until each interaction is acknowledged and queued or refused; count each."""
    with contextlib.suppress(TimeoutError):
        await emu._wait(lambda: all(i.callbacks and outcome(i) for i in sent), wait_s)
    for inter in sent:
        if not inter.callbacks:
            report.late += 1
            report.dropped += 1
            continue
        ack = inter.callbacks[0]["at"] - inter.dispatched_at
        report.ack_s.append(ack)
        report.late += ack >= 3
        result = outcome(inter)
        if result is None:
            report.dropped += 1
        elif result == "queued":
            report.queued += 1
        else:
            report.refused[re.sub(r"\d+", "N", result)] += 1


async def fairness(emu: DiscordEmulator, studio: Any, *, behind: int = 100) -> tuple[int, int]:
    """Member A queues `behind` jobs (in a server allowing that many), then member B one: how
    many of A's jobs that were waiting in line when B's job was queued (the queue's own
    positions, read right after B was answered: not the stored statuses, which lag behind the
    worker when the bot is saturated) start before B's; and the position in line B was told
    ("queued — position N"; 0 for "starting"). Returns (position told, jobs started before it)."""
    guild_id, channel_id = emu.add_guild()
    await studio.update_rules(guild_id, max_queued_per_member=behind + 10)
    first, newcomer = emu._snowflake(), emu._snowflake()
    started: list[tuple[int, datetime]] = []  # (job id, when its Started event was stored)

    async def listen(job_id: int, event: Event) -> None:
        if isinstance(event, Started):
            started.append((job_id, datetime.now(UTC)))

    studio.listeners.append(listen)
    try:
        many = [await emu.slash("imagine", {"prompt": f"crowd #{i} --seed {i + 1}"}, user_id=first,
                                channel_id=channel_id) for i in range(behind)]
        await emu._wait(lambda: all(outcome(i) for i in many), 120)
        inter = await emu.slash("imagine", {"prompt": "the newcomer --seed 7"}, user_id=newcomer, channel_id=channel_id)
        await emu._wait(lambda: outcome(inter) is not None, 30)
        [job] = await studio.unfinished_jobs(newcomer)
        waiting = {j.id for j in await studio.unfinished_jobs(first) if (await studio.queue_position(j.id) or 0) > 0}
        deadline = time.monotonic() + 300
        while job.id not in [job_id for job_id, _ in started]:
            assert time.monotonic() < deadline, "the newcomer's job never started"
            await asyncio.sleep(0.05)
        first_edit = next((r.json.get("content", "") for r in emu.requests if r.method == "PATCH"
                      and f"/{inter.token}/" in r.path and r.json and r.json.get("content")), "")
        told = re.search(r"position (\d+)", first_edit)  # what the first edit said (later ones move on)
        order = [job_id for job_id, _ in started]
        return int(told[1]) if told else 0, len(waiting & set(order[:order.index(job.id)]))
    finally:
        studio.listeners.remove(listen)


async def cancel_all(studio: Any, members: list[int]) -> None:
    """Cancel every job these members still have (the load is over)."""
    for member in members:
        for job in await studio.unfinished_jobs(member):
            if not await studio.cancel(job.id):
                await studio.store.mark_cancelled(job.id)


async def measure(emu: DiscordEmulator, studio: Any, *, members: int, per_member: int, rounds: int,
                  behind: int = 100, channel_id: int | None = None) -> LoadReport:
    """The load on a running bot (emulator `emu`, its `studio`); every job it made cancelled after."""
    report = LoadReport()
    ids = [emu._snowflake() for _ in range(members)]
    try:
        sent = await bursts(emu, members=ids, per_member=per_member, rounds=rounds, channel_id=channel_id,
                            report=report)
        await settle(emu, sent, report, wait_s=60)
        await cancel_all(studio, ids)  # fairness is measured between two members alone
        if behind:
            report.behind = behind
            report.newcomer_position, report.jobs_before_newcomer = await fairness(emu, studio, behind=behind)
    finally:
        everyone = ids + [int(i.payload["member"]["user"]["id"]) for i in emu.interactions.values()
                          if "member" in i.payload]
        await cancel_all(studio, sorted(set(everyone)))
    if report.late:
        report.problems.append(f"{report.late} acknowledged after 3 s")
    if report.dropped:
        report.problems.append(f"{report.dropped} neither queued nor refused")
    return report


async def main_async(args: argparse.Namespace) -> LoadReport:
    from bot.app import running_bot
    from tests.discord_harness import harness_settings
    from tests.tiny_models import build_sd

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = build_sd(folder / "tiny-sd")
        registry = folder / "models.toml"
        registry.write_text(f'default = "tiny-sd"\n\n[models.tiny-sd]\nsource = "{model}"\nfamily = "sd"\n'
                            'native_side = 64\nsteps = 2\n', encoding="utf-8")
        async with DiscordEmulator() as emu:
            settings = harness_settings(emu, folder, registry, pintor_metrics_port=None)
            async with running_bot(settings, guild_ready_timeout=0) as running:
                await asyncio.wait_for(running.bot.wait_until_ready(), 60)
                return await measure(emu, running.studio, members=args.members, per_member=args.per_member,
                                     rounds=args.bursts, behind=args.behind)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--per-member", type=int, default=10)
    parser.add_argument("--bursts", type=int, default=5)
    parser.add_argument("--behind", type=int, default=100, help="jobs of one member before a newcomer's (0: skip)")
    report = asyncio.run(main_async(parser.parse_args()))
    print(report.summary())
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
