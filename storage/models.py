"""The tables: members, their jobs, and the images each job made."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


class JobStatus(StrEnum):
    """Where a job is. A StrEnum: stored in `jobs.status` as its plain value."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


UNFINISHED = (JobStatus.QUEUED, JobStatus.RUNNING)  # picked up again when Pintor starts
MAX_JOB_ID = 2**31 - 1  # jobs.id is an INTEGER: 32 bits on PostgreSQL, where a larger id fails the query


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that reads back as an aware UTC datetime on every database: SQLite keeps no
    time zone, so a plain DateTime(timezone=True) returns naive values there (aware ones on
    PostgreSQL), and naive and aware datetimes cannot even be compared."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)  # SQLite stores the wall time: make it UTC's
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)  # Discord user id; 0 = CLI
    name: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_user_id_id", "user_id", "id"), Index("ix_jobs_status", "status"),
                      Index("ix_jobs_user_id_created_at", "user_id", "created_at"),
                      Index("ux_jobs_result_key", "result_key", unique=True))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(16))  # a JobKind: imagine, reroll, variation, upscale, blend, describe…
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), default=None)
    parent_index: Mapped[int | None] = mapped_column(Integer, default=None)  # which image of the parent
    model: Mapped[str] = mapped_column(String(64))
    prompt: Mapped[str] = mapped_column(Text)  # display text, for history
    request: Mapped[str] = mapped_column(Text)  # generation.Request as JSON: enough to run it again
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    notices: Mapped[str | None] = mapped_column(Text, default=None)
    grid_path: Mapped[str | None] = mapped_column(Text, default=None)
    guild_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    channel_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    message_id: Mapped[int | None] = mapped_column(BigInteger, default=None)  # where the result was posted
    # delivered only to its author (private mode: ephemeral, or a DM): nobody else may see it
    private: Mapped[bool] = mapped_column(Boolean, default=False)
    # what makes its result identical to another job's (e.g. "upscale:<member>:<job>:<image>:…"),
    # unique while the job is queued, running or done; None for jobs that never repeat (new seeds)
    result_key: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # the front end (an Owner's name) that queued it; another may queue it again only once that
    # one's lease has run out (storage.owners)
    owner: Mapped[str | None] = mapped_column(String(100), default=None, index=True)
    # /describe: the prompts written for its picture, a JSON list of strings (None for other jobs)
    captions: Mapped[str | None] = mapped_column(Text, default=None)

    @property
    def prompts(self) -> list[str]:
        """The prompts a /describe job wrote (`captions`, read from its JSON); [] for others."""
        return [str(p) for p in json.loads(self.captions)] if self.captions else []

    images: Mapped[list[Image]] = relationship(order_by="Image.index", lazy="selectin",
                                               cascade="all, delete-orphan")


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("job_id", "index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)  # 1–4, as on the U/V buttons
    path: Mapped[str] = mapped_column(Text)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)  # by the NSFW check: blurred, spoilered
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class MemberPreferences(Base):
    """A member's defaults (/settings). None = the server's or model's own default."""

    __tablename__ = "member_settings"  # named when the class was MemberSettings: kept (no migration)

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    model: Mapped[str | None] = mapped_column(String(64), default=None)
    aspect: Mapped[str | None] = mapped_column(String(16), default=None)  # "16:9"
    quality: Mapped[float | None] = mapped_column(Float, default=None)
    stylize: Mapped[int | None] = mapped_column(Integer, default=None)
    private: Mapped[bool] = mapped_column(Boolean, default=False)  # results only to them (ephemeral)
    append: Mapped[str] = mapped_column(Text, default="")  # words and parameters added to every prompt
    # Remix mode: V, 🔄, Zoom Out and Pan open a form with the prompt, to change it before the job runs
    remix: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    @classmethod
    def new(cls, user_id: int) -> MemberPreferences:
        return cls(user_id=user_id, model=None, aspect=None, quality=None, stylize=None, private=False, append="",
                   remix=False)


DEFAULT_MAX_QUEUED = 5  # a new server's limit of jobs one member may have queued or running
DEFAULT_MAX_LORAS = 2  # a new server's limit of LoRAs per job (each one costs loading and memory)


class ServerRules(Base):
    """A server's rules (/pintor-admin). None = no limit / everything allowed."""

    __tablename__ = "guild_settings"  # named when the class was GuildSettings: kept (no migration)

    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    allowed_models: Mapped[str | None] = mapped_column(Text, default=None)  # comma-separated names
    channel_ids: Mapped[str | None] = mapped_column(Text, default=None)  # comma-separated ids
    max_queued_per_member: Mapped[int | None] = mapped_column(Integer, default=None)  # new(): 5
    daily_quota: Mapped[int | None] = mapped_column(Integer, default=None)
    max_steps: Mapped[int | None] = mapped_column(Integer, default=None)
    max_side: Mapped[int | None] = mapped_column(Integer, default=None)
    buttons_author_only: Mapped[bool] = mapped_column(Boolean, default=False)
    nsfw_check: Mapped[bool] = mapped_column(Boolean, default=True)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)  # new jobs refused; queued ones still run
    # unknown prompt parameters refused (True) or ignored with a notice (False, the default)
    strict_parameters: Mapped[bool] = mapped_column(Boolean, default=False)
    # comma-separated LoRA names members may use; None: all configured, "": none
    allowed_loras: Mapped[str | None] = mapped_column(Text, default=None)
    max_loras: Mapped[int | None] = mapped_column(Integer, default=None)  # per job; None: no limit; new(): 2
    # models a provider's API makes (OpenAI's: each picture costs the operator money): refused
    # until an admin opts in (/pintor-admin remote-models)
    remote_models: Mapped[bool] = mapped_column(Boolean, default=False)
    # whether members may steer pictures with a control image (ControlNet); allowed by default
    allow_controlnet: Mapped[bool] = mapped_column(Boolean, default=True)
    # --clip (CLIP guidance) allowed: on by default, as the operator opted in by naming a model's
    # clip_model; admins turn it off where its several-fold run time is not worth the queue
    clip_guidance: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    @classmethod
    def new(cls, guild_id: int) -> ServerRules:
        return cls(guild_id=guild_id, allowed_models=None, channel_ids=None, max_queued_per_member=DEFAULT_MAX_QUEUED,
                   daily_quota=None, max_steps=None, max_side=None, buttons_author_only=False,
                   nsfw_check=True, paused=False, strict_parameters=False, allowed_loras=None,
                   max_loras=DEFAULT_MAX_LORAS, remote_models=False,
                   allow_controlnet=True, clip_guidance=True)


class Owner(Base):
    """A running front end (`pintor run`, a `pintor` job verb, Python) that holds jobs: its lease
    lasts while it beats (heartbeat_at is renewed every few seconds)."""

    __tablename__ = "owners"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)  # "bot", or "cli-<host>-<pid>"
    queue: Mapped[str] = mapped_column(String(16))  # "embedded" or "redis": where its jobs run
    host: Mapped[str] = mapped_column(String(100))
    pid: Mapped[int] = mapped_column(Integer)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
