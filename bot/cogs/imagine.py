"""/imagine: a prompt becomes a 2×2 grid, shown as it forms."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from bot.delivery import Delivery
from bot.downloads import download
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
        self.http: aiohttp.ClientSession | None = None

    async def cog_load(self) -> None:
        self.http = aiohttp.ClientSession()

    async def cog_unload(self) -> None:
        if self.http is not None:
            await self.http.close()

    @app_commands.command(name="imagine")
    @app_commands.describe(prompt="What to picture, then any --parameters: a red fox in the snow --ar 3:2 --no people",
                           control="optional picture that steers the shape (ControlNet): --cn canny, depth, "
                                   "scribble, lineart, pose or none; --cw 0–2 how strongly")
    async def imagine(self, interaction: Interaction, prompt: str, control: discord.Attachment | None = None) -> None:
        """Make four pictures from a prompt."""
        received_at = time.monotonic()
        if interaction.guild_id is None and not self.bot.settings.pintor_allow_dms:
            await interaction.response.send_message(DM_REFUSAL, ephemeral=True)
            return
        if control is not None and control.size > MAX_UPLOAD_BYTES:  # its declared size: a hint before fetching
            await interaction.response.send_message(
                f"⚠️ {echo(control.filename, 200)} is larger than {MAX_UPLOAD_BYTES // 1024**2} MB.", ephemeral=True)
            return
        studio = self.bot.studio
        defaults = await studio.preferences(interaction.user.id)
        rules = await self.bot.rules(interaction.guild_id)
        try:
            # the member's /settings fill in what the prompt leaves out; pure and fast: bad
            # input is answered before anything is stored
            request, notices = studio.prepare_with_notices(prompt, defaults, rules=rules, control=control is not None)
        except USER_ERRORS as err:
            await interaction.response.send_message(plain(f"⚠️ {err}"), ephemeral=True)
            return
        await interaction.response.defer(thinking=True, ephemeral=defaults.private)
        delivery = Delivery.for_interaction(interaction, new_message=False, received_at=received_at,
                                            private=defaults.private)
        if control is None:
            await self.bot.start_job(interaction, delivery, rules=rules,
                                     submit=lambda member, where: studio.submit(member, request, notices=notices,
                                                                                **where))
            return

        async def controlled(member, where):
            # downloaded and checked after the deferral (it can take a while); stored before queueing
            assert self.http is not None and control is not None  # (cog_load opened it)
            data = await download(self.http, control.url, control.filename)
            return await studio.controlled(member, request, (control.filename, data), notices=notices, **where)

        await self.bot.start_job(interaction, delivery, rules=rules, submit=controlled)


async def setup(bot: PintorBot) -> None:
    await bot.add_cog(Imagine(bot))
