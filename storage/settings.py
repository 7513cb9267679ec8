"""Member defaults (/settings) and server rules (/pintor-admin)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from storage.models import MemberPreferences, ServerRules, User

_Row = TypeVar("_Row", MemberPreferences, ServerRules)

# How long a row read is used again before it is read anew: the longest another process (a
# second front end on Redis, the CLI) may change a member's preferences or a server's rules
# before this one sees it. This process's own changes are seen at once (a write drops the row).
MAX_AGE_S = 10.0
MAX_KEPT = 10_000  # rows kept at most before those past their age are let go (memory stays bounded)


class _Recent(Generic[_Row]):
    """Rows read lately, by key, each used again for `max_age_s` seconds; reads of one key at
    the same moment share one database read (a burst of one member's commands, or of a
    server's, reads once). A read that began before `drop(key)` is never kept."""

    def __init__(self, max_age_s: float, max_kept: int = MAX_KEPT):
        self.max_age_s, self.max_kept = max_age_s, max_kept
        self._rows: dict[int | None, tuple[float, _Row]] = {}
        self._reads: dict[int | None, asyncio.Future[_Row]] = {}
        self._drops = 0  # how many drops so far: a read that saw another count keeps nothing

    async def get(self, key: int | None, read: Callable[[], Awaitable[_Row]]) -> _Row:
        kept = self._rows.get(key)
        if kept is not None and time.monotonic() - kept[0] < self.max_age_s:
            return kept[1]
        reading = self._reads.get(key)
        if reading is None or reading.get_loop() is not asyncio.get_running_loop():
            reading = self._reads[key] = asyncio.ensure_future(self._read(key, read))
        return await asyncio.shield(reading)  # one caller cancelled does not cancel the others' read

    async def _read(self, key: int | None, read: Callable[[], Awaitable[_Row]]) -> _Row:
        drops, started = self._drops, time.monotonic()
        try:
            row = await read()
        finally:
            if self._reads.get(key) is asyncio.current_task():
                del self._reads[key]
        if drops == self._drops:
            self._rows[key] = (started, row)
            if len(self._rows) > self.max_kept:
                now = time.monotonic()
                self._rows = {k: kept for k, kept in self._rows.items() if now - kept[0] < self.max_age_s}
        return row

    def drop(self, key: int | None) -> None:
        """Forget `key`'s row (it was written): the next get reads it anew."""
        self._drops += 1
        self._rows.pop(key, None)
        self._reads.pop(key, None)


class PreferencesAndRulesStore:
    """Members' preferences (`MemberPreferences`, their /settings) and servers' rules
    (`ServerRules`, /pintor-admin): the rows people change by hand, one per member or server.
    ("Settings" alone is the process configuration, bot/settings.py.)

    Reads are kept for `max_age_s` seconds (`MAX_AGE_S`) and dropped by this store's own
    writes, so that a command can be acknowledged without waiting on the database (every
    command reads both before it answers); the rows returned are shared: never change them.
    """

    def __init__(self, engine: AsyncEngine, *, max_age_s: float = MAX_AGE_S):
        self.session = async_sessionmaker(engine, expire_on_commit=False)
        self._members: _Recent[MemberPreferences] = _Recent(max_age_s)
        self._guilds: _Recent[ServerRules] = _Recent(max_age_s)

    async def member(self, user_id: int) -> MemberPreferences:
        """A member's preferences; the defaults (not stored) for a member who never set any.
        At most `max_age_s` old when another process changed them. Raises what the database
        raises (sqlalchemy.exc.DBAPIError, OSError) when it cannot be reached."""
        async def read() -> MemberPreferences:
            async with self.session() as session:
                return await session.get(MemberPreferences, user_id) or MemberPreferences.new(user_id)
        return await self._members.get(user_id, read)

    async def update_member(self, user_id: int, user_name: str = "", **values: Any) -> MemberPreferences:
        self._members.drop(user_id)  # before and after: a read in between may hold the old row
        try:
            return await self._update(MemberPreferences, user_id, user_name=user_name, **values)
        finally:
            self._members.drop(user_id)

    def forget_member(self, user_id: int) -> None:
        """Drop what is kept of a member whose rows were deleted elsewhere (storage.jobs.forget_user)."""
        self._members.drop(user_id)

    async def guild(self, guild_id: int | None) -> ServerRules:
        """A server's rules; the defaults for a server without stored ones (and for DMs, None).
        At most `max_age_s` old when another process changed them; raises as `member`."""
        async def read() -> ServerRules:
            async with self.session() as session:
                stored = await session.get(ServerRules, guild_id) if guild_id is not None else None
                return stored or ServerRules.new(guild_id or 0)
        return await self._guilds.get(guild_id, read)

    async def update_guild(self, guild_id: int, **values: Any) -> ServerRules:
        self._guilds.drop(guild_id)
        try:
            return await self._update(ServerRules, guild_id, **values)
        finally:
            self._guilds.drop(guild_id)

    async def _update(self, table: type[_Row], key: int, *, user_name: str | None = None, **values: Any) -> _Row:
        """Change preferences or rules, creating the row (and for a member, their user row) on first use.
        Returns the row as stored, read back after the write.

        A new row is inserted with its defaults first and changed after: in an INSERT, the ORM
        treats an attribute set to None as unset and writes the column's default instead (so
        a first "no limit" would become the default limit); an UPDATE writes NULL."""
        async with self.session.begin() as session:
            if user_name is not None and await session.get(User, key) is None:
                session.add(User(id=key, name=user_name[:100]))
                await session.flush()
            row = await session.get(table, key)
            if row is None:
                row = table.new(key)
                session.add(row)
                await session.flush()
            for name, value in values.items():
                setattr(row, name, value)
            await session.flush()
            await session.refresh(row)  # what the database holds, not what was asked
        return row
