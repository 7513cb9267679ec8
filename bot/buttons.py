"""The buttons under a result: U1–U4 (upscale), V1–V4 (vary), 🔄 (re-roll), and under an
upscaled image Vary (Subtle), Vary (Strong), Upscale again and a link back to the grid.

Each is a persistent `DynamicItem`: everything it needs is in its custom_id, and the rest
comes from the database, so buttons work after restarts and for as long as the message
exists. custom_ids (all far below Discord's 100 characters):

    pintor:u:<job>:<n>          upscale image n (1–4) of job
    pintor:v:<job>:<n>:<s|h>    vary image n of job, s = subtle, h = strong (high)
    pintor:r:<job>              re-roll job (same prompt, new seed)

A press is handled by the bot (`PintorBot.press`, reached as `interaction.client`): this
module only knows which Studio action a button stands for, so it imports nothing of the
Discord front end above it (results and the bot build on it).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import discord

from bot.intake import Member
from bot.studio import Studio, Submitted
from generation.upscale import can_upscale

if TYPE_CHECKING:  # the client's type only: the bot module imports this one
    from bot.discord_bot import Interaction

log = logging.getLogger(__name__)

JOB = r"(?P<job>[0-9]{1,18})"  # at most 18 digits: always a valid 64-bit database id


class UpscaleButton(discord.ui.DynamicItem[discord.ui.Button], template=rf"pintor:u:{JOB}:(?P<n>[1-4])"):
    def __init__(self, job_id: int, n: int, *, label: str | None = None, row: int | None = None):
        super().__init__(discord.ui.Button(label=label or f"U{n}", style=discord.ButtonStyle.secondary,
                                           custom_id=f"pintor:u:{job_id}:{n}"), row=row)
        self.job_id, self.n = job_id, n

    @classmethod
    async def from_custom_id(cls, interaction: Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> UpscaleButton:
        return cls(int(match["job"]), int(match["n"]))

    async def callback(self, interaction: Interaction) -> None:
        await interaction.client.press(interaction, self.job_id,
                    lambda studio, member, where: studio.upscale(member, self.job_id, self.n, **where))


class VaryButton(discord.ui.DynamicItem[discord.ui.Button],
                 template=rf"pintor:v:{JOB}:(?P<n>[1-4]):(?P<strength>[sh])"):
    def __init__(self, job_id: int, n: int, *, strong: bool, label: str | None = None, row: int | None = None):
        super().__init__(discord.ui.Button(label=label or f"V{n}", style=discord.ButtonStyle.secondary,
                                           custom_id=f"pintor:v:{job_id}:{n}:{'h' if strong else 's'}"), row=row)
        self.job_id, self.n, self.strong = job_id, n, strong

    @classmethod
    async def from_custom_id(cls, interaction: Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> VaryButton:
        return cls(int(match["job"]), int(match["n"]), strong=match["strength"] == "h")

    async def callback(self, interaction: Interaction) -> None:
        await interaction.client.press(interaction, self.job_id,
                    lambda studio, member, where: studio.vary(member, self.job_id, self.n, strong=self.strong, **where))


class RerollButton(discord.ui.DynamicItem[discord.ui.Button], template=rf"pintor:r:{JOB}"):
    def __init__(self, job_id: int, *, row: int | None = None):
        super().__init__(discord.ui.Button(emoji="🔄", style=discord.ButtonStyle.secondary,
                                           custom_id=f"pintor:r:{job_id}"), row=row)
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> RerollButton:
        return cls(int(match["job"]))

    async def callback(self, interaction: Interaction) -> None:
        await interaction.client.press(interaction, self.job_id,
                                       lambda studio, member, where: studio.reroll(member, self.job_id, **where))


BUTTONS = (UpscaleButton, VaryButton, RerollButton)


def grid_view(job_id: int) -> discord.ui.View:
    """U1 U2 U3 U4 🔄 / V1 V2 V3 V4"""
    view = discord.ui.View(timeout=None)
    for n in range(1, 5):
        view.add_item(UpscaleButton(job_id, n, row=0))
    view.add_item(RerollButton(job_id, row=0))
    for n in range(1, 5):
        view.add_item(VaryButton(job_id, n, strong=True, row=1))
    return view


def upscale_view(job_id: int, width: int, height: int, grid_url: str | None) -> discord.ui.View:
    """Vary (Subtle) · Vary (Strong) · Upscale again · ↩ Grid"""
    view = discord.ui.View(timeout=None)
    view.add_item(VaryButton(job_id, 1, strong=False, label="Vary (Subtle)"))
    view.add_item(VaryButton(job_id, 1, strong=True, label="Vary (Strong)"))
    if can_upscale(width, height):
        view.add_item(UpscaleButton(job_id, 1, label="Upscale again"))
    if grid_url:
        view.add_item(discord.ui.Button(label="Grid", emoji="↩️", url=grid_url))
    return view


# What a button asks of the Studio for the member who pressed it, with where it was pressed
# (`PintorBot.start_job`'s `where`: guild, channel, rules, privacy).
Action = Callable[[Studio, Member, dict[str, Any]], Awaitable[Submitted]]

