"""The buttons under a result: U1–U4 (the picture alone, at once), V1–V4 (vary), 🔄 (re-roll),
and under a picture alone Upscale (Subtle), Upscale (Creative), Vary (Subtle), Vary (Strong),
Zoom Out 2×, Zoom Out 1.5×, Custom Zoom, Make Square (non-square pictures), ⬅️ ➡️ ⬆️ ⬇️ (Pan)
and a link back to the grid; under a /describe 1️⃣–4️⃣ (imagine that prompt) and Imagine all.

Each is a persistent `DynamicItem`: everything it needs is in its custom_id, and the rest
comes from the database, so buttons work after restarts and for as long as the message
exists. custom_ids (all far below Discord's 100 characters):

    pintor:u:<job>:<n>          image n (1–4) of job alone (U; before: an upscale, same id)
    pintor:v:<job>:<n>:<s|h>    vary image n of job, s = subtle, h = strong (high)
    pintor:r:<job>              re-roll job (same prompt, new seed)
    pintor:x:<job>:<n>:<s|c>    upscale image n of job, s = subtle, c = creative
    pintor:z:<job>:<n>:<tenths> zoom out image n of job by tenths / 10 (20: 2×, 15: 1.5×)
    pintor:zc:<job>:<n>         Custom Zoom: a form asking the factor and a new prompt
    pintor:p:<job>:<n>:<l|r|u|d> pan image n of job left, right, up, down
    pintor:sq:<job>:<n>         make image n of job square
    pintor:d:<job>:<n|a>        under a /describe: imagine its prompt n (1–4), or all four (a)

and the forms some of them open (Discord's modals), answered by `form_submitted` whatever
process opened them (a bot restarted in between included):

    pintor:zm:<job>:<n>         Custom Zoom's form: factor, prompt
    pintor:rm:<job>:<n>:<what>  Remix's form (prompt) for the button <what>: vs, vh (vary subtle,
                                strong), r (re-roll; n is 0), z<tenths> (zoom out), p<l|r|u|d> (pan)

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
from bot.studio import FORM_CHARS, Studio, Submitted, editable_prompt
from generation.request import JobKind, Request
from generation.upscale import can_upscale

if TYPE_CHECKING:  # the client's type only: the bot module imports this one
    from bot.discord_bot import Interaction

log = logging.getLogger(__name__)

JOB = r"(?P<job>[0-9]{1,18})"  # at most 18 digits: always a valid 64-bit database id

# What a button asks of the Studio for the member who pressed it, with where it was pressed
# (`PintorBot.start_job`'s `where`: guild, channel, rules, privacy).
Action = Callable[[Studio, Member, dict[str, Any]], Awaitable[Submitted]]


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
        await interaction.client.pick(interaction, self.job_id, self.n)


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
        if await open_remix(interaction, self.job_id, self.n, "vh" if self.strong else "vs"):
            return
        await interaction.client.press(interaction, self.job_id, remix_action(self.job_id, self.n,
                                                                              "vh" if self.strong else "vs", None))


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
        if await open_remix(interaction, self.job_id, 0, "r"):
            return
        await interaction.client.press(interaction, self.job_id, remix_action(self.job_id, 0, "r", None))


class UpscaleModeButton(discord.ui.DynamicItem[discord.ui.Button],
                        template=rf"pintor:x:{JOB}:(?P<n>[1-4]):(?P<mode>[sc])"):
    def __init__(self, job_id: int, n: int, *, creative: bool, row: int | None = None):
        super().__init__(discord.ui.Button(label="Upscale (Creative)" if creative else "Upscale (Subtle)",
                                           style=discord.ButtonStyle.secondary,
                                           custom_id=f"pintor:x:{job_id}:{n}:{'c' if creative else 's'}"), row=row)
        self.job_id, self.n, self.creative = job_id, n, creative

    @classmethod
    async def from_custom_id(cls, interaction: Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> UpscaleModeButton:
        return cls(int(match["job"]), int(match["n"]), creative=match["mode"] == "c")

    async def callback(self, interaction: Interaction) -> None:
        await interaction.client.press(interaction, self.job_id, lambda studio, member, where: studio.upscale(
            member, self.job_id, self.n, creative=self.creative, **where))


ZOOMS = {20: "Zoom Out 2x", 15: "Zoom Out 1.5x"}  # tenths → label


class ZoomButton(discord.ui.DynamicItem[discord.ui.Button],
                 template=rf"pintor:z:{JOB}:(?P<n>[1-4]):(?P<tenths>1[1-9]|20)"):
    def __init__(self, job_id: int, n: int, *, tenths: int, row: int | None = None):
        super().__init__(discord.ui.Button(label=ZOOMS.get(tenths, f"Zoom Out {tenths / 10:g}x"), emoji="🔍",
                                           style=discord.ButtonStyle.secondary,
                                           custom_id=f"pintor:z:{job_id}:{n}:{tenths}"), row=row)
        self.job_id, self.n, self.tenths = job_id, n, tenths

    @classmethod
    async def from_custom_id(cls, interaction: Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> ZoomButton:
        return cls(int(match["job"]), int(match["n"]), tenths=int(match["tenths"]))

    async def callback(self, interaction: Interaction) -> None:
        if await open_remix(interaction, self.job_id, self.n, f"z{self.tenths}"):
            return
        await interaction.client.press(interaction, self.job_id, remix_action(self.job_id, self.n, f"z{self.tenths}",
                                                                              None))


ZOOM_FORM = re.compile(rf"pintor:zm:{JOB}:(?P<n>[1-4])")
REMIX_FORM = re.compile(rf"pintor:rm:{JOB}:(?P<n>[0-4]):(?P<what>v[sh]|r|z(?:1[1-9]|20)|p[lrud])")
PROMPT_CHARS = FORM_CHARS  # Discord's most: the whole editable prompt (bot.studio.editable_prompt)


class CustomZoomForm(discord.ui.Modal, title="Custom Zoom"):
    """The factor (1–2) and, optionally, a new prompt; submitted, it makes the zoom like the
    buttons do. Its submission is answered by `form_submitted` from its custom_id alone."""

    factor: discord.ui.TextInput = discord.ui.TextInput(label="Zoom out by (more than 1, at most 2)", default="1.5",
                                                        max_length=6, custom_id="factor")
    prompt: discord.ui.TextInput = discord.ui.TextInput(
        label="New prompt (empty: keep the picture's)", style=discord.TextStyle.paragraph, required=False,
        max_length=PROMPT_CHARS, custom_id="prompt")

    def __init__(self, job_id: int, n: int, prompt: str):
        super().__init__(custom_id=f"pintor:zm:{job_id}:{n}")
        self.prompt.default = prompt or None


class RemixForm(discord.ui.Modal, title="Remix"):
    """Remix mode: the job's prompt, to change before the job a button asks for runs."""

    prompt: discord.ui.TextInput = discord.ui.TextInput(
        label="Prompt (change it, then Submit)", style=discord.TextStyle.paragraph, required=False,
        max_length=PROMPT_CHARS, custom_id="prompt")

    def __init__(self, job_id: int, n: int, what: str, prompt: str):
        super().__init__(custom_id=f"pintor:rm:{job_id}:{n}:{what}")
        self.prompt.default = prompt or None


async def send_form(interaction: Interaction, form: discord.ui.Modal) -> None:
    """Open `form`. Its submission is answered by `form_submitted` (a listener, by custom_id),
    which a restart does not forget: discord.py's own dispatch of a modal lives only in this
    process, so the form is dropped from it at once."""
    await interaction.response.send_modal(form)
    form.stop()


def remix_action(job_id: int, n: int, what: str, prompt: str | None) -> Action:
    """The Studio action of the button `what` (REMIX_FORM's codes) for image `n` of a job,
    with the member's new `prompt` (None: the job's own)."""
    if what.startswith("v"):
        return lambda studio, member, where: studio.vary(member, job_id, n, strong=what == "vh", prompt=prompt, **where)
    if what.startswith("z"):
        return lambda studio, member, where: studio.zoom_out(member, job_id, n, factor=int(what[1:]) / 10,
                                                             prompt=prompt, **where)
    if what.startswith("p"):
        return lambda studio, member, where: studio.pan(member, job_id, n, direction=PANS[what[1]][0], prompt=prompt,
                                                        **where)
    return lambda studio, member, where: studio.reroll(member, job_id, prompt=prompt, **where)


async def open_remix(interaction: Interaction, job_id: int, n: int, what: str) -> bool:
    """For a member in Remix mode (/settings), open the Remix form for button `what` under job
    `job_id` and say True; False (the button acts at once) otherwise, and for a job whose
    words are not a prompt (a blend) or that is gone (the press says so)."""
    studio = interaction.client.studio
    if not (await studio.preferences(interaction.user.id)).remix:
        return False
    job = await studio.job(job_id)  # a few reads in all: the form opens well within 3 s
    if job is None:
        return False
    request = Request.from_json(job.request)
    if request.kind == JobKind.BLEND:
        return False
    if not await form_allowed(interaction, job_id):
        return True  # refused, and said
    await send_form(interaction, RemixForm(job_id, n, what, editable_prompt(request)))
    return True


async def form_allowed(interaction: Interaction, job_id: int) -> bool:
    """Whether a form under job `job_id` may open: where a press would be refused whatever is
    typed (`PintorBot.form_refusal`: Pintor paused, switched off in this channel …), the member
    hears why at once, privately, instead of after typing, and False is returned."""
    refusal = await interaction.client.form_refusal(interaction, job_id)
    if refusal is None:
        return True
    await interaction.response.send_message(f"⚠️ {refusal}", ephemeral=True)
    return False


# "1.5", "1,5", "1.5x", "×1.5", "1.5 X", "--zoom 1.5" (MidJourney's form holds the factor in the prompt)
_ZOOM_FACTOR = re.compile(r"(?:[-—–]{1,2}zoom\s*)?[x×]?\s*([0-9]{1,3}(?:[.,][0-9]{1,6})?)\s*[x×]?", re.IGNORECASE)


def zoom_factor(text: str) -> float:
    """The factor a member typed in Custom Zoom's form (ways of writing it above), or 0.0 when
    it is not a number (the caller refuses it, as it does one out of range)."""
    match = _ZOOM_FACTOR.fullmatch(text.strip())
    return float(match[1].replace(",", ".")) if match else 0.0


def _text_value(data: Any, custom_id: str) -> str:
    """A text input's value in a modal submission (in an action row, or in a label)."""
    for row in data.get("components", []):
        for component in row.get("components", []) + ([row["component"]] if "component" in row else []):
            if component.get("custom_id") == custom_id:
                return str(component.get("value") or "")
    return ""


async def form_submitted(interaction: Interaction) -> None:
    """A listener for every interaction: answers the submission of a Custom Zoom or Remix form
    (by its custom_id: it works after a restart) by making the job its button stands for, with
    the prompt as the member wrote it (parsed like /imagine's: a bad one is refused with the
    reason, and nothing is stored). Anything else is left alone."""
    if interaction.type is not discord.InteractionType.modal_submit:
        return
    data: Any = interaction.data or {}
    custom_id = str(data.get("custom_id", ""))
    if zoom := ZOOM_FORM.fullmatch(custom_id):
        text = _text_value(data, "factor").strip()
        factor = zoom_factor(text)
        if not 1 < factor <= 2:
            await interaction.response.send_message(
                f"⚠️ The zoom out factor is a number above 1 and at most 2 (e.g. 1.5), not “{text[:20]}”.",
                ephemeral=True)
            return
        job_id, n, prompt = int(zoom["job"]), int(zoom["n"]), _text_value(data, "prompt").strip() or None
        await interaction.client.press(interaction, job_id, lambda studio, member, where: studio.zoom_out(
            member, job_id, n, factor=factor, prompt=prompt, **where))
    elif remix := REMIX_FORM.fullmatch(custom_id):
        job_id = int(remix["job"])
        await interaction.client.press(interaction, job_id, remix_action(
            job_id, int(remix["n"]), remix["what"], _text_value(data, "prompt").strip() or None))


class CustomZoomButton(discord.ui.DynamicItem[discord.ui.Button], template=rf"pintor:zc:{JOB}:(?P<n>[1-4])"):
    def __init__(self, job_id: int, n: int, *, row: int | None = None):
        super().__init__(discord.ui.Button(label="Custom Zoom", emoji="🔍", style=discord.ButtonStyle.secondary,
                                           custom_id=f"pintor:zc:{job_id}:{n}"), row=row)
        self.job_id, self.n = job_id, n

    @classmethod
    async def from_custom_id(cls, interaction: Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> CustomZoomButton:
        return cls(int(match["job"]), int(match["n"]))

    async def callback(self, interaction: Interaction) -> None:
        if not await form_allowed(interaction, self.job_id):  # refused before the member types
            return
        job = await interaction.client.studio.job(self.job_id)  # a few reads: the form opens within 3 s
        prompt = editable_prompt(Request.from_json(job.request)) if job else ""
        await send_form(interaction, CustomZoomForm(self.job_id, self.n, prompt))


PANS = {"l": ("left", "⬅️"), "r": ("right", "➡️"), "u": ("up", "⬆️"), "d": ("down", "⬇️")}


class PanButton(discord.ui.DynamicItem[discord.ui.Button], template=rf"pintor:p:{JOB}:(?P<n>[1-4]):(?P<way>[lrud])"):
    def __init__(self, job_id: int, n: int, *, way: str, row: int | None = None):
        super().__init__(discord.ui.Button(emoji=PANS[way][1], style=discord.ButtonStyle.secondary,
                                           custom_id=f"pintor:p:{job_id}:{n}:{way}"), row=row)
        self.job_id, self.n, self.way = job_id, n, way

    @classmethod
    async def from_custom_id(cls, interaction: Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> PanButton:
        return cls(int(match["job"]), int(match["n"]), way=match["way"])

    async def callback(self, interaction: Interaction) -> None:
        if await open_remix(interaction, self.job_id, self.n, f"p{self.way}"):
            return
        await interaction.client.press(interaction, self.job_id, remix_action(self.job_id, self.n, f"p{self.way}",
                                                                              None))


class SquareButton(discord.ui.DynamicItem[discord.ui.Button], template=rf"pintor:sq:{JOB}:(?P<n>[1-4])"):
    def __init__(self, job_id: int, n: int, *, row: int | None = None):
        super().__init__(discord.ui.Button(label="Make Square", emoji="🔳", style=discord.ButtonStyle.secondary,
                                           custom_id=f"pintor:sq:{job_id}:{n}"), row=row)
        self.job_id, self.n = job_id, n

    @classmethod
    async def from_custom_id(cls, interaction: Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> SquareButton:
        return cls(int(match["job"]), int(match["n"]))

    async def callback(self, interaction: Interaction) -> None:
        await interaction.client.press(interaction, self.job_id, lambda studio, member, where: studio.make_square(
            member, self.job_id, self.n, **where))


DESCRIBED = 4  # prompts under a /describe (bot.studio.CAPTION_COUNT)
NUMBERS = ("1️⃣", "2️⃣", "3️⃣", "4️⃣")


class DescribeButton(discord.ui.DynamicItem[discord.ui.Button], template=rf"pintor:d:{JOB}:(?P<n>[1-4]|a)"):
    """Under a /describe: 1️⃣–4️⃣ imagine that prompt; Imagine all (n = None) imagines the four,
    each a job of its own, as far as the member's queue limit goes."""

    def __init__(self, job_id: int, n: int | None, *, row: int | None = None):
        button: discord.ui.Button = (
            discord.ui.Button(emoji=NUMBERS[n - 1], style=discord.ButtonStyle.secondary,
                              custom_id=f"pintor:d:{job_id}:{n}") if n is not None else
            discord.ui.Button(label="Imagine all", emoji="🎨", style=discord.ButtonStyle.primary,
                              custom_id=f"pintor:d:{job_id}:a"))
        super().__init__(button, row=row)
        self.job_id, self.n = job_id, n

    @classmethod
    async def from_custom_id(cls, interaction: Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> DescribeButton:
        return cls(int(match["job"]), None if match["n"] == "a" else int(match["n"]))

    async def callback(self, interaction: Interaction) -> None:
        numbers = [self.n] if self.n is not None else list(range(1, DESCRIBED + 1))
        await interaction.client.press_all(interaction, self.job_id, [_imagine_described(self.job_id, n)
                                                                      for n in numbers])


def _imagine_described(job_id: int, n: int) -> Action:
    """The action of button n under the /describe job `job_id`."""
    def action(studio: Studio, member: Member, where: dict[str, Any]) -> Awaitable[Submitted]:
        return studio.imagine_described(member, job_id, n, **where)
    return action


BUTTONS = (UpscaleButton, VaryButton, RerollButton, UpscaleModeButton, ZoomButton, CustomZoomButton, PanButton,
           SquareButton, DescribeButton)


def grid_view(job_id: int) -> discord.ui.View:
    """U1 U2 U3 U4 🔄 / V1 V2 V3 V4"""
    view = discord.ui.View(timeout=None)
    for n in range(1, 5):
        view.add_item(UpscaleButton(job_id, n, row=0))
    view.add_item(RerollButton(job_id, row=0))
    for n in range(1, 5):
        view.add_item(VaryButton(job_id, n, strong=True, row=1))
    return view


def picture_view(job_id: int, width: int, height: int, grid_url: str | None, *, vary: bool = True,
                 repaint: bool = True, creative: bool = True) -> discord.ui.View:
    """Under a picture alone (U, an upscale): Upscale (Subtle) · Upscale (Creative) · Vary
    (Subtle) · Vary (Strong) / Zoom Out 2x · Zoom Out 1.5x · Custom Zoom · Make Square / ⬅️ ➡️ ⬆️ ⬇️ ↩️
    (Upscale where the result stays within the size limit; Make Square for non-square pictures;
    ↩️ where the grid's message can be linked). `vary` False: no Vary buttons; `repaint` False: no
    Upscale (Creative), Zoom, Pan or Make Square (a remote model's picture: the API can do none);
    `creative` False: no Upscale (Creative) (a model that cannot repaint: ModelSpec.can_repaint)."""
    view = discord.ui.View(timeout=None)
    if can_upscale(width, height):
        view.add_item(UpscaleModeButton(job_id, 1, creative=False, row=0))
        if repaint and creative:
            view.add_item(UpscaleModeButton(job_id, 1, creative=True, row=0))
    if vary:
        view.add_item(VaryButton(job_id, 1, strong=False, label="Vary (Subtle)", row=0))
        view.add_item(VaryButton(job_id, 1, strong=True, label="Vary (Strong)", row=0))
    if not repaint:
        if grid_url:
            view.add_item(discord.ui.Button(label="Grid", emoji="↩️", url=grid_url, row=1))
        return view
    for tenths in ZOOMS:
        view.add_item(ZoomButton(job_id, 1, tenths=tenths, row=1))
    view.add_item(CustomZoomButton(job_id, 1, row=1))
    if width != height:
        view.add_item(SquareButton(job_id, 1, row=1))
    for way in PANS:
        view.add_item(PanButton(job_id, 1, way=way, row=2))
    if grid_url:
        view.add_item(discord.ui.Button(label="Grid", emoji="↩️", url=grid_url, row=2))
    return view


def describe_view(job_id: int) -> discord.ui.View:
    """Under a /describe: 1️⃣ 2️⃣ 3️⃣ 4️⃣ Imagine all"""
    view = discord.ui.View(timeout=None)
    for n in range(1, DESCRIBED + 1):
        view.add_item(DescribeButton(job_id, n, row=0))
    view.add_item(DescribeButton(job_id, None, row=0))
    return view

