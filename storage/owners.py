"""Who holds which jobs: front ends (owners) with a lease that a heartbeat renews.

A front end registers under a name ("bot" for `pintor run`: one per database; "cli-<host>-<pid>"
for a `pintor` job verb or Python), beats every `LEASE_S / 3` seconds, and stamps the jobs it
queues with its name. At start it queues again only the unfinished jobs whose owner is gone:
no owner, itself (a restart), an owner whose lease ran out, or one on this host whose process
has ended. So a `pintor imagine` beside a running `pintor run` never runs the bot's jobs.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from storage.models import UNFINISHED, Job, Owner, utcnow

LEASE_S = 15.0  # an owner silent this long is gone (it beats every LEASE_S / 3)


def this_host() -> str:
    return socket.gethostname()[:100]


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, alive
    return True


def is_alive(owner: Owner, now: datetime, lease_s: float = LEASE_S) -> bool:
    """Whether `owner` still holds its jobs: its lease runs, and on this host its process lives
    and is another one (one process runs one front end: an owner row of this very process is
    an earlier one that was never closed, e.g. after a crash that a test plays)."""
    if owner.heartbeat_at < now - timedelta(seconds=lease_s):
        return False
    if owner.host == this_host():
        return owner.pid != os.getpid() and _process_alive(owner.pid)
    return True


class OwnerStore:
    """The owners table and the jobs' owner column, over an async engine."""

    def __init__(self, engine: AsyncEngine, lease_s: float = LEASE_S):
        self.session = async_sessionmaker(engine, expire_on_commit=False)
        self.lease_s = lease_s

    async def alive(self, *, exclude: str | None = None) -> list[Owner]:
        """The owners whose lease runs (and, on this host, whose process lives), but `exclude`."""
        now = utcnow()
        async with self.session() as session:
            owners = (await session.scalars(select(Owner))).all()
        return [o for o in owners if o.name != exclude and is_alive(o, now, self.lease_s)]

    async def register(self, name: str, queue: str) -> None:
        """Hold jobs under `name` from now (replacing a gone owner's row of that name)."""
        async with self.session.begin() as session:
            owner = await session.get(Owner, name)
            if owner is None:
                session.add(Owner(name=name, queue=queue, host=this_host(), pid=os.getpid(), heartbeat_at=utcnow()))
            else:
                owner.queue, owner.host, owner.pid, owner.heartbeat_at = queue, this_host(), os.getpid(), utcnow()

    async def beat(self, name: str) -> None:
        """Renew the lease of `name`."""
        async with self.session.begin() as session:
            await session.execute(update(Owner).where(Owner.name == name).values(heartbeat_at=utcnow()))

    async def remove(self, name: str) -> None:
        """`name` holds nothing any more: its unfinished jobs are anyone's at their next start."""
        async with self.session.begin() as session:
            await session.execute(delete(Owner).where(Owner.name == name))

    async def claim_unfinished(self, name: str, user_id: int | None = None) -> Sequence[Job]:
        """The unfinished jobs (of `user_id`, or all) whose owner is gone, now owned by `name`;
        oldest first. Jobs of a live owner other than `name` are left to it."""
        keep = [o.name for o in await self.alive(exclude=name)]
        async with self.session.begin() as session:
            query = select(Job).where(Job.status.in_(UNFINISHED)).order_by(Job.id)
            if keep:
                query = query.where(or_(Job.owner.is_(None), Job.owner.not_in(keep)))
            if user_id is not None:
                query = query.where(Job.user_id == user_id)
            jobs = (await session.scalars(query)).all()
            if jobs:
                await session.execute(update(Job).where(Job.id.in_([j.id for j in jobs])).values(owner=name))
            return jobs
