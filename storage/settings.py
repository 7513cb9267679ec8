"""Member defaults (/settings) and server rules (/pintor-admin)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from storage.models import GuildSettings, MemberSettings, User


class SettingsStore:
    def __init__(self, engine: AsyncEngine):
        self.session = async_sessionmaker(engine, expire_on_commit=False)

    async def member(self, user_id: int) -> MemberSettings:
        """A member's settings; the defaults (not stored) for a member who never set any."""
        async with self.session() as session:
            return await session.get(MemberSettings, user_id) or MemberSettings.new(user_id)

    async def update_member(self, user_id: int, user_name: str = "", **values) -> MemberSettings:
        async with self.session.begin() as session:
            if await session.get(User, user_id) is None:
                session.add(User(id=user_id, name=user_name[:100]))
                await session.flush()
            settings = await session.get(MemberSettings, user_id)
            if settings is None:
                settings = MemberSettings.new(user_id)
                session.add(settings)
            for key, value in values.items():
                setattr(settings, key, value)
        return settings

    async def guild(self, guild_id: int | None) -> GuildSettings:
        """A server's rules; the defaults for a server without stored ones (and for DMs, None)."""
        async with self.session() as session:
            stored = await session.get(GuildSettings, guild_id) if guild_id is not None else None
            return stored or GuildSettings.new(guild_id or 0)

    async def update_guild(self, guild_id: int, **values) -> GuildSettings:
        async with self.session.begin() as session:
            settings = await session.get(GuildSettings, guild_id)
            if settings is None:
                settings = GuildSettings.new(guild_id)
                session.add(settings)
            for key, value in values.items():
                setattr(settings, key, value)
        return settings
