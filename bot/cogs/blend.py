"""/blend: two to five images (and a text) mixed into a new grid by a Kandinsky prior."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.delivery import Delivery
from bot.limits import echo
from bot.results import DM_REFUSAL
from generation.inputs import MAX_UPLOAD_BYTES

if TYPE_CHECKING:
    from bot.discord_bot import Interaction, PintorBot

DIMENSIONS = [app_commands.Choice(name=name, value=name) for name in ("square", "portrait", "landscape")]


class Blend(commands.Cog):
    def __init__(self, bot: PintorBot):
        self.bot = bot

    @app_commands.command(name="blend")
    @app_commands.describe(image1="first image", image2="second image", image3="optional third image",
                           image4="optional fourth image", image5="optional fifth image",
                           prompt="optional text to mix in, with --parameters",
                           dimensions="the shape of the result (default square)",
                           weights="how much each image counts, e.g. 2,1 (one more value weighs the text)",
                           control="optional picture whose depth map steers the shape (Kandinsky 2.2 ControlNet)")
    @app_commands.choices(dimensions=DIMENSIONS)
    async def blend(self, interaction: Interaction, image1: discord.Attachment,
                    image2: discord.Attachment, image3: discord.Attachment | None = None,
                    image4: discord.Attachment | None = None, image5: discord.Attachment | None = None,
                    prompt: str = "", dimensions: app_commands.Choice[str] | None = None,
                    weights: str = "", control: discord.Attachment | None = None) -> None:
        """Mix 2–5 images (and a text) into four new pictures."""
        received_at = time.monotonic()
        if interaction.guild_id is None and not self.bot.settings.pintor_allow_dms:
            await interaction.response.send_message(DM_REFUSAL, ephemeral=True)
            return
        attachments = [a for a in (image1, image2, image3, image4, image5) if a is not None]
        uploaded = attachments + ([control] if control is not None else [])
        # A declared size is only a hint (the download enforces the cap), but it lets an
        # obviously too large file be refused before anything is fetched.
        for attachment in uploaded:
            if attachment.size > MAX_UPLOAD_BYTES:
                await interaction.response.send_message(
                    f"⚠️ {echo(attachment.filename, 200)} is larger than {MAX_UPLOAD_BYTES // 1024**2} MB.",
                    ephemeral=True)
                return
        private = (await self.bot.studio.preferences(interaction.user.id)).private
        await interaction.response.defer(thinking=True, ephemeral=private)  # downloads can take a while
        delivery = Delivery.for_interaction(interaction, new_message=False, received_at=received_at,
                                            private=private)

        async def submit(member, where):
            uploads = [(a.filename, await self.bot.studio.fetch(a.url, a.filename)) for a in attachments]
            steering = ((control.filename, await self.bot.studio.fetch(control.url, control.filename))
                        if control else None)
            return await self.bot.studio.blend(member, uploads, prompt=prompt, weights=weights,
                                               dimensions=dimensions.value if dimensions else "square",
                                               control=steering, **where)

        await self.bot.start_job(interaction, delivery, submit)


async def setup(bot: PintorBot) -> None:
    await bot.add_cog(Blend(bot))
