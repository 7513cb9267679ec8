"""/describe: four prompts that describe an uploaded picture, with buttons to imagine them."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.delivery import Delivery
from bot.limits import echo
from bot.results import DM_REFUSAL
from bot.studio import NO_CAPTIONER
from generation.inputs import MAX_UPLOAD_BYTES

if TYPE_CHECKING:
    from bot.discord_bot import Interaction, PintorBot


class Describe(commands.Cog):
    def __init__(self, bot: PintorBot):
        self.bot = bot

    @app_commands.command(name="describe")
    @app_commands.describe(image="the picture to describe")
    async def describe(self, interaction: Interaction, image: discord.Attachment) -> None:
        """Four prompts that describe a picture; buttons imagine them."""
        received_at = time.monotonic()
        if interaction.guild_id is None and not self.bot.settings.pintor_allow_dms:
            await interaction.response.send_message(DM_REFUSAL, ephemeral=True)
            return
        if self.bot.studio.models.captioner is None:  # said at once, before anything is fetched
            await interaction.response.send_message(f"⚠️ {NO_CAPTIONER}", ephemeral=True)
            return
        if image.size > MAX_UPLOAD_BYTES:  # a declared size is a hint: the download enforces the cap
            await interaction.response.send_message(
                f"⚠️ {echo(image.filename, 200)} is larger than {MAX_UPLOAD_BYTES // 1024**2} MB.", ephemeral=True)
            return
        private = (await self.bot.studio.preferences(interaction.user.id)).private
        await interaction.response.defer(thinking=True, ephemeral=private)  # the download can take a while
        delivery = Delivery.for_interaction(interaction, new_message=False, received_at=received_at,
                                            private=private)

        async def submit(member, where):
            data = await self.bot.studio.fetch(image.url, image.filename)
            return await self.bot.studio.describe(member, image.filename, data, **where)

        await self.bot.start_job(interaction, delivery, submit)


async def setup(bot: PintorBot) -> None:
    await bot.add_cog(Describe(bot))
