"""/pintor-admin: a server's rules. Only members with Manage Server see or run it."""

from __future__ import annotations

import re

import discord
from discord import app_commands
from discord.ext import commands

from bot.intake import id_list, name_list
from storage.models import GuildSettings

EVERYTHING = "all"


def describe(rules: GuildSettings) -> str:
    def limit(value, unit=""):
        return f"{value}{unit}" if value else "no limit"

    channels = ", ".join(f"<#{c}>" for c in id_list(rules.channel_ids)) or "all channels"
    return "\n".join([
        "**Pintor on this server**" + (" — ⏸ **paused**: new jobs are refused" if rules.paused else ""),
        f"models allowed: {', '.join(name_list(rules.allowed_models)) or 'all'}",
        f"answers in: {channels}",
        f"jobs one member may have queued: {limit(rules.max_queued_per_member)}",
        f"jobs per member per day: {limit(rules.daily_quota)}",
        f"max steps: {limit(rules.max_steps)} · max side: {limit(rules.max_side, ' px')}",
        f"buttons: {'only the author' if rules.buttons_author_only else 'everyone'}",
        f"NSFW check: {'on' if rules.nsfw_check else 'off'} (where the model has a checker)",
        f"parameters Pintor does not have: {'refused (strict)' if rules.strict_parameters else 'ignored, with a notice'}",
    ])


@app_commands.default_permissions(manage_guild=True)
@app_commands.guild_only()
class Admin(commands.GroupCog, group_name="pintor-admin"):
    """Server settings for Pintor."""

    def __init__(self, bot):
        self.bot = bot
        super().__init__()

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        # default_permissions hides the commands; server owners can change that, so check too
        if interaction.guild_id is None or not interaction.permissions.manage_guild:
            await interaction.response.send_message("Only members with Manage Server can change Pintor's settings.",
                                                    ephemeral=True)
            return False
        return True

    async def _update(self, interaction: discord.Interaction, **values) -> None:
        rules = await self.bot.studio.settings.update_guild(interaction.guild_id, **values)
        await interaction.response.send_message(describe(rules), ephemeral=True)

    @app_commands.command(name="show")
    async def show(self, interaction: discord.Interaction) -> None:
        """This server's Pintor settings."""
        await interaction.response.send_message(describe(await self.bot.studio.settings.guild(interaction.guild_id)),
                                                ephemeral=True)

    @app_commands.command(name="models")
    @app_commands.describe(names="model names separated by commas, or 'all'")
    async def models(self, interaction: discord.Interaction, names: str) -> None:
        """Which models members may use."""
        if names.strip().lower() == EVERYTHING:
            return await self._update(interaction, allowed_models=None)
        chosen = name_list(names)
        unknown = [n for n in chosen if n not in self.bot.studio.registry.models]
        if unknown or not chosen:
            await interaction.response.send_message(
                f"Unknown model(s): {', '.join(unknown) or '(none given)'}. Configured: "
                f"{', '.join(self.bot.studio.registry.names)}.", ephemeral=True)
            return
        await self._update(interaction, allowed_models=",".join(chosen))

    @app_commands.command(name="channels")
    @app_commands.describe(channels="channel mentions (#art #bots), or 'all'")
    async def channels(self, interaction: discord.Interaction, channels: str) -> None:
        """Which channels Pintor answers in."""
        if channels.strip().lower() == EVERYTHING:
            return await self._update(interaction, channel_ids=None)
        ids = re.findall(r"<#(\d+)>|(\d{15,22})", channels)
        chosen = [int(a or b) for a, b in ids]
        if not chosen:
            await interaction.response.send_message("Mention the channels (#name), or write 'all'.", ephemeral=True)
            return
        await self._update(interaction, channel_ids=",".join(map(str, chosen)))

    @app_commands.command(name="limits")
    @app_commands.describe(max_queued="jobs one member may have queued or running (0 = no limit)",
                           daily_quota="jobs per member per day (0 = no limit)",
                           max_steps="the most steps a job may take (0 = no limit)",
                           max_side="the longest side of a picture in pixels (0 = no limit)")
    async def limits(self, interaction: discord.Interaction,
                     max_queued: app_commands.Range[int, 0, 1000] | None = None,
                     daily_quota: app_commands.Range[int, 0, 100000] | None = None,
                     max_steps: app_commands.Range[int, 0, 150] | None = None,
                     max_side: app_commands.Range[int, 0, 8192] | None = None) -> None:
        """Limits that keep the queue fair and the GPU safe."""
        given = {"max_queued_per_member": max_queued, "daily_quota": daily_quota,
                 "max_steps": max_steps, "max_side": max_side}
        await self._update(interaction, **{k: (v or None) for k, v in given.items() if v is not None})

    @app_commands.command(name="buttons")
    @app_commands.describe(author_only="whether only the member who asked may press a result's buttons")
    async def buttons(self, interaction: discord.Interaction, author_only: bool) -> None:
        """Who may press U/V/🔄 under a result."""
        await self._update(interaction, buttons_author_only=author_only)

    @app_commands.command(name="nsfw-check")
    @app_commands.describe(on="check results with the model's NSFW checker (flagged ones are blurred)")
    async def nsfw_check(self, interaction: discord.Interaction, on: bool) -> None:
        """The NSFW check of results, where the model ships a checker."""
        await self._update(interaction, nsfw_check=on)

    @app_commands.command(name="strict-parameters")
    @app_commands.describe(on="refuse prompts with parameters Pintor does not have (--tile, --sref…) "
                              "instead of ignoring them with a notice")
    async def strict_parameters(self, interaction: discord.Interaction, on: bool) -> None:
        """Whether unknown prompt parameters are refused or ignored with a notice."""
        await self._update(interaction, strict_parameters=on)

    @app_commands.command(name="pause")
    async def pause(self, interaction: discord.Interaction) -> None:
        """Refuse new jobs on this server (queued ones still run)."""
        await self._update(interaction, paused=True)

    @app_commands.command(name="resume")
    async def resume(self, interaction: discord.Interaction) -> None:
        """Accept new jobs again."""
        await self._update(interaction, paused=False)


async def setup(bot) -> None:
    await bot.add_cog(Admin(bot))
