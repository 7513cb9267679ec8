"""Queries about jobs and their images. Every function opens its own short transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from storage.models import CANCELLED, DONE, FAILED, QUEUED, RUNNING, UNFINISHED, Image, Job, User, utcnow


@dataclass(frozen=True)
class NewImage:
    path: str
    width: int
    height: int
    seed: int
    sha256: str


class JobStore:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self.session = async_sessionmaker(engine, expire_on_commit=False)

    async def create_job(self, *, user_id: int, user_name: str, kind: str, model: str, prompt: str,
                         request: str, parent_id: int | None = None, parent_index: int | None = None,
                         guild_id: int | None = None, channel_id: int | None = None) -> Job:
        """Store a new job as QUEUED (and its member on first sight); committed on return."""
        async with self.session.begin() as session:
            user = await session.get(User, user_id)
            if user is None:
                session.add(User(id=user_id, name=user_name[:100]))
                await session.flush()  # the member's row first: the job refers to it
            elif user_name and user.name != user_name:
                user.name = user_name[:100]
            job = Job(user_id=user_id, kind=kind, model=model, prompt=prompt, request=request,
                      parent_id=parent_id, parent_index=parent_index, guild_id=guild_id,
                      channel_id=channel_id, status=QUEUED, images=[])
            session.add(job)
        return job

    async def get(self, job_id: int) -> Job | None:
        async with self.session() as session:
            return await session.get(Job, job_id)

    async def unfinished(self) -> Sequence[Job]:
        """Jobs left queued or running (by a crash or a stop), oldest first."""
        async with self.session() as session:
            result = await session.scalars(select(Job).where(Job.status.in_(UNFINISHED)).order_by(Job.id))
            return result.all()

    async def mark_running(self, job_id: int) -> None:
        await self._set(job_id, status=RUNNING, started_at=utcnow())

    async def mark_queued(self, job_id: int) -> None:
        await self._set(job_id, status=QUEUED, started_at=None)

    async def mark_failed(self, job_id: int, reason: str) -> None:
        await self._set(job_id, status=FAILED, error=reason, finished_at=utcnow())

    async def mark_cancelled(self, job_id: int) -> None:
        await self._set(job_id, status=CANCELLED, finished_at=utcnow())

    async def set_message(self, job_id: int, channel_id: int | None, message_id: int | None) -> None:
        await self._set(job_id, channel_id=channel_id, message_id=message_id)

    async def complete(self, job_id: int, images: Sequence[NewImage], grid_path: str,
                       notices: Sequence[str] = ()) -> None:
        """Record a finished job's images (their files are already on disk)."""
        async with self.session.begin() as session:
            job = await session.get(Job, job_id)
            job.images.clear()  # a job run again after a crash replaces what it had
            await session.flush()
            job.images.extend(Image(index=i, path=img.path, width=img.width, height=img.height,
                                    seed=img.seed, sha256=img.sha256)
                              for i, img in enumerate(images, start=1))
            job.status, job.grid_path, job.finished_at = DONE, grid_path, utcnow()
            job.notices = "\n".join(notices) or None

    async def _set(self, job_id: int, **values) -> None:
        async with self.session.begin() as session:
            await session.execute(update(Job).where(Job.id == job_id).values(**values))
