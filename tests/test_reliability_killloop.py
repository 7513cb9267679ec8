"""Kill loop, short: the real `pintor run` SIGKILLed (with its worker) three times at random
moments while ten members' jobs are queued and running; after the last restart every job is
posted exactly once with its recorded seed, and nothing is left half-written
(benchmarks/killloop.py runs 20 kills; docs/reliability.md has the figures)."""

from __future__ import annotations

import logging
from pathlib import Path

from benchmarks.killloop import TOKEN, kill_loop
from generation.files import FileStore
from tests.secrets_check import SECRETS, LogCollector, leaks, secret

secret(TOKEN)


async def test_three_sigkills_lose_nothing_and_post_nothing_twice(tmp_path: Path, small_registry_file: Path):
    report = await kill_loop(kills=3, rng_seed=3, workdir=tmp_path, registry=small_registry_file,
                             members=10, say=lambda line: None)
    print(report.summary())  # the figures, with -s
    assert report.problems == []
    assert report.jobs >= 10 and report.delivered_once == report.jobs
    assert report.told_queued <= report.jobs
    # the kills met jobs waiting in the queue, not an idle bot
    assert all(statuses.get("queued", 0) + statuses.get("running", 0) > 0 for _, _, statuses in report.kills_at)
    logs = [log.read_text(errors="replace") for log in report.logs]  # every line `pintor run` wrote
    assert "queued again after a restart" in "".join(logs) and not leaks(logs)


def test_a_half_written_file_of_a_job_is_removed_and_only_there(tmp_path: Path):
    store = FileStore(tmp_path)
    store.put("jobs/7/1.png", b"whole")
    (tmp_path / "jobs" / "7" / ".2.png.abc123.tmp").write_bytes(b"half")
    (tmp_path / "jobs" / "8").mkdir()
    (tmp_path / "jobs" / "8" / ".1.png.def456.tmp").write_bytes(b"another job's")
    assert store.remove_partial("jobs/7") == ["jobs/7/.2.png.abc123.tmp"]
    assert store.get("jobs/7/1.png") == b"whole"
    assert (tmp_path / "jobs" / "8" / ".1.png.def456.tmp").exists()
    assert store.remove_partial("jobs/9") == []  # no folder: nothing to do


def test_the_secrets_check_finds_a_token_in_a_log_line_and_a_traceback():
    value = secret("MTIz.a-token-that-leaks.xyz")
    collector = LogCollector()
    logger = logging.getLogger("pintor.leaky")
    logger.propagate = False  # this leak is on purpose: not for the session's check
    logger.addHandler(collector)
    try:
        logger.error("logging in with %s", value)
        try:
            raise RuntimeError(f"401 for token {value}")
        except RuntimeError:
            logger.exception("login failed")
        logger.error("nothing secret here")
    finally:
        logger.removeHandler(collector)
        SECRETS.discard(value)
    assert len(collector.leaked) == 2 and collector.seen == 3
