"""The studio: where a member's request becomes a stored, queued job, and where the worker's
events become stored results. Every front end (Discord, the `pintor` CLI) goes through it, so
they share one path: parse → persist → queue → worker → files + rows → result.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot.intake import (
    BLEND_DIMENSIONS,
    MAX_BLEND_IMAGES,
    MIN_BLEND_IMAGES,
    LimitError,
    Member,
    ModelUnavailable,
    RequestError,
    allowed_loras,
    allowed_models,
    blend_prompt,
    blend_weights,
    check_model_files,
    choose_loras,
    fallback_model,
    id_list,
    name_list,
    prepare,
    prepare_with_notices,
    refuses_unknown_parameters,
)
from generation.events import FINAL_EVENTS, Cancelled, Done, Event, Failed, Interrupted, Progress, Started
from generation.files import FileStore
from generation.imaging import png_bytes, sha256, write_atomic
from generation.inputs import open_upload
from generation.outpaint import PAN_DIRECTIONS, canvas_size, square_extension, zoom_extension
from generation.prompt import MAX_ASPECT_RATIO, quote, size_for_aspect
from generation.queue import JobQueue, WorkerState
from generation.registry import EMPHASIS_FAMILIES, ModelSpec, Registry
from generation.request import GRID_SIZE, JobKind, Request, build_request, random_seed
from generation.upscale import CREATIVE_STRENGTH, RESAMPLE, can_upscale, upscale_factor
from storage.jobs import DuplicateJob, JobStore, NewImage
from storage.models import Job, JobStatus, MemberPreferences, ServerRules
from storage.owners import OwnerStore, this_host
from storage.settings import PreferencesAndRulesStore

log = logging.getLogger(__name__)

VARY_SUBTLE, VARY_STRONG = 0.35, 0.7  # image-to-image strength of Vary (Subtle) / Vary (Strong)
MAX_ZOOM = 2.0  # Custom Zoom's largest factor, as MidJourney's
OUTPAINT_FAMILIES = EMPHASIS_FAMILIES  # the Stable Diffusion families: an inpainting pipeline from their parts
FREE_KINDS = (JobKind.PICK,)  # jobs no worker runs: not counted by a server's daily quota


class OwnerBusy(RuntimeError):
    """Another live process runs under this studio's owner name (a second `pintor run`)."""


class AlreadyMade(RequestError):
    """The job asked for would repeat `job` (queued, running or done): nothing new is made."""

    def __init__(self, job: Job):
        super().__init__(f"Job {job.id} already makes this ({job.status}).")
        self.job = job


def fit_image_to_image(steps: int, strength: float, rules: ServerRules | None) -> tuple[int, float]:
    """Steps and strength for an image-to-image job a button makes, within the server's
    max_steps. Image to image runs int(steps × strength) steps (diffusers' img2img
    pipelines), so that product must be at least 1: steps are raised to ceil(1 / strength)
    where the limit allows; under a lower limit the strength is raised instead, up to
    VARY_STRONG. Returns (steps, strength); raises LimitError when no pair fits (a limit of
    1 step)."""
    limit = rules.max_steps if rules is not None and rules.max_steps else None
    if limit is not None:
        steps = min(steps, limit)
    needed = math.ceil(1 / strength - 1e-9)
    if steps >= needed:
        return steps, strength
    if limit is None or needed <= limit:
        return needed, strength
    raised = math.ceil(100 / steps) / 100  # the smallest strength in hundredths with steps × it ≥ 1
    if raised > VARY_STRONG:
        raise LimitError(f"This server allows {limit} step{'s' if limit != 1 else ''} per job: too few to "
                         f"vary a picture (Vary needs at least {math.ceil(1 / VARY_STRONG - 1e-9)} steps).")
    return steps, max(strength, raised)


@dataclass
class Submitted:
    """A stored, queued job: `position` in line (1 = next, 0 = running now or already ended);
    `events` ends with the job's final event (Done, Failed, Cancelled or Interrupted)."""

    job_id: int
    position: int
    request: Request
    events: AsyncIterator[Event]  # this job's events, each after it is stored; ends with the final one


Listener = Callable[[int, Event], Awaitable[None]]


def _delete_files(paths: list[str]) -> int:
    deleted = 0
    for path in paths:
        try:
            Path(path).unlink()
            deleted += 1
        except FileNotFoundError:
            pass
    return deleted


def _remove_empty_folders(folders: set[str]) -> None:
    for folder in folders:
        try:
            Path(folder).rmdir()  # only if empty: a job's folder once its pictures are gone
        except OSError:
            pass


def _inputs_of(request_json: str) -> list[str]:
    """The picture files a stored request starts from (image to image, upscale, blend)."""
    request = Request.from_json(request_json)
    return [path for path in (request.init_image, *request.images) if path]


def channel_refusal(rules: ServerRules | None, channel_id: int | None) -> str | None:
    """Why Pintor does not answer in `channel_id` under a server's channel list; None where it
    does (no list, or a listed channel)."""
    channels = id_list(rules.channel_ids) if rules is not None else []
    if channels and channel_id not in channels:
        return "Pintor does not answer in this channel. Use one of: " + ", ".join(f"<#{c}>" for c in channels) + "."
    return None


class Studio:
    """The one path every front end uses. Each request method (imagine, reroll, vary, upscale,
    blend, submit) returns Submitted once the job is stored and queued, and raises
    bot.intake.USER_ERRORS for what a member asked wrong (their message is for the member:
    PromptError, UnknownModelError, RequestError and its LimitError for a server's rules,
    UploadError) and AlreadyMade for a result that exists; then nothing is stored. Database
    errors (SQLAlchemy's) pass through. `where` keywords are submit()'s (guild_id, channel_id,
    rules, private, direct)."""

    def __init__(self, *, registry: Registry, store: JobStore, queue: JobQueue, files: FileStore,
                 inputs_dir: Path | None = None, owner: str | None = None, queue_kind: str = "embedded"):
        self.registry = registry
        # who holds the jobs this studio queues (storage.owners): "bot" for `pintor run`
        self.owner = owner or f"cli-{this_host()}-{os.getpid()}-{id(self):x}"
        self.owners = OwnerStore(store.engine)
        self.queue_kind = queue_kind  # "embedded" (a worker in this process) or "redis"
        self.refusal: str | None = None  # why this studio makes no jobs (set by start)
        self._beat: asyncio.Task | None = None
        self.files = files  # the pictures the worker's events name by key
        self.preferences_and_rules = PreferencesAndRulesStore(store.engine)  # members' defaults and servers' rules
        self.inputs_dir = inputs_dir  # where uploaded images are kept with their jobs
        self.store = store
        self.queue = queue
        self.listeners: list[Listener] = []  # told of every event after it is stored
        self._watchers: dict[int, list[asyncio.Queue]] = {}
        self._consumer: asyncio.Task | None = None
        self._submit_lock = asyncio.Lock()
        self._forget_locks: dict[int, asyncio.Lock] = {}
        self.forgotten: set[int] = set()  # unfinished jobs deleted by /forget (their messages are settled)

    async def start(self, *, resume_user: int | None = None) -> None:
        """Start the worker and queue again the jobs a crash or a stop left unfinished whose
        owner is gone (storage.owners: a front end still running beside this one keeps its
        own); with `resume_user`, only that member's (the CLI resumes its own jobs, not those
        the bot resumes for Discord's members).

        Raises OwnerBusy when this studio's owner name is held by a live process (a second
        `pintor run` on one database). With the embedded queue beside another live front end,
        nothing is resumed and `refusal` says why jobs are refused (a second worker would load
        the models again on the same GPUs and run beside the first)."""
        others = await self.owners.alive(exclude=None)
        if any(o.name == self.owner and o.pid != os.getpid() for o in others):
            holder = next(o for o in others if o.name == self.owner)
            raise OwnerBusy(f"Pintor ({self.owner}) is already running on this database (process {holder.pid} "
                            f"on {holder.host}). Stop it first.")
        others = [o for o in others if o.name != self.owner]
        if self.queue_kind == "embedded" and others:
            self.refusal = (f"Pintor is running on this database ({others[0].name}, process {others[0].pid} on "
                            f"{others[0].host}) with its own worker: a second one here would load the models "
                            "again and run beside it. Stop it, or run both with PINTOR_QUEUE_URL=redis://… "
                            "to share workers.")
        await self.owners.register(self.owner, self.queue_kind)
        self._beat = asyncio.create_task(self._heartbeat(), name="studio-lease")
        await self.queue.start()
        self._consumer = asyncio.create_task(self._consume(), name="studio-events")
        if self.refusal is not None:
            return
        for job in await self.owners.claim_unfinished(self.owner, resume_user):
            await self.store.mark_queued(job.id)
            await self.queue.submit(job.id, job.user_id, Request.from_json(job.request))
            log.info("job %s queued again after a restart", job.id)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.owners.lease_s / 3)
            try:
                await self.owners.beat(self.owner)
            except Exception:  # noqa: BLE001 - the database away for a moment: beat again later
                log.exception("could not renew the lease of %s", self.owner)

    async def close(self) -> None:
        """Stop the worker after its current step; unfinished jobs stay queued for the next start."""
        await self.queue.close()
        if self._consumer is not None:
            await self._consumer  # the queue's event stream ends once it is closed
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat
            self._beat = None
            await self.owners.remove(self.owner)  # what it left unfinished is anyone's now

    # -- requests -------------------------------------------------------------------------------

    def prepare(self, text: str, defaults: MemberPreferences | None = None,
                rules: ServerRules | None = None, *, strict: bool | None = None) -> Request:
        """`bot.intake.prepare` with this studio's registry."""
        return prepare(self.registry, text, defaults, rules, strict=strict)

    def default_model(self, rules: ServerRules | None) -> str:
        """The model of a prompt that names none, under a server's rules (None: no server)."""
        return fallback_model(self.registry, allowed_models(rules))

    def prepare_with_notices(self, text: str, defaults: MemberPreferences | None = None, *,
                             rules: ServerRules | None = None) -> tuple[Request, list[str]]:
        """The request, and notices for its result (a saved model that is gone here), under
        a server's rules (allowed models, strict parameters)."""
        return prepare_with_notices(self.registry, text, defaults, allowed=allowed_models(rules),
                                    strict=refuses_unknown_parameters(rules))

    async def imagine(self, member: Member, text: str, **where) -> Submitted:
        return await self.submit(member, self.prepare(text, rules=where.get("rules")), **where)

    async def reroll(self, member: Member, job_id: int, **where) -> Submitted:
        """The same request again with a new seed: a grid from a prompt or a blend, or a
        variation grid (the same picture varied again, at the same strength)."""
        parent = await self._finished_job(job_id)
        request = Request.from_json(parent.request)
        if request.kind == JobKind.VARIATION:
            return await self._vary_again(member, parent, request, **where)
        if request.kind not in (JobKind.IMAGINE, JobKind.REROLL, JobKind.BLEND, JobKind.OUTPAINT):
            raise RequestError("Only a grid can be re-rolled.")
        rules = where.get("rules")
        if rules is not None and rules.max_steps and request.steps > rules.max_steps:
            # the member chose these steps (--steps, --q): 🔄 does not change their picture
            raise LimitError(f"🔄 would make job {job_id} again with its {request.steps} steps, over this "
                             f"server's limit of {rules.max_steps}.")
        if request.kind == JobKind.OUTPAINT:  # the same canvas painted again: the same picture's job
            if not request.init_image or not Path(request.init_image).is_file():
                raise RequestError(f"The picture job {job_id} painted around is gone from the file store.")
            return await self.submit(member, request.replace(seed=random_seed()), parent_id=parent.parent_id,
                                     parent_index=parent.parent_index, **where)
        kind = JobKind.BLEND if request.kind == JobKind.BLEND else JobKind.REROLL
        request = request.replace(kind=kind, seed=random_seed())
        return await self.submit(member, request, parent_id=job_id, **where)

    async def _vary_again(self, member: Member, variation: Job, request: Request, **where) -> Submitted:
        """🔄 under a variation grid: its picture varied again, at its strength, with new seeds.
        The new job is another variation of the same picture (same parent and image)."""
        if not request.init_image or not Path(request.init_image).is_file():
            raise RequestError(f"The picture job {variation.id} varied is gone from the file store.")
        strength = VARY_STRONG if request.strength >= VARY_STRONG else VARY_SUBTLE
        steps, strength = fit_image_to_image(request.steps, strength, where.get("rules"))
        request = request.replace(seed=random_seed(), steps=steps, strength=strength)
        return await self.submit(member, request, parent_id=variation.parent_id,
                                 parent_index=variation.parent_index, **where)

    async def vary(self, member: Member, job_id: int, index: int, *, strong: bool, **where) -> Submitted:
        """Four new pictures made from image `index` of a job (image to image, new seeds), with
        the model and settings of the job that made the grid: for an upscale, of the grid it
        was upscaled from. Server limits are met by adjusting steps and strength (see
        fit_image_to_image); LimitError where they cannot be."""
        parent, image = await self._image(job_id, index)
        base = Request.from_json(parent.request)
        rules = where.get("rules")
        grid = base if base.kind not in (JobKind.UPSCALE, JobKind.PICK) else await self._grid_request(parent)
        spec = self._generator(grid.model) if grid is not None else None
        if spec is not None and grid is base:
            base = base.replace(width=image.width, height=image.height)
        elif spec is not None and grid is not None:  # (spec is None when grid is)
            base = grid  # its model, settings, text and tile size (an upscale keeps the aspect ratio)
        else:
            # the grid is gone (deleted with /forget) or its model was removed: the default
            # model (or one this server allows, one that reads images when there is no text),
            # with its own steps and guidance, at its own pixel budget
            spec = self._fallback_vary_model(base, rules)
            width, height = size_for_aspect((image.width, image.height), spec.native_side)
            base = base.replace(model=spec.name, steps=spec.steps, guidance=spec.guidance,
                                width=width, height=height, loras=tuple(
                                    (name, weight) for name, weight in base.loras
                                    if name in self.registry.loras and self.registry.loras[name].fits(spec.family)))
        strength = VARY_STRONG if strong else VARY_SUBTLE
        steps, strength = fit_image_to_image(base.steps, strength, rules)
        # Kandinsky is steered by image embeddings: the chosen image itself steers its variations
        source = str(self.picture(image.path))
        images = (source,) if spec.can_blend else ()
        request = base.replace(
            kind=JobKind.VARIATION, seed=random_seed(), init_image=source, strength=strength, count=GRID_SIZE,
            images=images, image_weights=(1.0,) * len(images), steps=steps, upscaler=None, outpaint=None)
        return await self.submit(member, request, parent_id=job_id, parent_index=index, **where)

    async def _grid_request(self, upscale: Job) -> Request | None:
        """The request of the job whose grid an upscale comes from (through "Upscale again"
        chains); None when that job is gone."""
        job: Job | None = upscale
        seen: set[int] = set()
        while job is not None and job.kind in (JobKind.UPSCALE, JobKind.PICK) and job.id not in seen:
            seen.add(job.id)
            job = await self.store.get(job.parent_id) if job.parent_id is not None else None
        return (Request.from_json(job.request)
                if job is not None and job.kind not in (JobKind.UPSCALE, JobKind.PICK) else None)

    def _generator(self, name: str) -> ModelSpec | None:
        """The configured model of that name if it makes pictures; None if it was removed."""
        spec = self.registry.models.get(name)
        return spec if spec is not None and spec.can_generate else None

    def _fallback_vary_model(self, base: Request, rules: ServerRules | None) -> ModelSpec:
        allowed = name_list(rules.allowed_models) if rules is not None else []
        candidates = [self.registry.get(self.default_model(rules)), *self.registry.generators()]
        fits = [m for m in candidates if (not allowed or m.name in allowed) and (base.parts or m.can_blend)]
        if not fits:
            raise LimitError("No model on this server can vary this picture"
                             + (" (it has no text: it needs a model that reads images)." if not base.parts else "."))
        return fits[0]

    async def pick(self, member: Member, job_id: int, index: int, *, guild_id: int | None = None,
                   channel_id: int | None = None, rules: ServerRules | None = None, private: bool = False,
                   direct: bool = False) -> Job:
        """U1–U4: image `index` of a job, alone, at the size it was made, from the file store: a
        job of kind PICK stored as done at once (no worker job; not counted by a daily quota),
        whose result is posted like any other and survives restarts, and whose buttons
        (Upscale, Vary, Zoom Out, Pan, Make Square) work on that picture. A second press by
        the same member gives the same job again. Raises RequestError for a job or picture that
        is not there, LimitError where the server is paused or Pintor does not answer in that
        channel."""
        parent, image = await self._image(job_id, index)
        if rules is not None and rules.paused:
            raise LimitError("Pintor is paused on this server by its admins. Try again later.")
        if rules is not None and not direct and (refusal := channel_refusal(rules, channel_id)):
            raise LimitError(refusal)
        key = f"pick:{member.id}:{job_id}:{index}"
        existing = await self.store.by_result_key(key)
        if existing is not None:
            return existing
        base = Request.from_json(parent.request)
        grid = base if base.kind not in (JobKind.UPSCALE, JobKind.PICK) else (await self._grid_request(parent) or base)
        request = grid.replace(kind=JobKind.PICK, init_image=str(self.picture(image.path)), seed=image.seed, width=image.width,
                               height=image.height, count=1, strength=0.0, upscaler=None, outpaint=None)
        try:
            return await self.store.create_finished_job(
                user_id=member.id, user_name=member.name, kind=JobKind.PICK, model=parent.model,
                prompt=request.prompt, request=request.to_json(), parent_id=job_id, parent_index=index,
                guild_id=guild_id, channel_id=channel_id, private=private, result_key=key,
                images=[NewImage(image.path, image.width, image.height, image.seed, image.sha256, image.flagged)],
                grid_path=image.path)
        except DuplicateJob as duplicate:  # pressed twice at once: the first press's job
            return duplicate.job

    async def zoom_out(self, member: Member, job_id: int, index: int, *, factor: float, prompt: str | None = None,
                       **where) -> Submitted:
        """Zoom Out ×`factor` (1 < factor ≤ 2) of image `index` of a job, optionally with a new
        prompt (Custom Zoom): a new grid of four (see outpaint)."""
        if not 1 < factor <= MAX_ZOOM:
            raise RequestError(f"A zoom out factor is a number above 1 and at most {MAX_ZOOM:g}, not {factor:g}.")
        return await self.outpaint(member, job_id, index, zoom_extension(factor), prompt=prompt, **where)

    async def pan(self, member: Member, job_id: int, index: int, *, direction: str, **where) -> Submitted:
        """Pan ⬅️ ➡️ ⬆️ ⬇️ (`direction`: left, right, up, down): the picture extended by half its
        side that way, a new grid of four (see outpaint)."""
        if direction not in PAN_DIRECTIONS:
            raise RequestError(f"Pan goes {', '.join(PAN_DIRECTIONS)}, not {direction}.")
        return await self.outpaint(member, job_id, index, PAN_DIRECTIONS[direction], **where)

    async def make_square(self, member: Member, job_id: int, index: int, **where) -> Submitted:
        """Make Square: a non-square picture's short side extended to its long one (see outpaint)."""
        _, image = await self._image(job_id, index)
        if image.width == image.height:
            raise RequestError("This picture is square already.")
        return await self.outpaint(member, job_id, index, square_extension(image.width, image.height), **where)

    async def outpaint(self, member: Member, job_id: int, index: int, extension: tuple[float, float, float, float],
                       *, prompt: str | None = None, **where) -> Submitted:
        """Image `index` of a job on a canvas grown by `extension` (left, top, right, bottom,
        fractions of its sides), the border painted by the model that made it (its grid's model,
        text and settings; with `prompt`, that text parsed as a new prompt for the same model),
        at that model's pixel budget: four new pictures with new seeds. RequestError for a
        canvas beyond 3:1 or a model that cannot paint a border (Kandinsky)."""
        parent, image = await self._image(job_id, index)
        base = Request.from_json(parent.request)
        rules = where.get("rules")
        grid = base if base.kind not in (JobKind.UPSCALE, JobKind.PICK) else await self._grid_request(parent)
        spec = self._generator(grid.model) if grid is not None else None
        if grid is None or spec is None:
            spec = self._fallback_vary_model(base, rules)
            grid = base.replace(model=spec.name, steps=spec.steps, guidance=spec.guidance)
        if prompt is not None and prompt.strip():
            fresh = self.prepare(f"{prompt} --model {spec.name}", rules=rules)
            grid = grid.replace(prompt=fresh.prompt, parts=fresh.parts, negative=fresh.negative,
                                parameters=fresh.parameters, notices=fresh.notices)
        if spec.family not in OUTPAINT_FAMILIES:
            raise RequestError(f"{spec.name} cannot paint around a picture here: Zoom Out, Pan and Make Square "
                               "need a Stable Diffusion model.")
        width, height = canvas_size(image.width, image.height, extension)
        if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
            raise RequestError(f"The picture would become {width}×{height}, beyond {MAX_ASPECT_RATIO}:1: "
                               "Pan the other way, or Zoom Out.")
        # brought back to the model's pixel budget: repeated zooms never grow past it
        # (in multiples of 8, the latent grid: coarser steps would change the canvas's shape)
        width, height = size_for_aspect((width, height), spec.native_side, multiple=8)
        request = grid.replace(
            kind=JobKind.OUTPAINT, model=spec.name, init_image=str(self.picture(image.path)), outpaint=extension, width=width,
            height=height, seed=random_seed(), count=GRID_SIZE, strength=1.0, images=(), image_weights=(),
            upscaler=None)
        return await self.submit(member, request, parent_id=job_id, parent_index=index, **where)

    async def upscale(self, member: Member, job_id: int, index: int, *, creative: bool = False,
                      **where) -> Submitted:
        """Image `index` of a job, larger. Upscale (Subtle): by the configured upscaler (an
        ESRGAN-family network ×2, the SD x4 upscaler ×4), or resampled ×2 (and said so) where
        there is none or the result would be too large for it. Upscale (Creative): that
        enlargement, then repainted at CREATIVE_STRENGTH by the model that made the picture
        (its grid's model and settings; the server's default model where that is gone), with
        steps and strength fitted to the server's max_steps as a variation's are.

        A second press for the same picture, by the same member, while the first upscale is
        queued, running or done, raises AlreadyMade (pointing to it) instead of upscaling twice.
        """
        parent, image = await self._image(job_id, index)
        base = Request.from_json(parent.request)
        if not can_upscale(image.width, image.height):
            raise RequestError(f"This picture is already {image.width}×{image.height}: "
                               f"it cannot be upscaled further.")
        upscaler = self.registry.upscaler
        rules = where.get("rules")
        if creative:
            grid = base if base.kind not in (JobKind.UPSCALE, JobKind.PICK) else await self._grid_request(parent)
            spec = self._generator(grid.model) if grid is not None else None
            if grid is None or spec is None:
                spec = self._fallback_vary_model(base, rules)
                grid = base.replace(model=spec.name, steps=spec.steps, guidance=spec.guidance)
            steps, strength = fit_image_to_image(grid.steps, CREATIVE_STRENGTH, rules)
            request = grid.replace(
                kind=JobKind.UPSCALE, model=spec.name, upscaler=upscaler or RESAMPLE, init_image=str(self.picture(image.path)),
                seed=image.seed, width=image.width, height=image.height, count=1, strength=strength, images=(),
                image_weights=(), steps=steps, outpaint=None)
        else:
            steps = self.registry.get(upscaler).steps if upscaler else 0
            if rules is not None and rules.max_steps:
                steps = min(steps, rules.max_steps)  # Pintor chose the upscaler's steps: within the limit
            request = base.replace(
                kind=JobKind.UPSCALE, model=upscaler or RESAMPLE, init_image=str(self.picture(image.path)), seed=image.seed,
                width=image.width, height=image.height, count=1, strength=0.0, images=(), image_weights=(),
                steps=steps, guidance=self.registry.get(upscaler).guidance if upscaler else 0.0, upscaler=None,
                outpaint=None, loras=())
        key = (f"upscale:{member.id}:{job_id}:{index}:{request.model}:{request.steps}"
               + (f":creative:{request.upscaler}" if creative else ""))
        return await self.submit(member, request, parent_id=job_id, parent_index=index, result_key=key, **where)

    async def blend(self, member: Member, uploads: list[tuple[str, bytes]], *, prompt: str = "",
                    weights: str = "", dimensions: str = "square", model: str | None = None,
                    **where) -> Submitted:
        """Mix 2–5 uploaded images (and a text) into a new grid through a Kandinsky prior.

        `uploads` are (name, bytes) as downloaded; each is checked by content before anything
        is stored. The inputs are kept with the job, so 🔄 and /show work after the upload's
        URL has expired.
        """
        rules = where.get("rules")
        parsed = blend_prompt(prompt, strict=rules is not None and rules.strict_parameters)
        spec = self._blend_model(model or parsed.model, rules)  # `--model` in the prompt chooses too
        if parsed.selectors:  # --v/--niji/--style choose among models that cannot blend
            ignored = ", ".join(quote(f"--{name} {value}".rstrip()) for name, value in parsed.selectors)
            parsed = dataclasses.replace(parsed, selectors=(), notices=parsed.notices + (
                f"Ignored {ignored}: /blend uses a model that can blend images ({spec.name}).",))
        if not MIN_BLEND_IMAGES <= len(uploads) <= MAX_BLEND_IMAGES:
            raise RequestError(f"/blend takes {MIN_BLEND_IMAGES} to {MAX_BLEND_IMAGES} images, not {len(uploads)}.")
        if dimensions not in BLEND_DIMENSIONS:
            raise RequestError(f"dimensions must be one of {', '.join(BLEND_DIMENSIONS)}.")
        image_weights, text_weight = blend_weights(weights, len(uploads), has_text=bool(parsed.parts))
        images = await asyncio.to_thread(lambda: [open_upload(data, name) for name, data in uploads])

        if "ar" not in parsed.given:
            parsed = dataclasses.replace(parsed, aspect=BLEND_DIMENSIONS[dimensions])
        total = sum(p.weight for p in parsed.parts)
        request = build_request(parsed, spec, kind=JobKind.BLEND,
                                loras=choose_loras(self.registry, parsed, spec)).replace(
            prompt=f"blend of {len(uploads)} images" + (f": {parsed.text}" if parsed.parts else ""),
            parts=tuple((p.text, text_weight * p.weight / total) for p in parsed.parts),
            image_weights=tuple(image_weights))
        if where.get("rules") is not None:  # a refusal writes nothing (submit checks again, atomically)
            await self._check_rules(member, request, where["rules"], where.get("channel_id"))
        paths, written = await asyncio.to_thread(self._keep_inputs, images)
        try:
            return await self.submit(member, request.replace(images=tuple(paths)), **where)
        except BaseException:
            # not stored: keep no upload that no job refers to (another blend may share the file)
            unused = [path for path in written if not await self.store.mentioned(Path(path).name)]
            await asyncio.to_thread(_delete_files, unused)
            raise

    def _blend_model(self, name: str | None, rules: ServerRules | None = None):
        """The named model, which must blend; for None, the server's default model where it
        blends, else the first blending model the server allows."""
        if name is not None:
            spec = self.registry.get(name)
            if not spec.can_blend:
                can = [m.name for m in self.registry.models.values() if m.can_blend]
                raise RequestError(f"'{spec.name}' cannot blend images. Models that can: "
                                   f"{', '.join(can) or 'none configured'}.")
            return spec
        allowed = name_list(rules.allowed_models) if rules is not None else []
        blenders = [m for m in self.registry.models.values() if m.can_blend]
        if not blenders:
            raise RequestError("No model that can blend images (Kandinsky 2.1/2.2) is configured; ask an admin.")
        default = self.registry.get(self.default_model(rules))
        for spec in [default] + blenders:
            if spec.can_blend and (not allowed or spec.name in allowed):
                return spec
        raise LimitError(f"No model this server allows can blend images. Allowed: {', '.join(allowed)}; "
                         f"models that blend: {', '.join(m.name for m in blenders)}.")

    def _keep_inputs(self, images) -> tuple[list[str], list[str]]:
        """Each input as a PNG named by its checksum (written atomically; kept for the job).
        Returns the paths, and those of them this call wrote (the others were there already)."""
        if self.inputs_dir is None:
            raise RuntimeError("Studio was built without an inputs_dir")
        paths, written = [], []
        for image in images:
            data = png_bytes(image)
            path = self.inputs_dir / f"{sha256(data)}.png"
            if not path.exists():
                write_atomic(path, data)
                written.append(str(path))
            paths.append(str(path))
        return paths, written

    async def job(self, job_id: int) -> Job | None:
        """The stored job with its images, or None."""
        return await self.store.get(job_id)

    async def _finished_job(self, job_id: int) -> Job:
        job = await self.store.get(job_id)
        if job is None:
            raise RequestError(f"There is no job {job_id}.")
        if job.status != JobStatus.DONE:
            raise RequestError(f"Job {job_id} is {job.status}, not finished: there is nothing to work on yet.")
        return job

    async def _image(self, job_id: int, index: int):
        job = await self._finished_job(job_id)
        image = next((i for i in job.images if i.index == index), None)
        if image is None:
            raise RequestError(f"Job {job_id} has no image {index} (it has {len(job.images)}).")
        if not self.picture(image.path).is_file():
            raise RequestError(f"The files of job {job_id} are gone from the file store.")
        return job, image

    async def submit(self, member: Member, request: Request, *, parent_id: int | None = None,
                     parent_index: int | None = None, guild_id: int | None = None,
                     channel_id: int | None = None, rules: ServerRules | None = None,
                     private: bool = False, direct: bool = False, notices: Sequence[str] = (),
                     result_key: str | None = None) -> Submitted:
        """Check the server's rules, store the job, then queue it: a job is in the database
        before anyone hears 'queued'.

        `rules` are those of the server `guild_id` (None: no server's, e.g. the CLI or a DM).
        `private`: the result goes only to the member (stored, so that nobody else can /show
        it). `direct`: asked in a direct message about a job of that server (a button under
        a result sent by DM): every rule of the server applies except its channel list, as
        nothing is posted in the server. `notices` are shown with the result (e.g. a saved
        model that is gone). With a `result_key`, a job with the same key that is queued,
        running or done raises AlreadyMade instead (checked before the rules: pointing to it
        costs nothing)."""
        if self.refusal is not None:
            raise RequestError(self.refusal)
        try:  # a model whose files cannot be had is refused now, not after the worker starts
            check_model_files(self.registry, request.model, [name for name, _ in request.loras])
        except ModelUnavailable as err:
            log.error("%s", err.detail)
            raise
        # One submission at a time: the limit checks and the insert must not interleave
        # (twenty simultaneous requests with a limit of three queue exactly three).
        async with self._submit_lock:
            if result_key is not None:
                await self._check_not_made(result_key)
            if rules is not None:
                await self._check_rules(member, request, rules, channel_id, check_channel=not direct)
                request = request.replace(safety_check=rules.nsfw_check)
            try:
                job = await self.store.create_job(
                    user_id=member.id, user_name=member.name, kind=request.kind, model=request.model,
                    prompt=request.prompt, request=request.to_json(), parent_id=parent_id,
                    parent_index=parent_index, guild_id=guild_id, channel_id=channel_id, private=private,
                    notices="\n".join(notices) or None, result_key=result_key, owner=self.owner)
            except DuplicateJob as duplicate:  # stored by another process since the check
                raise AlreadyMade(duplicate.job) from None
        events = self.watch(job.id)
        position = await self.queue.submit(job.id, member.id, request)
        return Submitted(job.id, position, request, events)

    async def _check_not_made(self, result_key: str) -> None:
        existing = await self.store.by_result_key(result_key)
        if existing is None:
            return
        if existing.status == JobStatus.DONE and not all(self.picture(i.path).is_file() for i in existing.images):
            await self.store.release_result_key(existing.id)  # its pictures are gone: make it anew
            return
        raise AlreadyMade(existing)

    async def _check_rules(self, member: Member, request: Request, rules: ServerRules,
                           channel_id: int | None, *, check_channel: bool = True) -> None:
        if rules.paused:
            raise LimitError("Pintor is paused on this server by its admins. Try again later.")
        if check_channel and (refusal := channel_refusal(rules, channel_id)):
            raise LimitError(refusal)
        allowed = name_list(rules.allowed_models)
        if allowed and request.model not in allowed and request.kind != JobKind.UPSCALE:
            raise LimitError(f"The model '{request.model}' is not allowed on this server. Allowed: {', '.join(allowed)}.")
        self._check_loras(request, rules)
        if rules.max_steps and request.steps > rules.max_steps:
            raise LimitError(f"{request.steps} steps is over this server's limit of {rules.max_steps}: "
                             f"use --steps {rules.max_steps} or a lower --q.")
        width, height = request.width, request.height
        if request.kind == JobKind.UPSCALE:  # what counts is the size it makes
            upscaler = self.registry.models.get((request.upscaler if request.strength > 0 else request.model) or RESAMPLE)
            factor = upscale_factor(width, height, with_model=upscaler is not None and upscaler.family == "upscale-x4")
            width, height = width * factor, height * factor
        if rules.max_side and max(width, height) > rules.max_side:
            raise LimitError(f"{width}×{height} is over this server's limit of {rules.max_side} pixels per side.")
        if rules.max_queued_per_member is not None:
            # everywhere (all servers and DMs): the queue and its worker are shared, so jobs
            # waiting from another server delay this server's members just the same
            waiting = await self.store.count_unfinished(member.id)
            if waiting >= rules.max_queued_per_member:
                raise LimitError(f"You already have {waiting} jobs queued or running; this server allows "
                                 f"{rules.max_queued_per_member}. Wait for one to finish, or /cancel one.")
        if rules.daily_quota is not None:
            midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
            used = await self.store.count_since(member.id, midnight, guild_id=rules.guild_id,  # this server's
                                                free_kinds=FREE_KINDS)
            if used >= rules.daily_quota:
                left = midnight + timedelta(days=1) - datetime.now(UTC)
                hours, minutes = divmod(int(left.total_seconds()) // 60, 60)
                raise LimitError(f"You have used your {rules.daily_quota} jobs for today. The quota resets "
                                 f"at 00:00 UTC, in {hours} h {minutes} min.")

    @staticmethod
    def _check_loras(request: Request, rules: ServerRules) -> None:
        """The server's LoRA rules: which LoRAs it allows, how many one job may use."""
        if not request.loras:
            return
        allowed = allowed_loras(rules)
        refused = [name for name, _ in request.loras if allowed is not None and name not in allowed]
        if refused:
            what = f"Allowed: {', '.join(allowed)}." if allowed else "This server allows no LoRAs."
            raise LimitError(f"The LoRA{'s' if len(refused) > 1 else ''} {', '.join(refused)} "
                             f"{'are' if len(refused) > 1 else 'is'} not allowed on this server. {what}")
        if rules.max_loras is not None and len(request.loras) > rules.max_loras:
            raise LimitError(f"{len(request.loras)} LoRAs is over this server's limit of {rules.max_loras} per job.")

    # -- what front ends read and change: the one door (cogs never reach into the stores) ----------

    @property
    def models(self) -> Registry:
        """The configured models (read only): their names, which make pictures, the default."""
        return self.registry

    async def preferences(self, user_id: int) -> MemberPreferences:
        """A member's defaults (/settings); the defaults of a member who never set any."""
        return await self.preferences_and_rules.member(user_id)

    async def update_preferences(self, user_id: int, user_name: str, **values) -> MemberPreferences:
        """Change a member's defaults (`values`: columns of `MemberPreferences`); returns them as stored."""
        return await self.preferences_and_rules.update_member(user_id, user_name, **values)

    async def rules(self, guild_id: int | None) -> ServerRules:
        """A server's rules (/pintor-admin); the defaults for a server that never set any (and for None)."""
        return await self.preferences_and_rules.guild(guild_id)

    async def update_rules(self, guild_id: int, **values) -> ServerRules:
        """Change a server's rules (`values`: columns of `ServerRules`); returns them as stored."""
        return await self.preferences_and_rules.update_guild(guild_id, **values)

    async def unfinished_jobs(self, user_id: int) -> list[Job]:
        """A member's queued and running jobs, oldest first."""
        return list(await self.store.unfinished(user_id))

    async def jobs_today(self, user_id: int, *, guild_id: int | None) -> int:
        """Jobs a member asked for since 00:00 UTC: on the server `guild_id` (as its daily
        quota counts them), or everywhere (all servers and DMs) for None."""
        midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return await self.store.count_since(user_id, midnight, guild_id=guild_id, free_kinds=FREE_KINDS)

    async def history(self, user_id: int, *, offset: int, limit: int) -> tuple[list[Job], int]:
        """A page of a member's jobs, newest first (at most `limit`, after skipping `offset`),
        and how many jobs they have in all."""
        jobs, total = await self.store.history(user_id, offset=offset, limit=limit)
        return list(jobs), total

    async def undelivered(self, *, max_age: timedelta) -> list[Job]:
        """Jobs finished in the last `max_age` for a channel whose result was never posted."""
        return list(await self.store.undelivered(since=datetime.now(UTC) - max_age))

    async def mark_posted(self, job_id: int, channel_id: int, message_id: int) -> None:
        """Record where a job's result was posted (its jump link; not posted again at start)."""
        await self.store.set_message(job_id, channel_id, message_id)

    async def workers(self) -> list[WorkerState]:
        """What is known of each worker now: ready, device, models, the running job and its step."""
        return await self.queue.workers()

    async def queue_position(self, job_id: int) -> int | None:
        """1 = next to run, 0 = running now, None = not queued."""
        return await self.queue.position(job_id)

    async def waiting_count(self) -> int:
        """How many jobs wait in the queue (all members')."""
        return len(await self.queue.waiting())

    async def cancel(self, job_id: int, *, member: Member | None = None) -> bool:
        """Cancel a queued or running job (a running one stops at its next step). With
        `member`, only their own job; False when there is nothing of theirs to cancel."""
        if member is not None:
            job = await self.store.get(job_id)
            if job is None or job.user_id != member.id:
                return False
        return await self.queue.cancel(job_id)

    async def forget(self, member: Member) -> int:
        """Delete a member's jobs, preferences and files (after cancelling what still runs).
        Returns how many files were deleted. One at a time per member: a second call while
        one runs waits for it (and finds nothing more to delete).

        A picture another member's unfinished job starts from (V or U pressed on this
        member's grid) is kept until that job ends (`_release_inputs`)."""
        lock = self._forget_locks.setdefault(member.id, asyncio.Lock())
        async with lock:
            unfinished = await self.store.unfinished(member.id)
            self.forgotten.update(job.id for job in unfinished)  # their messages say so, not "cancelled"
            for job in unfinished:
                await self.queue.cancel(job.id)
            stored, requests = await self.store.forget_user(member.id)
            paths = [str(self.picture(value)) for value in stored]
            # their uploads too (/blend inputs), unless another member's job uses the same picture
            uploads = {path for text in requests for path in Request.from_json(text).images
                       if self._is_upload(path)}
            paths += [path for path in uploads if not await self.store.mentioned(Path(path).name)]
            # pictures of others' jobs theirs started from, if nothing refers to them any more
            paths += [path for text in requests for path in _inputs_of(text) if not self._is_upload(path)]
            needed = await self._needed_by_unfinished()
            paths = [path for path in dict.fromkeys(paths)
                     if path not in needed and (self._is_upload(path) or not await self._refers_to(path))]
            deleted = await asyncio.to_thread(_delete_files, paths)
            await asyncio.to_thread(_remove_empty_folders, {str(Path(p).parent) for p in paths})
        return deleted

    async def _refers_to(self, path: str) -> bool:
        """Whether a stored job or image has the local picture file `path` as its own."""
        return await self.store.refers_to(self.files.stored(path))

    def picture(self, stored: str) -> Path:
        """The local file of a picture as a job stores it (Image.path, Job.grid_path: a
        file-store key; an absolute path in rows older than migration 0008); it may be gone."""
        return self.files.local(stored)

    def _is_upload(self, path: str) -> bool:
        return self.inputs_dir is not None and Path(path).parent == self.inputs_dir

    async def _needed_by_unfinished(self) -> set[str]:
        """The pictures queued and running jobs start from."""
        return {path for job in await self.store.unfinished() for path in _inputs_of(job.request)}

    async def _release_inputs(self, job_id: int) -> None:
        """After a job ends: delete the pictures it started from that nothing refers to any
        more (their job was forgotten while this one waited) and no unfinished job needs."""
        job = await self.store.get(job_id)
        if job is None:
            return
        candidates = [path for path in _inputs_of(job.request) if not self._is_upload(path)]
        if not candidates:
            return
        needed = await self._needed_by_unfinished()
        orphans = [path for path in candidates if path not in needed and not await self._refers_to(path)]
        if orphans:
            await asyncio.to_thread(_delete_files, orphans)
            await asyncio.to_thread(_remove_empty_folders, {str(Path(p).parent) for p in orphans})

    def watch(self, job_id: int) -> AsyncIterator[Event]:
        """The job's events from now on, each after it has been stored."""
        inbox: asyncio.Queue = asyncio.Queue()
        self._watchers.setdefault(job_id, []).append(inbox)

        async def stream() -> AsyncIterator[Event]:
            while True:
                event = await inbox.get()
                yield event
                if isinstance(event, FINAL_EVENTS):
                    return

        return stream()

    # -- events ---------------------------------------------------------------------------------

    async def _consume(self) -> None:
        async for event in self.queue.events():
            if await self._already_ended(event):
                # delivered again (a worker thought dead finished it too): stored and posted once
                log.info("job %s has ended already: %s not stored again", event.job_id, type(event).__name__)
                if isinstance(event, FINAL_EVENTS):
                    await self.queue.acknowledge(event.job_id)
                continue
            try:
                await self._store_event(event)
            except Exception:  # noqa: BLE001 - one bad write must not stop every later job's results
                log.exception("could not store %s", event)
                if isinstance(event, Done):
                    # no row refers to its pictures (the job may be gone: /forget): keep none
                    paths = [str(self.files.path(i.key)) for i in (*event.images, event.grid)]
                    await asyncio.to_thread(_delete_files, paths)
                    event = Failed(event.job_id, "The result could not be saved.")
                    with contextlib.suppress(Exception):  # the database may be what failed
                        await self.store.mark_failed(event.job_id, event.reason)
            if isinstance(event, FINAL_EVENTS):
                try:
                    await self.queue.acknowledge(event.job_id)  # stored: the queue may forget it
                except Exception:  # noqa: BLE001 - unacknowledged, it is delivered again, and skipped then
                    log.exception("could not acknowledge job %s", event.job_id)
            for inbox in self._watchers.get(event.job_id, []):
                inbox.put_nowait(event)
            if isinstance(event, FINAL_EVENTS):
                self._watchers.pop(event.job_id, None)
            for listener in self.listeners:
                try:
                    await listener(event.job_id, event)
                except Exception:  # noqa: BLE001
                    log.exception("listener failed on %s", event)
            if isinstance(event, FINAL_EVENTS):
                try:
                    await self._release_inputs(event.job_id)
                except Exception:  # noqa: BLE001 - a file left behind is no reason to stop
                    log.exception("could not release the inputs of job %s", event.job_id)

    async def _already_ended(self, event: Event) -> bool:
        """Whether the job of `event` (one that changes the job) has ended in the store."""
        if isinstance(event, Progress) or not isinstance(event, (Started, *FINAL_EVENTS)):
            return False
        job = await self.store.get(event.job_id)
        return job is not None and job.status in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)

    async def _store_event(self, event: Event) -> None:
        if isinstance(event, Started):
            await self.store.mark_running(event.job_id)
        elif isinstance(event, Done):
            # stored by key (generation/files.py): the database names no folder of this machine
            images = [NewImage(i.key, i.width, i.height, i.seed, i.sha256, i.flagged) for i in event.images]
            await self.store.complete(event.job_id, images, event.grid.key, event.notices)
        elif isinstance(event, Failed):
            await self.store.mark_failed(event.job_id, event.reason)
        elif isinstance(event, Cancelled):
            await self.store.mark_cancelled(event.job_id)
        elif isinstance(event, Interrupted):
            await self.store.mark_queued(event.job_id)
