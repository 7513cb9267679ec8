"""Load, short (benchmarks/load.py runs 500 from 50 members): 100 /imagine from 20 members in
five bursts on the shared bot while its worker is busy — each acknowledged within Discord's 3
seconds, each queued or refused with the limit it met, none dropped; then fair order: a
member's first job sent behind 30 queued jobs of another member starts within two jobs."""

from __future__ import annotations

import pytest

from benchmarks.load import measure
from tests.discord_harness import Harness

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_hundred_imagines_in_bursts_are_all_answered_in_time_and_fairly(pintor: Harness):
    guild_id, channel_id = pintor.emu.add_guild()  # a server allowing 3 queued jobs per member
    await pintor.studio.update_rules(guild_id, max_queued_per_member=3)
    report = await measure(pintor.emu, pintor.studio, members=20, per_member=5, rounds=5, behind=30,
                           channel_id=channel_id)
    print(report.summary())  # the figures, with -s
    assert report.sent == 100 and report.dropped == 0
    assert report.late == 0 and report.percentile(99) < 3
    assert report.queued + sum(report.refused.values()) == 100 and report.queued >= 60 and report.refused
    assert all("this server allows N" in text for text in report.refused)  # each refusal names its limit
    assert report.newcomer_position is not None and report.newcomer_position <= 2  # next after the running job
    # and no more of the jobs waiting in line when it came start before it than its position
    # said (the queue's positions, not the stored statuses: counting stored "started" events
    # after its job's row, their lag once made it 4)
    assert report.jobs_before_newcomer is not None
    assert report.jobs_before_newcomer <= max(0, report.newcomer_position - 1)
