"""/imagine: a prompt becomes a 2×2 grid, shown as it forms."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.delivery import Delivery
from bot.intake import USER_ERRORS
from bot.limits import echo, plain
from bot.results import DM_REFUSAL
from generation.inputs import MAX_UPLOAD_BYTES

if TYPE_CHECKING:
    from bot.discord_bot import Interaction, PintorBot

log = logging.getLogger(__name__)

class Imagine(commands.Cog):
    def __init__(self, bot: PintorBot):
        self.bot = bot

    @app_commands.command(name="imagine")
    @app_commands.describe(prompt="What to picture, then any --parameters: a red fox in the snow --ar 3:2 --no people",
                           image="optional image prompt: a picture to start from (weight it with --iw 0–3)",
                           control="optional picture that steers the shape (ControlNet): --cn canny, depth, "
                                   "scribble, lineart, pose or none; --cw 0–2 how strongly")
    async def imagine(self, interaction: Interaction, prompt: str, image: discord.Attachment | None = None,
                      control: discord.Attachment | None = None) -> None:
        """Make four pictures from a prompt."""
        received_at = time.monotonic()
        if interaction.guild_id is None and not self.bot.settings.pintor_allow_dms:
            await interaction.response.send_message(DM_REFUSAL, ephemeral=True)
            return
        for attachment in filter(None, (image, control)):  # a declared size: a hint (the fetch enforces the cap)
            if attachment.size > MAX_UPLOAD_BYTES:
                await interaction.response.send_message(
                    f"⚠️ {echo(attachment.filename, 200)} is larger than {MAX_UPLOAD_BYTES // 1024**2} MB.",
                    ephemeral=True)
                return
        studio = self.bot.studio
        defaults = await studio.preferences(interaction.user.id)
        rules = await self.bot.rules(interaction.guild_id)
        try:
            # the member's /settings fill in what the prompt leaves out; pure and fast: bad
            # input is answered before anything is stored
            # one request per grid (--repeat N: N jobs, each with its own seed)
            requests, notices = studio.prepare_repeated(prompt, defaults, rules=rules, control=control is not None)
            studio.check_image_prompts(requests[0])  # a link from a host Pintor does not fetch
        except USER_ERRORS as err:
            await interaction.response.send_message(plain(f"⚠️ {err}"), ephemeral=True)
            return
        uploads = [(image.filename, image.url)] if image is not None else []
        await interaction.response.defer(thinking=True, ephemeral=defaults.private)
        # the first grid in the reply, each other one in a follow-up message of its own
        deliveries = [Delivery.for_interaction(interaction, new_message=i > 0, received_at=received_at,
                                               private=defaults.private) for i in range(len(requests))]
        steering = (control.filename, control.url) if control is not None else None
        await self.bot.start_jobs(interaction, deliveries, rules=rules,
                                  submit=lambda member, where: studio.submit_prompt(
                                      member, requests, uploads=uploads, control=steering, notices=notices,
                                      **where))


async def setup(bot: PintorBot) -> None:
    await bot.add_cog(Imagine(bot))
