"""A member's own jobs and data: /info, /cancel, /forget."""

from __future__ import annotations

import asyncio
import re
import time
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import limits
from bot.intake import Member, abilities, allowed_models, stale_allow_list
from storage.models import MAX_JOB_ID, JobStatus

if TYPE_CHECKING:
    from bot.discord_bot import Interaction, PintorBot

FORGET_TIMEOUT_S = 120


def pintor_version() -> str:
    try:
        return version("pintor")
    except PackageNotFoundError:
        return "unknown"


def device_line(info: dict[str, Any]) -> str:
    """The worker's device as /info shows it: its name, dtype, and the torch.compile warm-up it
    made at start (generation.warmup.WarmUp), from the worker's "ready" message `info`."""
    line = str(info.get("device_name", "?"))
    if info.get("dtype"):
        line += f" ({info['dtype']})"
    warm = info.get("warm_up")
    if warm:
        line += (f" · torch.compile ({warm['compile']}) warmed up at start on {warm['model']} "
                 f"({warm['side']}²) in {warm['seconds']:.0f} s")
    return line


def member_of(interaction: Interaction) -> Member:
    return Member(interaction.user.id, interaction.user.name)


class ForgetButton(discord.ui.DynamicItem[discord.ui.Button],
                   template=r"pintor:forget:(?P<user>[0-9]{1,20}):(?P<asked>[0-9]{1,12}):(?P<answer>yes|no)"):
    """"Delete everything" / "Keep my data" under one /forget question (asked at unix time
    `asked`). Persistent: answered after restarts too, and after FORGET_TIMEOUT_S with
    "expired" (the buttons removed)."""

    def __init__(self, user_id: int, asked: int, answer: str):
        yes = answer == "yes"
        super().__init__(discord.ui.Button(
            label="Delete everything" if yes else "Keep my data",
            style=discord.ButtonStyle.danger if yes else discord.ButtonStyle.secondary,
            custom_id=f"pintor:forget:{user_id}:{asked}:{answer}"))
        self.user_id, self.asked, self.answer = user_id, asked, answer

    @classmethod
    async def from_custom_id(cls, interaction: Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> ForgetButton:
        return cls(int(match["user"]), int(match["asked"]), match["answer"])

    async def callback(self, interaction: Interaction) -> None:
        account = interaction.client.get_cog("Account")
        assert isinstance(account, Account)  # loaded with this item (setup below)
        if interaction.user.id != self.user_id:
            await interaction.response.send_message("This question is someone else's.", ephemeral=True)
            return
        key = (self.user_id, self.asked)
        run = account.runs.get(key)
        if run is None and time.time() - self.asked > account.forget_timeout_s:
            await interaction.response.edit_message(
                content="This question expired: nothing was deleted. Run /forget again.", view=None)
            return
        if self.answer == "no" and run is None:
            await interaction.response.edit_message(content="Nothing was deleted.", view=None)
            return
        if run is None:  # the first "Delete everything" of this question; a second click joins it
            run = account.runs[key] = asyncio.ensure_future(
                interaction.client.studio.forget(Member(self.user_id, interaction.user.name)))
        await interaction.response.defer()
        deleted = await asyncio.shield(run)
        await interaction.edit_original_response(
            content=f"Done: your jobs, settings and {deleted} picture files are deleted.", view=None)


def forget_question(user_id: int) -> discord.ui.View:
    asked = int(time.time())
    view = discord.ui.View(timeout=None)
    view.add_item(ForgetButton(user_id, asked, "yes"))
    view.add_item(ForgetButton(user_id, asked, "no"))
    return view


class Account(commands.Cog):
    forget_timeout_s: float = FORGET_TIMEOUT_S  # a class attribute, so that tests can shorten it

    def __init__(self, bot: PintorBot):
        self.bot = bot
        # "Delete everything" runs by question (member, asked at): a double click runs it once
        self.runs: dict[tuple[int, int], asyncio.Future[int]] = {}

    @app_commands.command(name="info")
    async def info(self, interaction: Interaction) -> None:
        """The queue, your jobs in it, your jobs today, and the worker's state (only you see this)."""
        studio = self.bot.studio
        mine = await studio.unfinished_jobs(interaction.user.id)
        # in a server: that server's jobs, as its daily quota counts them; in DMs: all of them
        today = await studio.jobs_today(interaction.user.id, guild_id=interaction.guild_id)
        rules = await self.bot.rules(interaction.guild_id)
        quota = f" of {rules.daily_quota}" if rules is not None and rules.daily_quota is not None else ""
        workers = []
        for state in await studio.workers():
            if state.error:
                doing = f"could not start: {state.error}"
            elif not state.ready:
                doing = "starting"
            elif state.running_job is not None:
                running = (next((j for j in mine if j.id == state.running_job), None)
                           or await studio.job(state.running_job))
                model = running.model if running else "?"
                doing = f"running job {state.running_job} with {model}, step {state.step}/{state.total or '?'}"
            else:
                doing = "idle"
            workers.append(f"{doing} · {device_line(state.device)}")
        places = []
        for job in mine:
            position = await studio.queue_position(job.id)
            where = "running" if job.status == JobStatus.RUNNING or position == 0 else f"position {position}"
            places.append(f"job {job.id} ({job.kind}): {where}")
        embed = discord.Embed(title="Pintor")
        embed.add_field(name="queue", value=f"{await studio.waiting_count()} waiting", inline=True)
        where = "" if interaction.guild_id is not None else " (all servers and DMs)"
        embed.add_field(name="your jobs today", value=f"{today}{quota}{where}", inline=True)
        default = studio.default_model(await self.bot.rules(interaction.guild_id))
        embed.add_field(name="default model", inline=True, value=default + (
            " (this server's: Pintor's default is not allowed here)" if default != studio.models.default else ""))
        remote = [spec for spec in studio.models.models.values() if spec.is_remote]
        if remote:
            remote_allowed = rules is not None and rules.remote_models
            embed.add_field(name="remote models", inline=False, value=limits.clip(
                ", ".join(f"{spec.name} (OpenAI {spec.model})" for spec in remote)
                + (" · allowed here" if remote_allowed else " · not allowed here (an admin can allow them)"),
                limits.FIELD_VALUE))
        allowed = allowed_models(rules, studio.models)
        controlnet = rules is None or rules.allow_controlnet
        # what each model members may use here can do
        offered = [f"`{spec.name}`: {', '.join(abilities(studio.models, spec, controlnet=controlnet))}"
                   for spec in studio.models.generators() if not allowed or spec.name in allowed]
        embed.add_field(name="models", value=limits.listing(offered, limits.FIELD_VALUE), inline=False)
        if stale := stale_allow_list(rules, studio.models):  # the sentence /settings and /pintor-admin show say
            embed.add_field(name="allow-list", value=limits.clip(stale, limits.FIELD_VALUE), inline=False)
        embed.add_field(name="your jobs in the queue", value=limits.listing(places, limits.FIELD_VALUE), inline=False)
        if len(workers) == 1:
            embed.add_field(name="worker", value=limits.clip(workers[0], limits.FIELD_VALUE), inline=False)
        else:
            embed.add_field(name=f"workers ({len(workers)})", inline=False,
                            value=limits.listing(workers, limits.FIELD_VALUE) if workers else "none connected")
        embed.set_footer(text=f"Pintor {pintor_version()}")
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name="cancel")
    @app_commands.describe(job="the job id (from /info or /history); without it, your newest unfinished job")
    async def cancel(self, interaction: Interaction,
                     job: app_commands.Range[int, 1, MAX_JOB_ID] | None = None) -> None:
        """Cancel your queued or running job (a running one stops at its next step)."""
        member = member_of(interaction)
        if job is None:
            mine = await self.bot.studio.unfinished_jobs(member.id)
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
    async def forget(self, interaction: Interaction) -> None:
        """Delete all your jobs, pictures and settings from Pintor (asks first)."""
        await interaction.response.send_message(
            "This deletes **all** your jobs, their pictures and your settings from Pintor. It cannot be undone. "
            "Results already posted in channels stay there (delete those messages yourself if you wish).",
            view=forget_question(interaction.user.id), ephemeral=True)
        now = time.time()  # answers of expired questions are not needed any more
        for key in [k for k in self.runs if now - k[1] > 2 * self.forget_timeout_s and self.runs[k].done()]:
            del self.runs[key]


async def setup(bot: PintorBot) -> None:
    bot.add_dynamic_items(ForgetButton)
    await bot.add_cog(Account(bot))
