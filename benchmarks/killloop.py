"""Kill loop: the real `pintor run` process (front end and worker) SIGKILLed at random moments
while members' jobs are queued and running; after the last restart every job is delivered
exactly once, with its recorded seed.

    python benchmarks/killloop.py                  # 20 kills, 10 members, seed 1
    python benchmarks/killloop.py --kills 5 --seed 7 --keep /tmp/kl

Each round: every member sends `/imagine … --seed S` (S drawn from the seeded RNG and
recorded), then the whole process group is SIGKILLed after a random delay (same RNG, printed)
and `pintor run` starts again on the same database and data folder. After the last kill the
bot runs until every stored job is finished and posted. Checked then, from the emulator's
messages and the SQLite file: each job stored has exactly one result message, naming its job
and its recorded seed; its row is done with four image rows of that seed whose files exist;
no temp file is left in the data folder; every member told "queued" has a stored job.
`tests/test_reliability_killloop.py` runs a short version (3 kills) in the suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.discord_emulator import DiscordEmulator, Interaction  # noqa: E402

TOKEN = "MTIz.kill-loop-bot-token.secret"
QUEUED_TEXT = re.compile(r"queued — position \d+|starting…|generating|step \d+", re.IGNORECASE)
JOB_IN_RESULT = re.compile(r"seed (\d+) · [^·]+ · job (\d+)")


@dataclass
class Sent:
    """One /imagine a member sent: who, the seed asked for, and what the member saw."""
    member: int
    seed: int
    interaction: Interaction
    round: int

    @property
    def told_queued(self) -> bool:
        original = self.interaction.original
        return original is not None and bool(QUEUED_TEXT.search(original["content"])) or bool(
            original and original["attachments"] and original["components"])


@dataclass
class KillLoopReport:
    kills: int
    rng_seed: int
    # each kill: when (after the start / after a job ran), the delay (s), the jobs' statuses then
    kills_at: list[tuple[str, float, dict[str, int]]] = field(default_factory=list)
    jobs: int = 0  # stored
    told_queued: int = 0
    delivered_once: int = 0
    restart_s: list[float] = field(default_factory=list)  # process start → gateway ready
    drain_s: float = 0.0  # last start → every job posted
    problems: list[str] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        restart = sorted(self.restart_s)
        median = restart[len(restart) // 2] if restart else 0.0
        kills = "; ".join(f"{delay:.2f} s {when} ({', '.join(f'{n} {s}' for s, n in statuses.items())})"
                          for when, delay, statuses in self.kills_at)
        return (f"kill loop (rng seed {self.rng_seed}): {self.kills} SIGKILLs: {kills}.\n{self.jobs} jobs stored, "
                f"{self.told_queued} members told 'queued', {self.delivered_once} delivered exactly once; "
                f"restart to gateway ready: median {median:.1f} s; last start to all posted {self.drain_s:.1f} s; "
                f"problems: {self.problems or 'none'}")


def write_tiny_registry(folder: Path) -> Path:
    """A tiny random-weight SD 1.x pipeline (tests/tiny_models.py) and a models.toml naming it
    at a native 64 px, two steps: the cheapest real grid."""
    from tests.tiny_models import build_sd

    model = build_sd(folder / "tiny-sd")
    registry = folder / "models.toml"
    registry.write_text(f'default = "tiny-sd"\n\n[models.tiny-sd]\nsource = "{model}"\nfamily = "sd"\n'
                        'native_side = 64\nsteps = 2\nguidance = 5.0\n', encoding="utf-8")
    return registry


def bot_env(emu: DiscordEmulator, workdir: Path, registry: Path, **extra: str) -> dict[str, str]:
    """The environment of `pintor run` against the emulator, as an admin sets it up."""
    data = workdir / "data"
    return os.environ | {
        "DISCORD_TOKEN": TOKEN, "DISCORD_API_BASE": emu.api_base, "DISCORD_GATEWAY_URL": emu.gateway_url,
        "DISCORD_GUILD_IDS": str(emu.guild_id), "PINTOR_MODELS": str(registry), "PINTOR_DEVICE": "cpu",
        "PINTOR_DATA_DIR": str(data), "DATABASE_URL": f"sqlite+aiosqlite:///{data / 'pintor.db'}",
        "PINTOR_LOG_LEVEL": "INFO", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
    } | extra


async def start_bot(env: dict[str, str], workdir: Path, log_file: Path) -> asyncio.subprocess.Process:
    """`pintor run` in a new session (its own process group, so one killpg reaches the worker
    it spawns too), its output into `log_file`."""
    with log_file.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "run", env=env, cwd=workdir, stdout=out,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True)


async def kill_group(process: asyncio.subprocess.Process) -> None:
    """SIGKILL `pintor run` and every process of its group (the worker), and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    await process.wait()
    # the worker may take a moment to be reaped by init: wait until the group is empty
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        await asyncio.sleep(0.05)


def stored_jobs(database: Path) -> dict[int, dict]:
    """Every job row with its images, read with plain sqlite3 (not Pintor's code)."""
    with sqlite3.connect(database) as db:
        db.row_factory = sqlite3.Row
        jobs = {row["id"]: dict(row) | {"images": []}
                for row in db.execute("SELECT id, user_id, status, request, message_id, error FROM jobs")}
        for row in db.execute('SELECT job_id, "index", path, seed FROM images ORDER BY job_id, "index"'):
            jobs[row["job_id"]]["images"].append(dict(row))
    return jobs


def status_counts(database: Path) -> dict[str, int]:
    """How many jobs are in each status, with "done" split by whether the result was posted."""
    if not database.exists():
        return {}
    counts: dict[str, int] = {}
    for job in stored_jobs(database).values():
        status = job["status"] if job["status"] != "done" or job["message_id"] else "done, not posted"
        counts[status] = counts.get(status, 0) + 1
    return counts


async def wait_running(database: Path, *, timeout_s: float) -> None:
    """Until some job's row says running (polled: no request announces it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not status_counts(database).get("running"):
        await asyncio.sleep(0.05)


async def kill_loop(*, kills: int, rng_seed: int, workdir: Path, registry: Path, members: int = 10,
                    delay_s: tuple[float, float] = (0.0, 3.0), drain_timeout_s: float = 300.0,
                    say: Callable[[str], None] = print) -> KillLoopReport:
    """Run the kill loop; returns what it measured and every broken promise in `problems`.

    `delay_s`: the range (seconds, uniform) of each round's kill after the round's commands
    were sent, or after a job of the round began to run (chosen at random per round); each
    kill, and the jobs' statuses at that moment, are in the report."""
    rng = random.Random(rng_seed)
    report = KillLoopReport(kills=kills, rng_seed=rng_seed)
    sent: list[Sent] = []
    member_ids: list[int] = []
    async with DiscordEmulator() as emu:
        env = bot_env(emu, workdir, registry)
        member_ids = [emu._snowflake() for _ in range(members)]
        database = workdir / "data" / "pintor.db"
        process = None
        try:
            for round_ in range(kills + 1):
                log_file = workdir / f"run-{round_}.log"
                report.logs.append(log_file)
                started = time.monotonic()
                process = await start_bot(env, workdir, log_file)
                await emu.wait_ready(timeout=120)
                await emu._wait(lambda: emu.commands.get(emu.guild_id), 60)  # synced
                report.restart_s.append(time.monotonic() - started)
                for member in member_ids:
                    seed = rng.randrange(1, 2**31)
                    inter = await emu.slash("imagine", {"prompt": f"a lighthouse, member {member % 1000} "
                                                                  f"--seed {seed}"}, user_id=member)
                    sent.append(Sent(member, seed, inter, round_))
                if round_ == kills:
                    break
                # Half the kills at a random moment after the start (jobs queued, the worker
                # starting), half at a random moment after a job began to run.
                when = rng.choice(("after start", "after a job ran"))
                delay = round(rng.uniform(*delay_s), 2)
                if when == "after a job ran":
                    await wait_running(database, timeout_s=60)
                await asyncio.sleep(delay)
                statuses = status_counts(database)
                await kill_group(process)
                report.kills_at.append((when, delay, statuses))
                say(f"round {round_}: killed {delay} s {when}; jobs then {statuses}; "
                    f"{sum(s.told_queued for s in sent)}/{len(sent)} told queued so far")
            drain_started = time.monotonic()

            def all_posted() -> bool:
                jobs = stored_jobs(database)
                return bool(jobs) and all(j["status"] in ("done", "failed", "cancelled")
                                          and (j["message_id"] is not None or j["status"] != "done")
                                          for j in jobs.values())

            deadline = time.monotonic() + drain_timeout_s
            while not all_posted():
                if time.monotonic() > deadline:
                    report.problems.append(f"not all jobs finished and posted within {drain_timeout_s} s")
                    break
                await asyncio.sleep(0.5)
            report.drain_s = time.monotonic() - drain_started
            await asyncio.sleep(1.0)  # a second post of a job, if there were one, would arrive now
            check(report, emu, stored_jobs(database), sent, workdir / "data")
        finally:
            if process is not None and process.returncode is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), 60)
                except TimeoutError:
                    await kill_group(process)
    return report


def check(report: KillLoopReport, emu: DiscordEmulator, jobs: dict[int, dict], sent: list[Sent],
          data: Path) -> None:
    """Every promise, from the emulator's messages and the database rows."""
    results: dict[int, list[tuple[int, int]]] = {}  # job id → [(message id, seed shown)]
    for message_id, message in emu.messages.items():
        if message["attachments"] and message["components"] and (m := JOB_IN_RESULT.search(message["content"])):
            results.setdefault(int(m[2]), []).append((message_id, int(m[1])))
    report.jobs = len(jobs)
    report.told_queued = sum(s.told_queued for s in sent)
    seeds_stored: dict[tuple[int, int], int] = {}
    for job_id, job in sorted(jobs.items()):
        seed = json.loads(job["request"])["seed"]
        seeds_stored[(job["user_id"], seed)] = job_id
        posted = results.get(job_id, [])
        if job["status"] != "done":
            report.problems.append(f"job {job_id} ended {job['status']}: {job['error']}")
            continue
        if len(posted) != 1:
            report.problems.append(f"job {job_id} was posted {len(posted)} times")
            continue
        if posted[0][1] != seed or job["message_id"] != posted[0][0]:
            report.problems.append(f"job {job_id}: posted {posted[0]}, recorded seed {seed}, "
                                   f"message {job['message_id']}")
            continue
        images = job["images"]
        if len(images) != 4 or any(not (data / "images" / i["path"]).is_file() and not Path(i["path"]).is_file()
                                   for i in images) or images[0]["seed"] != seed:
            report.problems.append(f"job {job_id}: images {images}")
            continue
        report.delivered_once += 1
    for s in sent:
        if s.told_queued and (s.member, s.seed) not in seeds_stored:
            report.problems.append(f"member {s.member} was told 'queued' for seed {s.seed}: no job stored")
    temp = [str(p) for p in data.rglob("*.tmp")]
    if temp:
        report.problems.append(f"temp files left: {temp}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1, help="the RNG seed of the kill delays and job seeds")
    parser.add_argument("--keep", type=Path, help="a folder to work in and keep (logs, database, pictures)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        registry = write_tiny_registry(workdir / "models")
        report = asyncio.run(kill_loop(kills=args.kills, rng_seed=args.seed, workdir=workdir,
                                       registry=registry, members=args.members))
    print(report.summary())
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
