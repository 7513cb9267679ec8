"""/history: a member's own jobs, newest first, a page at a time (works after restarts)."""

from __future__ import annotations

import asyncio
import io
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands
from PIL import Image

from bot import limits
from bot.limits import Echo, compose, echo
from bot.results import jump_url, parameters_shown
from bot.studio import Studio
from generation.request import Request, kind_name
from storage.models import Job

if TYPE_CHECKING:
    from bot.discord_bot import Interaction, PintorBot

PAGE_SIZE = 5  # one embed (with its thumbnail) per job; Discord allows 10 embeds a message
THUMBNAIL_SIDE = 160
FOOTER_ROOM = 100  # "page 3 of 12 · 57 jobs"
# All embeds of a message share Discord's 6,000 characters: each job's embed gets an equal part.
EMBED_BUDGET = (limits.EMBEDS_TOTAL - FOOTER_ROOM) // PAGE_SIZE
NO_JOBS_LEFT = "You have no jobs any more (they were deleted): try /imagine."


def thumbnail(path: str | Path) -> bytes | None:
    try:
        with Image.open(path) as image:
            image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="JPEG", quality=80)
            return buffer.getvalue()
    except OSError:
        return None  # the file is gone: the entry is listed without a picture


def job_embed(job: Job, budget: int = EMBED_BUDGET) -> discord.Embed:
    """One job of a /history page in at most `budget` characters (as Discord counts embeds):
    the fixed fields whole; the prompt (title), the parameters (description) and a failure's
    reason, all echoed member text, share the rest, each within its own Discord limit."""
    request = Request.from_json(job.request)
    embed = discord.Embed(timestamp=job.created_at)
    embed.add_field(name="job", value=f"`/show job_id:{job.id}`")
    kind = kind_name(job.kind, request.outpaint, job.parent_index)  # "U2", "Zoom Out 2x": the buttons' names
    embed.add_field(name="kind", value=kind)
    embed.add_field(name="model", value=limits.clip(job.model, 100))
    status = f"{job.status}: " if job.error else job.status
    embed.add_field(name="status", value=status)
    if job.private and job.message_id is not None:
        # an ephemeral reply (or a DM) has no jump link anyone can open
        embed.add_field(name="message", value=f"private: see it again with `/show job_id:{job.id}`")
    elif job.channel_id is not None and job.message_id is not None:
        url = jump_url(job.guild_id, job.channel_id, job.message_id)
        embed.add_field(name="message", value=f"[jump to it]({url})")
    seed = f" --seed {request.seed}"
    prompt = job.prompt if (job.prompt or "").strip() else None
    wanted = [echo(prompt or kind), echo(request.parameters), echo(job.error or "")]
    fixed = limits.embeds_length([embed.to_dict()]) + len(seed)
    room = limits.shares([limits.length(text) for text in wanted], budget - fixed)
    caps = [limits.EMBED_TITLE, limits.EMBED_DESCRIPTION - len(seed), limits.FIELD_VALUE - len(status)]
    title_room, parameters_room, reason_room = (min(r, c) for r, c in zip(room, caps, strict=False))
    embed.title = compose(Echo(prompt), limit=title_room) if prompt else kind
    embed.description = compose(*parameters_shown(request.parameters), seed,
                                limit=parameters_room + len(seed)).strip()
    if job.error:
        embed.set_field_at(3, name="status", value=compose(status, Echo(job.error), limit=reason_room + len(status)))
    return embed


class PageButton(discord.ui.DynamicItem[discord.ui.Button], template=r"pintor:h:(?P<user>\d+):(?P<page>\d+)"):
    def __init__(self, user_id: int, page: int, label: str, *, disabled: bool = False):
        super().__init__(discord.ui.Button(label=label, custom_id=f"pintor:h:{user_id}:{page}",
                                           style=discord.ButtonStyle.secondary, disabled=disabled))
        self.user_id, self.page = user_id, page

    @classmethod
    async def from_custom_id(cls, interaction: Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> PageButton:
        return cls(int(match["user"]), int(match["page"]), item.label or "")

    async def callback(self, interaction: Interaction) -> None:
        if interaction.user.id != self.user_id:
            await interaction.response.send_message("This is someone else's history: use /history for yours.",
                                                    ephemeral=True)
            return
        embeds, files, view = await history_page(interaction.client.studio, self.user_id, self.page)
        if not embeds:  # all deleted since (/forget): an edit to nothing is refused by Discord
            await interaction.response.edit_message(content=NO_JOBS_LEFT, embeds=[], attachments=[], view=None)
            return
        await interaction.response.edit_message(content=None, embeds=embeds, attachments=files, view=view)


async def history_page(studio: Studio, user_id: int, page: int):
    page = max(1, page)  # "◀" of page 1 names page 0 (disabled, but a forged press arrives)
    jobs, total = await studio.history(user_id, offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE)
    pages = max(1, math.ceil(total / PAGE_SIZE))
    if page > pages:  # jobs were deleted meanwhile: show the last page
        page = pages
        jobs, total = await studio.history(user_id, offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE)
    thumbnails = await asyncio.to_thread(
        lambda: [thumbnail(studio.picture(j.grid_path)) if j.grid_path else None for j in jobs])
    embeds, files = [], []
    for job, data in zip(jobs, thumbnails, strict=False):
        embed = job_embed(job)
        if data is not None:
            name = f"job{job.id}.jpg"
            files.append(discord.File(io.BytesIO(data), filename=name))
            embed.set_thumbnail(url=f"attachment://{name}")
        embeds.append(embed)
    if embeds:
        embeds[-1].set_footer(text=f"page {page} of {pages} · {total} jobs")
    view = discord.ui.View(timeout=None)
    view.add_item(PageButton(user_id, page - 1, "◀ newer", disabled=page <= 1))
    view.add_item(PageButton(user_id, page + 1, "older ▶", disabled=page >= pages))
    return embeds, files, view


class History(commands.Cog):
    def __init__(self, bot: PintorBot):
        self.bot = bot

    @app_commands.command(name="history")
    @app_commands.describe(page="which page (1 = your newest jobs)")
    async def history(self, interaction: Interaction, page: app_commands.Range[int, 1, 100000] = 1):
        """Your jobs, newest first (only you see this)."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        embeds, files, view = await history_page(self.bot.studio, interaction.user.id, page)
        if not embeds:
            await interaction.edit_original_response(content="You have no jobs yet: try /imagine.")
            return
        await interaction.edit_original_response(embeds=embeds, attachments=files, view=view)


async def setup(bot: PintorBot) -> None:
    bot.add_dynamic_items(PageButton)
    await bot.add_cog(History(bot))
