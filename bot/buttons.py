"""The buttons under a result: U1–U4 (upscale), V1–V4 (vary), 🔄 (re-roll), and under an
upscaled image Vary (Subtle), Vary (Strong), Upscale again and a link back to the grid.

Each is a persistent `DynamicItem`: everything it needs is in its custom_id, and the rest
comes from the database, so buttons work after restarts and for as long as the message
exists. custom_ids (all far below Discord's 100 characters):

    pintor:u:<job>:<n>          upscale image n (1–4) of job
    pintor:v:<job>:<n>:<s|h>    vary image n of job, s = subtle, h = strong (high)
    pintor:r:<job>              re-roll job (same prompt, new seed)
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import discord

from bot.intake import Member
from bot.studio import Studio, Submitted
from generation.upscale import can_upscale
from storage.models import DONE, Job

if TYPE_CHECKING:
    from bot.discord_bot import PintorBot

log = logging.getLogger(__name__)

JOB = r"(?P<job>[0-9]{1,18})"  # at most 18 digits: always a valid 64-bit database id


class UpscaleButton(discord.ui.DynamicItem[discord.ui.Button], template=rf"pintor:u:{JOB}:(?P<n>[1-4])"):
    def __init__(self, job_id: int, n: int, *, label: str | None = None, row: int | None = None):
        super().__init__(discord.ui.Button(label=label or f"U{n}", style=discord.ButtonStyle.secondary,
                                           custom_id=f"pintor:u:{job_id}:{n}"), row=row)
        self.job_id, self.n = job_id, n

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> UpscaleButton:
        return cls(int(match["job"]), int(match["n"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await press(interaction, self.job_id,
                    lambda studio, member, where: studio.upscale(member, self.job_id, self.n, **where))


class VaryButton(discord.ui.DynamicItem[discord.ui.Button],
                 template=rf"pintor:v:{JOB}:(?P<n>[1-4]):(?P<strength>[sh])"):
    def __init__(self, job_id: int, n: int, *, strong: bool, label: str | None = None, row: int | None = None):
        super().__init__(discord.ui.Button(label=label or f"V{n}", style=discord.ButtonStyle.secondary,
                                           custom_id=f"pintor:v:{job_id}:{n}:{'h' if strong else 's'}"), row=row)
        self.job_id, self.n, self.strong = job_id, n, strong

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> VaryButton:
        return cls(int(match["job"]), int(match["n"]), strong=match["strength"] == "h")

    async def callback(self, interaction: discord.Interaction) -> None:
        await press(interaction, self.job_id,
                    lambda studio, member, where: studio.vary(member, self.job_id, self.n, strong=self.strong, **where))


class RerollButton(discord.ui.DynamicItem[discord.ui.Button], template=rf"pintor:r:{JOB}"):
    def __init__(self, job_id: int, *, row: int | None = None):
        super().__init__(discord.ui.Button(emoji="🔄", style=discord.ButtonStyle.secondary,
                                           custom_id=f"pintor:r:{job_id}"), row=row)
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> RerollButton:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await press(interaction, self.job_id, lambda studio, member, where: studio.reroll(member, self.job_id, **where))


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


def already_made_text(job: Job) -> str:
    """What a second press of a button says when its first press made the same job."""
    from bot.results import jump_url  # results → this module

    what = f"Image #{job.parent_index} of job {job.parent_id}" if job.parent_id else "This picture"
    if job.status != DONE:
        return (f"↪️ {what} is already being upscaled for you: job {job.id} is {job.status}. Its result "
                f"will be posted when it is done.")
    where = (f": {jump_url(job.guild_id, job.channel_id, job.message_id)}"
             if job.channel_id is not None and job.message_id is not None else "")
    return f"↪️ {what} is already upscaled for you, as job {job.id}{where} (`/show job_id:{job.id}` shows it again)."


Action = Callable[[Studio, Member, dict[str, Any]], Awaitable[Submitted]]


async def press(interaction: discord.Interaction, job_id: int, action: Action) -> None:
    """Acknowledge at once, then make the job for the member who pressed; its progress and
    result go to a new message. Bad cases get a message only the presser sees."""
    from bot.cogs.imagine import DM_REFUSAL  # the cogs import results → this module
    from bot.delivery import Delivery

    bot: PintorBot = interaction.client  # type: ignore[assignment]
    received_at = time.monotonic()
    await interaction.response.defer()  # a component: "deferred update", the message stays as it is
    private = (await bot.studio.settings.member(interaction.user.id)).private
    delivery = Delivery.for_interaction(interaction, new_message=True, received_at=received_at, private=private)
    job = await bot.studio.job(job_id)
    # A press in a DM (under a result sent there) belongs to the server its job came from, and
    # that server's rules apply; one that belongs to no server needs DMs to be allowed.
    guild_id = interaction.guild_id if interaction.guild_id is not None else (job.guild_id if job else None)
    if guild_id is None and not bot.settings.pintor_allow_dms:
        await delivery.refuse(DM_REFUSAL)
        return
    rules = await bot.rules(guild_id)
    if bot.settings.pintor_buttons_author_only or (rules is not None and rules.buttons_author_only):
        if job is not None and job.user_id != interaction.user.id:
            await delivery.refuse(f"Only <@{job.user_id}>, who asked for job {job_id}, can use its buttons.")
            return
    await bot.start_job(interaction, delivery, lambda member, where: action(bot.studio, member, where),
                        rules=rules, origin_guild_id=guild_id)
