"""Member defaults (/settings) and server rules (/pintor-admin)."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from storage.models import MemberPreferences, ServerRules, User

_Row = TypeVar("_Row", MemberPreferences, ServerRules)


class PreferencesAndRulesStore:
    """Members' preferences (`MemberPreferences`, their /settings) and servers' rules
    (`ServerRules`, /pintor-admin): the rows people change by hand, one per member or server.
    ("Settings" alone is the process configuration, bot/settings.py.)"""

    def __init__(self, engine: AsyncEngine):
        self.session = async_sessionmaker(engine, expire_on_commit=False)

    async def member(self, user_id: int) -> MemberPreferences:
        """A member's preferences; the defaults (not stored) for a member who never set any."""
        async with self.session() as session:
            return await session.get(MemberPreferences, user_id) or MemberPreferences.new(user_id)

    async def update_member(self, user_id: int, user_name: str = "", **values: Any) -> MemberPreferences:
        return await self._update(MemberPreferences, user_id, user_name=user_name, **values)

    async def guild(self, guild_id: int | None) -> ServerRules:
        """A server's rules; the defaults for a server without stored ones (and for DMs, None)."""
        async with self.session() as session:
            stored = await session.get(ServerRules, guild_id) if guild_id is not None else None
            return stored or ServerRules.new(guild_id or 0)

    async def update_guild(self, guild_id: int, **values: Any) -> ServerRules:
        return await self._update(ServerRules, guild_id, **values)

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
