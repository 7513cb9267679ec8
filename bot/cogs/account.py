"""A member's own jobs and data: /info, /cancel, /forget."""

from __future__ import annotations

from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version

import discord
from discord import app_commands
from discord.ext import commands

from bot.intake import Member
from storage.models import RUNNING

FORGET_TIMEOUT_S = 120


def pintor_version() -> str:
    try:
        return version("pintor")
    except PackageNotFoundError:
        return "unknown"


def member_of(interaction: discord.Interaction) -> Member:
    return Member(interaction.user.id, interaction.user.name)


class ForgetView(discord.ui.View):
    def __init__(self, bot, member: Member):
        super().__init__(timeout=FORGET_TIMEOUT_S)
        self.bot, self.member = bot, member

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return interaction.user.id == self.member.id

    @discord.ui.button(label="Delete everything", style=discord.ButtonStyle.danger)
    async def confirm(self, interaction: discord.Interaction, _button) -> None:
        await interaction.response.defer()
        deleted = await self.bot.studio.forget(self.member)
        await interaction.edit_original_response(
            content=f"Done: your jobs, settings and {deleted} picture files are deleted.", view=None)
        self.stop()

    @discord.ui.button(label="Keep my data", style=discord.ButtonStyle.secondary)
    async def keep(self, interaction: discord.Interaction, _button) -> None:
        await interaction.response.edit_message(content="Nothing was deleted.", view=None)
        self.stop()


class Account(commands.Cog):
    def __init__(self, bot):
        self.bot = bot

    @app_commands.command(name="info")
    async def info(self, interaction: discord.Interaction) -> None:
        """The queue, your jobs in it, your jobs today, and the worker's state (only you see this)."""
        studio = self.bot.studio
        queue = studio.queue
        mine = await studio.store.unfinished(interaction.user.id)
        midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        # in a server: that server's jobs, as its daily quota counts them; in DMs: all of them
        today = await studio.store.count_since(interaction.user.id, midnight, guild_id=interaction.guild_id)
        rules = await self.bot.rules(interaction.guild_id)
        quota = f" of {rules.daily_quota}" if rules is not None and rules.daily_quota is not None else ""
        state = queue.state
        if state.error:
            worker = f"could not start: {state.error}"
        elif not state.ready:
            worker = "starting"
        elif state.running_job is not None:
            running = next((j for j in mine if j.id == state.running_job), None) or await studio.job(state.running_job)
            model = running.model if running else "?"
            worker = f"running job {state.running_job} with {model}, step {state.step}/{state.total or '?'}"
        else:
            worker = "idle"
        device = state.device.get("device_name", "?")
        places = []
        for job in mine:
            position = queue.position(job.id)
            where = "running" if job.status == RUNNING or position == 0 else f"position {position}"
            places.append(f"job {job.id} ({job.kind}): {where}")
        embed = discord.Embed(title="Pintor")
        embed.add_field(name="queue", value=f"{len(queue.waiting())} waiting", inline=True)
        where = "" if interaction.guild_id is not None else " (all servers and DMs)"
        embed.add_field(name="your jobs today", value=f"{today}{quota}{where}", inline=True)
        embed.add_field(name="your jobs in the queue", value="\n".join(places) or "none", inline=False)
        embed.add_field(name="worker", value=f"{worker} · {device}", inline=False)
        embed.set_footer(text=f"Pintor {pintor_version()}")
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name="cancel")
    @app_commands.describe(job="the job id (from /info or /history); without it, your newest unfinished job")
    async def cancel(self, interaction: discord.Interaction, job: int | None = None) -> None:
        """Cancel your queued or running job (a running one stops at its next step)."""
        member = member_of(interaction)
        if job is None:
            mine = await self.bot.studio.store.unfinished(member.id)
            if not mine:
                await interaction.response.send_message("You have no queued or running jobs.", ephemeral=True)
                return
            job = mine[-1].id
        if await self.bot.studio.cancel(job, member=member):
            await interaction.response.send_message(f"Job {job} is cancelled.", ephemeral=True)
        else:
            await interaction.response.send_message(
                f"Job {job} is not one of your queued or running jobs.", ephemeral=True)

    @app_commands.command(name="forget")
    async def forget(self, interaction: discord.Interaction) -> None:
        """Delete all your jobs, pictures and settings from Pintor (asks first)."""
        await interaction.response.send_message(
            "This deletes **all** your jobs, their pictures and your settings from Pintor. It cannot be undone.",
            view=ForgetView(self.bot, member_of(interaction)), ephemeral=True)


async def setup(bot) -> None:
    await bot.add_cog(Account(bot))
