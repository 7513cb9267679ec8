"""What Pintor's messages say and carry: the text of a job in progress, of its result or of
its failure, the picture (fitted to the upload limit) and the buttons under it, and the
refusals more than one command or button gives. Builds on `bot.buttons` (the views); the
delivery, the cogs and the bot build on it."""

from __future__ import annotations

import asyncio
import io
import logging
import re
from dataclasses import dataclass

import discord

from bot.attachments import FittedImage, fit_image, human_size
from bot.buttons import NUMBERS, describe_view, grid_view, picture_view
from bot.limits import Echo, compose
from bot.studio import VARY_STRONG, Studio
from generation.events import Cancelled, Event, Failed, Interrupted
from generation.files import CONTROL_FILE
from generation.request import JobKind, Request, outpaint_name
from generation.upscale import RESAMPLE
from storage.models import Job, JobStatus

log = logging.getLogger(__name__)

DM_REFUSAL = ("Pintor makes pictures in server channels, not in direct messages. "
              "Use it in a channel of a server where Pintor is.")

# The database could not be reached (storage.db.unreachable): a PostgreSQL restart, a lock held too long.
DATABASE_DOWN = ("⚠️ Pintor cannot reach its database just now; nothing was done. "
                 "Try again in a minute (jobs already queued go on once it is back).")

_PARAMETER = re.compile(r"\s+(?=--[A-Za-z])")  # "--ar 3:2 --no a b" → "--ar 3:2", "--no a b"


@dataclass
class Outgoing:
    """One message's text, picture and buttons."""

    content: str
    image: FittedImage | None = None
    view: discord.ui.View | None = None
    spoiler: bool = False  # a picture the NSFW check flagged: shown behind a spoiler
    control: FittedImage | None = None  # a ControlNet job's control image, attached beside the grid

    def files(self) -> list[discord.File]:
        """Fresh File objects: discord.py consumes them when it sends."""
        if self.image is None:
            return []
        files = [discord.File(io.BytesIO(self.image.data), filename=self.image.filename, spoiler=self.spoiler)]
        if self.control is not None:
            files.append(discord.File(io.BytesIO(self.control.data), filename=self.control.filename))
        return files


def jump_url(guild_id: int | None, channel_id: int, message_id: int) -> str:
    return f"https://discord.com/channels/{guild_id or '@me'}/{channel_id}/{message_id}"


def already_made_text(job: Job) -> str:
    """What a second press of a button says when its first press made the same job."""
    what = f"Image #{job.parent_index} of job {job.parent_id}" if job.parent_id else "This picture"
    if job.status != JobStatus.DONE:
        return (f"↪️ {what} is already being upscaled for you: job {job.id} is {job.status}. Its result "
                f"will be posted when it is done.")
    where = (f": {jump_url(job.guild_id, job.channel_id, job.message_id)}"
             if job.channel_id is not None and job.message_id is not None else "")
    return f"↪️ {what} is already upscaled for you, as job {job.id}{where} (`/show job_id:{job.id}` shows it again)."


def headline(prompt: str, parameters: str, user_id: int) -> list[str | Echo]:
    """**the prompt** --ar 3:2 --no people — @member, as parts for `compose`: the prompt and
    each parameter (--no quotes the member) are echoed member text, so that a long prompt or
    --no is shortened while the short parameters stay whole."""
    shown: list[str | Echo] = ["**", Echo(prompt), "**"] if prompt.strip() else ["*(no text)*"]
    parameter_parts = parameters_shown(parameters)
    return [*shown, " " if parameter_parts else "", *parameter_parts, f" — <@{user_id}>"]


def parameters_shown(parameters: str) -> list[str | Echo]:
    """"--ar 3:2 --no a b" as parts for `compose`: each parameter echoed on its own."""
    parts: list[str | Echo] = []
    for parameter in _PARAMETER.split(parameters.strip()) if parameters.strip() else []:
        parts += [" " if parts else "", Echo(parameter)]
    return parts


def progress_text(request: Request, user_id: int, line: str) -> str:
    """The headline, what Pintor changed in the prompt, then `line` (queued, generating…):
    the echoed texts are shortened where the whole would pass Discord's limit, never the
    status line."""
    return compose(*headline(request.prompt, request.parameters, user_id), *prompt_notices(request), "\n", line)


def prompt_notices(request: Request) -> list[str | Echo]:
    """What Pintor changed or ignored in the prompt, a line each, as parts for `compose` (they
    quote member text); said with the grids made from the prompt, not again under an upscale
    or variation."""
    if request.kind not in (JobKind.IMAGINE, JobKind.BLEND, JobKind.REROLL, JobKind.OUTPAINT):
        return []
    return [part for notice in request.notices for part in ("\nℹ️ ", Echo(notice))]


def _origin(job: Job, request: Request) -> str | None:
    """What a job was made from, for jobs made by a button."""
    if job.kind == JobKind.IMAGINE and job.parent_id:  # a /describe's button
        return f"Prompt {job.parent_index} of /describe job {job.parent_id}"
    if job.kind == JobKind.REROLL and job.parent_id:
        return f"🔄 Re-roll of job {job.parent_id}"
    if job.kind == JobKind.VARIATION and job.parent_id:
        strength = "Strong" if request.strength >= VARY_STRONG else "Subtle"
        return f"Variation ({strength}) of image {job.parent_index} of job {job.parent_id}"
    if job.kind == JobKind.UPSCALE and job.parent_id and request.strength > 0:
        how = "resampled" if request.upscaler in (None, RESAMPLE) else f"by {request.upscaler}"
        # the worker says "… cannot repaint" where it did not (a job stored before the Studio refused those)
        repainted = "not repainted" if "cannot repaint" in (job.notices or "") else f"repainted by {job.model}"
        return f"Image #{job.parent_index} of job {job.parent_id}, Upscale (Creative): enlarged {how}, {repainted}"
    if job.kind == JobKind.UPSCALE and job.parent_id:
        how = "resampled" if job.model == RESAMPLE else f"by {job.model}"
        return f"Image #{job.parent_index} of job {job.parent_id}, upscaled {how}"
    if job.kind == JobKind.PICK and job.parent_id:
        return f"Image #{job.parent_index} of job {job.parent_id}"
    if job.kind == JobKind.OUTPAINT and job.parent_id and request.outpaint is not None:
        return f"{outpaint_name(request.outpaint)} of image {job.parent_index} of job {job.parent_id}"
    return None


def _notices(job: Job) -> list[str | Echo]:
    # Notices can quote the member's prompt (the part a text encoder cut): echoed, shortened first.
    return [part for line in (job.notices or "").splitlines() if line.strip() for part in ("\n⚠️ ", Echo(line))]


async def result_message(studio: Studio, job: Job, *, size_limit: int) -> Outgoing:
    """A finished job as a message: the grid (or the single upscaled image) and its buttons.
    Its text fits Discord's 2,000 characters: only the echoed member text is shortened."""
    request = Request.from_json(job.request)
    if job.kind == JobKind.DESCRIBE:
        return await _described(studio, job, request, size_limit)
    single = job.kind in (JobKind.UPSCALE, JobKind.PICK) or len(job.images) == 1
    shown = job.images[:1] if single else job.images
    stored = job.images[0].path if single and job.images else job.grid_path
    path = studio.picture(stored) if stored else None
    seed = job.images[0].seed if single and job.images else request.seed
    lines = []
    if origin := _origin(job, request):
        lines.append(origin)
    lines.append(f"seed {seed} · {job.model} · job {job.id}")

    image = view = None
    try:
        data = await asyncio.to_thread(path.read_bytes) if path else None
    except OSError:
        data = None
    if data is None:
        log.warning("job %s: its picture %s is gone", job.id, path)
        lines.append("The picture files of this job are gone from the file store.")
    else:
        image = await asyncio.to_thread(fit_image, data, f"pintor-{job.id}.png", size_limit)
        if image is None:
            lines.append(f"The picture does not fit the {human_size(size_limit)} upload limit here.")
        elif image.changed:
            lines.append(f"🗜️ Sent as {image.changed} to fit the {human_size(size_limit)} upload limit here; "
                         f"the full-size PNG is kept (`/show job_id:{job.id}`).")
        if single and job.images:
            # a remote model's picture: no repainting (Zoom, Pan, Creative), and V only where its API varies
            limits = spec.remote_limits if (spec := studio.models.models.get(request.model)) is not None else None
            view = picture_view(job.id, job.images[0].width, job.images[0].height, await _grid_url(studio, job),
                                vary=limits is None or limits.varies or limits.edits, repaint=limits is None,
                                creative=limits is None and await studio.repaints(job))
        else:
            view = grid_view(job.id)
    control = await _control_image(studio, job, request, size_limit) if image is not None and not single else None
    if control is not None:
        lines.append(f"🎛️ Steered by the {request.control_kind} control image attached "
                     f"(ControlNet {request.controlnet}, --cw {request.control_weight:g}).")
    content = compose(*headline(request.prompt, request.parameters, job.user_id),
                      *(f"\n{line}" for line in lines), *prompt_notices(request), *_notices(job))
    return Outgoing(content, image, view, spoiler=any(i.flagged for i in shown), control=control)


async def _control_image(studio: Studio, job: Job, request: Request, size_limit: int) -> FittedImage | None:
    """The control image a ControlNet grid was steered by (the worker keeps it beside the grid),
    fitted to the upload limit; None for other jobs, or when it is gone."""
    if request.controlnet is None or not job.grid_path:
        return None
    try:
        data = await asyncio.to_thread(studio.picture(job.grid_path).with_name(CONTROL_FILE).read_bytes)
    except OSError:
        return None
    return await asyncio.to_thread(fit_image, data, f"pintor-{job.id}-control.png", size_limit)


async def _described(studio: Studio, job: Job, request: Request, size_limit: int) -> Outgoing:
    """A finished /describe: its four prompts numbered (the model's words, echoed as member
    text is: escaped, shortened where the whole would pass Discord's limit), the picture, and
    the buttons 1️⃣–4️⃣ and Imagine all."""
    prompts: list[str | Echo] = []
    for number, prompt in zip(NUMBERS, job.prompts, strict=False):
        prompts += [f"\n{number} ", Echo(prompt)]
    lines = [f"\ndescribed by {job.model} · job {job.id}"]
    image = view = None
    try:
        data = await asyncio.to_thread(studio.picture(job.grid_path).read_bytes) if job.grid_path else None
    except OSError:
        data = None
    if data is None:
        lines.append("\nThe picture is gone from the file store.")
    else:
        image = await asyncio.to_thread(fit_image, data, f"pintor-{job.id}.png", size_limit)
    if job.prompts:
        view = describe_view(job.id)
    return Outgoing(compose(*headline(request.prompt, "", job.user_id), *prompts, *lines, *_notices(job)), image, view)


async def _grid_url(studio: Studio, job: Job) -> str | None:
    """The link of ↩️ Grid under a picture alone: the message of the grid it comes from (past
    the U and upscales in between), where that message can be linked."""
    parent = await studio.grid_of(job)
    if parent is None or parent.private or parent.channel_id is None or parent.message_id is None:
        return None
    return jump_url(parent.guild_id, parent.channel_id, parent.message_id)


def unsent_message(job: Job) -> Outgoing:
    """What the member hears of a finished job whose picture Discord would not take (server
    errors, time-outs, after every retry): that it is done and how to see it."""
    request = Request.from_json(job.request)
    return Outgoing(progress_text(request, job.user_id, f"⚠️ Job {job.id} is done, but Discord did not take its "
                                  f"picture. `/show job_id:{job.id}` posts it again."))


def ending_message(job: Job, event: Event | None) -> Outgoing:
    """A job that ended without pictures: failed, cancelled, or stopped by a shutdown."""
    request = Request.from_json(job.request)
    if isinstance(event, Failed):  # a reason can quote the member (a model name, a prompt)
        return Outgoing(compose(*headline(request.prompt, request.parameters, job.user_id), "\n❌ ",
                                Echo(event.reason)))
    if isinstance(event, Cancelled):
        line = f"Cancelled (job {job.id})."
    elif isinstance(event, Interrupted):
        line = (f"⏸️ Pintor stopped before job {job.id} was done. It stays queued and will be posted "
                f"in this channel when Pintor is back.")
    else:
        line = f"Job {job.id}: {type(event).__name__.lower()}"
    return Outgoing(progress_text(request, job.user_id, line))
