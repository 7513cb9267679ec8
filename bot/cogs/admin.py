"""/pintor-admin: a server's rules. Only members with Manage Server see or run it."""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.intake import allowed_loras, allowed_models, fallback_model, id_list, name_list, stale_allow_list
from bot.limits import listing, plain
from generation.prompt import MAX_LORAS
from generation.registry import Registry, UnknownLoraError, UnknownModelError
from storage.models import ServerRules

if TYPE_CHECKING:
    from bot.discord_bot import Interaction, PintorBot

EVERYTHING = "all"
NOTHING = "none"
MAX_CHANNELS = 25  # keeps the list, and every message that shows it, well inside Discord's 2,000 characters
REFUSED_MAX_CHARS = 1500  # what a refusal lists of a long text: its answer stays inside 2,000 characters
CHANNEL_LOOKUP_TIMEOUT_S = 2.0  # channels not in the cache are asked of Discord: answer within its 3 s
OPERATOR_AUTHOR_ONLY = "set for every server by Pintor's operator (PINTOR_BUTTONS_AUTHOR_ONLY)"

# what a member may write in /pintor-admin channels, one piece at a time
_CHANNEL_PIECES = re.compile(r"<#(?P<channel>\d+)>|<@&(?P<role>\d+)>|<@!?(?P<member>\d+)>|(?P<id>\d{15,22})(?![\w>])"
                             r"|(?P<other>[^\s,]+)")
# channel kinds Pintor cannot answer in as such (their posts or channels have ids of their own)
_NOT_ANSWERABLE = {discord.ChannelType.category: "a category", discord.ChannelType.forum: "a forum",
                   discord.ChannelType.media: "a media channel"}


def describe(rules: ServerRules, registry: Registry, *, author_only_forced: bool = False) -> str:
    """The server's rules as in force, for admins. `author_only_forced`: the process setting
    PINTOR_BUTTONS_AUTHOR_ONLY, which overrides the server's choice of who may press buttons."""
    def limit(value, unit=""):
        return f"{value}{unit}" if value else "no limit"

    allowed = allowed_models(rules, registry)  # names no longer configured do not count
    default = fallback_model(registry, allowed)
    models = listing(allowed, 500, separator=", ", empty="all")
    if stale := stale_allow_list(rules, registry):  # the sentence /settings and /info say too
        models += f" ({stale})"
    if default == registry.default:
        models += f" · prompts without --model use {default}"
    else:
        models += f" · prompts without --model use {default} (the first allowed that makes pictures; " \
                  f"Pintor's default {registry.default} is not allowed)"
    if author_only_forced:
        own = "" if rules.buttons_author_only else " — this server's own choice (everyone) applies once that is off"
        buttons = f"only the author, {OPERATOR_AUTHOR_ONLY}{own}"
    else:
        buttons = f"{'only the author' if rules.buttons_author_only else 'everyone'} (this server's choice)"
    lora_names = allowed_loras(rules)
    if lora_names is None:
        loras = "all configured" if registry.loras else "all (none are configured)"
    else:
        loras = listing(lora_names, 400, separator=", ", empty="none")
        gone = [name for name in lora_names if name not in registry.loras]
        if gone:
            loras += (f" (no longer configured: {listing(gone, 200, separator=', ')}"
                      + ("; the list names no configured LoRA, so none is allowed until an admin sets it again"
                         if len(gone) == len(lora_names) else ", not usable") + ")")
    loras += f" · at most {rules.max_loras if rules.max_loras is not None else MAX_LORAS} per job"
    # long lists end in "… and N more": the reply stays within Discord's 2,000 characters
    channels = listing([f"<#{c}>" for c in id_list(rules.channel_ids)], 500, separator=", ", empty="all channels")
    return "\n".join([
        "**Pintor on this server**" + (" — ⏸ **paused**: new jobs are refused" if rules.paused else ""),
        f"models allowed: {models}",
        f"LoRAs allowed: {loras}",
        f"answers in: {channels}",
        f"jobs one member may have queued: {limit(rules.max_queued_per_member)}",
        f"jobs per member per day: {limit(rules.daily_quota)}",
        f"max steps: {limit(rules.max_steps)} · max side: {limit(rules.max_side, ' px')}",
        f"buttons: {buttons}",
        f"NSFW check: {'on' if rules.nsfw_check else 'off'} (where the model has a checker)",
        f"remote models (each picture costs money): {_remote_line(rules, registry)}",
        f"parameters Pintor does not have: {'refused (strict)' if rules.strict_parameters else 'ignored, with a notice'}",
        f"ControlNet (control images): {'allowed' if rules.allow_controlnet else 'not allowed'}",
        f"CLIP guidance (--clip): {'allowed' if rules.clip_guidance else 'refused'} "
        f"(models that have it: {', '.join(m.name for m in registry.generators() if m.can_clip_guide) or 'none'})",
    ])


def _remote_line(rules: ServerRules, registry: Registry) -> str:
    """Whether the server allows remote models, and which are configured."""
    remote = [spec.name for spec in registry.models.values() if spec.is_remote]
    names = listing(remote, 200, separator=", ", empty="none are configured")
    return f"{'allowed' if rules.remote_models else 'not allowed'} ({names})"


def _some(names: list[str], max_chars: int = REFUSED_MAX_CHARS) -> str:
    """`names` joined with commas, cut to "… and N more" where they would pass `max_chars`."""
    shown: list[str] = []
    for n, name in enumerate(names):
        if len(", ".join(shown + [name])) > max_chars:
            return ", ".join(shown) + f" … and {len(names) - n} more"
        shown.append(name)
    return ", ".join(shown)


async def _channel_of(interaction: Interaction, channel_id: int):
    """The channel with this id from the cache, else from Discord; None where Pintor sees none."""
    guild = interaction.guild
    channel = guild.get_channel_or_thread(channel_id) if guild is not None else None
    if channel is not None:
        return channel
    try:
        return await interaction.client.fetch_channel(channel_id)
    except (discord.NotFound, discord.Forbidden):
        return None


async def server_channels(interaction: Interaction, text: str) -> tuple[list[int], list[str]]:
    """The channels of this server that `text` names (mentions or ids, in order, once each) and,
    for everything else in it, what it is (a role, a member, another server's channel…)."""
    wanted: list[tuple[int, str]] = []  # (id, as written)
    refused: list[str] = []
    for piece in _CHANNEL_PIECES.finditer(text):
        if piece["channel"] or piece["id"]:
            wanted.append((int(piece["channel"] or piece["id"]), piece[0]))
        elif piece["role"]:
            role = interaction.guild.get_role(int(piece["role"])) if interaction.guild else None
            refused.append(f"{f'@{role.name}' if role else piece[0]} (a role)")
        elif piece["member"]:
            refused.append(f"{piece[0]} (a member)")
        else:
            refused.append(f"`{piece[0][:40].replace('`', '')}` (not a channel mention)")
    ids = list(dict.fromkeys(channel_id for channel_id, _ in wanted))
    if len(ids) > MAX_CHANNELS:
        return [], [f"{len(ids)} channels (at most {MAX_CHANNELS})"]
    try:
        found = await asyncio.wait_for(asyncio.gather(*(_channel_of(interaction, i) for i in ids)),
                                       CHANNEL_LOOKUP_TIMEOUT_S)
    except (TimeoutError, discord.HTTPException):
        return [], ["channels Pintor could not look up just now (Discord did not answer: try again)"]
    written = dict(reversed(wanted))  # id → how it was first written
    chosen = []
    for channel_id, channel in zip(ids, found, strict=False):
        guild = getattr(channel, "guild", None)
        if channel is None:
            refused.append(f"{written[channel_id]} (no channel Pintor can see)")
        elif guild is None or guild.id != interaction.guild_id:
            where = "a direct message" if guild is None else "on another server"
            refused.append(f"#{getattr(channel, 'name', None) or channel_id} ({where})")
        elif channel.type in _NOT_ANSWERABLE:
            refused.append(f"#{channel.name} ({_NOT_ANSWERABLE[channel.type]}: name the channels in it)")
        else:
            chosen.append(channel_id)
    return chosen, refused


@app_commands.default_permissions(manage_guild=True)
@app_commands.guild_only()
class Admin(commands.GroupCog, group_name="pintor-admin"):
    """Server settings for Pintor."""

    def __init__(self, bot: PintorBot):
        self.bot = bot
        super().__init__()

    async def interaction_check(self, interaction: Interaction) -> bool:
        # default_permissions hides the commands; server owners can change that, so check too
        if interaction.guild_id is None or not interaction.permissions.manage_guild:
            await interaction.response.send_message("Only members with Manage Server can change Pintor's settings.",
                                                    ephemeral=True)
            return False
        return True

    def _describe(self, rules: ServerRules) -> str:
        return describe(rules, self.bot.studio.models,
                        author_only_forced=self.bot.settings.pintor_buttons_author_only)

    async def _update(self, interaction: Interaction, *, note: str = "", **values) -> None:
        """Store the values, then answer with the rules as stored (and `note` above them)."""
        rules = await self.bot.studio.update_rules(interaction.guild_id, **values)
        await interaction.response.send_message((note + "\n" if note else "") + self._describe(rules),
                                                ephemeral=True)

    @app_commands.command(name="show")
    async def show(self, interaction: Interaction) -> None:
        """This server's Pintor settings."""
        rules = await self.bot.studio.rules(interaction.guild_id)
        await interaction.response.send_message(self._describe(rules), ephemeral=True)

    @app_commands.command(name="models")
    @app_commands.describe(names="model names separated by commas, or 'all'")
    async def models(self, interaction: Interaction, names: str) -> None:
        """Which models members may use."""
        if names.strip().lower() == EVERYTHING:
            return await self._update(interaction, allowed_models=None)
        registry = self.bot.studio.models
        chosen, unknown = [], []
        for name in name_list(names):
            try:
                chosen.append(registry.get(name).name)  # as the registry spells it
            except UnknownModelError:
                unknown.append(name)
        if unknown or not chosen:
            await interaction.response.send_message(plain(
                f"Unknown model(s): {listing(unknown, 1000, separator=', ', empty='(none given)')}. Configured: "
                f"{', '.join(registry.names)}."), ephemeral=True)
            return
        chosen = list(dict.fromkeys(chosen))
        if not any(registry.get(name).can_generate for name in chosen):
            makers = ", ".join(m.name for m in registry.generators())
            await interaction.response.send_message(
                f"Not changed: {', '.join(chosen)} cannot make pictures from text, so every /imagine would be "
                f"refused. Allow at least one of: {makers}.", ephemeral=True)
            return
        await self._update(interaction, allowed_models=",".join(chosen))

    @app_commands.command(name="loras")
    @app_commands.describe(names="LoRA names separated by commas, 'all' or 'none'",
                           max_per_job=f"the most LoRAs one job may use (0 = up to Pintor's own {MAX_LORAS})")
    async def loras(self, interaction: Interaction, names: str,
                    max_per_job: app_commands.Range[int, 0, MAX_LORAS] | None = None) -> None:
        """Which LoRAs members may use (--lora), and how many per job."""
        values: dict[str, str | int | None] = {}
        if max_per_job is not None:
            values["max_loras"] = max_per_job or None
        choice = names.strip().lower()
        if choice in (EVERYTHING, NOTHING):
            return await self._update(interaction, allowed_loras=None if choice == EVERYTHING else "", **values)
        registry = self.bot.studio.models
        chosen, unknown = [], []
        for name in name_list(names):
            try:
                chosen.append(registry.lora(name).name)  # as the registry spells it
            except UnknownLoraError:
                unknown.append(name)
        if unknown or not chosen:
            await interaction.response.send_message(plain(
                f"Not changed: unknown LoRA(s): {listing(unknown, 1000, separator=', ', empty='(none given)')}. "
                f"Configured: {', '.join(registry.loras) or 'none'}. Or write 'all' or 'none'."), ephemeral=True)
            return
        await self._update(interaction, allowed_loras=",".join(dict.fromkeys(chosen)), **values)

    @app_commands.command(name="channels")
    @app_commands.describe(channels="this server's channels as mentions (#art #bots), or 'all'")
    async def channels(self, interaction: Interaction, channels: str) -> None:
        """Which channels Pintor answers in."""
        if channels.strip().lower() == EVERYTHING:
            return await self._update(interaction, channel_ids=None)
        chosen, refused = await server_channels(interaction, channels)
        if refused:
            await interaction.response.send_message(
                "Not changed: Pintor can answer only in this server's channels, not in "
                + _some(refused) + ". Mention the channels (#name), or write 'all'.", ephemeral=True)
            return
        if not chosen:
            await interaction.response.send_message("Mention the channels (#name), or write 'all'.", ephemeral=True)
            return
        await self._update(interaction, channel_ids=",".join(map(str, chosen)))

    @app_commands.command(name="limits")
    @app_commands.describe(max_queued="jobs one member may have queued or running (0 = no limit)",
                           daily_quota="jobs per member per day (0 = no limit)",
                           max_steps="the most steps a job may take (0 = no limit)",
                           max_side="the longest side of a picture in pixels (0 = no limit)")
    async def limits(self, interaction: Interaction,
                     max_queued: app_commands.Range[int, 0, 1000] | None = None,
                     daily_quota: app_commands.Range[int, 0, 100000] | None = None,
                     max_steps: app_commands.Range[int, 0, 150] | None = None,
                     max_side: app_commands.Range[int, 0, 8192] | None = None) -> None:
        """Limits that keep the queue fair and the GPU safe."""
        given = {"max_queued_per_member": max_queued, "daily_quota": daily_quota,
                 "max_steps": max_steps, "max_side": max_side}
        await self._update(interaction, **{k: (v or None) for k, v in given.items() if v is not None})

    @app_commands.command(name="buttons")
    @app_commands.describe(author_only="whether only the member who asked may press a result's buttons")
    async def buttons(self, interaction: Interaction, author_only: bool) -> None:
        """Who may press U/V/🔄 under a result."""
        note = ""
        if self.bot.settings.pintor_buttons_author_only and not author_only:
            note = (f"⚠️ Stored, but not in force: buttons answer only the author, {OPERATOR_AUTHOR_ONLY}. "
                    f"This server's choice applies once that is off.")
        await self._update(interaction, note=note, buttons_author_only=author_only)

    @app_commands.command(name="nsfw-check")
    @app_commands.describe(on="check results with the model's NSFW checker (flagged ones are blurred)")
    async def nsfw_check(self, interaction: Interaction, on: bool) -> None:
        """The NSFW check of results, where the model ships a checker."""
        await self._update(interaction, nsfw_check=on)

    @app_commands.command(name="remote-models")
    @app_commands.describe(allowed="let members use models that a provider's API makes (OpenAI's DALL·E, "
                                   "gpt-image-1): each picture costs Pintor's operator money")
    async def remote_models(self, interaction: Interaction, allowed: bool) -> None:
        """Allow or refuse remote models (OpenAI) on this server; refused until allowed."""
        await self._update(interaction, remote_models=allowed)

    @app_commands.command(name="strict-parameters")
    @app_commands.describe(on="refuse prompts with parameters Pintor does not have (--sref, --weird, --w…) "
                              "instead of ignoring them with a notice")
    async def strict_parameters(self, interaction: Interaction, on: bool) -> None:
        """Whether unknown prompt parameters are refused or ignored with a notice."""
        await self._update(interaction, strict_parameters=on)

    @app_commands.command(name="controlnet")
    @app_commands.describe(on="let members steer pictures with a control image (/imagine control:, --cn)")
    async def controlnet(self, interaction: Interaction, on: bool) -> None:
        """Whether members may use ControlNet (control images) on this server."""
        await self._update(interaction, allow_controlnet=on)

    @app_commands.command(name="clip-guidance")
    @app_commands.describe(on="allow --clip (CLIP guidance: pictures closer to the prompt, runs several times slower)")
    async def clip_guidance(self, interaction: Interaction, on: bool) -> None:
        """Whether members may use CLIP guidance (--clip)."""
        await self._update(interaction, clip_guidance=on)

    @app_commands.command(name="pause")
    async def pause(self, interaction: Interaction) -> None:
        """Refuse new jobs on this server (queued ones still run)."""
        await self._update(interaction, paused=True)

    @app_commands.command(name="resume")
    async def resume(self, interaction: Interaction) -> None:
        """Accept new jobs again."""
        await self._update(interaction, paused=False)


async def setup(bot: PintorBot) -> None:
    await bot.add_cog(Admin(bot))
