"""/show: a finished job's pictures again, with live buttons."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from discord import app_commands
from discord.ext import commands

from bot.delivery import Delivery
from bot.limits import Echo, compose
from bot.local import OPERATOR
from bot.results import DM_REFUSAL, result_message
from bot.studio import channel_refusal
from storage.models import MAX_JOB_ID, JobStatus

if TYPE_CHECKING:
    from bot.discord_bot import Interaction, PintorBot

log = logging.getLogger(__name__)


class Show(commands.Cog):
    def __init__(self, bot: PintorBot):
        self.bot = bot

    @app_commands.command(name="show")
    @app_commands.describe(job_id="The job number shown under a result, e.g. 42")
    async def show(self, interaction: Interaction, job_id: app_commands.Range[int, 1, MAX_JOB_ID]) -> None:
        """Post a finished job's pictures again, with working buttons."""
        received_at = time.monotonic()
        if interaction.guild_id is None and not self.bot.settings.pintor_allow_dms:
            await interaction.response.send_message(DM_REFUSAL, ephemeral=True)
            return
        job = await self.bot.studio.job(job_id)
        # A member sees their own jobs anywhere, the public jobs made in the server they are
        # in, and the operator's (made with `pintor` or from Python: shared with every server);
        # a job delivered privately does not exist for anyone but its author.
        own = job is not None and job.user_id == interaction.user.id
        if job is None or not (own or (not job.private and (job.user_id == OPERATOR.id or (
                job.guild_id is not None and job.guild_id == interaction.guild_id)))):
            await interaction.response.send_message(f"There is no job {job_id} here.", ephemeral=True)
            return
        # where Pintor does not answer, it posts nothing either (the rule /imagine follows)
        refusal = channel_refusal(await self.bot.rules(interaction.guild_id), interaction.channel_id)
        if refusal:
            await interaction.response.send_message(f"⚠️ {refusal}", ephemeral=True)
            return
        if job.status == JobStatus.FAILED:
            await interaction.response.send_message(compose(f"Job {job_id} failed: ", Echo(job.error or "")),
                                                    ephemeral=True)
            return
        if job.status == JobStatus.CANCELLED:
            await interaction.response.send_message(f"Job {job_id} was cancelled: it has no pictures.",
                                                    ephemeral=True)
            return
        if job.status != JobStatus.DONE:
            await interaction.response.send_message(
                f"Job {job_id} is {job.status}; its pictures are posted when it is done.", ephemeral=True)
            return
        if not job.grid_path or not self.bot.studio.picture(job.grid_path).is_file():
            await interaction.response.send_message(f"The picture files of job {job_id} are gone.", ephemeral=True)
            return
        private = (await self.bot.studio.preferences(interaction.user.id)).private
        await interaction.response.defer(thinking=True, ephemeral=private)
        delivery = Delivery.for_interaction(interaction, new_message=False, received_at=received_at, private=private)
        await delivery.final(await result_message(self.bot.studio, job, size_limit=delivery.size_limit))


async def setup(bot: PintorBot) -> None:
    await bot.add_cog(Show(bot))
