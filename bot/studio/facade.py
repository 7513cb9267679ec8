"""The studio: where a member's request becomes a stored, queued job, and where the worker's
events become stored results. Every front end (Discord, the `pintor` CLI) goes through it, so
they share one path: parse → persist → queue → worker → files + rows → result.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple, TypeVar

from PIL import Image, ImageOps

from bot.downloads import Fetcher
from bot.intake import (
    BLEND_DIMENSIONS,
    MAX_BLEND_IMAGES,
    MIN_BLEND_IMAGES,
    OPERATOR_ID,
    LimitError,
    Member,
    ModelUnavailable,
    RequestError,
    allowed_loras,
    allowed_models,
    blend_prompt,
    blend_weights,
    check_model_files,
    choose_control,
    choose_loras,
    clip_refusal,
    fallback_model,
    prepare,
    prepare_repeated,
    prepare_with_notices,
    refuses_unknown_parameters,
    repeat_notice,
    with_control,
    without_control_weight,
)
from bot.studio.rules import PAUSED, channel_refusal
from bot.studio.words import blend_label, editable_prompt, link_name
from generation.events import FINAL_EVENTS, Cancelled, Done, Event, Failed, Interrupted, Progress, Started
from generation.families import family_of
from generation.files import CONTROL_FILE, INPUTS_FOLDER, FileStore, input_key, job_folder
from generation.imaging import png_bytes
from generation.inputs import open_upload
from generation.outpaint import PAN_DIRECTIONS, canvas_size, square_extension, zoom_extension
from generation.prompt import (
    MAX_ASPECT_RATIO,
    edit_parameters,
    format_parameters,
    parse_prompt,
    positive_parts,
    quote,
    size_for_aspect,
    without_loras,
)
from generation.queue import JobQueue, WorkerState
from generation.registry import ModelSpec, Registry, nearest_size
from generation.request import GRID_SIZE, JobKind, Request, build_request, random_seed
from generation.upscale import CREATIVE_STRENGTH, RESAMPLE, can_upscale, upscale_factor
from storage.db import unreachable
from storage.jobs import DuplicateJob, JobStore, NewImage
from storage.models import Job, JobStatus, MemberPreferences, ServerRules
from storage.owners import OwnerStore, this_host
from storage.settings import PreferencesAndRulesStore

log = logging.getLogger(__name__)
_T = TypeVar("_T")

VARY_SUBTLE, VARY_STRONG = 0.35, 0.7  # image-to-image strength of Vary (Subtle) / Vary (Strong)
MAX_ZOOM = 2.0  # Custom Zoom's largest factor, as MidJourney's
# How long a job's event waits for a database that cannot be reached (a PostgreSQL restart)
# before the job is given up as failed; tried again 0.5 s, 1 s, 2 s … at most 5 s apart.
DATABASE_WAIT_S = 300.0
FREE_KINDS = (JobKind.PICK,)  # jobs no worker runs: not counted by a server's daily quota
CAPTION_COUNT = 4  # prompts per /describe, as MidJourney's (generation.captions.CAPTION_COUNT)
NO_CAPTIONER = ("/describe needs a captioning model, and none is configured on this Pintor. An admin can add "
                "one (a BLIP entry in models.toml: see docs/models.md).")


class OwnerBusy(RuntimeError):
    """Another live process runs under this studio's owner name (a second `pintor run`)."""


class AlreadyMade(RequestError):
    """The job asked for would repeat `job` (queued, running or done): nothing new is made."""

    def __init__(self, job: Job):
        super().__init__(f"Job {job.id} already makes this ({job.status}).")
        self.job = job


# A job that does not use its picture's ControlNet carries none (and is not checked against its rule)
NO_CONTROL = {"control": None, "control_kind": None, "controlnet": None, "control_weight": 1.0}

# What Remix reads from a member's new prompt; every other parameter stays the picture's
REMIX_READS = frozenset({"no", "tile"})


def vary_name(strength: float) -> str:
    """The button a variation at `strength` was made by: "Vary (Strong)" or "Vary (Subtle)"."""
    return "Vary (Strong)" if strength >= VARY_STRONG else "Vary (Subtle)"


class Fitted(NamedTuple):
    """Steps and strength for an image-to-image job (`fit_image_to_image`), and the notices that
    say what was changed to get them."""

    steps: int
    strength: float
    notices: tuple[str, ...] = ()


def fit_image_to_image(steps: int, strength: float, rules: ServerRules | None, what: str = "Vary") -> Fitted:
    """Steps and strength for an image-to-image job a button makes, within the server's
    max_steps. Image to image runs int(steps × strength) steps (diffusers' img2img
    pipelines), so that product must be at least 1: steps are raised to ceil(1 / strength)
    where the limit allows; under a lower limit the strength is raised instead, up to
    VARY_STRONG. Each change is said, naming the job as `what` ("Vary (Subtle)", "Upscale
    (Creative)"): steps lowered to the limit, steps raised, strength raised. Returns
    Fitted(steps, strength, notices); raises LimitError when no pair fits (a limit of 1 step)."""
    limit = rules.max_steps if rules is not None and rules.max_steps else None
    notices = []
    if limit is not None and steps > limit:
        notices.append(f"{what}: {steps} steps is over this server's limit of {limit}; used {limit}.")
        steps = limit
    needed = math.ceil(1 / strength - 1e-9)
    if steps >= needed:
        return Fitted(steps, strength, tuple(notices))
    share = f"{what} runs {strength:.0%} of its steps on the picture (image to image)"
    if limit is None or needed <= limit:
        notices.append(f"{share}: {steps} step{'s' if steps != 1 else ''} would run none, so it used {needed}.")
        return Fitted(needed, strength, tuple(notices))
    raised = math.ceil(100 / steps) / 100  # the smallest strength in hundredths with steps × it ≥ 1
    if raised > VARY_STRONG:
        raise LimitError(f"This server allows {limit} step{'s' if limit != 1 else ''} per job: too few to "
                         f"vary a picture (Vary needs at least {math.ceil(1 / VARY_STRONG - 1e-9)} steps).")
    notices.append(f"{share}: with this server's limit of {limit} step{'s' if limit != 1 else ''} none would "
                   f"run, so it used strength {raised:g} instead of {strength:g} (further from the picture).")
    return Fitted(steps, max(strength, raised), tuple(notices))


@dataclass
class Submitted:
    """A stored, queued job: `position` in line (1 = next, 0 = running now or already ended);
    `events` ends with the job's final event (Done, Failed, Cancelled or Interrupted)."""

    job_id: int
    position: int
    request: Request
    events: AsyncIterator[Event]  # this job's events, each after it is stored; ends with the final one
    # the size of the pictures it makes (Studio.made_size: an upscale's, enlarged); None: the request's
    size: tuple[int, int] | None = None
    notices: tuple[str, ...] = ()  # the job's own notices, stored with it (after the request's own)


Listener = Callable[[int, Event], Awaitable[None]]


def _stored_end(job: Job, event: Event) -> Event:
    """The final event that says how `job` ended as the store records it (`event`: the one the
    worker sent, for a job the store records as done)."""
    if job.status == JobStatus.CANCELLED:
        return Cancelled(job.id)
    if job.status == JobStatus.FAILED:
        return Failed(job.id, job.error or "The job failed.")
    return event


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


# Stable Diffusion image prompts: image to image from the picture, at a strength that falls as
# --iw rises: strength = 1 − iw / 4 (--iw 0: 1.0, the picture drowned in noise; the default 1:
# 0.75, diffusers' own img2img default; 3: 0.25, close to the picture).
def image_prompt_strength(image_weight: float) -> float:
    """The image-to-image strength (0.25–1) for --iw (0–3) on a Stable Diffusion model."""
    return round(1.0 - image_weight / 4, 4)


def image_prompt_request(request: Request, spec: ModelSpec, count: int, rules: ServerRules | None) -> Request:
    """How `count` image prompts steer a prompt's grid on model `spec`, weighted by the request's
    --iw (`image_weight`). Kandinsky (a model that blends): the pictures are mixed with the text
    through the prior, as /blend mixes them: the text's parts share 1 / (1 + iw) of the weight
    and the pictures iw / (1 + iw), equally. Stable Diffusion: image to image from the (first,
    already cropped) picture at image_prompt_strength(iw), with steps raised where steps ×
    strength < 1 (fit_image_to_image, within the server's max_steps). Returns the request with
    the weights or strength, and a notice saying what was done; the caller sets the pictures'
    paths (`images` or `init_image`). Raises LimitError where the server's steps cannot fit."""
    iw = request.image_weight
    given = len(request.image_prompts) or count  # every picture given (links and the image option), used or not
    shown = f"{given} image prompt{'s' if given > 1 else ''}" + (f" at --iw {iw:g}" if iw != 1 else "")
    names = ", ".join(request.image_prompts)
    if spec.can_blend:
        # the positive parts share the text's weight; a negative part (less of it) keeps its
        # size against them (generation.prompt.weight_sides)
        total = sum(weight for _, weight in positive_parts(request.parts))
        text_share, image_share = 1 / (1 + iw), iw / (1 + iw)
        notice = f"🖼️ {shown} ({names}), mixed with the text by {spec.name}."
        return request.replace(
            parts=tuple((text, text_share * weight / total) for text, weight in request.parts),
            image_weights=(image_share / count,) * count, notices=(*request.notices, notice))
    try:
        steps, strength, fitted = fit_image_to_image(request.steps, image_prompt_strength(iw), rules,
                                                     f"Starting from the image prompt (--iw {iw:g})")
    except LimitError:
        limit = rules.max_steps if rules is not None else 0
        raise LimitError(f"This server allows {limit} step{'s' if limit != 1 else ''} per job: too few to start "
                         f"from a picture at --iw {iw:g} on {spec.name}. Use a lower --iw (--iw 0 needs one step), "
                         "or a Kandinsky model.") from None
    first, *others = request.image_prompts or ("",)
    unused = (f" It uses the first image prompt only ({first}); {', '.join(others)} "
              f"{'was' if len(others) == 1 else 'were'} not used (a Kandinsky model mixes several).") if others else ""
    notice = (f"🖼️ {shown} ({names}): {spec.name} starts from the picture (image to image, strength "
              f"{strength:g}).{unused}")
    return request.replace(steps=steps, strength=strength, notices=(*request.notices, notice, *fitted))


class Studio:
    """The one path every front end uses. Each request method (imagine, reroll, vary, upscale,
    blend, submit) returns Submitted once the job is stored and queued, and raises
    bot.intake.USER_ERRORS for what a member asked wrong (their message is for the member:
    PromptError, UnknownModelError, RequestError and its LimitError for a server's rules,
    UploadError) and AlreadyMade for a result that exists; then nothing is stored. Database
    errors (SQLAlchemy's) pass through. `where` keywords are submit()'s (guild_id, channel_id,
    rules, private, direct)."""

    def __init__(self, *, registry: Registry, store: JobStore, queue: JobQueue, files: FileStore,
                 owner: str | None = None, queue_kind: str = "embedded",
                 fetcher: Fetcher | None = None):
        self.registry = registry
        # every URL this studio fetches (attachments, image prompts' links): Discord's hosts by default
        self.fetcher = fetcher or Fetcher()
        # who holds the jobs this studio queues (storage.owners): "bot" for `pintor run`
        self.owner = owner or f"cli-{this_host()}-{os.getpid()}-{id(self):x}"
        self.owners = OwnerStore(store.engine)
        self.queue_kind = queue_kind  # "embedded" (a worker in this process) or "redis"
        self.refusal: str | None = None  # why this studio makes no jobs (set by start)
        self._beat: asyncio.Task | None = None
        self.files = files  # the pictures the worker's events name by key
        self.preferences_and_rules = PreferencesAndRulesStore(store.engine)  # members' defaults and servers' rules
        # the folder of uploaded images kept with their jobs (keys "inputs/<sha256>.png")
        self.inputs_dir = files.path(INPUTS_FOLDER)
        self.store = store
        self.queue = queue
        self.listeners: list[Listener] = []  # told of every event after it is stored
        self._watchers: dict[int, list[asyncio.Queue]] = {}
        self._consumer: asyncio.Task | None = None
        self._submit_lock = asyncio.Lock()
        self._forget_locks: dict[int, asyncio.Lock] = {}
        self.forgotten: set[int] = set()  # unfinished jobs deleted by /forget (their messages are settled)
        self.database_wait_s = DATABASE_WAIT_S

    async def start(self, *, resume_user: int | None = None) -> list[Job]:
        """Start the worker and queue again the jobs a crash or a stop left unfinished whose
        owner is gone (storage.owners: a front end still running beside this one keeps its
        own); with `resume_user`, only that member's (the CLI resumes its own jobs, not those
        the bot resumes for Discord's members). Returns those jobs, queued again in this order.

        Raises OwnerBusy when this studio's owner name is held by a live process (a second
        `pintor run` on one database). With the embedded queue beside another live front end,
        nothing is resumed, no worker is started, and `refusal` says why jobs are refused (a
        second worker would load the models again on the same GPUs and run beside the first)."""
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
        claimed = [] if self.refusal is not None else await self.owners.claim_unfinished(self.owner, resume_user)
        for job in claimed:
            # a worker killed while it wrote this job's pictures left temp files: never finished.
            # Removed before the queue starts: from then on its writers are at work (the Redis
            # queue writes the pictures of results that came while this front end was stopped,
            # each through a temp file: removing one mid-write failed a finished job)
            if partial := await asyncio.to_thread(self.files.remove_partial, job_folder(job.id)):
                log.info("job %s: removed %s, left half-written by a stopped worker", job.id, ", ".join(partial))
        if self.refusal is None:  # refused: no worker is started for jobs it will never get
            await self.queue.start()
        try:
            for job in claimed:
                await self.store.mark_queued(job.id)
                await self.queue.submit(job.id, job.user_id, Request.from_json(job.request))
                log.info("job %s queued again after a restart", job.id)
        finally:
            # events are stored only once the claimed jobs are queued again: a result that came
            # while this front end was stopped is stored after its job's mark_queued, never
            # turned back to "queued" by it (and run and posted a second time)
            self._consumer = asyncio.create_task(self._consume(), name="studio-events")
        return list(claimed)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.owners.lease_s / 3)
            try:
                await self.owners.beat(self.owner)
            except Exception as err:  # noqa: BLE001 - the database away for a moment: beat again later
                if not unreachable(err):
                    log.exception("could not renew the lease of %s", self.owner)
                else:
                    log.warning("could not renew the lease of %s: the database cannot be reached (%s)", self.owner,
                                type(err).__name__)

    async def close(self) -> None:
        """Stop the worker after its current step; unfinished jobs stay queued for the next start."""
        await self.fetcher.close()
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

    async def fetch(self, url: str, name: str) -> bytes:
        """The bytes at `url` (an attachment or a link a member sent, `name` in messages), through
        the one outbound door (bot.downloads.Fetcher: allowed hosts, public addresses, size and
        time caps). Raises FetchError (an UploadError) with a message for the member."""
        return await self.fetcher.fetch(url, name)

    def prepare(self, text: str, defaults: MemberPreferences | None = None,
                rules: ServerRules | None = None, *, strict: bool | None = None) -> Request:
        """`bot.intake.prepare` with this studio's registry."""
        return prepare(self.registry, text, defaults, rules, strict=strict)

    def default_model(self, rules: ServerRules | None) -> str:
        """The model of a prompt that names none, under a server's rules (None: no server)."""
        return fallback_model(self.registry, allowed_models(rules, self.registry))

    def prepare_with_notices(self, text: str, defaults: MemberPreferences | None = None, *,
                             rules: ServerRules | None = None, control: bool = False) -> tuple[Request, list[str]]:
        """The request, and notices for its result (a saved model that is gone here), under
        a server's rules (allowed models, strict parameters); with `control`, a control image
        comes with it (its ControlNet chosen; `controlled` stores the upload and submits)."""
        return prepare_with_notices(self.registry, text, defaults, allowed=allowed_models(rules, self.registry),
                                    strict=refuses_unknown_parameters(rules), control=control)

    async def controlled(self, member: Member, request: Request, upload: tuple[str, bytes], *,
                         notices: Sequence[str] = (), **where) -> Submitted:
        """Submit a request prepared with `control=True` with its control image: the upload
        (name, bytes as downloaded) is checked by content as /blend's are (generation.inputs:
        bombs, extreme shapes, damaged files refused with UploadError), the server's rules
        are checked (ControlNet allowed?), then it is stored under images/inputs/ before the
        job, which refers to it (🔄, V and /show keep it). A refusal stores nothing."""
        return (await self._controlled_many(member, [request], upload, notices=notices, **where))[0]

    async def _controlled_many(self, member: Member, requests: Sequence[Request], upload: tuple[str, bytes],
                               **where) -> list[Submitted]:
        """`controlled` for the grids of one prompt (--repeat), all or none."""
        if any(request.controlnet is None for request in requests):
            raise ValueError("this request was not prepared with a control image")
        name, data = upload
        image = await asyncio.to_thread(open_upload, data, name)
        if where.get("rules") is not None:  # a refusal writes nothing (submit checks again, atomically)
            await self._check_rules(member, requests[0], where["rules"], where.get("channel_id"), jobs=len(requests))
        return await self._submit_with_inputs(member, [image],
                                              lambda paths: [each.replace(control=paths[0]) for each in requests],
                                              **where)

    async def imagine(self, member: Member, text: str, *, uploads: Sequence[tuple[str, str]] = (),
                      **where) -> Submitted:
        """A prompt's grid: `prepare` then `submit_prompt` (which fetches its image prompts)."""
        request = self.prepare(text, rules=where.get("rules"))
        return (await self.submit_prompt(member, [request], uploads=uploads, **where))[0]

    def check_image_prompts(self, request: Request) -> None:
        """Refuse, before anything is fetched or stored, an image prompt link Pintor will not
        fetch (a host the admin does not allow, not https…): raises FetchError naming the link.
        Pure and fast: a front end calls it before acknowledging."""
        for url in request.image_prompts:
            self.fetcher.policy.check(url, link_name(url))

    async def submit_prompt(self, member: Member, requests: Sequence[Request], *,
                            uploads: Sequence[tuple[str, str]] = (), control: tuple[str, str] | None = None,
                            **where) -> list[Submitted]:
        """Submit a prepared prompt's requests (one per grid: --repeat; `submit_many`, all or
        none) with their image prompts: the links at the start of
        its prompt (`request.image_prompts`) and `uploads` ((file name, URL) of attachments),
        each fetched through `fetch`, checked by content as /blend's uploads are
        (generation.inputs.open_upload) and kept in the file store before the job is stored, so
        🔄, V and a restart never need the links again. How the pictures steer the grid:
        `image_prompt_request`. Without image prompts, the request is submitted as it is (a
        --iw is said to have had nothing to weigh). `control`: (file name, URL) of a control
        image, for requests prepared with `control=True` (`controlled`). Raises the USER_ERRORS (FetchError,
        UploadError, RequestError…) with nothing stored."""
        request = requests[0]  # the grids of one prompt differ only in their seeds
        sources = [(link_name(url), url) for url in request.image_prompts] + list(uploads)
        if not sources:
            if "--iw" in request.parameters:
                unused = ("--iw was not used: this prompt has no image prompt (links at its start, or the "
                          "image option).")
                requests = [each.replace(notices=(*each.notices, unused)) for each in requests]
            if control is not None:
                return await self._controlled_many(member, requests, (control[0], await self.fetch(control[1], control[0])),
                                                   **where)
            return await self.submit_many(member, requests, **where)
        self.check_image_prompts(request)
        spec = self.registry.get(request.model)
        if not spec.can_blend and not family_of(spec.family).emphasis:
            users = [m.name for m in self.registry.generators() if m.can_blend or family_of(m.family).emphasis]
            raise RequestError(f"{spec.name} cannot use image prompts. Models that can: {', '.join(users) or 'none'}.")
        names = [name for name, _ in sources]
        data = [(name, await self.fetch(url, name)) for name, url in sources]
        images = await asyncio.to_thread(lambda: [open_upload(blob, name) for name, blob in data])
        if family_of(spec.family).emphasis:
            # image to image from the first picture, cropped to the grid's shape (not stretched)
            images = [await asyncio.to_thread(ImageOps.fit, images[0], (request.width, request.height),
                                              Image.Resampling.LANCZOS)]
        steering = []  # the control image, stored with the image prompts
        if control is not None:
            blob = await self.fetch(control[1], control[0])
            steering = [await asyncio.to_thread(open_upload, blob, control[0])]
        rules = where.get("rules")
        requests = [image_prompt_request(each.replace(image_prompts=tuple(names)), spec, len(images), rules)
                    for each in requests]
        if rules is not None:  # a refusal writes nothing (submit_many checks again, atomically)
            await self._check_rules(member, requests[0], rules, where.get("channel_id"), jobs=len(requests))

        count = len(images)

        def with_inputs(paths: list[str]) -> list[Request]:
            kept = paths[:count]
            controlled = [each.replace(control=paths[count]) if steering else each for each in requests]
            if spec.can_blend:
                return [each.replace(images=tuple(kept)) for each in controlled]
            return [each.replace(init_image=kept[0]) for each in controlled]

        return await self._submit_with_inputs(member, [*images, *steering], with_inputs, **where)

    def prepare_repeated(self, text: str, defaults: MemberPreferences | None = None, *,
                         rules: ServerRules | None = None, control: bool = False) -> tuple[list[Request], list[str]]:
        """`prepare_with_notices` for every grid the prompt's --repeat asks for (one request
        each, with its own seed: `bot.intake.repeated`); submit them with `submit_many`."""
        return prepare_repeated(self.registry, text, defaults, allowed=allowed_models(rules, self.registry),
                                strict=refuses_unknown_parameters(rules), control=control)

    def remixed(self, request: Request, prompt: str | None, rules: ServerRules | None) -> Request:
        """`request` with the words of `prompt` (Remix, Custom Zoom: a member's new prompt for a
        button's job), parsed as /imagine parses a prompt and resolved for the request's own
        model: its text, weights, --no list and --tile (REMIX_READS), with their notices. The
        picture's model, size, steps, guidance, chaos, seed and LoRAs stay the job's: any other
        parameter typed (--ar, --stylize, --model …) is ignored and said so, and the parameters
        shown stay the job's. None, blank, or the form's text sent back unchanged
        (`editable_prompt`): `request` unchanged. Raises the USER_ERRORS of a prompt (a
        parameter that does not parse; one Pintor does not have, on a strict server)."""
        if prompt is None or not prompt.strip() or prompt.strip() == editable_prompt(request).strip():
            return request
        parsed = parse_prompt(prompt, strict=refuses_unknown_parameters(rules), require_text=bool(request.parts))
        spec = self.registry.get(request.model)
        ignored = []
        others = parsed.given - REMIX_READS - {"repeat"}
        if others or parsed.selectors:
            typed = format_parameters(dataclasses.replace(parsed, given=others))
            ignored.append(f"Remix changes the words, --no and --tile only: ignored {quote(typed, 120)}; "
                           + (f"the model stays the picture's ({spec.name}) and " if "model" in others
                              or parsed.selectors else "")
                           + "the picture keeps its own settings.")
        if parsed.repeat > 1:
            ignored.append(repeat_notice(parsed.repeat))
        if parsed.image_urls:
            ignored.append(f"Ignored the link{'s' if len(parsed.image_urls) > 1 else ''} at the start of the "
                           "prompt: Remix keeps the pictures this job starts from.")
        loras = [(self.registry.loras[name], weight) for name, weight in request.loras if name in self.registry.loras]
        words = dataclasses.replace(parsed, given=parsed.given & REMIX_READS, selectors=(), loras=(), image_urls=(),
                                    repeat=1)
        fresh = build_request(words, spec, loras=loras)
        parameters = edit_parameters(request.parameters, {
            "no": f"--no {fresh.negative}" if fresh.negative else None, "tile": "--tile" if fresh.tile else None})
        return request.replace(prompt=fresh.prompt, parts=fresh.parts, negative=fresh.negative, parameters=parameters,
                               notices=(*fresh.notices, *ignored), tile=fresh.tile)

    async def reroll(self, member: Member, job_id: int, *, prompt: str | None = None, **where) -> Submitted:
        """The same request again with a new seed: a grid from a prompt or a blend, or a
        variation grid (the same picture varied again, at the same strength). With `prompt`
        (Remix), its words instead of the job's (`remixed`); not for a blend, whose words
        are mixed with its pictures."""
        parent = await self._finished_job(job_id)
        request = Request.from_json(parent.request)
        if request.kind == JobKind.BLEND and prompt is not None and prompt.strip():
            raise RequestError("A blend is re-rolled with its own words: use /blend for new ones.")
        grids = (JobKind.IMAGINE, JobKind.REROLL, JobKind.BLEND, JobKind.OUTPAINT)
        if request.kind in (*grids, JobKind.VARIATION) and self._generator(request.model) is None:
            raise RequestError(f"🔄 cannot make job {job_id}'s grid again: its model '{request.model}' is no longer "
                               "configured here. V1–V4 vary its pictures with another model; /imagine makes a new "
                               "grid.")
        if gone := [name for name, _ in request.loras if name not in self.registry.loras]:
            its = f"its LoRA{'s' if len(gone) > 1 else ''} {', '.join(repr(name) for name in gone)}"
            raise RequestError(f"🔄 cannot make job {job_id}'s grid again: {its} "
                               f"{'are' if len(gone) > 1 else 'is'} no longer configured here. V1–V4 vary its "
                               f"pictures without {'them' if len(gone) > 1 else 'it'}; /imagine makes a new grid.")
        request = self.remixed(request, prompt, where.get("rules"))
        if request.kind == JobKind.VARIATION:
            return await self._vary_again(member, parent, request, **where)
        if request.kind not in grids:
            raise RequestError("Only a grid can be re-rolled.")
        rules = where.get("rules")
        if rules is not None and rules.max_steps and request.steps > rules.max_steps:
            # the member chose these steps (--steps, --q): 🔄 does not change their picture
            raise LimitError(f"🔄 would make job {job_id} again with its {request.steps} steps, over this "
                             f"server's limit of {rules.max_steps}.")
        if request.kind == JobKind.OUTPAINT:  # the same canvas painted again: the same picture's job
            if not request.init_image or not self.picture(request.init_image).is_file():
                raise RequestError(f"The picture job {job_id} painted around is gone from the file store.")
            return await self.submit(member, request.replace(seed=random_seed()), parent_id=parent.parent_id,
                                     parent_index=parent.parent_index, **where)
        if request.control and not self.picture(request.control).is_file():
            raise RequestError(f"The control image of job {job_id} is gone from the file store.")
        kind = JobKind.BLEND if request.kind == JobKind.BLEND else JobKind.REROLL
        if any(not Path(path).is_file() for path in self._inputs_of(parent.request)):
            # a blend's or image prompts' pictures: kept in the file store (never fetched again)
            raise RequestError(f"The pictures job {job_id} was made from are gone from the file store.")
        request = request.replace(kind=kind, seed=random_seed())
        return await self.submit(member, request, parent_id=job_id, **where)

    async def _vary_again(self, member: Member, variation: Job, request: Request, **where) -> Submitted:
        """🔄 under a variation grid: its picture varied again, at its strength, with new seeds.
        The new job is another variation of the same picture (same parent and image)."""
        if not request.init_image or not self.picture(request.init_image).is_file():
            raise RequestError(f"The picture job {variation.id} varied is gone from the file store.")
        strength = VARY_STRONG if request.strength >= VARY_STRONG else VARY_SUBTLE
        steps, strength, fitted = fit_image_to_image(request.steps, strength, where.get("rules"),
                                                     vary_name(strength))
        request = request.replace(seed=random_seed(), steps=steps, strength=strength)
        return await self.submit(member, request, parent_id=variation.parent_id,
                                 parent_index=variation.parent_index, notices=fitted, **where)

    async def vary(self, member: Member, job_id: int, index: int, *, strong: bool, prompt: str | None = None,
                   **where) -> Submitted:
        """Four new pictures made from image `index` of a job (image to image, new seeds), with
        the model and settings of the job that made the grid: for an upscale, of the grid it
        was upscaled from. Server limits are met by adjusting steps and strength (see
        fit_image_to_image); LimitError where they cannot be. Where that model was removed from
        models.toml (or the grid is gone) the fallback model makes it, said; LoRAs (and a
        ControlNet) that cannot apply to the model used are dropped and said (`_fitted_loras`)."""
        parent, image = await self._image(job_id, index)
        base = Request.from_json(parent.request)
        rules = where.get("rules")
        notices: list[str] = []
        grid = base if base.kind not in (JobKind.UPSCALE, JobKind.PICK) else await self._grid_request(parent)
        spec = self._generator(grid.model) if grid is not None else None
        if spec is not None and grid is not None:  # (spec is None when grid is)
            # its model, settings, text and tile size (an upscale keeps the aspect ratio), its LoRAs
            # still configured
            base, dropped = self._fitted_loras(
                base.replace(width=image.width, height=image.height) if grid is base else grid, spec)
            notices += dropped
        else:
            # the grid is gone (deleted with /forget) or its model was removed: the default
            # model (or one this server allows, one that reads images when there is no text),
            # with its own steps and guidance, at its own pixel budget
            spec = self._fallback_vary_model(base, rules)
            notices.append(self._replaced_model(base, grid, spec))
            width, height = size_for_aspect((image.width, image.height), spec.native_side)
            base, dropped = self._with_model(base, spec)
            notices += dropped
            base = base.replace(width=width, height=height)
            steering = self.registry.controlnets.get(base.controlnet or "")
            if base.controlnet and (steering is None or not steering.fits(spec.family)):
                # its ControlNet does not steer this model: not used, not shown, said
                why = ("is no longer configured here" if steering is None else
                       f"does not steer {spec.name} (a {spec.family} model)")
                notices.append(f"The ControlNet '{base.controlnet}' {why}: the control image was not used.")
                base = base.replace(control=None, control_kind=None, controlnet=None,
                                    parameters=edit_parameters(base.parameters, {"cn": None, "cw": None}))
        remixed = self.remixed(base, prompt, rules)  # Remix: the member's new words for the same picture
        if remixed is not base:  # what Remix changed or ignored: a variation's result says it with its notices
            notices += [notice for notice in remixed.notices if notice not in notices]
        base = remixed
        strength = VARY_STRONG if strong else VARY_SUBTLE
        steps, strength, fitted = fit_image_to_image(base.steps, strength, rules, vary_name(strength))
        notices += fitted
        # Kandinsky is steered by image embeddings: the chosen image itself steers its variations
        source = image.path  # by its key (generation/files.py), as the job stores it
        images = (source,) if spec.can_blend else ()
        count = GRID_SIZE
        if (limits := spec.remote_limits) is not None:
            # the provider's variations or edits call makes them, at a size it makes
            if not (limits.varies or limits.edits):
                raise RequestError(f"{spec.name} ({spec.model}) cannot vary a picture: OpenAI's API has no "
                                   "variation or edit call for it. Upscale it, or 🔄 for new pictures.")
            width, height = nearest_size(limits, image.width, image.height)
            base, count = base.replace(width=width, height=height), spec.images
        request = base.replace(
            kind=JobKind.VARIATION, seed=random_seed(), init_image=source, strength=strength, count=count,
            images=images, image_weights=(1.0,) * len(images), steps=steps, upscaler=None, outpaint=None)
        return await self.submit(member, request, parent_id=job_id, parent_index=index, notices=notices, **where)

    async def _grid_to_repaint(self, parent: Job, base: Request,
                               rules: ServerRules | None) -> tuple[Request, ModelSpec, list[str]]:
        """What a repaint of `parent`'s picture (Zoom Out, Pan, Upscale (Creative)) starts from:
        the request of its grid (`base` itself, or an upscale's or a pick's grid) on its own
        model with the LoRAs that cannot apply dropped; where the grid is gone or its model was
        removed, `base` on the fallback model. Returns (that request, its model, what to say)."""
        grid = base if base.kind not in (JobKind.UPSCALE, JobKind.PICK) else await self._grid_request(parent)
        spec = self._generator(grid.model) if grid is not None else None
        if grid is None or spec is None:
            spec = self._fallback_vary_model(base, rules)
            replaced = self._replaced_model(base, grid, spec)
            grid, dropped = self._with_model(base, spec)
            return grid, spec, [replaced, *dropped]
        grid, dropped = self._fitted_loras(grid, spec)  # its own model: its LoRAs still configured
        return grid, spec, list(dropped)

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

    async def repaints(self, job: Job) -> bool:
        """Whether Upscale (Creative) of the picture of `job` (a U or an upscale) would repaint
        it: its grid's model can (ModelSpec.can_repaint), or, where that is gone, the default
        model Pintor would use instead. The button is offered only then (bot.results)."""
        request = Request.from_json(job.request)
        grid = request if job.kind not in (JobKind.UPSCALE, JobKind.PICK) else await self._grid_request(job)
        spec = self._generator(grid.model) if grid is not None else None
        if spec is None:
            try:
                spec = self._fallback_vary_model(request, None)
            except RequestError:
                return False
        return spec.can_repaint

    async def grid_of(self, job: Job) -> Job | None:
        """The grid job a picture alone (a U, an upscale, through "Upscale again" chains) comes
        from; None when it is gone (or for a job made by no button)."""
        seen: set[int] = set()
        parent = await self.store.get(job.parent_id) if job.parent_id is not None else None
        while parent is not None and parent.kind in (JobKind.UPSCALE, JobKind.PICK) and parent.id not in seen:
            seen.add(parent.id)
            parent = await self.store.get(parent.parent_id) if parent.parent_id is not None else None
        return parent

    def _generator(self, name: str) -> ModelSpec | None:
        """The configured model of that name if it makes pictures; None if it was removed."""
        spec = self.registry.models.get(name)
        return spec if spec is not None and spec.can_generate else None

    def _fallback_vary_model(self, base: Request, rules: ServerRules | None) -> ModelSpec:
        allowed = allowed_models(rules, self.registry)
        candidates = [self.registry.get(self.default_model(rules)), *self.registry.generators()]
        fits = [m for m in candidates if (not allowed or m.name in allowed) and (base.parts or m.can_blend)]
        if not fits:
            raise LimitError("No model on this server can vary this picture"
                             + (" (it has no text: it needs a model that reads images)." if not base.parts else "."))
        return fits[0]

    def _with_model(self, base: Request, spec: ModelSpec) -> tuple[Request, list[str]]:
        """`base` made by `spec` instead of its own model (one removed from models.toml, or a
        grid that is gone): that model's steps and guidance, and its name in the parameters
        shown, so that the message names the model the job used; its LoRAs fitted to `spec`
        (`_fitted_loras`). Returns (the request, a notice per LoRA dropped)."""
        return self._fitted_loras(base.replace(
            model=spec.name, steps=spec.steps, guidance=spec.guidance,
            parameters=edit_parameters(base.parameters, {"model": f"--model {spec.name}"})), spec)

    def _fitted_loras(self, base: Request, spec: ModelSpec) -> tuple[Request, list[str]]:
        """`base` (to be made by `spec`) without its LoRAs that cannot apply to `spec`: made for
        another family (a fallback model's), or no longer configured (removed from models.toml
        since). They are dropped from the request and from the --lora shown, and the notice of
        the trigger words they added is no longer shown (the words stay in the prompt, as words).
        Returns (the request, a notice per LoRA dropped, for the job's message)."""
        kept: list[tuple[str, float]] = []
        notices: list[str] = []
        said = list(base.notices)  # the prompt's notices, shown again under a zoom's grid
        for name, weight in base.loras:
            lora = self.registry.loras.get(name)
            if lora is not None and lora.fits(spec.family):
                kept.append((name, weight))
                continue
            why = ("is no longer configured here" if lora is None else
                   f"is made for {', '.join(lora.families)} models and {spec.name} is a {spec.family} model")
            # "Added the trigger words … of the LoRA x.": the words stay in the prompt, the LoRA does not
            triggers = [notice for notice in said if notice.startswith("Added the trigger words ")
                        and notice.endswith(f" of the LoRA {name}.")]
            said = [notice for notice in said if notice not in triggers]
            notices.append(f"The LoRA '{name}' {why}: not used"
                           + ("; the trigger words it added stay in the prompt, as words." if triggers else "."))
        if not notices:
            return base, []
        dropped = [name for name, weight in base.loras if (name, weight) not in kept]
        return base.replace(loras=tuple(kept), parameters=without_loras(base.parameters, dropped),
                            notices=tuple(said)), notices

    @staticmethod
    def _replaced_model(base: Request, grid: Request | None, spec: ModelSpec) -> str:
        """What a button's job says when `spec` made it instead of the picture's model."""
        if grid is None:
            return f"The grid this picture came from is gone: made with {spec.name}."
        return f"The model '{grid.model}' is no longer configured here: made with {spec.name} instead."

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
            raise LimitError(PAUSED)
        if rules is not None and not direct and (refusal := channel_refusal(rules, channel_id)):
            raise LimitError(refusal)
        key = f"pick:{member.id}:{job_id}:{index}"
        existing = await self.store.by_result_key(key)
        if existing is not None:
            return existing
        base = Request.from_json(parent.request)
        grid = base if base.kind not in (JobKind.UPSCALE, JobKind.PICK) else (await self._grid_request(parent) or base)
        request = grid.replace(kind=JobKind.PICK, init_image=image.path, seed=image.seed, width=image.width,
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

    async def pan(self, member: Member, job_id: int, index: int, *, direction: str, prompt: str | None = None,
                  **where) -> Submitted:
        """Pan ⬅️ ➡️ ⬆️ ⬇️ (`direction`: left, right, up, down): the picture extended by half its
        side that way, a new grid of four (see outpaint), with `prompt`'s words (Remix)."""
        if direction not in PAN_DIRECTIONS:
            raise RequestError(f"Pan goes {', '.join(PAN_DIRECTIONS)}, not {direction}.")
        return await self.outpaint(member, job_id, index, PAN_DIRECTIONS[direction], prompt=prompt, **where)

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
        canvas beyond 3:1 or a model that cannot paint a border (Kandinsky). A removed model is
        replaced by the fallback model, and LoRAs that cannot apply are dropped, each said."""
        parent, image = await self._image(job_id, index)
        base = Request.from_json(parent.request)
        rules = where.get("rules")
        grid, spec, notices = await self._grid_to_repaint(parent, base, rules)
        grid = self.remixed(grid, prompt, rules)
        if not spec.can_outpaint:  # what `pintor models` and /info say it can do
            raise RequestError(f"{spec.name} cannot paint around a picture here: Zoom Out, Pan and Make Square "
                               "need a Stable Diffusion model, or a Kandinsky 2.2 model whose entry names its "
                               "inpainting decoder.")
        width, height = canvas_size(image.width, image.height, extension)
        if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
            raise RequestError(f"The picture would become {width}×{height}, beyond {MAX_ASPECT_RATIO}:1: "
                               "Pan the other way, or Zoom Out.")
        # brought back to the model's pixel budget: repeated zooms never grow past it
        # (in multiples of 8, the latent grid: coarser steps would change the canvas's shape; of
        # 64 for Kandinsky 2.2, whose decoders round their latents up to 64 pixels)
        width, height = size_for_aspect((width, height), spec.native_side,
                                        multiple=family_of(spec.family).outpaint_multiple)
        # Kandinsky's border is steered by the picture's own image embedding with the words (as its V)
        source = image.path  # by its key (generation/files.py), as the job stores it
        images = (source,) if family_of(spec.family).blend else ()
        request = grid.replace(
            kind=JobKind.OUTPAINT, model=spec.name, init_image=source, outpaint=extension, width=width,
            height=height, seed=random_seed(), count=GRID_SIZE, strength=1.0, images=images,
            image_weights=(1.0,) * len(images), upscaler=None,
            tile=False,  # a picture on a larger canvas is no tile: its border is new
            # the canvas's shape is the picture's grown by the extension; ControlNet does not paint borders
            parameters=edit_parameters(grid.parameters, dict.fromkeys(("ar", "tile", "cn", "cw"))),
            **NO_CONTROL)
        return await self.submit(member, request, parent_id=job_id, parent_index=index, notices=notices, **where)

    async def upscale(self, member: Member, job_id: int, index: int, *, creative: bool = False,
                      notices: Sequence[str] = (), **where) -> Submitted:
        """Image `index` of a job, larger. Upscale (Subtle): by the configured upscaler (an
        ESRGAN-family network ×2, the SD x4 upscaler ×4), or resampled ×2 (and said so) where
        there is none or the result would be too large for it. Upscale (Creative): that
        enlargement, then repainted at CREATIVE_STRENGTH by the model that made the picture
        (its grid's model and settings; the server's default model where that is gone, said,
        with the LoRAs that cannot apply to it dropped and said), with steps and strength
        fitted to the server's max_steps as a variation's are.

        A second press for the same picture, by the same member, while the first upscale is
        queued, running or done, raises AlreadyMade (pointing to it) instead of upscaling twice.
        `notices`: the front end's own, stored with the job before the upscale's.
        """
        parent, image = await self._image(job_id, index)
        base = Request.from_json(parent.request)
        if not can_upscale(image.width, image.height):
            raise RequestError(f"This picture is already {image.width}×{image.height}: "
                               f"it cannot be upscaled further.")
        upscaler = self.registry.upscaler
        rules = where.get("rules")
        said = list(notices)  # then the upscale's own
        if creative:
            grid, spec, replaced = await self._grid_to_repaint(parent, base, rules)
            said += replaced
            if not spec.can_repaint:  # offered only where it can (bot.results): an older message's button
                raise RequestError(f"{spec.name} cannot repaint a picture here (Upscale (Creative) repaints with a "
                                   "Stable Diffusion model): use Upscale (Subtle).")
            steps, strength, fitted = fit_image_to_image(grid.steps, CREATIVE_STRENGTH, rules, "Upscale (Creative)")
            said += fitted
            request = grid.replace(
                kind=JobKind.UPSCALE, model=spec.name, upscaler=upscaler or RESAMPLE, init_image=image.path,
                seed=image.seed, width=image.width, height=image.height, count=1, strength=strength, images=(),
                image_weights=(), steps=steps, outpaint=None, clip=0.0,  # the repaint is not CLIP-guided
                tile=False,  # the repaint runs tile by tile over the enlarged picture: not circular
                parameters=edit_parameters(grid.parameters, dict.fromkeys(("tile", "clip", "cn", "cw", "iw"))),
                **NO_CONTROL)
        else:
            steps = self.registry.get(upscaler).steps if upscaler else 0
            if rules is not None and rules.max_steps:
                steps = min(steps, rules.max_steps)  # Pintor chose the upscaler's steps: within the limit
            request = base.replace(
                kind=JobKind.UPSCALE, model=upscaler or RESAMPLE, init_image=image.path, seed=image.seed,
                width=image.width, height=image.height, count=1, strength=0.0, images=(), image_weights=(),
                steps=steps, guidance=self.registry.get(upscaler).guidance if upscaler else 0.0, upscaler=None,
                outpaint=None, loras=(), clip=0.0, **NO_CONTROL,  # enlarged: no ControlNet, LoRA or CLIP
                parameters=edit_parameters(base.parameters, dict.fromkeys(("cn", "cw", "clip", "lora"))))
        key = (f"upscale:{member.id}:{job_id}:{index}:{request.model}:{request.steps}"
               + (f":creative:{request.upscaler}" if creative else ""))
        return await self.submit(member, request, parent_id=job_id, parent_index=index, result_key=key,
                                 notices=said, **where)

    async def describe(self, member: Member, name: str, data: bytes, **where) -> Submitted:
        """/describe: four prompts for an uploaded picture, written by the registry's captioner
        in the worker (a job of kind DESCRIBE; its Done carries the prompts, stored with it).

        `name` and `data` are the upload as downloaded; it is checked by content (the checks
        /blend makes: generation.inputs.open_upload) and kept with the job before the job is
        stored, so the job survives restarts and /show shows the picture. Raises RequestError
        where no captioner is configured, UploadError for a file that is not a usable picture,
        and what submit raises; then nothing is stored."""
        if self.registry.captioner is None:
            raise RequestError(NO_CAPTIONER)
        image = await asyncio.to_thread(open_upload, data, name)
        request = Request(kind=JobKind.DESCRIBE, model=self.registry.captioner, prompt=f"/describe {name}",
                          parts=(), negative="", width=image.width, height=image.height, steps=1, guidance=0.0,
                          seed=random_seed(), count=CAPTION_COUNT)
        if where.get("rules") is not None:  # a refusal writes nothing (submit checks again, atomically)
            await self._check_rules(member, request, where["rules"], where.get("channel_id"))
        keys, written = await asyncio.to_thread(self._keep_inputs, [image])
        try:
            return await self.submit(member, request.replace(images=tuple(keys)), **where)
        except BaseException:
            unused = [str(self.files.path(key)) for key in written if not await self.store.mentioned(key)]
            await asyncio.to_thread(_delete_files, unused)
            raise

    async def described_prompt(self, job_id: int, n: int) -> str:
        """Prompt `n` (1–4) that the /describe job `job_id` wrote. RequestError for a job that
        is not a finished /describe or has no prompt `n`."""
        job = await self._finished_job(job_id)
        if job.kind != JobKind.DESCRIBE:
            raise RequestError(f"Job {job_id} is not a /describe: it has no prompts to imagine.")
        prompts = job.prompts
        if not 1 <= n <= len(prompts):
            raise RequestError(f"Job {job_id} has no prompt {n} (it has {len(prompts)}).")
        return prompts[n - 1]

    async def imagine_described(self, member: Member, job_id: int, n: int, **where) -> Submitted:
        """Buttons 1–4 under a /describe: its prompt `n` imagined as the member's own /imagine
        would be (their /settings fill in what the prompt leaves out, under the server's
        rules), a grid job with the /describe as its parent. Raises what described_prompt and
        submit raise, and the prompt's errors (a server that refuses its --ar, say)."""
        text = await self.described_prompt(job_id, n)
        defaults = await self.preferences(member.id)
        request, notices = self.prepare_with_notices(text, defaults, rules=where.get("rules"))
        return await self.submit(member, request, parent_id=job_id, parent_index=n, notices=notices, **where)

    async def blend(self, member: Member, uploads: list[tuple[str, bytes]], *, prompt: str = "",
                    weights: str = "", dimensions: str = "square", model: str | None = None,
                    control: tuple[str, bytes] | None = None, **where) -> Submitted:
        """Mix 2–5 uploaded images (and a text) into a new grid through a Kandinsky prior.

        `uploads` are (name, bytes) as downloaded; each is checked by content before anything
        is stored. `control`: an upload whose depth map steers the decoder (Kandinsky 2.2's
        ControlNet; --cn/--cw in the prompt as for /imagine). The inputs are kept with the
        job, so 🔄 and /show work after the upload's URL has expired.
        """
        rules = where.get("rules")
        parsed = blend_prompt(prompt, strict=rules is not None and rules.strict_parameters)
        spec = self._blend_model(model or parsed.model, rules)  # `--model` in the prompt chooses too
        if parsed.image_urls:  # /blend's pictures are its uploads
            parsed = dataclasses.replace(parsed, image_urls=(), notices=parsed.notices + (
                f"Ignored the link{'s' if len(parsed.image_urls) > 1 else ''} at the start of the prompt "
                f"({', '.join(quote(link_name(u)) for u in parsed.image_urls)}): /blend mixes the images "
                "you upload with it.",))
        if parsed.repeat > 1:  # one /blend is one grid: said, as the CLI and Remix say it
            parsed = dataclasses.replace(parsed, repeat=1, given=parsed.given - {"repeat"},
                                         notices=parsed.notices + (repeat_notice(parsed.repeat),))
        if parsed.selectors:  # --v/--niji/--style choose among models that cannot blend
            ignored = ", ".join(quote(f"--{name} {value}".rstrip()) for name, value in parsed.selectors)
            parsed = dataclasses.replace(parsed, selectors=(), notices=parsed.notices + (
                f"Ignored {ignored}: /blend uses a model that can blend images ({spec.name}).",))
        if not MIN_BLEND_IMAGES <= len(uploads) <= MAX_BLEND_IMAGES:
            raise RequestError(f"/blend takes {MIN_BLEND_IMAGES} to {MAX_BLEND_IMAGES} images, not {len(uploads)}.")
        if dimensions not in BLEND_DIMENSIONS:
            raise RequestError(f"dimensions must be one of {', '.join(BLEND_DIMENSIONS)}.")
        image_weights, text_weight = blend_weights(weights, len(uploads), has_text=bool(parsed.parts))
        controlnet = choose_control(self.registry, parsed, spec, control is not None)
        if control is None:
            parsed = without_control_weight(parsed)
        everything = [*uploads, *([control] if control is not None else [])]
        images = await asyncio.to_thread(lambda: [open_upload(data, name) for name, data in everything])

        if "ar" not in parsed.given:
            parsed = dataclasses.replace(parsed, aspect=BLEND_DIMENSIONS[dimensions])
        total = sum(weight for _, weight in positive_parts([(p.text, p.weight) for p in parsed.parts]))
        request = build_request(parsed, spec, kind=JobKind.BLEND,
                                loras=choose_loras(self.registry, parsed, spec)).replace(
            prompt=blend_label(len(uploads), parsed.text if parsed.parts else ""),
            parts=tuple((p.text, text_weight * p.weight / total) for p in parsed.parts),
            image_weights=tuple(image_weights))
        request = with_control(request, parsed, controlnet)
        if where.get("rules") is not None:  # a refusal writes nothing (submit checks again, atomically)
            await self._check_rules(member, request, where["rules"], where.get("channel_id"))
        count = len(uploads)
        submitted = await self._submit_with_inputs(
            member, images,
            lambda paths: [request.replace(images=tuple(paths[:count]), control=paths[count] if control else None)],
            **where)
        return submitted[0]

    async def _submit_with_inputs(self, member: Member, images: Sequence[Image.Image],
                                  requests_for: Callable[[list[str]], list[Request]], **where) -> list[Submitted]:
        """Keep `images` in the file store (`_keep_inputs`), then submit `requests_for(their keys)`
        (`submit_many`). If the job is not stored, the files this call wrote that no job refers
        to are deleted again (another job may share a file: they are named by content)."""
        keys, written = await asyncio.to_thread(self._keep_inputs, images)
        try:
            return await self.submit_many(member, requests_for(keys), **where)
        except BaseException:
            unused = [str(self.files.path(key)) for key in written if not await self.store.mentioned(key)]
            await asyncio.to_thread(_delete_files, unused)
            raise

    def _blend_model(self, name: str | None, rules: ServerRules | None = None):
        """The named model, which must blend; for None, the server's default model where it
        blends, else the first blending model the server allows."""
        if name is not None:
            spec = self.registry.get(name)
            if not spec.can_blend:
                can = [m.name for m in self.registry.models.values() if m.can_blend]
                reason = family_of(spec.family).no_blend_why
                why = f" ({reason})" if reason else ""
                raise RequestError(f"'{spec.name}' cannot blend images{why}. Models that can: "
                                   f"{', '.join(can) or 'none configured'}.")
            return spec
        allowed = allowed_models(rules, self.registry)
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
        """Each input as a PNG in the file store, named by its checksum: "inputs/<sha256>.png"
        (written atomically; kept for the job; one file for every job that uploads the same
        picture). Returns the keys, and those of them this call wrote (the others were there
        already)."""
        keys, written = [], []
        for image in images:
            data = png_bytes(image)
            key = input_key(data)
            if not self.files.exists(key):
                self.files.put(key, data)
                written.append(key)
            keys.append(key)
        return keys, written

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
        submitted = await self.submit_many(
            member, [request], parent_id=parent_id, parent_index=parent_index, guild_id=guild_id,
            channel_id=channel_id, rules=rules, private=private, direct=direct, notices=notices,
            result_key=result_key)
        return submitted[0]

    async def submit_many(self, member: Member, requests: Sequence[Request], *, parent_id: int | None = None,
                          parent_index: int | None = None, guild_id: int | None = None,
                          channel_id: int | None = None, rules: ServerRules | None = None,
                          private: bool = False, direct: bool = False, notices: Sequence[str] = (),
                          result_key: str | None = None) -> list[Submitted]:
        """`submit` for several jobs asked for at once (--repeat: one request per grid), all
        or none: the server's rules are checked for all of them together (the queue limit and
        the daily quota count each one), and a refusal stores nothing. Returns one Submitted
        per request, in order. `result_key` only with a single request."""
        if not requests:
            return []
        if result_key is not None and len(requests) > 1:
            raise ValueError("a result_key names one job")
        if self.refusal is not None:
            raise RequestError(self.refusal)
        if any(each.image_prompts and not (each.images or each.init_image) for each in requests):
            # a front end that skipped submit_prompt: the links would be silently dropped
            raise RequestError("This prompt's image prompts were not fetched; nothing was made.")
        try:  # a model whose files cannot be had is refused now, not after the worker starts
            for request in requests:
                check_model_files(self.registry, request.model, [name for name, _ in request.loras],
                                  request.controlnet)
        except ModelUnavailable as err:
            log.error("%s", err.detail)
            raise
        spec = self.registry.models.get(request.model)
        if request.clip > 0 and spec is not None and not spec.can_clip_guide:
            # a V or 🔄 of a guided grid whose model lost its clip_model since (or a fallback model)
            raise RequestError(clip_refusal(self.registry, spec))
        # One submission at a time: the limit checks and the insert must not interleave
        # (twenty simultaneous requests with a limit of three queue exactly three).
        async with self._submit_lock:
            if result_key is not None:
                await self._check_not_made(result_key)
            if rules is not None:
                for request in requests:
                    await self._check_rules(member, request, rules, channel_id, check_channel=not direct,
                                            jobs=len(requests))
                requests = [request.replace(safety_check=rules.nsfw_check) for request in requests]
            elif member.id != OPERATOR_ID:  # a direct message: no server has allowed what costs money
                for request in requests:
                    self._check_remote_in_dm(request)
            jobs = []
            requests = [self._stored_inputs(request) for request in requests]
            for request in requests:
                try:
                    jobs.append(await self.store.create_job(
                        user_id=member.id, user_name=member.name, kind=request.kind, model=request.model,
                        prompt=request.prompt, request=request.to_json(), parent_id=parent_id,
                        parent_index=parent_index, guild_id=guild_id, channel_id=channel_id, private=private,
                        notices="\n".join(notices) or None, result_key=result_key, owner=self.owner))
                except DuplicateJob as duplicate:  # stored by another process since the check
                    raise AlreadyMade(duplicate.job) from None
        submitted = []
        for job, request in zip(jobs, requests, strict=True):
            events = self.watch(job.id)
            position = await self.queue.submit(job.id, member.id, request)
            submitted.append(Submitted(job.id, position, request, events, size=self.made_size(request),
                                       notices=tuple(notices)))
        return submitted

    async def _check_not_made(self, result_key: str) -> None:
        existing = await self.store.by_result_key(result_key)
        if existing is None:
            return
        if existing.status == JobStatus.DONE and not all(self.picture(i.path).is_file() for i in existing.images):
            await self.store.release_result_key(existing.id)  # its pictures are gone: make it anew
            return
        raise AlreadyMade(existing)

    def made_size(self, request: Request) -> tuple[int, int]:
        """The size of the pictures `request` makes: for an upscale (whose request holds the size
        of the picture it enlarges) that picture enlarged as the worker will (×4 by the SD x4
        upscaler while the result stays within MAX_UPSCALED_SIDE, else ×2: an ESRGAN-family
        network, or resampling); for any other job its width × height."""
        width, height = request.width, request.height
        if request.kind != JobKind.UPSCALE:
            return width, height
        upscaler = self.registry.models.get((request.upscaler if request.strength > 0 else request.model) or RESAMPLE)
        factor = upscale_factor(width, height, with_model=upscaler is not None
                                and family_of(upscaler.family).pipeline("upscale") is not None)
        return width * factor, height * factor

    async def _check_rules(self, member: Member, request: Request, rules: ServerRules,
                           channel_id: int | None, *, check_channel: bool = True, jobs: int = 1) -> None:
        """Raise LimitError where the server's rules refuse `request`, asked for `jobs` times
        at once (--repeat: every one must fit the queue limit and the daily quota)."""
        if rules.paused:
            raise LimitError(PAUSED)
        if check_channel and (refusal := channel_refusal(rules, channel_id)):
            raise LimitError(refusal)
        allowed = allowed_models(rules, self.registry)
        # an upscaler or a captioner is not a model members choose: the server's list is of pictures' models
        if allowed and request.model not in allowed and request.kind not in (JobKind.UPSCALE, JobKind.DESCRIBE):
            raise LimitError(f"The model '{request.model}' is not allowed on this server. Allowed: {', '.join(allowed)}.")
        spec = self.registry.models.get(request.model)
        # an upscale runs here (a creative one only names the picture's model: it cannot repaint it)
        if spec is not None and spec.is_remote and not rules.remote_models and request.kind != JobKind.UPSCALE:
            raise LimitError(f"{request.model} is a remote model (OpenAI's API; each picture costs money): "
                             "this server has not allowed remote models. An admin can, with "
                             "/pintor-admin remote-models.")
        self._check_loras(request, rules)
        if request.controlnet is not None and not rules.allow_controlnet:
            raise LimitError("ControlNet (a control image with --cn) is not allowed on this server. Send the prompt "
                             "without the control image.")
        if request.clip > 0 and not rules.clip_guidance:
            raise LimitError("CLIP guidance (--clip) is turned off on this server by its admins: ask without --clip"
                             + (" (this picture was made with it: V and 🔄 would use it again)."
                                if request.kind in (JobKind.VARIATION, JobKind.REROLL, JobKind.OUTPAINT) else "."))
        if rules.max_steps and request.steps > rules.max_steps:
            raise LimitError(f"{request.steps} steps is over this server's limit of {rules.max_steps}: "
                             f"use --steps {rules.max_steps} or a lower --q.")
        width, height = self.made_size(request)  # an upscale: what counts is the size it makes
        if rules.max_side and max(width, height) > rules.max_side and request.kind != JobKind.DESCRIBE:
            raise LimitError(f"{width}×{height} is over this server's limit of {rules.max_side} pixels per side.")
        if rules.max_queued_per_member is not None:
            # everywhere (all servers and DMs): the queue and its worker are shared, so jobs
            # waiting from another server delay this server's members just the same
            waiting = await self.store.count_unfinished(member.id)
            if jobs > 1 and waiting + jobs > rules.max_queued_per_member:
                raise LimitError(f"--repeat {jobs} makes {jobs} jobs; with the {waiting} you have queued or "
                                 f"running that is over this server's limit of {rules.max_queued_per_member}. "
                                 "Nothing was queued: ask for fewer, or wait for yours to finish.")
            if waiting >= rules.max_queued_per_member:
                raise LimitError(f"You already have {waiting} jobs queued or running; this server allows "
                                 f"{rules.max_queued_per_member}. Wait for one to finish, or /cancel one.")
        if rules.daily_quota is not None:
            midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
            used = await self.store.count_since(member.id, midnight, guild_id=rules.guild_id,  # this server's
                                                free_kinds=FREE_KINDS)
            if used + jobs > rules.daily_quota:
                left = midnight + timedelta(days=1) - datetime.now(UTC)
                hours, minutes = divmod(int(left.total_seconds()) // 60, 60)
                if jobs > 1 and used < rules.daily_quota:
                    raise LimitError(f"--repeat {jobs} makes {jobs} jobs; you have {rules.daily_quota - used} of "
                                     f"your {rules.daily_quota} jobs for today left. Nothing was queued: ask for "
                                     f"fewer. The quota resets at 00:00 UTC, in {hours} h {minutes} min.")
                raise LimitError(f"You have used your {rules.daily_quota} jobs for today. The quota resets "
                                 f"at 00:00 UTC, in {hours} h {minutes} min.")

    def _check_remote_in_dm(self, request: Request) -> None:
        spec = self.registry.models.get(request.model)
        if spec is not None and spec.is_remote and request.kind != JobKind.UPSCALE:
            raise LimitError(f"{request.model} is a remote model (each picture costs money): it can be used "
                             "only in a server whose admins allow remote models, not in direct messages.")

    def _check_loras(self, request: Request, rules: ServerRules) -> None:
        """The server's LoRA rules: which LoRAs it allows, how many one job may use. A refusal
        names the allowed LoRAs still configured (a list naming only removed ones allows none)."""
        if not request.loras:
            return
        allowed = allowed_loras(rules)
        refused = [name for name, _ in request.loras if allowed is not None and name not in allowed]
        if refused:
            usable = [name for name in allowed or () if name in self.registry.loras]
            what = (f"Allowed: {', '.join(usable)}." if usable else
                    f"This server's LoRA list names only LoRAs no longer configured ({', '.join(allowed or ())}): "
                    "none is allowed until an admin sets it again (/pintor-admin loras)." if allowed else
                    "This server allows no LoRAs.")
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
            try:
                stored, requests = await self.store.forget_user(member.id)
            finally:
                self.preferences_and_rules.forget_member(member.id)  # their preferences went with them
            paths = [str(self.picture(value)) for value in stored]
            # their uploads too (/blend inputs), unless another member's job uses the same picture
            uploads = {path for text in requests for path in self._inputs_of(text) if self._is_upload(path)}
            # the control images made for them, beside their grids (no row names them)
            paths += [str(Path(path).with_name(CONTROL_FILE)) for path in paths if Path(path).name == "grid.png"]
            paths += [path for path in uploads if not await self.store.mentioned(Path(path).name)]
            # pictures of others' jobs theirs started from, if nothing refers to them any more
            paths += [path for text in requests for path in self._inputs_of(text) if not self._is_upload(path)]
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

    def _inputs_of(self, request_json: str) -> list[str]:
        """The local files a stored request starts from (image to image, upscale, blend, the
        control image): its keys' files, or the absolute paths of a request stored before keys
        (the same files: the clean-up below compares local paths, old rows and new alike)."""
        return [str(self.picture(name)) for name in Request.from_json(request_json).inputs()]

    def _stored_inputs(self, request: Request) -> Request:
        """The request as it is stored: each input picture by its key where it lies in the
        file store (an older request's absolute path, carried on by 🔄 or V, becomes its key),
        an absolute path only for a file outside it (rows older than migration 0008)."""
        return request.with_inputs(lambda name: self.files.stored(self.picture(name)))

    def _is_upload(self, path: str) -> bool:
        return Path(path).parent == self.inputs_dir

    async def _needed_by_unfinished(self) -> set[str]:
        """The pictures queued and running jobs start from."""
        return {path for job in await self.store.unfinished() for path in self._inputs_of(job.request)}

    async def _release_inputs(self, job_id: int) -> None:
        """After a job ends: delete the pictures it started from that nothing refers to any
        more (their job was forgotten while this one waited) and no unfinished job needs."""
        job = await self.store.get(job_id)
        if job is None:
            return
        candidates = [path for path in self._inputs_of(job.request) if not self._is_upload(path)]
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

    async def _reachable(self, step: Callable[[], Awaitable[_T]], what: str) -> _T:
        """`step()`, tried again while the database cannot be reached (`storage.db.unreachable`),
        for at most `database_wait_s` seconds; then (and for any other error) its error is raised.
        The events after it wait meanwhile: they are stored in order once it is back."""
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + self.database_wait_s, 0.5
        while True:
            try:
                return await step()
            except Exception as err:
                if not unreachable(err) or loop.time() + delay > deadline:
                    raise
                log.warning("the database cannot be reached (%s): %s again in %.1f s", type(err).__name__, what,
                            delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _consume(self) -> None:
        async for event in self.queue.events():
            what = f"storing {type(event).__name__} of job {event.job_id}"
            try:
                ended = await self._reachable(functools.partial(self._already_ended, event), what)
            except Exception:  # noqa: BLE001 - gone for too long: store it anyway, as far as it goes
                log.exception("could not read job %s", event.job_id)
                ended = None
            if ended is not None:
                # delivered again (a worker thought dead finished it too): stored and posted once
                log.info("job %s has ended already: %s not stored again", event.job_id, type(event).__name__)
                if isinstance(event, FINAL_EVENTS):
                    await self.queue.acknowledge(event.job_id)
                    # ended in the store by another hand (marked cancelled while its result was on
                    # the way): whoever still waits for it hears the end the store records
                    for inbox in self._watchers.pop(event.job_id, []):
                        inbox.put_nowait(_stored_end(ended, event))
                continue
            try:
                await self._reachable(functools.partial(self._store_event, event), what)
            except Exception:  # noqa: BLE001 - one bad write must not stop every later job's results
                log.exception("could not store %s", event)
                if isinstance(event, Done):
                    # no row refers to its pictures (the job may be gone: /forget): keep none
                    control = () if event.control is None else (event.control,)
                    paths = [str(self.files.path(i.key)) for i in (*event.images, event.grid, *control)]
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

    async def _already_ended(self, event: Event) -> Job | None:
        """The job of `event` (one that changes the job) if it has ended in the store, else None."""
        if isinstance(event, Progress) or not isinstance(event, (Started, *FINAL_EVENTS)):
            return None
        job = await self.store.get(event.job_id)
        ended = job is not None and job.status in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)
        return job if ended else None

    async def _store_event(self, event: Event) -> None:
        if isinstance(event, Started):
            await self.store.mark_running(event.job_id)
        elif isinstance(event, Done):
            # stored by key (generation/files.py): the database names no folder of this machine
            images = [NewImage(i.key, i.width, i.height, i.seed, i.sha256, i.flagged) for i in event.images]
            await self.store.complete(event.job_id, images, event.grid.key, event.notices, event.captions)
        elif isinstance(event, Failed):
            await self.store.mark_failed(event.job_id, event.reason)
        elif isinstance(event, Cancelled):
            await self.store.mark_cancelled(event.job_id)
        elif isinstance(event, Interrupted):
            await self.store.mark_queued(event.job_id)
