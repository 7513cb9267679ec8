"""/settings: a member's defaults, chosen with select menus; explicit parameters still win."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.intake import USER_ERRORS
from storage.models import MemberSettings

ASPECTS = ["1:1", "3:2", "2:3", "4:3", "3:4", "16:9", "9:16", "21:9"]
QUALITIES = {"0.5": 0.5, "1": 1.0, "2": 2.0}
STYLIZES = [0, 50, 100, 250, 500, 750, 1000]
DEFAULT = "default"  # the option that clears a setting
SETTINGS_TIMEOUT_S = 600


def describe(settings: MemberSettings, default_model: str) -> str:
    private = "on: results are shown only to you" if settings.private else "off"
    return "\n".join([
        "**Your defaults** (parameters in a prompt always win):",
        f"model: `{settings.model or f'{default_model} (server default)'}`",
        f"aspect ratio: `{settings.aspect or '1:1'}` · quality: `{settings.quality or 1}` · "
        f"stylize: `{settings.stylize if settings.stylize is not None else 'model default'}`",
        f"private mode: {private}",
        f"always append: `{settings.append or '(nothing)'}`",
    ])


def _options(values, current) -> list[discord.SelectOption]:
    return [discord.SelectOption(label=DEFAULT, value=DEFAULT, default=current is None)] + [
        discord.SelectOption(label=str(v), value=str(v), default=str(v) == str(current)) for v in values]


class AppendModal(discord.ui.Modal, title="Always append"):
    text = discord.ui.TextInput(label="Added to every prompt: words, --parameters", required=False,
                                max_length=200, placeholder="film grain --no text, watermark --chaos 10")

    def __init__(self, view: SettingsView):
        super().__init__()
        self.view = view
        self.text.default = view.settings.append

    async def on_submit(self, interaction: discord.Interaction) -> None:
        value = self.text.value.strip()
        if value:
            try:
                # as every prompt will be (unknown models too); a setting is written on purpose,
                # so a parameter Pintor does not have is refused now rather than ignored every time
                self.view.bot.studio.prepare("x " + value, strict=True)
            except USER_ERRORS as err:
                await interaction.response.send_message(f"⚠️ Not saved: {err}", ephemeral=True)
                return
        await self.view.save(interaction, append=value)


class SettingsView(discord.ui.View):
    """The menus of one /settings message; each change is saved at once."""

    def __init__(self, bot, settings: MemberSettings):
        super().__init__(timeout=SETTINGS_TIMEOUT_S)
        self.bot, self.settings = bot, settings
        models = [m.name for m in bot.studio.registry.generators()][:24]
        self.add_item(self._select("model", models, settings.model, "model"))
        self.add_item(self._select("aspect", ASPECTS, settings.aspect, "aspect ratio"))
        self.add_item(self._select("quality", list(QUALITIES), _quality_label(settings.quality), "quality"))
        self.add_item(self._select("stylize", STYLIZES, settings.stylize, "stylize"))

    def _select(self, field: str, values, current, placeholder: str) -> discord.ui.Select:
        select = discord.ui.Select(placeholder=placeholder, options=_options(values, current), row=None)

        async def chosen(interaction: discord.Interaction) -> None:
            value = select.values[0]
            await self.save(interaction, **{field: None if value == DEFAULT else _convert(field, value)})

        select.callback = chosen
        return select

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return interaction.user.id == self.settings.user_id

    @discord.ui.button(label="Private mode on/off", style=discord.ButtonStyle.secondary, row=4)
    async def toggle_private(self, interaction: discord.Interaction, _button) -> None:
        await self.save(interaction, private=not self.settings.private)

    @discord.ui.button(label="Always append…", style=discord.ButtonStyle.secondary, row=4)
    async def edit_append(self, interaction: discord.Interaction, _button) -> None:
        await interaction.response.send_modal(AppendModal(self))

    @discord.ui.button(label="Reset all", style=discord.ButtonStyle.danger, row=4)
    async def reset(self, interaction: discord.Interaction, _button) -> None:
        await self.save(interaction, model=None, aspect=None, quality=None, stylize=None, private=False, append="")

    async def save(self, interaction: discord.Interaction, **values) -> None:
        self.settings = await self.bot.studio.settings.update_member(
            interaction.user.id, interaction.user.name, **values)
        fresh = SettingsView(self.bot, self.settings)
        content = describe(self.settings, self.bot.studio.registry.default)
        await interaction.response.edit_message(content=content, view=fresh)
        self.stop()


def _convert(field: str, value: str):
    if field == "quality":
        return QUALITIES[value]
    if field == "stylize":
        return int(value)
    return value


def _quality_label(quality: float | None) -> str | None:
    return None if quality is None else next(k for k, v in QUALITIES.items() if v == quality)


class Preferences(commands.Cog):
    def __init__(self, bot):
        self.bot = bot

    @app_commands.command(name="settings")
    async def settings(self, interaction: discord.Interaction) -> None:
        """Your defaults: model, aspect ratio, quality, stylize, private mode (only you see this)."""
        settings = await self.bot.studio.settings.member(interaction.user.id)
        await interaction.response.send_message(describe(settings, self.bot.studio.registry.default),
                                                view=SettingsView(self.bot, settings), ephemeral=True)


async def setup(bot) -> None:
    await bot.add_cog(Preferences(bot))
