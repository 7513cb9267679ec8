"""The real `pintor run` (the bot, against the Discord emulator) on a Redis queue with no
worker of its own (PINTOR_LOCAL_WORKERS=0), served by two real `pintor worker` processes that
share no folder and no database with it; tiny models at 64 px, CPU, a throwaway redis-server.

One module-wide setup (starting the processes costs seconds), three steps in order:
twenty /imagine from five members are each posted once; the bot stopped (SIGTERM, then
SIGKILL) and started again while the workers keep running loses and doubles nothing; and
/cancel stops a job that runs in a worker process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from tests.discord_emulator import DiscordEmulator
from tests.discord_harness import acked, is_result, job_id_in
from tests.redis_server import redis_server

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 180.0  # for every job of a step to be posted, on a loaded 2-core machine
MEMBERS = [1_400_000_000_000_000_000 + n for n in range(5)]

pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Setup:
    emu: DiscordEmulator
    folder: Path
    env: dict[str, str]
    bot: asyncio.subprocess.Process | None = None
    logs: list[str] = field(default_factory=list)
    _output: asyncio.Task[bytes] | None = None

    @property
    def database(self) -> Path:
        return self.folder / "bot" / "pintor.db"

    async def start_bot(self) -> None:
        self.emu._ready.clear()
        self.bot = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "run", env=self.env, cwd=self.folder,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        assert self.bot.stdout is not None
        self._output = asyncio.create_task(self.bot.stdout.read())
        ready = asyncio.create_task(self.emu.wait_ready(timeout=120))
        await asyncio.wait([ready, self._output], return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():  # it ended before it connected: say why
            ready.cancel()
            raise AssertionError(f"`pintor run` ended: {(await self._output).decode(errors='replace')}")
        ready.result()
        await self.until(lambda: self.emu.commands.get(self.emu.guild_id))  # commands synced: it serves

    async def stop_bot(self, sig: signal.Signals) -> int:
        assert self.bot is not None and self._output is not None
        self.bot.send_signal(sig)
        try:
            returncode = await asyncio.wait_for(self.bot.wait(), 60)
        except TimeoutError:
            self.bot.kill()
            raise AssertionError(f"`pintor run` did not stop on {sig.name} within 60 s") from None
        finally:  # kept beside the test's files (pytest keeps the last runs' temp folders)
            self.logs.append((await self._output).decode(errors="replace"))
            (self.folder / f"bot-{len(self.logs)}.log").write_text(self.logs[-1])
        self.bot = None
        return returncode

    def jobs(self) -> dict[int, tuple[int, str]]:
        """Job id → (member, status), read from the bot's SQLite file."""
        with sqlite3.connect(self.database, timeout=30) as db:
            return {row[0]: (row[1], row[2]) for row in db.execute("SELECT id, user_id, status FROM jobs")}

    def results(self) -> Counter[int]:
        """Job id → how many messages in the channel show its result (picture and buttons)."""
        return Counter(job_id for m in list(self.emu.messages.values())
                       if is_result(m) and (job_id := job_id_in(m)) is not None)

    async def until(self, condition, timeout: float = TIMEOUT_S) -> None:
        """Until `condition()` holds: looked at after each request the bot makes, and twice a
        second (the database changes without a request)."""
        try:
            async with asyncio.timeout(timeout):
                while not condition():
                    try:
                        await self.emu._wait(condition, 0.5)
                    except TimeoutError:
                        pass
        except TimeoutError:
            raise AssertionError(f"not within {timeout} s; jobs {self.jobs()}, posted {self.results()}") from None

    async def imagine(self, member: int, prompt: str) -> None:
        inter = await self.emu.slash("imagine", {"prompt": prompt}, user_id=member)
        assert (await acked(inter))["type"] == 5  # deferred: within Discord's 3 s


def base_env(folder: Path, registry_file: Path, data: str) -> dict[str, str]:
    return os.environ | {
        "PINTOR_MODELS": str(registry_file), "PINTOR_DEVICE": "cpu", "PINTOR_DATA_DIR": str(folder / data),
        "DATABASE_URL": f"sqlite+aiosqlite:///{folder / data / 'pintor.db'}", "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT), "PINTOR_LOCAL_WORKERS": "0", "PINTOR_LOG_LEVEL": "INFO"}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def setup(small_registry_file: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Setup]:
    folder = tmp_path_factory.mktemp("redis-bot")
    with redis_server(folder / "redis") as url:
        workers = []
        for name in ("w1", "w2"):  # each with its own data folder and no database: another machine
            env = base_env(folder, small_registry_file, name) | {
                "PINTOR_QUEUE_URL": url, "PINTOR_WORKER_NAME": name,
                "DATABASE_URL": f"sqlite+aiosqlite:///{folder / 'nowhere' / 'x.db'}"}
            workers.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot.cli", "worker", env=env, cwd=folder,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL))
        try:
            async with DiscordEmulator() as emu:
                env = base_env(folder, small_registry_file, "bot") | {
                    "PINTOR_QUEUE_URL": url, "DISCORD_TOKEN": "test-token", "DISCORD_API_BASE": emu.api_base,
                    "DISCORD_GATEWAY_URL": emu.gateway_url, "DISCORD_GUILD_IDS": str(emu.guild_id)}
                setup = Setup(emu, folder, env)
                await setup.start_bot()
                try:
                    yield setup
                finally:
                    if setup.bot is not None:
                        await setup.stop_bot(signal.SIGTERM)
        finally:
            for worker in workers:
                if worker.returncode is None:
                    worker.send_signal(signal.SIGTERM)
            for worker in workers:
                await asyncio.wait_for(worker.wait(), 60)
        assert [w.returncode for w in workers] == [0, 0]
        assert not (folder / "nowhere").exists()  # the workers never opened a database


async def test_twenty_jobs_of_five_members_are_each_posted_once(setup: Setup):
    for n in range(20):
        await setup.imagine(MEMBERS[n % 5], f"a lighthouse number {n} --steps 2 --seed {n}")
    await setup.until(lambda: len(setup.results()) == 20)
    jobs = setup.jobs()
    assert len(jobs) == 20 and {status for _, status in jobs.values()} == {"done"}
    assert Counter(member for member, _ in jobs.values()) == Counter({m: 4 for m in MEMBERS})
    assert set(setup.results().values()) == {1}
    # the bot's own data folder holds every picture: they came through Redis
    assert len(list((setup.folder / "bot" / "images" / "jobs").glob("*/grid.png"))) == 20


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
async def test_the_bot_restarted_while_workers_run_loses_and_doubles_nothing(setup: Setup, sig: signal.Signals):
    before = set(setup.jobs())
    for n in range(6):
        await setup.imagine(MEMBERS[n % 5], f"a harbour at dusk {n} --steps 40 --seed {n}")
    await setup.until(lambda: len(setup.jobs()) == len(before) + 6)
    new = set(setup.jobs()) - before
    # stopped while some of them run on the workers and others wait in the bot's queue
    await setup.until(lambda: any(status == "running" for job, (_, status) in setup.jobs().items() if job in new))
    assert any(status != "done" for job, (_, status) in setup.jobs().items() if job in new)
    returncode = await setup.stop_bot(sig)
    assert returncode == (0 if sig == signal.SIGTERM else -signal.SIGKILL)

    await setup.start_bot()
    await setup.until(lambda: new <= set(setup.results()))
    jobs = setup.jobs()
    assert {jobs[job][1] for job in new} == {"done"}
    results = setup.results()
    assert {job: results[job] for job in new} == {job: 1 for job in new}  # posted once each
    assert set(results.values()) == {1}  # and nothing earlier posted again


async def test_cancel_stops_a_job_running_in_a_worker_process(setup: Setup):
    member = MEMBERS[0]
    before = set(setup.jobs())
    await setup.imagine(member, "a slow glacier --steps 150 --seed 3")
    await setup.until(lambda: len(setup.jobs()) == len(before) + 1)
    [job] = set(setup.jobs()) - before
    await setup.until(lambda: setup.jobs()[job][1] == "running")
    cancel = await setup.emu.slash("cancel", {"job": job}, user_id=member)
    answer = await acked(cancel, kind=4)
    assert answer["data"]["content"] == f"Job {job} is cancelled."
    await setup.until(lambda: setup.jobs()[job][1] == "cancelled")
    assert setup.results()[job] == 0
    # the workers are free again: the next job runs and is posted (this test's own jobs only)
    await setup.imagine(member, "a quick fox --steps 2 --seed 4")
    await setup.until(lambda: len(setup.jobs()) == len(before) + 2)
    [after] = set(setup.jobs()) - before - {job}
    await setup.until(lambda: setup.results()[after] == 1)
