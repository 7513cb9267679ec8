"""Queries about jobs and their images. Every function opens its own short transaction.

Every method raises what SQLAlchemy raises when the database cannot be used
(sqlalchemy.exc.OperationalError: a locked SQLite file past its 30 s timeout, a server that is
gone); the errors named in a docstring are the ones it raises on purpose. Times are aware UTC
datetimes (storage.models.UTCDateTime); statuses are storage.models' QUEUED … CANCELLED.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from storage.models import MAX_JOB_ID, UNFINISHED, Image, Job, JobStatus, User, utcnow


@dataclass(frozen=True)
class NewImage:
    """One finished image to record: its PNG file (already written), size in pixels, the seed it
    was made from, the file's SHA-256 (hex) and whether the NSFW check flagged it."""

    path: str
    width: int
    height: int
    seed: int
    sha256: str
    flagged: bool = False


class DuplicateJob(Exception):
    """A job with the same result_key exists (queued, running or done): `job` is that job."""

    def __init__(self, job: Job):
        super().__init__(f"job {job.id} has the same result")
        self.job = job


class JobStore:
    """The jobs table and their images, over an async engine (storage.db.open_engine)."""

    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self.session = async_sessionmaker(engine, expire_on_commit=False)

    async def create_job(self, *, user_id: int, user_name: str, kind: str, model: str, prompt: str,
                         request: str, parent_id: int | None = None, parent_index: int | None = None,
                         guild_id: int | None = None, channel_id: int | None = None,
                         private: bool = False, notices: str | None = None,
                         result_key: str | None = None, owner: str | None = None) -> Job:
        """Store a new job as JobStatus.QUEUED (and its member on first sight); committed on return.
        `private`: its result goes only to its author (their private mode when they asked).
        `owner`: the front end that queues it (storage.owners).

        With `result_key`, raises DuplicateJob when a queued, running or done job has the same
        key: the unique index decides, so two writers at once (even two processes) store one.
        """
        if result_key is not None and (existing := await self.by_result_key(result_key)) is not None:
            raise DuplicateJob(existing)
        try:
            return await self._insert_job(user_id, user_name, Job(
                user_id=user_id, kind=kind, model=model, prompt=prompt, request=request, parent_id=parent_id,
                parent_index=parent_index, guild_id=guild_id, channel_id=channel_id, private=private,
                status=JobStatus.QUEUED,
                notices=notices, result_key=result_key, owner=owner, images=[]))
        except IntegrityError:
            existing = await self.by_result_key(result_key) if result_key is not None else None
            if existing is None:
                raise
            raise DuplicateJob(existing) from None

    async def create_finished_job(self, *, user_id: int, user_name: str, kind: str, model: str, prompt: str,
                                  request: str, images: Sequence[NewImage], grid_path: str,
                                  parent_id: int | None = None, parent_index: int | None = None,
                                  guild_id: int | None = None, channel_id: int | None = None,
                                  private: bool = False, result_key: str | None = None) -> Job:
        """Store a job that is done as it is asked for (U: a picture of a grid shown alone, from
        files already on disk), with its images, as JobStatus.DONE in one transaction: never seen
        queued, so a restart has nothing to run for it. With `result_key`, raises DuplicateJob
        as create_job does."""
        if result_key is not None and (existing := await self.by_result_key(result_key)) is not None:
            raise DuplicateJob(existing)
        now = utcnow()
        try:
            return await self._insert_job(user_id, user_name, Job(
                user_id=user_id, kind=kind, model=model, prompt=prompt, request=request, parent_id=parent_id,
                parent_index=parent_index, guild_id=guild_id, channel_id=channel_id, private=private,
                status=JobStatus.DONE, grid_path=grid_path, finished_at=now, result_key=result_key,
                images=[Image(index=i, path=img.path, width=img.width, height=img.height, seed=img.seed,
                              sha256=img.sha256, flagged=img.flagged) for i, img in enumerate(images, start=1)]))
        except IntegrityError:
            existing = await self.by_result_key(result_key) if result_key is not None else None
            if existing is None:
                raise
            raise DuplicateJob(existing) from None

    async def by_result_key(self, result_key: str) -> Job | None:
        """The job holding `result_key` (queued, running or done), or None."""
        async with self.session() as session:
            return await session.scalar(select(Job).where(Job.result_key == result_key))

    async def release_result_key(self, job_id: int) -> None:
        """Let a new job take this one's result_key (e.g. its files are gone)."""
        await self._set(job_id, result_key=None)

    async def _insert_job(self, user_id: int, user_name: str, job: Job) -> Job:
        async with self.session.begin() as session:
            user = await session.get(User, user_id)
            if user is None:
                session.add(User(id=user_id, name=user_name[:100]))
                await session.flush()  # the member's row first: the job refers to it
            elif user_name and user.name != user_name:
                user.name = user_name[:100]
            session.add(job)
        return job

    async def get(self, job_id: int) -> Job | None:
        """The job with its images (loaded eagerly: usable after the session), or None; None too
        for an id no job can have (outside 1…MAX_JOB_ID: a forged button's 18 digits), which
        PostgreSQL would refuse as out of its INTEGER's range instead of finding nothing."""
        if not 0 < job_id <= MAX_JOB_ID:
            return None
        async with self.session() as session:
            return await session.get(Job, job_id)

    async def unfinished(self, user_id: int | None = None) -> Sequence[Job]:
        """Jobs queued or running (or left so by a crash or a stop), oldest first; all members'
        or one member's."""
        query = select(Job).where(Job.status.in_(UNFINISHED)).order_by(Job.id)
        if user_id is not None:
            query = query.where(Job.user_id == user_id)
        async with self.session() as session:
            return (await session.scalars(query)).all()

    async def mark_running(self, job_id: int) -> None:
        """RUNNING since now. A job id that is not stored changes nothing (as for every mark_*)."""
        await self._set(job_id, status=JobStatus.RUNNING, started_at=utcnow())

    async def mark_queued(self, job_id: int) -> None:
        """Back to QUEUED, not started (a job the worker was stopped in, to run again)."""
        await self._set(job_id, status=JobStatus.QUEUED, started_at=None)

    # a failed or cancelled job gave no result: a new job may make it (result_key released)
    async def mark_failed(self, job_id: int, reason: str) -> None:
        await self._set(job_id, status=JobStatus.FAILED, error=reason, finished_at=utcnow(), result_key=None)

    async def mark_cancelled(self, job_id: int) -> None:
        await self._set(job_id, status=JobStatus.CANCELLED, finished_at=utcnow(), result_key=None)

    async def set_message(self, job_id: int, channel_id: int | None, message_id: int | None) -> None:
        """Where the job's result was posted (Discord ids); None, None: nowhere yet."""
        await self._set(job_id, channel_id=channel_id, message_id=message_id)

    async def complete(self, job_id: int, images: Sequence[NewImage], grid_path: str,
                       notices: Sequence[str] = (), captions: Sequence[str] = ()) -> None:
        """Record a finished job's images (their files are already on disk; numbered 1… in the
        order given), the worker's notices, after those the job was stored with, and a
        /describe's prompts (`captions`, stored as a JSON list); the job is DONE. Images it had
        (a job run again after a crash) are replaced. Raises LookupError when no job `job_id`
        is stored."""
        async with self.session.begin() as session:
            job = await session.get(Job, job_id)
            if job is None:
                raise LookupError(f"job {job_id} is not stored")
            job.images.clear()  # a job run again after a crash replaces what it had
            await session.flush()
            job.images.extend(Image(index=i, path=img.path, width=img.width, height=img.height,
                                    seed=img.seed, sha256=img.sha256, flagged=img.flagged)
                              for i, img in enumerate(images, start=1))
            job.status, job.grid_path, job.finished_at = JobStatus.DONE, grid_path, utcnow()
            job.captions = json.dumps(list(captions)) if captions else None
            # the job's own notices (from when it was asked for) first; a re-run adds none twice
            lines = [line for line in (job.notices or "").splitlines() if line]
            lines += [line for line in notices if line not in lines]
            job.notices = "\n".join(lines) or None

    async def history(self, user_id: int, *, offset: int, limit: int) -> tuple[Sequence[Job], int]:
        """A page of a member's jobs, newest first (`offset` jobs skipped, at most `limit`), and
        how many they have in all (index-only queries)."""
        async with self.session() as session:
            total = await session.scalar(select(func.count()).select_from(Job).where(Job.user_id == user_id))
            jobs = await session.scalars(select(Job).where(Job.user_id == user_id)
                                         .order_by(Job.id.desc()).offset(offset).limit(limit))
            return jobs.all(), total or 0

    async def shared_history(self, user_id: int, *, offset: int, limit: int) -> tuple[Sequence[Job], int]:
        """A page of a member's jobs and of every job posted publicly in a server (not private),
        newest first, and how many there are: what the `pintor` CLI, the machine's operator,
        may read."""
        readable = or_(Job.user_id == user_id, (Job.private.is_(False)) & Job.guild_id.is_not(None))
        async with self.session() as session:
            total = await session.scalar(select(func.count()).select_from(Job).where(readable))
            jobs = await session.scalars(select(Job).where(readable).order_by(Job.id.desc())
                                         .offset(offset).limit(limit))
            return jobs.all(), total or 0

    async def count_unfinished(self, user_id: int) -> int:
        """How many of the member's jobs are queued or running (a server's max_queued_per_member)."""
        async with self.session() as session:
            return await session.scalar(select(func.count()).select_from(Job).where(
                Job.user_id == user_id, Job.status.in_(UNFINISHED))) or 0

    async def count_since(self, user_id: int, since: datetime, *, guild_id: int | None = None,
                          free_kinds: Sequence[str] = ()) -> int:
        """Jobs a member asked for since `since`: on the server `guild_id` only, or everywhere
        (servers and DMs) without it. Failed jobs count (the worker ran them); cancelled ones
        only if they had started (one cancelled while queued cost nothing); jobs of `free_kinds`
        (that no worker runs) never."""
        query = select(func.count()).select_from(Job).where(
            Job.user_id == user_id, Job.created_at >= since, Job.kind.not_in(free_kinds),
            or_(Job.status != JobStatus.CANCELLED, Job.started_at.is_not(None)))
        if guild_id is not None:
            query = query.where(Job.guild_id == guild_id)
        async with self.session() as session:
            return await session.scalar(query) or 0

    async def forget_user(self, user_id: int) -> tuple[list[str], list[str]]:
        """Delete a member's jobs, images, settings and user row. Returns the pictures to delete
        as the rows named them (file-store keys: Image.path, Job.grid_path) and the deleted
        jobs' requests (JSON: they name the member's uploads)."""
        async with self.session.begin() as session:
            jobs = (await session.scalars(select(Job).where(Job.user_id == user_id))).all()
            paths = [p for job in jobs for p in [job.grid_path, *(i.path for i in job.images)] if p]
            requests = [job.request for job in jobs]
            ids = [job.id for job in jobs]
            # other members' jobs made from these (V/U of a grid) keep their own pictures
            await session.execute(update(Job).where(Job.parent_id.in_(ids)).values(parent_id=None))
            await session.execute(delete(Image).where(Image.job_id.in_(ids)))
            await session.execute(delete(Job).where(Job.id.in_(ids)))
            await session.execute(delete(User).where(User.id == user_id))
        return paths, requests

    async def refers_to(self, path: str) -> bool:
        """Whether a stored job or image row has the picture `path` (as rows name pictures: a
        file-store key) as its own."""
        async with self.session() as session:
            image = await session.scalar(select(Image.id).where(Image.path == path).limit(1))
            grid = await session.scalar(select(Job.id).where(Job.grid_path == path).limit(1))
            return image is not None or grid is not None

    async def mentioned(self, text: str) -> bool:
        """Whether any job's request contains `text` (e.g. an upload's file name)."""
        async with self.session() as session:
            found = await session.scalar(select(Job.id).where(Job.request.contains(text)).limit(1))
            return found is not None

    async def undelivered(self, since: datetime, limit: int = 100) -> Sequence[Job]:
        """Jobs finished since `since` for a channel whose result was never posted there (no
        message recorded): e.g. done while the front end was stopping. Oldest first."""
        async with self.session() as session:
            result = await session.scalars(select(Job).where(
                Job.status == JobStatus.DONE, Job.channel_id.is_not(None), Job.message_id.is_(None),
                Job.finished_at >= since).order_by(Job.id).limit(limit))
            return result.all()

    async def _set(self, job_id: int, **values: Any) -> None:
        async with self.session.begin() as session:
            await session.execute(update(Job).where(Job.id == job_id).values(**values))
