"""The Discord client: slash commands (one cog per feature), persistent buttons, and the
reporting of each job from "queued" to its result.

The top of the Discord front end: it imports buttons, results, delivery and progress (and
loads the cogs by name); nothing below imports it except for types (`Interaction`, the
typed `interaction.client`)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from datetime import timedelta
from typing import Any, TypeAlias

import discord
from discord import app_commands
from discord.ext import commands

from bot.buttons import BUTTONS, Action, form_submitted
from bot.delivery import INTERACTION_TTL_S, SEND_TIMEOUT_S, Delivery
from bot.intake import USER_ERRORS, Member
from bot.limits import echo
from bot.metrics import Metrics
from bot.progress import PROGRESS_INTERVAL_S, ProgressReporter, queued_line, status_line
from bot.results import (
    DATABASE_DOWN,
    DM_REFUSAL,
    Outgoing,
    already_made_text,
    ending_message,
    progress_text,
    result_message,
    unsent_message,
)
from bot.settings import Settings
from bot.studio import AlreadyMade, Studio, Submitted, answer_refusal
from generation.events import Done, Event, Failed
from generation.request import JobKind
from storage.db import unreachable
from storage.models import Job, JobStatus, ServerRules

log = logging.getLogger(__name__)

EXTENSIONS = ("bot.cogs.imagine", "bot.cogs.blend", "bot.cogs.describe", "bot.cogs.show", "bot.cogs.history",
              "bot.cogs.preferences", "bot.cogs.account", "bot.cogs.admin")
UNDELIVERED_MAX_AGE = timedelta(days=7)  # results older than this that never got posted stay unposted
FORGOTTEN = "🗑️ This job was deleted: its author used /forget."

Submit = Callable[[Member, dict[str, Any]], Awaitable[Submitted]]
SubmitMany = Callable[[Member, dict[str, Any]], Awaitable[list[Submitted]]]


def _numbers(options: list[dict]) -> Iterator[tuple[str, Any]]:
    """(name, value) of every integer (4) or number (10) option in an interaction's options,
    those inside a subcommand (group) included."""
    for option in options:
        if option.get("type") in (4, 10):
            yield option["name"], option.get("value")
        yield from _numbers(option.get("options") or [])


class RangeCheckedTree(app_commands.CommandTree):
    """The command tree, refusing an option number outside the range its command declares
    (`app_commands.Range`): Discord enforces min_value/max_value in its client, discord.py does
    not, so a forged interaction (or a command registered before its range was) could hand a
    command any 64-bit number: a page SQLite cannot hold, a negative limit."""

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        command = interaction.command if interaction.type is discord.InteractionType.application_command else None
        if not isinstance(command, app_commands.Command):
            return True
        data: dict[str, Any] = dict(interaction.data or {})
        for name, value in _numbers(data.get("options") or []):
            parameter = next((p for p in command.parameters if p.display_name == name), None)
            if parameter is None:
                continue
            low, high = parameter.min_value, parameter.max_value
            if not isinstance(value, (int, float)) or (low is not None and value < low) or (
                    high is not None and value > high):
                where = " to ".join(str(x) for x in (low, high) if x is not None)
                await interaction.response.send_message(
                    f"⚠️ {name} must be a number{f' from {where}' if where else ''}: nothing was done.",
                    ephemeral=True)
                return False
        return True


class PintorBot(commands.Bot):
    # Class attributes, so that tests can shorten them on one bot.
    progress_interval_s: float = PROGRESS_INTERVAL_S  # at most one progress edit per message per this
    interaction_ttl_s: float = INTERACTION_TTL_S  # after this, results go to the channel instead
    send_timeout_s: float = SEND_TIMEOUT_S  # one message sent or edited (an upload) takes at most this

    def __init__(self, *, settings: Settings, studio: Studio, metrics: Metrics | None = None, **options: Any):
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False  # Pintor has no voice
        options.setdefault("intents", discord.Intents.default())  # no privileged intents needed
        options.setdefault("allowed_mentions", discord.AllowedMentions.none())  # each message allows its member
        options.setdefault("tree_cls", RangeCheckedTree)
        super().__init__(command_prefix=commands.when_mentioned, help_command=None, **options)
        self.settings = settings
        self.studio = studio
        self._followed: set[int] = set()  # jobs whose messages a reporter of this bot drives
        self._tasks: set[asyncio.Task] = set()
        self._posting: set[asyncio.Task] = set()  # jobs' ends being posted and recorded
        if metrics is not None:
            self._count_discord_errors(metrics)

    def _count_discord_errors(self, metrics: Metrics) -> None:
        """Every REST request Discord refuses or fails (4xx, 5xx; 429s after discord.py's own
        retries) counted by status in `metrics`, whether Pintor handles the error or not: the
        401/403/429 count is what earns a Cloudflare ban (10,000 in 10 minutes). discord.py has
        no hook for this, so the client's one request method is wrapped, on this bot only."""
        request = self.http.request

        async def counted(route: discord.http.Route, **kwargs: Any) -> Any:
            try:
                return await request(route, **kwargs)
            except discord.HTTPException as err:
                metrics.discord_error(err.status)
                raise

        self.http.request = counted

    async def setup_hook(self) -> None:
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        self.add_dynamic_items(*BUTTONS)
        self.add_listener(form_submitted, "on_interaction")  # Custom Zoom's and Remix's forms, by custom_id
        self.tree.on_error = self.on_app_command_error
        self.studio.listeners.append(self.on_job_event)
        # Results stored while the last run was stopping (or crashing), never posted: post them.
        # Read before the studio starts, so that no job re-run after the start is among them.
        for job in await self.studio.undelivered(max_age=UNDELIVERED_MAX_AGE):
            self._spawn(self._deliver_unfollowed(job.id), f"deliver-job-{job.id}")
        await self.sync_commands()

    async def sync_commands(self) -> None:
        """To the configured servers (commands appear at once), else globally (up to an hour)."""
        if not self.settings.discord_guild_ids:
            synced = await self.tree.sync()
            log.info("registered %d commands globally", len(synced))
            return
        for guild_id in self.settings.discord_guild_ids:
            guild = discord.Object(guild_id)
            self.tree.copy_global_to(guild=guild)
            try:
                synced = await self.tree.sync(guild=guild)
                log.info("registered %d commands in server %s", len(synced), guild_id)
            except discord.HTTPException as err:
                log.error("could not register the commands in server %s: %s (is Pintor invited there "
                          "with the applications.commands scope?)", guild_id, err)

    async def close(self) -> None:
        if self.on_job_event in self.studio.listeners:
            self.studio.listeners.remove(self.on_job_event)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*self._posting, return_exceptions=True)  # never cancelled: see _finish
        await super().close()

    # -- jobs -------------------------------------------------------------------------------------

    async def rules(self, guild_id: int | None) -> ServerRules | None:
        """A server's rules for a job made there; None in direct messages."""
        return await self.studio.rules(guild_id) if guild_id is not None else None

    async def press(self, interaction: Interaction, job_id: int, action: Action) -> None:
        """A button under job `job_id` pressed (`bot.buttons`): acknowledge at once, then make
        the job `action` asks the Studio for, for the member who pressed; its progress and
        result go to a new message. Bad cases get a message only the presser sees."""
        pressed = await self._pressed(interaction, job_id)
        if pressed is not None:
            delivery, rules, guild_id = pressed
            await self.start_job(interaction, delivery, lambda member, where: action(self.studio, member, where),
                                 rules=rules, origin_guild_id=guild_id)

    async def press_all(self, interaction: Interaction, job_id: int, actions: Sequence[Action]) -> None:
        """A button under job `job_id` that makes several jobs (Imagine all under a /describe):
        as `press`, each action a job of its own with its own message, one after another; the
        first refused (the member's queue limit reached, say) is said to the presser and the
        rest are not asked for."""
        pressed = await self._pressed(interaction, job_id)
        if pressed is None:
            return
        delivery, rules, guild_id = pressed
        for i, action in enumerate(actions):
            if i:  # each job's progress and result in its own follow-up message
                delivery = Delivery.for_interaction(interaction, new_message=True, received_at=delivery.received_at,
                                                    private=delivery.private)
            queued = await self.start_job(interaction, delivery, functools.partial(action, self.studio),
                                          rules=rules, origin_guild_id=guild_id)
            if not queued:
                return

    async def pick(self, interaction: Interaction, job_id: int, index: int) -> None:
        """U1–U4 pressed under job `job_id`: acknowledge at once, then post picture `index` alone
        with its buttons (`Studio.pick`: from the file store, no worker job) as a new message,
        recorded like any result (a restart before it is posted posts it then)."""
        pressed = await self._pressed(interaction, job_id)
        if pressed is None:
            return
        delivery, rules, guild_id = pressed
        member = Member(interaction.user.id, interaction.user.name)
        try:
            picked = await self.studio.pick(
                member, job_id, index, guild_id=guild_id, channel_id=interaction.channel_id, rules=rules,
                private=delivery.private or interaction.guild_id is None,
                direct=interaction.guild_id is None and guild_id is not None)
        except USER_ERRORS as err:
            await delivery.refuse(f"⚠️ {err}")
            return
        except Exception:  # noqa: BLE001 - the member hears of it; the log has the rest
            log.exception("could not show image %s of job %s for member %s", index, job_id, member.id)
            await delivery.refuse("⚠️ Something went wrong on Pintor's side. Try again.")
            return
        await self._finish(picked.id, delivery)

    async def _pressed(self, interaction: Interaction, job_id: int) -> tuple[Delivery, ServerRules | None,
                                                                             int | None] | None:
        """A press acknowledged, and the delivery, rules and server it is made under; None when
        it is refused (said to the presser only)."""
        received_at = time.monotonic()
        await interaction.response.defer()  # a component: "deferred update", the message stays as it is
        private = (await self.studio.preferences(interaction.user.id)).private
        delivery = Delivery.for_interaction(interaction, new_message=True, received_at=received_at, private=private)
        refusal, rules, guild_id = await self._button_refusal(interaction, job_id)
        if refusal is not None:
            await delivery.refuse(refusal)
            return None
        return delivery, rules, guild_id

    async def _button_refusal(self, interaction: Interaction, job_id: int, *, answering: bool = False
                              ) -> tuple[str | None, ServerRules | None, int | None]:
        """Whether a press under job `job_id` is refused whoever's and whatever it asks: (the
        refusal or None, the rules it is made under, their server). With `answering`, also where
        Pintor answers no job at all (paused, a channel not listed: `answer_refusal`), which
        the Studio checks again when the job is submitted."""
        job = await self.studio.job(job_id)
        # A press in a DM (under a result sent there) belongs to the server its job came from, and
        # that server's rules apply; one that belongs to no server needs DMs to be allowed.
        guild_id = interaction.guild_id if interaction.guild_id is not None else (job.guild_id if job else None)
        if guild_id is None and not self.settings.pintor_allow_dms:
            return DM_REFUSAL, None, guild_id
        rules = await self.rules(guild_id)
        if self.settings.pintor_buttons_author_only or (rules is not None and rules.buttons_author_only):
            if job is not None and job.user_id != interaction.user.id:
                return f"Only <@{job.user_id}>, who asked for job {job_id}, can use its buttons.", rules, guild_id
        if answering and (refusal := answer_refusal(rules, interaction.channel_id,
                                                    check_channel=interaction.guild_id is not None)):
            return refusal, rules, guild_id
        return None, rules, guild_id

    async def form_refusal(self, interaction: Interaction, job_id: int) -> str | None:
        """Why a button under job `job_id` that opens a form (Custom Zoom, Remix) must not open
        it: what a press would be refused for whatever the member types (DMs not allowed, the
        author's buttons only, Pintor paused or not answering in this channel); None to open it."""
        return (await self._button_refusal(interaction, job_id, answering=True))[0]

    async def start_job(self, interaction: Interaction, delivery: Delivery, submit: Submit, *,
                        rules: ServerRules | None = None, origin_guild_id: int | None = None) -> bool:
        """Store and queue a job for the member of `interaction` (already acknowledged), under
        the server's rules, then report it through `delivery` in the background. Returns
        whether it was queued (False: refused, and said so through `delivery`).

        `origin_guild_id`: for an interaction in a DM about a server's job (a button under a
        result sent by DM), that server: its rules apply and the job counts there."""
        async def one(member: Member, where: dict[str, Any]) -> list[Submitted]:
            return [await submit(member, where)]

        return await self.start_jobs(interaction, [delivery], one, rules=rules, origin_guild_id=origin_guild_id)

    async def start_jobs(self, interaction: Interaction, deliveries: list[Delivery], submit: SubmitMany, *,
                         rules: ServerRules | None = None, origin_guild_id: int | None = None) -> bool:
        """`start_job` for several jobs asked for at once (--repeat): `submit` stores and queues
        them all or none (`Studio.submit_many`), job i is reported through `deliveries[i]`; a
        refusal goes through the first. Returns whether they were queued."""
        delivery = deliveries[0]
        member = Member(interaction.user.id, interaction.user.name)
        guild_id = interaction.guild_id if interaction.guild_id is not None else origin_guild_id
        try:
            if rules is None:
                rules = await self.rules(guild_id)
            where = {"guild_id": guild_id, "channel_id": interaction.channel_id, "rules": rules,
                     # what goes to a DM is private too: nobody else may /show it in the server
                     "private": delivery.private or interaction.guild_id is None,
                     "direct": interaction.guild_id is None and guild_id is not None}
            submitted_jobs = await submit(member, where)
        except AlreadyMade as made:  # a button pressed again: the job its first press made, not a copy
            await delivery.refuse(already_made_text(made.job))
            return False
        except USER_ERRORS as err:
            await delivery.refuse(f"⚠️ {err}")
            return False
        except Exception as err:  # noqa: BLE001 - the member hears of it; the log has the rest
            if unreachable(err):
                log.warning("could not submit a job for member %s: the database is unreachable (%s)", member.id,
                            type(err).__name__)
                await delivery.refuse(DATABASE_DOWN)
                return False
            log.exception("could not submit a job for member %s", member.id)
            await delivery.refuse("⚠️ Something went wrong on Pintor's side; nothing was queued. Try again.")
            return False
        for submitted, job_delivery in zip(submitted_jobs, deliveries, strict=True):
            self._followed.add(submitted.job_id)  # before any event of the job can reach on_job_event
            self._spawn(self._report(submitted, job_delivery, member.id), f"report-job-{submitted.job_id}")
        return True

    async def _report(self, submitted: Submitted, delivery: Delivery, member_id: int) -> None:
        job_id, request = submitted.job_id, submitted.request
        try:
            reporter = ProgressReporter(delivery.progress, interval_s=self.progress_interval_s)
            doing = "describing" if request.kind == JobKind.DESCRIBE else "generating"
            await reporter.show_now(progress_text(request, member_id, queued_line(submitted.position)))
            final = await reporter.run(
                submitted.events, lambda event: progress_text(request, member_id, line)
                if (line := status_line(event, doing=doing)) else None)
            if final is not None:
                await self._finish(job_id, delivery, final)
        except Exception:  # noqa: BLE001
            log.exception("reporting job %s failed", job_id)
        finally:
            self._followed.discard(job_id)

    async def _finish(self, job_id: int, delivery: Delivery, final: Event | None = None) -> None:
        """Post a job's end: its pictures and buttons if it is done, else what happened."""
        job = await self.studio.job(job_id)
        if job is None or job_id in self.studio.forgotten:
            # deleted by its author's /forget while it waited or ran: settle its message (no
            # prompt, no preview of the forgotten picture); nothing new where none was shown
            self.studio.forgotten.discard(job_id)
            if delivery.token_alive:
                await delivery.final(Outgoing(FORGOTTEN))
            return
        if job.status == JobStatus.DONE:
            out = await result_message(self.studio, job, size_limit=delivery.size_limit)
        else:
            out = ending_message(job, final)
        # Posting and recording where it went run to their end even when close() cancels this
        # task: a result posted but not recorded would be posted a second time after a restart.
        posting = asyncio.ensure_future(self._post(job, delivery, out))
        self._posting.add(posting)
        posting.add_done_callback(self._posting.discard)
        await asyncio.shield(posting)

    async def _post(self, job: Job, delivery: Delivery, out: Outgoing) -> None:
        done = job.status == JobStatus.DONE
        # a text instead, when Discord takes no picture: the member hears the job is done
        fallback = unsent_message(job) if done else None
        message = await delivery.final(out, nonce=f"job-{job.id}", fallback=fallback)
        if message is not None and done:
            await self.studio.mark_posted(job.id, message.channel.id, message.id)

    async def on_job_event(self, job_id: int, event: Event) -> None:
        """Studio listener: results of jobs no reporter follows (queued again after a restart)
        are posted in their channel, mentioning the member."""
        if isinstance(event, (Done, Failed)) and job_id not in self._followed:
            self._spawn(self._deliver_unfollowed(job_id, event), f"deliver-job-{job_id}")

    async def _deliver_unfollowed(self, job_id: int, event: Event | None = None) -> None:
        job = await self.studio.job(job_id)
        if job is None or job.channel_id is None or job.message_id is not None:
            return  # made elsewhere (the CLI), or already posted
        log.info("posting job %s in channel %s", job_id, job.channel_id)
        await self._finish(job_id, await Delivery.for_job(self, job), event)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- errors -----------------------------------------------------------------------------------

    async def on_app_command_error(self, interaction: Interaction,
                                   error: app_commands.AppCommandError) -> None:
        if isinstance(error, app_commands.CheckFailure) and interaction.response.is_done():
            return  # the check told the member why (e.g. /pintor-admin without Manage Server)
        if isinstance(error, app_commands.TransformerError):
            # A value discord.py cannot turn into the option's type (a choice that is not one of
            # the command's choices: a forged interaction, or a client with a stale command list):
            # the member's input, not Pintor's fault; nothing was done.
            log.warning("/%s: refused %s", interaction.command.name if interaction.command else "?", error)
            text = (f"⚠️ {echo(str(error.value), 200) or 'That value'} is not a value this command takes: "
                    f"pick one from the list Discord shows.")
        elif unreachable(error):
            log.warning("/%s: the database is unreachable (%s)", interaction.command.name if interaction.command
                        else "?", type(error.__cause__ or error).__name__)
            text = DATABASE_DOWN
        else:
            log.error("/%s failed", interaction.command.name if interaction.command else "?", exc_info=error)
            text = "⚠️ Something went wrong on Pintor's side. Try again."
        try:
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True)
            else:
                await interaction.response.send_message(text, ephemeral=True)
        except discord.HTTPException:
            pass


# `interaction.client` is this bot: cogs and items annotate with this alias (as discord.py's
# examples do), so the client's attributes (studio, settings, start_job…) are typed.
Interaction: TypeAlias = discord.Interaction[PintorBot]
