"""Where one job's messages go.

While the interaction's token lives (15 minutes after the member's command or click), its
messages are edits of the interaction's message: the deferred reply to /imagine, or a new
follow-up message under a pressed button. After that — a job that waited long in the queue,
or one re-queued after a restart — the result goes out as a new message in the channel, sent
with the bot token and mentioning the member (for a member whose /settings make results
private: in a direct message). Progress is not worth a new message then: it is dropped. A
token Discord refuses (401, unknown webhook) is never tried again.

When Discord misbehaves: discord.py itself waits out each 429's `retry_after` and retries
server errors (5 tries of one request, 1 + 3 + 5 + 7 s apart; webhooks on any 5xx, the bot's
REST on 500/502/504/524). What it does not do is give up on a request Discord never answers
(aiohttp's own limit is 5 minutes): Pintor sends a result within `PintorBot.send_timeout_s`, at
most `SEND_TRIES` times — a channel message with a nonce Discord enforces (`job-<id>`), so a
try after a time-out never makes a second message; an edit of the interaction's message is
the same edit again. When the pictures cannot go out at all, a text (the `fallback`) tells the
member so, and how to see them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import discord
from discord.utils import MISSING

from bot.attachments import DEFAULT_UPLOAD_LIMIT_BYTES, fit_image
from bot.limits import plain
from bot.results import Outgoing

if TYPE_CHECKING:  # types only: the bot module imports this one
    from bot.discord_bot import Interaction, PintorBot
    from storage.models import Job

log = logging.getLogger(__name__)
T = TypeVar("T")

INTERACTION_TTL_S = 14 * 60  # Discord: interaction tokens work for 15 minutes; keep a margin
TOKEN_GONE_CODES = {10015, 10062}  # unknown webhook, unknown interaction
SEND_TRIES = 3  # Pintor's tries of one result that got no answer in time (discord.py retries 429s, 5xx)
SEND_BACKOFF_S = 1.0  # before the second try; twice that before the third
SEND_TIMEOUT_S = 60.0  # one message sent or edited, its picture uploaded (PintorBot.send_timeout_s)
NOT_DONE = "⚠️ Not done."  # what the channel sees, for a moment, of a refusal after a public "thinking…"


def _token_gone(err: discord.HTTPException) -> bool:
    return err.status == 401 or (err.status == 404 and err.code in TOKEN_GONE_CODES)


class Delivery:
    def __init__(self, bot: PintorBot, *, member_id: int, channel_id: int | None, guild_id: int | None,
                 size_limit: int = DEFAULT_UPLOAD_LIMIT_BYTES, interaction: Interaction | None = None,
                 new_message: bool = False, received_at: float | None = None, private: bool = False):
        self.bot = bot
        self.member_id = member_id
        self.channel_id = channel_id
        self.guild_id = guild_id
        self.size_limit = size_limit
        self.interaction = interaction
        self.new_message = new_message  # True: a follow-up message; False: the interaction's own reply
        self.private = private  # only the member sees the messages (ephemeral; a DM after the token)
        self.received_at = time.monotonic() if received_at is None else received_at
        self.message: discord.Message | None = None  # the interaction message, once sent or edited
        self._token_refused = False
        self.mentions = discord.AllowedMentions(everyone=False, roles=False, replied_user=False,
                                                users=[discord.Object(member_id)])

    @classmethod
    def for_interaction(cls, interaction: Interaction, *, new_message: bool, received_at: float,
                        private: bool = False) -> Delivery:
        return cls(interaction.client, member_id=interaction.user.id, channel_id=interaction.channel_id,
                   guild_id=interaction.guild_id, size_limit=interaction.filesize_limit,
                   interaction=interaction, new_message=new_message, received_at=received_at, private=private)

    @classmethod
    async def for_job(cls, bot: PintorBot, job: Job) -> Delivery:
        """No interaction: the job's channel (or the member's DMs, for a job asked for in
        private mode: what the member chose when they asked, whatever their settings say now)."""
        guild = bot.get_guild(job.guild_id) if job.guild_id else None
        return cls(bot, member_id=job.user_id, channel_id=job.channel_id, guild_id=job.guild_id,
                   size_limit=guild.filesize_limit if guild else DEFAULT_UPLOAD_LIMIT_BYTES, private=job.private)

    @property
    def token_alive(self) -> bool:
        return (self.interaction is not None and not self._token_refused
                and time.monotonic() - self.received_at < self.bot.interaction_ttl_s)

    # -- what the reporter calls ----------------------------------------------------------------

    async def progress(self, content: str, preview: bytes | None = None) -> None:
        if not self.token_alive:
            return
        attachments: Any = MISSING
        if preview is not None:
            fitted = await asyncio.to_thread(fit_image, preview, "preview.png", self.size_limit)
            if fitted is not None:
                attachments = [Outgoing("", fitted).files()[0]]
        try:
            await asyncio.wait_for(self._interaction_message(content=content, attachments=attachments),
                                   self.bot.send_timeout_s)
        except discord.HTTPException as err:
            self._refused(err, "a progress update")
        except TimeoutError:
            log.warning("a progress update took over %s s; dropped", self.bot.send_timeout_s)

    async def final(self, out: Outgoing, *, nonce: str | None = None,
                    fallback: Outgoing | None = None) -> discord.Message | None:
        """The last state; always sent: on the interaction while it can be, else in the channel
        (a message carrying `nonce`, which Discord makes once however often it is sent). Each way
        is tried `SEND_TRIES` times; when `out` cannot go (Discord's errors, time-outs),
        `fallback` — a text without pictures — tells the member. Returns the message, or None
        when nothing could be sent (logged)."""
        for message in (out, fallback) if fallback is not None else (out,):
            if self.token_alive:
                try:
                    return await self._tried(partial(self._interaction_message, content=message.content,
                                                     attachments=message.files(), view=message.view))
                except discord.HTTPException as err:
                    self._refused(err, "the result")
                    if not self._token_refused:
                        continue
                except TimeoutError:
                    log.warning("could not send the result: no answer in %s s", self.bot.send_timeout_s)
                    continue
            try:
                return await self._tried(partial(self._channel_message, message, nonce))
            except (discord.HTTPException, TimeoutError):
                log.exception("could not post a result for member %s (channel %s, private: %s)",
                              self.member_id, self.channel_id, self.private)
            if nonce is not None:
                nonce = f"{nonce}-t"  # the fallback is another message
        return None

    async def _tried(self, send: Callable[[], Awaitable[T]]) -> T:
        """`await send()` within the send time-out, up to SEND_TRIES times while Discord does not
        answer in time (discord.py has retried its errors already); raises the last TimeoutError,
        or discord.HTTPException at once."""
        for attempt in range(1, SEND_TRIES + 1):
            try:
                return await asyncio.wait_for(send(), self.bot.send_timeout_s)
            except TimeoutError:
                if attempt == SEND_TRIES:
                    raise
                log.warning("sending a result got no answer in %s s, try %d of %d", self.bot.send_timeout_s,
                            attempt, SEND_TRIES)
                await asyncio.sleep(SEND_BACKOFF_S * attempt)  # no storm: 1 s, then 2 s
        raise AssertionError("unreachable")

    async def refuse(self, text: str) -> None:
        """Tell the member why nothing was done, in a message only they see. `text` may quote
        the member (a prompt error): it is made safe and short (`bot.limits.plain`)."""
        quiet = discord.AllowedMentions.none()
        text = plain(text)
        try:
            if not self.new_message and self.private:  # an ephemeral reply already
                await self.interaction.edit_original_response(content=text, allowed_mentions=quiet)
                return
            if not self.new_message:
                # The public "thinking…" reply can't turn ephemeral, and a first follow-up would
                # only replace it: settle it (without the reason, which is the member's), answer
                # privately, then remove it.
                await self.interaction.edit_original_response(content=NOT_DONE, allowed_mentions=quiet)
                try:
                    await self.interaction.followup.send(text, ephemeral=True, allowed_mentions=quiet)
                except discord.HTTPException:  # no private way left: the public reply says why
                    await self.interaction.edit_original_response(content=text, allowed_mentions=quiet)
                    raise
                await self.interaction.delete_original_response()
                return
            await self.interaction.followup.send(text, ephemeral=True, allowed_mentions=quiet)
        except discord.HTTPException as err:
            self._refused(err, "a refusal")

    # -- the two ways out -----------------------------------------------------------------------

    async def _interaction_message(self, *, content: str, attachments: Any = MISSING,
                                   view: discord.ui.View | None | Any = MISSING) -> discord.Message:
        if not self.new_message:
            self.message = await self.interaction.edit_original_response(
                content=content, attachments=attachments, view=view, allowed_mentions=self.mentions)
        elif self.message is None:
            self.message = await self.interaction.followup.send(
                content, files=attachments, view=view if view is not None else MISSING,
                allowed_mentions=self.mentions, ephemeral=self.private, wait=True)
        else:
            self.message = await self.message.edit(
                content=content, attachments=attachments, view=view, allowed_mentions=self.mentions)
        return self.message

    async def _channel_message(self, out: Outgoing, nonce: str | None = None) -> discord.Message | None:
        if self.channel_id is None and not self.private:
            log.warning("a result for member %s has no channel to go to", self.member_id)
            return None
        if self.private:
            channel: discord.abc.Messageable = await self.bot.create_dm(discord.Object(self.member_id))
        else:
            channel = self.bot.get_partial_messageable(self.channel_id, guild_id=self.guild_id)
        return await channel.send(out.content, files=out.files() or None, view=out.view,
                                  allowed_mentions=self.mentions, nonce=nonce)

    def _refused(self, err: discord.HTTPException, what: str) -> None:
        if _token_gone(err):
            self._token_refused = True
            log.info("the interaction token was refused (%s); results go to the channel", err.status)
        else:
            log.warning("could not send %s: %s", what, err)
