"""/settings: a member's defaults, chosen with select menus; explicit parameters still win.

custom_ids: pintor:set:<member>:<model|aspect|quality|stylize|private|remix|append|reset>, and the
"Always append" modal pintor:append:<member>."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.intake import USER_ERRORS, allowed_models, fallback_model, saved_model_gone, stale_allow_list
from bot.limits import SELECT_OPTION_TEXT, clean, clip, echo, plain
from generation.registry import Registry
from storage.models import MemberPreferences, ServerRules

if TYPE_CHECKING:
    from bot.discord_bot import Interaction, PintorBot

ASPECTS = ["1:1", "3:2", "2:3", "4:3", "3:4", "16:9", "9:16", "21:9"]
QUALITIES = {"0.5": 0.5, "1": 1.0, "2": 2.0}
STYLIZES = [0, 50, 100, 250, 500, 750, 1000]
DEFAULT = "default"  # the option that clears a setting


def describe(settings: MemberPreferences, registry: Registry, rules: ServerRules | None = None) -> str:
    """A member's defaults as they apply where /settings was used (under a server's `rules`;
    None in DMs). A saved model that can no longer be used there (removed by an admin, or not
    allowed on this server) is said to be gone, with the model used instead."""
    private = "on: results are shown only to you" if settings.private else "off"
    allowed = allowed_models(rules, registry)
    default = fallback_model(registry, allowed)
    where = "server default" if rules is not None else "default"
    model = f"`{settings.model or f'{default} ({where})'}`"
    if settings.model and (gone := saved_model_gone(registry, settings.model, allowed)):
        model = f"`{settings.model}` — ⚠️ {gone.removeprefix('is ')}: `{default}` is used instead. Choose another below."
    stale = stale_allow_list(rules, registry)  # the sentence /info and /pintor-admin show say too
    return "\n".join([
        "**Your defaults** (parameters in a prompt always win):",
        f"model: {model}",
        *([f"ℹ️ {stale}"] if stale else []),
        f"aspect ratio: `{settings.aspect or '1:1'}` · quality: `{settings.quality or 1}` · "
        f"stylize: `{settings.stylize if settings.stylize is not None else 'model default'}`",
        f"private mode: {private}",
        "remix mode: " + ("on: V, 🔄, Zoom Out and Pan first show the prompt, to change it" if settings.remix
                          else "off"),
        f"always append: {echo(settings.append or '') or '(nothing)'}",  # member text: escaped, not in a code span
    ])


def _options(values, current) -> list[discord.SelectOption]:
    return [discord.SelectOption(label=DEFAULT, value=DEFAULT, default=current is None)] + [
        discord.SelectOption(label=clip(str(v), SELECT_OPTION_TEXT), value=str(v), default=str(v) == str(current))
        for v in values]


SETTING = r"pintor:set:(?P<user>[0-9]{1,20}):"
APPEND_MODAL = re.compile(r"pintor:append:(?P<user>[0-9]{1,20})")


def settings_view(bot: PintorBot, settings: MemberPreferences) -> discord.ui.View:
    """The menus and buttons of a /settings message. Every control is persistent (its
    custom_id names the member and the setting): it keeps working after restarts, for as long
    as the message is shown, and each change is saved at once."""
    view = discord.ui.View(timeout=None)
    user = settings.user_id
    models = [m.name for m in bot.studio.models.generators()][:24]
    view.add_item(SettingSelect(user, "model", _options(models, settings.model)))
    view.add_item(SettingSelect(user, "aspect", _options(ASPECTS, settings.aspect)))
    view.add_item(SettingSelect(user, "quality", _options(list(QUALITIES), _quality_label(settings.quality))))
    view.add_item(SettingSelect(user, "stylize", _options(STYLIZES, settings.stylize)))
    for action in ("private", "remix", "append", "reset"):
        view.add_item(SettingButton(user, action))
    return view


class SettingSelect(discord.ui.DynamicItem[discord.ui.Select],
                    template=SETTING + r"(?P<field>model|aspect|quality|stylize)"):
    PLACEHOLDERS = {"model": "model", "aspect": "aspect ratio", "quality": "quality", "stylize": "stylize"}

    def __init__(self, user_id: int, field: str, options: list[discord.SelectOption] | None = None):
        super().__init__(discord.ui.Select(custom_id=f"pintor:set:{user_id}:{field}", placeholder=self.PLACEHOLDERS[field],
                                           options=options or [discord.SelectOption(label=DEFAULT)]))
        self.user_id, self.field = user_id, field

    @classmethod
    async def from_custom_id(cls, interaction: Interaction, item: discord.ui.Select,
                             match: re.Match[str]) -> SettingSelect:
        return cls(int(match["user"]), match["field"])

    async def interaction_check(self, interaction: Interaction) -> bool:
        return await _own(interaction, self.user_id)

    async def callback(self, interaction: Interaction) -> None:
        value = self.item.values[0]
        await save(interaction, **{self.field: None if value == DEFAULT else _convert(self.field, value)})


class SettingButton(discord.ui.DynamicItem[discord.ui.Button], template=SETTING + r"(?P<action>private|remix|append|reset)"):
    LOOKS = {"private": ("Private mode on/off", discord.ButtonStyle.secondary),
             "remix": ("Remix mode on/off", discord.ButtonStyle.secondary),
             "append": ("Always append…", discord.ButtonStyle.secondary),
             "reset": ("Reset all", discord.ButtonStyle.danger)}

    def __init__(self, user_id: int, action: str):
        label, style = self.LOOKS[action]
        super().__init__(discord.ui.Button(label=label, style=style, custom_id=f"pintor:set:{user_id}:{action}"), row=4)
        self.user_id, self.action = user_id, action

    @classmethod
    async def from_custom_id(cls, interaction: Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> SettingButton:
        return cls(int(match["user"]), match["action"])

    async def interaction_check(self, interaction: Interaction) -> bool:
        return await _own(interaction, self.user_id)

    async def callback(self, interaction: Interaction) -> None:
        if self.action == "private":
            settings = await interaction.client.studio.preferences(self.user_id)
            await save(interaction, private=not settings.private)
        elif self.action == "remix":
            settings = await interaction.client.studio.preferences(self.user_id)
            await save(interaction, remix=not settings.remix)
        elif self.action == "reset":
            await save(interaction, model=None, aspect=None, quality=None, stylize=None, private=False, append="",
                       remix=False)
        else:
            settings = await interaction.client.studio.preferences(self.user_id)
            modal = AppendModal(self.user_id, settings.append)
            await interaction.response.send_modal(modal)
            # Its submission is answered by Preferences.on_interaction, which a restart does
            # not forget: discord.py's own dispatch of a modal lives only in this process.
            modal.stop()


class AppendModal(discord.ui.Modal, title="Always append"):
    text: discord.ui.TextInput[AppendModal] = discord.ui.TextInput(label="Added to every prompt: words, --parameters", required=False,
                                max_length=200, placeholder="film grain --no text, watermark --chaos 10",
                                custom_id="append")

    def __init__(self, user_id: int, current: str):
        super().__init__(custom_id=f"pintor:append:{user_id}")
        self.text.default = current


async def _own(interaction: Interaction, user_id: int) -> bool:
    if interaction.user.id != user_id:
        await interaction.response.send_message("These are someone else's settings: use /settings for yours.",
                                                ephemeral=True)
        return False
    return True


async def save(interaction: Interaction, **values) -> None:
    """Store the member's change and show the message again with what is stored now."""
    bot = interaction.client
    settings = await bot.studio.update_preferences(interaction.user.id, interaction.user.name, **values)
    await interaction.response.edit_message(content=await _describe_here(bot, interaction, settings),
                                            view=settings_view(bot, settings))


def _text_value(data: dict, custom_id: str) -> str:
    """A text input's value in a modal submission (in an action row, or in a label)."""
    for row in data.get("components", []):
        for component in row.get("components", []) + ([row["component"]] if "component" in row else []):
            if component.get("custom_id") == custom_id:
                return component.get("value") or ""
    return ""


async def _describe_here(bot: PintorBot, interaction: Interaction, settings: MemberPreferences) -> str:
    """`describe` under the rules of the server where the member is (none in DMs)."""
    rules = await bot.rules(interaction.guild_id)
    return describe(settings, bot.studio.models, rules)


def _convert(field: str, value: str):
    if field == "quality":
        return QUALITIES[value]
    if field == "stylize":
        return int(value)
    return value


def _quality_label(quality: float | None) -> str | None:
    return None if quality is None else next(k for k, v in QUALITIES.items() if v == quality)


class Preferences(commands.Cog):
    def __init__(self, bot: PintorBot):
        self.bot = bot

    @app_commands.command(name="settings")
    async def settings(self, interaction: Interaction) -> None:
        """Your defaults: model, aspect ratio, quality, stylize, private and remix mode (only you see this)."""
        settings = await self.bot.studio.preferences(interaction.user.id)
        await interaction.response.send_message(await _describe_here(self.bot, interaction, settings),
                                                view=settings_view(self.bot, settings), ephemeral=True)

    @commands.Cog.listener()
    async def on_interaction(self, interaction: Interaction) -> None:
        """The "Always append" modal's submission (see SettingButton)."""
        if interaction.type is not discord.InteractionType.modal_submit:
            return
        match = APPEND_MODAL.fullmatch((interaction.data or {}).get("custom_id", ""))
        if match is None or not await _own(interaction, int(match["user"])):
            return
        # control characters as the prompt parser reads them (spaces): PostgreSQL cannot store a NUL
        value = clean(_text_value(interaction.data, "append")).strip()
        longest = AppendModal.text.max_length or 0
        if len(value) > longest:  # Discord's form keeps to it; a forged submission need not
            await interaction.response.send_message(
                f"⚠️ Not saved: at most {longest} characters are added to every prompt, not {len(value)}.",
                ephemeral=True)
            return
        if value:
            try:
                # as every prompt will be (unknown models too); a setting is written on purpose,
                # so a parameter Pintor does not have is refused now rather than ignored every time
                self.bot.studio.prepare("x " + value, strict=True)
            except USER_ERRORS as err:
                await interaction.response.send_message(plain(f"⚠️ Not saved: {err}"), ephemeral=True)
                return
        await save(interaction, append=value)


async def setup(bot: PintorBot) -> None:
    bot.add_dynamic_items(SettingSelect, SettingButton)
    await bot.add_cog(Preferences(bot))
