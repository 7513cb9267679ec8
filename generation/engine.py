"""The engine: runs a `Request` (or a batch of compatible ones, generation.batching) through
the right diffusers pipeline and returns images.

It reports progress after every step (with a cheap preview on request) and stops at the next
step when asked to; in a batch each job has its own progress and its own stop. It runs
inside the worker process; nothing here knows about queues, databases or Discord.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from compel.embeddings_provider import BaseTextualInversionManager, EmbeddingsProvider, ReturnedEmbeddingsType
from PIL import Image

from generation import adapters, captions, esrgan, outpaint, remote, seamless
from generation.batching import batch_key
from generation.clip_guidance import ClipGuide, slower_notice, steering, vae_decoder
from generation.control import ControlError, depth_hint, make_control_image
from generation.creative import repaint
from generation.decoding import decoding_precision
from generation.devices import DeviceChoice, FastPath, is_out_of_memory
from generation.families import family_of
from generation.imaging import flatten_to_rgb
from generation.pipelines import ModelLoadError, PipelineCache
from generation.previews import PREVIEW_SIDE, Preview, TinyDecoderPreview, latents_preview
from generation.prompt import emphasis_segments, has_emphasis, plain_text, positive_parts, weight_sides
from generation.registry import (
    ControlNetSpec,
    ModelSpec,
    Registry,
    UnknownLoraError,
)
from generation.request import JobKind, Request
from generation.safety import blur
from generation.tiling import Stop
from generation.upscale import ESRGAN_FACTOR, MODEL_FACTOR, RESAMPLE, RESAMPLE_FACTOR, resample, upscale_factor

log = logging.getLogger(__name__)


# on_step(step, total, make_preview): step counts from 1 to total; call make_preview() only when
# a preview is wanted (it returns the latents_preview of that step).
StepCallback = Callable[[int, int, Callable[[], Image.Image]], None]
# diffusers' `callback_on_step_end(pipe, step, timestep, callback_kwargs) -> callback_kwargs`; the
# engine's also takes the number of steps for pipelines that do not say it (legacy_callback)
StepEndCallback = Callable[..., dict[str, Any]]


__all__ = ["PREVIEW_SIDE", "Engine", "GenerationStopped", "Generated", "latents_preview"]


class GenerationStopped(Exception):
    """The run was stopped between steps (cancel or shutdown)."""


@dataclass
class Generated:
    """What one run made: `images` are RGB at the request's width × height in pixels (× the
    upscale factor for an upscale), `request.count` of them (one for an upscale); `notices` say
    what was changed (a prompt cut to the encoder's tokens, images blurred, a fallback used)."""

    images: list[Image.Image]
    notices: list[str]
    flagged: list[bool] = field(default_factory=list)  # by the model's NSFW check, per image
    control: Image.Image | None = None  # the ControlNet's control image, shown beside the grid
    # /describe: the prompts written for the picture (its one image, as the engine read it)
    captions: list[str] = field(default_factory=list)


def _slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation: mixes two noise tensors and keeps the mix looking like noise."""
    cos = (a * b).sum() / (a.norm() * b.norm())
    omega = torch.acos(cos.clamp(-1, 1))
    if omega.abs() < 1e-4:
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


def initial_noise(request: Request, shape: tuple[int, ...]) -> torch.Tensor:
    """The starting noise of the request's images, reproducible from (seed, chaos, i).

    `shape`: one image's latents, (channels, H/8, W/8). Returns a float32 CPU tensor of shape
    (request.count, *shape), standard normal per image. Image i starts from its own seed's noise
    (seed + i, offset by 1,000,003·(i + 1), a prime, so that it is not the shared noise of the grid
    whose seed is seed + i), mixed by slerp with the shared noise of the grid's seed: the own
    share runs from 0.6 at `--chaos 0` (four close takes on one composition) to 1 at 100 (four
    unrelated ones); 0.6 is Pintor's choice, not a standard.
    """
    shared = torch.randn(shape, generator=torch.Generator().manual_seed(request.seed))
    own_share = chaos_share(request.chaos)
    noises = []
    for i, seed in enumerate(request.seeds()):
        own = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1_000_003 * (i + 1)))
        noises.append(own if own_share >= 1 else _slerp(own_share, shared, own))
    return torch.stack(noises)


def chaos_share(chaos: int) -> float:
    """How much of each picture of a grid is its own at `--chaos` `chaos` (0–100): 0.6 at 0,
    1 at 100, linear between (Pintor's choice, not a standard); the rest is the grid's shared
    part (initial_noise, chaos_embeds)."""
    return 0.6 + 0.4 * chaos / 100


def chaos_embeds(embeds: torch.Tensor, chaos: int) -> torch.Tensor:
    """A Kandinsky grid's image embeddings as `--chaos` spreads them.

    `embeds`: (count, width), one prior draw per picture (as diffusers' combined pipeline draws
    them with num_images_per_prompt=count). Returns a tensor of the same shape, dtype and
    device: row 0 unchanged, row i > 0 the slerp (`_slerp`, over the row) from row 0 to row i
    at chaos_share(chaos): at 100 each picture keeps its own draw, at 0 it keeps 0.6 of it and
    leans 0.4 toward the first picture's, as the starting noise of every family leans toward
    the grid's shared noise. Rows that are equal (the prior's zero embedding) stay equal.
    """
    share = chaos_share(chaos)
    if share >= 1 or embeds.shape[0] < 2:
        return embeds
    rows = [embeds[0]] + [row if torch.equal(row, embeds[0]) else
                          _slerp(share, embeds[0].float(), row.float()).to(embeds.dtype) for row in embeds[1:]]
    return torch.stack(rows)


@dataclass(frozen=True)
class BatchJob:
    """One job of a batch: its request, and its own progress and stop callbacks (see
    Engine.generate_batch)."""

    request: Request
    on_step: StepCallback
    should_stop: Callable[[], bool]


class Engine:
    """Runs requests on one device with the registry's models, keeping up to `max_models`
    loaded (PipelineCache, prepared as `fast` says: offload, channels-last, compile)."""

    def __init__(self, registry: Registry, device: DeviceChoice, *, max_models: int = 1,
                 fast: FastPath | None = None, remote_settings: remote.RemoteSettings | None = None):
        self.registry = registry
        self.device = device
        # how remote models' API is reached (key, base URL, timeout, retries): generation/remote.py
        self.remote = remote_settings or remote.RemoteSettings()
        self.pipelines = PipelineCache(device, max_models=max_models, fast=fast)

    def generate(self, request: Request, on_step: StepCallback,
                 should_stop: Callable[[], bool]) -> Generated:
        """Make the request's images as one batch (or its one upscaled picture): a batch of one
        job (generate_batch).

        Calls `on_step(step, total, make_preview)` after every denoising step and
        `should_stop()` after every step and at the end. Returns Generated (images at
        request.width × request.height pixels; an upscale ×4 by the model or ×2 resampled).
        Raises GenerationStopped when should_stop() says so, and what generate_batch raises.
        """
        result = self.generate_batch([BatchJob(request, on_step, should_stop)])[0]
        if result is None:
            raise GenerationStopped()
        return result

    def generate_batch(self, jobs: Sequence[BatchJob]) -> list[Generated | None]:
        """Make the images of several jobs in one pipeline call, each job as it would be alone.

        `jobs`: one or more; more than one must share generation.batching.batch_key and be of a
        family whose record says `batches` (else ValueError). Each job keeps its own prompt embeddings
        (weights, emphasis, negative), starting noise (seed, --chaos), generators (one per
        image, seeded as alone), input picture, NSFW check and notices; `job.on_step` is called
        after every step with a preview of that job's images only; a job whose `should_stop()`
        says so gets no more progress calls and its images are dropped, while the others go on.

        Returns, in the order of `jobs`, each job's Generated, or None for a job that was
        stopped. Raises GenerationStopped when every job is stopped, UnknownModelError for a
        model that is not configured, ModelLoadError when its pipeline cannot be loaded,
        ValueError for a Kandinsky request without text or image, FileNotFoundError for a
        missing input picture, and whatever diffusers and torch raise while running
        (torch.OutOfMemoryError among them): any of these ends the whole batch.
        """
        if not jobs:
            return []
        first = jobs[0].request
        if len(jobs) > 1:
            key = batch_key(first)
            if key is None or any(batch_key(job.request) != key for job in jobs[1:]):
                raise ValueError("these requests cannot share one pipeline call (generation.batching.batch_key)")
        if first.kind == JobKind.DESCRIBE:
            return [self._describe(first, jobs[0].on_step, jobs[0].should_stop)]
        if first.kind == JobKind.UPSCALE:
            job = jobs[0]
            notices: list[str] = []
            image = self._upscale(first, notices, job.on_step, job.should_stop)
            return [Generated(images=[image], notices=notices)]
        spec = self.registry.get(first.model)
        if len(jobs) > 1 and not family_of(spec.family).batches:
            raise ValueError(f"{spec.family} jobs run one at a time")
        if spec.is_remote:
            return [self._remote(jobs[0], spec)]
        stopped = [False] * len(jobs)
        callback = self._batch_callback(jobs, stopped, lambda *a: self.pipelines.preview(spec)(*a))
        notices_per_job: list[list[str]] = [[] for _ in jobs]
        control = self._control(first, spec)  # a controlled job runs alone (batch_key)
        # a dedicated inpainting checkpoint has its own UNet and text encoders: the LoRAs go there
        painter = (self.pipelines.get(spec, "inpaint") if first.kind == JobKind.OUTPAINT and spec.inpaint
                   and family_of(spec.family).additions else None)
        with self._additions([job.request for job in jobs], spec, painter):
            if first.kind == JobKind.OUTPAINT:
                batches = [self._outpaint(first, spec, notices_per_job[0], callback)]
            elif family_of(spec.family).runner == "kandinsky":
                batches = [self._kandinsky(first, spec, notices_per_job[0], callback, control)]
            elif family_of(spec.family).runner == "kandinsky_3":
                batches = [self._kandinsky3(first, spec, notices_per_job[0], callback)]
            else:
                batches = self._stable_diffusion(jobs, spec, notices_per_job, callback, control)
        results: list[Generated | None] = []
        for i, (job, images, notices) in enumerate(zip(jobs, batches, notices_per_job, strict=True)):
            stopped[i] = stopped[i] or job.should_stop()
            result = None if stopped[i] else self._checked(job.request, spec, images, notices)
            if result is not None and control is not None:
                result.control = control[1]
            results.append(result)
        if all(stopped):
            raise GenerationStopped()
        return results

    def _control(self, request: Request, spec: ModelSpec) -> tuple[ControlNetSpec, Image.Image] | None:
        """The request's ControlNet and its control image, made here from the stored upload
        (generation/control.py) at the request's size; None for a job without one. Raises
        ModelLoadError for a ControlNet removed from models.toml, one of another family, or one
        whose control image cannot be made here (pose without an estimator)."""
        if request.control is None or request.controlnet is None or request.kind == JobKind.OUTPAINT:
            return None  # (Zoom Out and Pan paint a canvas's border: no ControlNet there)
        controlnet = self.registry.controlnets.get(request.controlnet)
        if controlnet is None or not controlnet.fits(spec.family):
            raise ModelLoadError(f"The ControlNet '{request.controlnet}' is no longer configured for {spec.name}; "
                                 "it was removed since this job was asked for.")
        kind = request.control_kind or controlnet.kind
        depth = self.pipelines.depth_estimator(controlnet) if kind == "depth" else None
        try:
            picture = make_control_image(self._open(request.control), kind, (request.width, request.height),
                                         depth=depth)
        except ControlError as err:
            raise ModelLoadError(f"The control image cannot be made: {err}.") from None
        return controlnet, picture

    def _checked(self, request: Request, spec: ModelSpec, images: list[Image.Image],
                 notices: list[str]) -> Generated:
        """The job's images after the model's NSFW check (flagged ones blurred), as Generated."""
        flagged = [False] * len(images)
        checker = self.pipelines.safety_checker(spec) if request.safety_check else None
        if checker is not None:
            flagged = checker.flags(images)
            images = [blur(image) if bad else image for image, bad in zip(images, flagged, strict=True)]
            if any(flagged):
                notices.append(f"The safety check flagged {sum(flagged)} of {len(images)} images: they are blurred.")
        return Generated(images=images, notices=notices, flagged=flagged)

    def _additions(self, requests: Sequence[Request], spec: ModelSpec,
                   pipe: Any = None) -> AbstractContextManager[None]:
        """The jobs' LoRAs (the same for every job of a batch: generation.batching.batch_key)
        switched on for their run (and off after it), and the embeddings their prompts write
        loaded (generation/adapters.py), in `pipe`: the pipeline whose UNet and text encoders
        the run uses (default: the model's text-to-image pipeline, whose modules its image to
        image, inpainting and ControlNet pipelines share); nothing for families without them."""
        if not family_of(spec.family).additions:
            return nullcontext()
        request = requests[0]
        try:
            loras = [(self.registry.lora(name), weight) for name, weight in request.loras]
        except UnknownLoraError as err:  # removed from models.toml since the job was stored
            raise ModelLoadError(f"{err} It was removed since this job was asked for.") from None
        embeddings = [e for e in self.registry.embeddings.values() if e.fits(spec.family)]
        return adapters.applied(pipe if pipe is not None else self.pipelines.get(spec, "text2img"), loras, embeddings,
                                [text for r in requests for text, _ in r.parts] + [r.negative for r in requests])

    # 1. Stable Diffusion 1.x/2.x, SDXL and their Turbo versions --------------------------------

    def _stable_diffusion(self, jobs: Sequence[BatchJob], spec: ModelSpec, notices: list[list[str]],
                          callback: StepEndCallback,
                          control: tuple[ControlNetSpec, Image.Image] | None = None) -> list[list[Image.Image]]:
        """One pipeline call for every job (they share batch_key); returns each job's images.
        With `control` (a job alone): the family's ControlNet pipeline, steered by the image."""
        first = jobs[0].request
        if control is not None:
            pipe = self.pipelines.controlled(spec, control[0], img2img=first.init_image is not None)
        else:
            pipe = self.pipelines.get(spec, "img2img" if first.init_image else "text2img")
        guided = first.guidance > 1.0
        # per job, exactly as alone, then one after another along the batch dimension
        embeds = [self._prompt_embeds(pipe, job.request, guided, job_notices)
                  for job, job_notices in zip(jobs, notices, strict=True)]
        generators = [torch.Generator().manual_seed(s) for job in jobs for s in job.request.seeds()]
        kwargs: dict[str, Any] = dict(
            num_inference_steps=first.steps,
            guidance_scale=first.guidance,
            generator=generators,
            callback_on_step_end=callback,
            **{name: torch.cat([e[name] for e in embeds]) for name in embeds[0]},
        )
        if first.init_image:
            kwargs.update(image=[self._open(job.request.init_image, (first.width, first.height))
                                 for job in jobs if job.request.init_image
                                 for _ in range(job.request.count)],
                          strength=first.strength)
        else:
            scale = pipe.vae_scale_factor
            shape = (pipe.unet.config.in_channels, first.height // scale, first.width // scale)
            latents = torch.cat([initial_noise(job.request, shape) for job in jobs])
            kwargs.update(width=first.width, height=first.height,
                          latents=latents.to(self.device.device, self.device.dtype))
        if control is not None:
            # text to image takes the control image as `image`; image to image as `control_image`
            kwargs["control_image" if first.init_image else "image"] = control[1]
            kwargs["controlnet_conditioning_scale"] = first.control_weight
        self.pipelines.fit_vae(pipe, first.width, first.height, sum(job.request.count for job in jobs))
        with seamless.circular(pipe, first.tile):  # --tile (the same for the whole batch: batch_key)
            images: list[Image.Image] = self._run_guided(pipe, spec, [job.request for job in jobs], notices, kwargs)
        per_job, start = [], 0
        for job in jobs:
            per_job.append(images[start:start + job.request.count])
            start += job.request.count
        return per_job

    def _outpaint(self, request: Request, spec: ModelSpec, notices: list[str],
                  callback: StepEndCallback) -> list[Image.Image]:
        """Zoom Out, Pan, Make Square: generation/outpaint.py with the model's inpainting pipeline."""
        if request.init_image is None or request.outpaint is None:
            raise ValueError("an outpaint request needs the picture (init_image) and its extension (outpaint)")
        if not (family_of(spec.family).inpaint or family_of(spec.family).separate_inpaint):
            raise ValueError(f"{spec.name} cannot paint a canvas's border here (a Stable Diffusion model can)")
        pipe = self.pipelines.get(spec, "inpaint")
        if family_of(spec.family).separate_inpaint:  # the prior's image embeddings steer its inpainting decoder
            image_embeds, negative, _ = self._image_embeds(request, spec, notices)
            embeds = {"image_embeds": image_embeds, "negative_image_embeds": negative}
        else:
            embeds = self._prompt_embeds(pipe, request, request.guidance > 1.0, notices)
        guide = self._clip_guide(pipe, spec, [request]) if request.clip > 0 else None
        started = time.perf_counter()
        with steering(pipe.scheduler, guide) if guide is not None else nullcontext():
            images = outpaint.paint(pipe, self._open(request.init_image), request.outpaint, width=request.width,
                                    height=request.height, steps=request.steps, guidance=request.guidance,
                                    generators=[torch.Generator().manual_seed(s) for s in request.seeds()],
                                    embeds=embeds, callback=callback)
        if guide is not None:
            notices.append(slower_notice(request.clip, time.perf_counter() - started, guide.seconds))
        return images

    def _run_guided(self, pipe: Any, spec: ModelSpec, requests: Sequence[Request], notices: list[list[str]],
                    kwargs: dict[str, Any]) -> list[Image.Image]:
        """`pipe(**kwargs).images`, steered by CLIP guidance when the requests ask for it
        (`clip` > 0; the same for every job of a batch: batch_key), each job's result then
        saying how much slower it was."""
        first = requests[0]
        if first.clip <= 0:
            images: list[Image.Image] = pipe(**kwargs).images
            return images
        guide = self._clip_guide(pipe, spec, requests)
        started = time.perf_counter()
        with steering(pipe.scheduler, guide):
            images = pipe(**kwargs).images
        notice = slower_notice(first.clip, time.perf_counter() - started, guide.seconds)
        for job_notices in notices:
            job_notices.append(notice)
        return images

    def _clip_guide(self, pipe: Any, spec: ModelSpec, requests: Sequence[Request]) -> ClipGuide:
        """CLIP guidance for one pipeline call of `requests` (generation/clip_guidance.py): the
        entry's CLIP model, each picture's prompt (its parts' words) as its target, the model's
        tiny preview decoder (else its VAE) to decode predictions. Raises ModelLoadError for a
        model without a CLIP model (refused before it is queued: bot.intake)."""
        if not spec.can_clip_guide:
            raise ModelLoadError(f"Model '{spec.name}' has no CLIP model for --clip (clip_model in models.toml).")
        scorer = self.pipelines.get(spec, "clip")
        texts = [" ".join(plain_text(text) for text, _ in positive_parts(r.parts)) for r in requests
                 for _ in range(r.count)]  # (a negative part is less of it: not a target)
        preview = self.pipelines.preview(spec)
        decoder = preview.decoder if isinstance(preview, TinyDecoderPreview) else pipe.vae
        # decoded as the pipeline's own decode would (SDXL's float16 VAE: in float32, force_upcast)
        return ClipGuide(scorer, scorer.text_features(texts), vae_decoder(decoder), requests[0].clip,
                         precision=lambda: decoding_precision(pipe, decoder))

    def _prompt_embeds(self, pipe: Any, request: Request, guided: bool, notices: list[str]) -> dict[str, torch.Tensor]:
        """Text embeddings for the prompt's parts, mixed by weight (`a::2 b::1`), for a Stable
        Diffusion or SDXL pipeline: {"prompt_embeds": (count, tokens, width),
        "negative_prompt_embeds": same or absent unguided, SDXL's pooled ones (count, width)}.

        Weighting embeddings, not strings, is what makes `::` weights mean something. A part
        with Stable Diffusion emphasis (`(word:1.3)`) gets compel's weighted embeddings, and so
        does a negative with emphasis (`--no (easynegative:1.2)`); a multi-vector embedding's
        token keeps all its vectors in both (`weighted_embeds`). The parts and the --no list are
        split as MidJourney reads them (generation.prompt.weight_sides): the positive parts mix
        on the prompt's side; a negative part is less of it, on the negative side, where it
        mixes with the --no list (or the pipeline's own empty negative) by its share; a negative
        side that is one text is the pipeline's own negative prompt, exactly as
        `negative_prompt=` makes it. Returns the pipeline's keyword arguments (prompt_embeds,
        negative_prompt_embeds[, SDXL's pooled ones]), each repeated for the request's `count`
        pictures: (count, tokens, width) and (count, width).
        """
        device = pipe._execution_device
        sides = weight_sides(request.parts, request.negative)
        plain = sides.plain_negative
        weighted_negative = guided and plain is not None and has_emphasis(plain)
        # the pipeline's own: the --no list, or one part that has it all (its words, when weighted below)
        negative = (plain_text(plain) if weighted_negative and plain is not None else plain) or None
        sdxl = hasattr(pipe, "text_encoder_2")

        def encode(written: str, negative: str | None, weighted_at: int | None) -> tuple[Any, ...]:
            text = self._fit_tokens(pipe.tokenizer, plain_text(written), notices)
            if sdxl:
                tensors = pipe.encode_prompt(prompt=text, device=device, num_images_per_prompt=1,
                                             do_classifier_free_guidance=guided, negative_prompt=negative)
            else:
                tensors = pipe.encode_prompt(text, device, 1, guided, negative)
            if weighted_at is not None and has_emphasis(written):
                # the weighted words replace the text's embeddings (at `weighted_at`: 0 for a
                # prompt, 1 for a negative); SDXL's pooled embedding (which compel does not
                # weight) stays that of the plain words
                tensors = list(tensors)
                tensors[weighted_at] = weighted_embeds(pipe, written, device).to(tensors[0].dtype)
            return tuple(tensors)

        encoded = [encode(written, negative, 0) for written, _ in sides.positive]
        if weighted_negative and plain is not None:  # `--no (easynegative:1.2)`: weighted as a prompt is
            weighted = weighted_embeds(pipe, plain, device)
            encoded = [(enc[0], weighted.to(enc[1].dtype), *enc[2:]) for enc in encoded]
        # encode_prompt returns (prompt, negative[, pooled prompt, pooled negative]): the prompt
        # tensors (even positions) are mixed by share; the negatives are the same for all parts.
        mixed = list(encoded[0])
        for i in range(0, len(mixed), 2):
            mixed[i] = sum(enc[i] * share for enc, (_, share) in zip(encoded, sides.positive, strict=True))
        if plain is None and guided:
            # a mix on the negative side: each text's negative embeddings (its own negative_prompt;
            # the --no list, first, as the pipeline reads it) by its share, the pipeline's empty
            # negative (encoded above without one) by the rest
            lessened = [(encode(written, written, None) if i == 0 and request.negative and not has_emphasis(written)
                         else encode(written, plain_text(written), 1), share)
                        for i, (written, share) in enumerate(sides.negative)]
            for i in range(1, len(mixed), 2):
                mixed[i] = mixed[i] * sides.rest + sum(enc[i] * share for enc, share in lessened)
        names = ["prompt_embeds", "negative_prompt_embeds"]
        if sdxl:
            names += ["pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
        return {name: t.repeat(request.count, *[1] * (t.dim() - 1))
                for name, t in zip(names, mixed, strict=False) if t is not None}

    @staticmethod
    def _fit_tokens(tokenizer: Any, text: str, notices: list[str], limit: int | None = None) -> str:
        """Cut a text to what the text encoder reads (`limit` tokens; default: the tokenizer's
        length less its start and end tokens), and say what was cut."""
        limit = limit if limit is not None else tokenizer.model_max_length - 2  # start and end tokens
        vectors = MultiVectorTokens(tokenizer)  # a multi-vector embedding's token counts all its vectors

        def fits(end: int) -> bool:  # verbose=False: a long text is expected here, not warned about
            ids = tokenizer(text[:end], add_special_tokens=False, verbose=False).input_ids
            return len(vectors.expand_textual_inversion_token_ids_if_necessary(ids)) <= limit

        if fits(len(text)):
            return text
        # Cut between words, so that the notice quotes the member's own words (a tokenizer's
        # decode reads "8k, ultra" back as "8 k , ultra" and can start inside a word).
        ends = [match.end() for match in re.finditer(r"\S+", text)]
        low, high = 0, len(ends)  # the first `low` words fit; all `high` do not
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if fits(ends[middle - 1]) else (low, middle)
        if low == 0:  # the first word alone is too long: cut inside it, between tokens
            ids = tokenizer(text, add_special_tokens=False, verbose=False).input_ids
            kept: str = tokenizer.decode(ids[:limit]).strip()
            cut = tokenizer.decode(ids[limit:]).strip()
        else:
            kept, cut = text[:ends[low - 1]], text[ends[low - 1]:].strip()
        notices.append(f"The text encoder reads {limit} tokens; this part of the prompt was cut: “{cut}”")
        return kept

    # 2. Kandinsky 2.1/2.2: the prior turns text (and images) into an image embedding --------------

    def _kandinsky(self, request: Request, spec: ModelSpec, notices: list[str],
                   callback: StepEndCallback,
                   control: tuple[ControlNetSpec, Image.Image] | None = None) -> list[Image.Image]:
        embeds, negative, texts = self._image_embeds(request, spec, notices)
        generators = [torch.Generator().manual_seed(s) for s in request.seeds()]
        kwargs: dict[str, Any] = dict(image_embeds=embeds, negative_image_embeds=negative,
                      num_inference_steps=request.steps, guidance_scale=request.guidance,
                      generator=generators, callback_on_step_end=callback,
                      height=request.height, width=request.width)
        if family_of(spec.family).decoder_reads_text:
            # 2.1's decoder reads the text as well, one per image like the embeddings (a single
            # string would make a batch of one), and has only the older per-step callback
            kwargs["prompt"] = [texts[0] if texts else ""] * request.count
            # its negative text: the --no list, with the words of the negative parts after it
            sides = weight_sides(request.parts, request.negative)
            words = sides.plain_negative
            if words is None:
                words = ", ".join(plain_text(text) for text, _ in sides.negative)
            if words:
                kwargs["negative_prompt"] = [words] * request.count
            steps = min(int(request.steps * request.strength), request.steps) if request.init_image else request.steps
            del kwargs["callback_on_step_end"]
            kwargs.update(callback_steps=1, callback=legacy_callback(callback, total=steps))
        if control is not None:
            # Kandinsky 2.2's ControlNet decoder: the depth map as `hint`, one per image; it has
            # no conditioning scale (the hint enters its UNet as is) and the older callback
            pipe = self.pipelines.controlled(spec, control[0], img2img=request.init_image is not None)
            kwargs["hint"] = depth_hint(control[1]).repeat(request.count, 1, 1, 1).to(self.device.device,
                                                                                      self.device.dtype)
            steps = (min(int(request.steps * request.strength), request.steps) if request.init_image
                     else request.steps)
            del kwargs["callback_on_step_end"]
            kwargs.update(callback_steps=1, callback=legacy_callback(callback, total=steps))
            if request.control_weight != 1.0:
                notices.append("Kandinsky's ControlNet has no strength setting: --cw was not used.")
            if request.init_image:
                kwargs.update(image=[self._open(request.init_image, (request.width, request.height))] * request.count,
                              strength=request.strength)
        elif request.init_image:
            pipe = self.pipelines.get(spec, "img2img")
            kwargs.update(image=[self._open(request.init_image, (request.width, request.height))] * request.count,
                          strength=request.strength)
        else:
            pipe = self.pipelines.get(spec, "text2img")
        if not request.init_image:
            # the decoder starts from the same noise as every family's text to image (seed, --chaos)
            kwargs["latents"] = initial_noise(request, kandinsky_latents_shape(pipe, request.width, request.height)).to(
                self.device.device, self.device.dtype)
        with seamless.circular(pipe, request.tile):
            images: list[Image.Image] = pipe(**kwargs).images
        return images

    def _image_embeds(self, request: Request, spec: ModelSpec,
                      notices: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """The Kandinsky prior's image embeddings of the request's texts and images (mixed by
        weight) and the negative ones, each (request.count, width); and the texts as read
        (cut to the prior's tokens).

        Each picture has its own draw, as diffusers' combined pipeline draws them: one prior
        call (or prior_interpolate, for mixes) with num_images_per_prompt=request.count and one
        generator seeded with request.seed; then `--chaos` spreads them (chaos_embeds). The
        parts and the --no list are split as MidJourney reads them (generation.prompt.
        weight_sides): positive parts are mixed into the image embedding; a negative side that
        is one text is the prior's own negative prompt, a mix is made of each text's draws by
        its share. Raises ValueError for a request without text or image."""
        prior = self.pipelines.get(spec, "prior")
        sides = weight_sides(request.parts, request.negative)
        texts = [self._fit_tokens(prior.tokenizer, t, notices) for t, _ in sides.positive]
        generator = torch.Generator().manual_seed(request.seed)
        items: list[str | Image.Image] = [*texts, *(prior_view(self._open(p), prior.image_processor)
                                                    for p in request.images)]
        weights = prior_weights([w for _, w in sides.positive] + list(request.image_weights))
        if not items:
            raise ValueError("a Kandinsky request needs a text or an image")
        plain = sides.plain_negative  # the negative side as one text ("" for none), None for a mix
        if len(texts) == 1 and not request.images:
            out = prior(texts[0], negative_prompt=plain or None, num_images_per_prompt=request.count,
                        generator=generator)
        else:
            out = prior_interpolate(prior, items, weights, negative=plain or "", count=request.count,
                                    generator=generator)
        negative = out.negative_image_embeds
        if plain is None:
            # less of each negative text: its draws (after the pictures', from the same generator)
            # by its share, the prior's zero-image embedding (drawn above, without one) by the rest
            negative = negative * sides.rest
            for text, share in sides.negative:
                text = self._fit_tokens(prior.tokenizer, plain_text(text), notices)
                negative = negative + share * prior(text, num_images_per_prompt=request.count,
                                                    generator=generator).image_embeds
        return (chaos_embeds(out.image_embeds, request.chaos), chaos_embeds(negative, request.chaos), texts)

    # 3. Kandinsky 3: a T5 encoder reads the text, the UNet draws; no prior, no images to mix ---

    def _kandinsky3(self, request: Request, spec: ModelSpec, notices: list[str],
                    callback: StepEndCallback) -> list[Image.Image]:
        """The request's pictures by Kandinsky3Pipeline (text to image, from the seed's noise)
        or Kandinsky3Img2ImgPipeline (a variation of init_image at `strength`). Multi-prompt
        parts are mixed by weight as embeddings, as for Stable Diffusion, and a negative part is
        less of it, on the negative side (generation.prompt.weight_sides, kandinsky3_mix).
        Raises ValueError for a request without text (Kandinsky 3 reads no images)."""
        if not request.parts:
            raise ValueError("a Kandinsky 3 request needs a text: it cannot read images")
        pipe = self.pipelines.get(spec, "img2img" if request.init_image else "text2img")
        guided = request.guidance > 1.0
        sides = weight_sides(request.parts, request.negative)  # a negative part: less of it (as --no)

        def fit(text: str) -> str:
            return self._fit_tokens(pipe.tokenizer, plain_text(text), notices, KANDINSKY3_TOKENS - 1)  # + </s>

        texts = [fit(t) for t, _ in sides.positive]
        kwargs: dict[str, Any] = dict(
            num_inference_steps=request.steps, guidance_scale=request.guidance, num_images_per_prompt=request.count,
            generator=[torch.Generator().manual_seed(s) for s in request.seeds()], callback_on_step_end=callback)
        if len(texts) == 1 and sides.plain_negative is not None:
            kwargs.update(prompt=texts[0], negative_prompt=sides.plain_negative or None)
        else:
            lessened = [(text if i == 0 and request.negative else fit(text), share)
                        for i, (text, share) in enumerate(sides.negative)]
            kwargs.update(kandinsky3_mix(pipe, texts, [w for _, w in sides.positive], sides.plain_negative or "",
                                         guided, lessened=lessened if sides.plain_negative is None else ()))
        if request.init_image:
            kwargs.update(image=self._open(request.init_image, (request.width, request.height)),
                          strength=request.strength)
        else:
            # the pipeline's latents: H/8 × W/8 (sides are multiples of 64 here: size_for_aspect)
            shape = (pipe.unet.config.in_channels, request.height // 8, request.width // 8)
            kwargs.update(width=request.width, height=request.height,
                          latents=initial_noise(request, shape).to(self.device.device, self.device.dtype))
        with seamless.circular(pipe, request.tile):
            images: list[Image.Image] = pipe(**kwargs).images
        return images

    # 4. A provider's API (OpenAI): no pipeline, no steps; progress is pictures received -------

    def _remote(self, job: BatchJob, spec: ModelSpec) -> Generated:
        """The job's pictures from the provider (generation/remote.py); RemoteRefusal when it
        makes none (the worker tells the member its text)."""
        def on_image(done: int, total: int, latest: Image.Image) -> None:
            job.on_step(done, total, lambda: latest)

        notices: list[str] = []
        images = remote.generate(spec, job.request, self.remote, on_image=on_image, should_stop=job.should_stop,
                                 notices=notices)
        if job.should_stop():
            raise GenerationStopped()
        return Generated(images=images, notices=notices, flagged=[False] * len(images))

    # 5. Upscaling ----------------------------------------------------------------------------

    def _upscale(self, request: Request, notices: list[str], on_step: StepCallback,
                 should_stop: Callable[[], bool]) -> Image.Image:
        """Upscale (Subtle): by the upscaler `request.model` (an ESRGAN-family network ×2, the
        SD x4 upscaler ×4) where it can; otherwise resampled ×2, and the notice says so.
        Upscale (Creative) (`request.strength` > 0): by `request.upscaler`, then repainted at
        that strength by `request.model`, the model that made the picture (generation/creative.py)."""
        if request.init_image is None:
            raise ValueError("an upscale request needs the picture to enlarge (init_image)")
        image = self._open(request.init_image)
        if request.strength <= 0 and request.tile and min(image.size) >= seamless.WRAP_MARGIN:
            # a tiling picture is enlarged with its opposite edges around it, so it still tiles
            enlarged = self._enlarge(seamless.wrap_pad(image), request.model, request, notices, on_step, should_stop)
            return seamless.unpad(enlarged, image.size)
        if request.strength <= 0:
            return self._enlarge(image, request.model, request, notices, on_step, should_stop)
        enlarged = self._enlarge(image, request.upscaler or RESAMPLE, request, notices, on_step, should_stop)
        spec = self.registry.get(request.model)
        if not spec.can_repaint:  # the Studio refuses these first; an older stored job
            notices.append(f"{spec.name} cannot repaint an enlarged picture here: upscaled without the creative pass.")
            return enlarged
        pipe = self.pipelines.get(spec, "img2img")
        try:
            with self._additions([request], spec):  # the picture's LoRAs and embeddings repaint it too
                embeds = self._prompt_embeds(pipe, request.replace(count=1), request.guidance > 1.0, notices)
                return repaint(pipe, enlarged, strength=request.strength, steps=request.steps,
                               guidance=request.guidance, seed=request.seed, embeds=embeds, tile=spec.native_side,
                               callback=self._callback(request, on_step, should_stop), should_stop=should_stop)
        except Stop:
            raise GenerationStopped() from None

    def _enlarge(self, image: Image.Image, upscaler: str, request: Request, notices: list[str],
                 on_step: StepCallback, should_stop: Callable[[], bool]) -> Image.Image:
        def resampled(why: str) -> Image.Image:
            notices.append(f"{why}: enlarged ×{RESAMPLE_FACTOR} by Lanczos resampling, without new detail.")
            return resample(image)

        if upscaler == RESAMPLE:
            return resampled("No upscaling model is configured")
        spec = self.registry.get(upscaler)
        if family_of(spec.family).weights_file:  # an ESRGAN-family network (spandrel)
            try:
                model = self.pipelines.get(spec, "esrgan")
                return esrgan.enlarge(model, image, ESRGAN_FACTOR, should_stop=should_stop,
                                      on_tile=lambda done, total: on_step(done, total, lambda: image))
            except Stop:
                raise GenerationStopped() from None
            except Exception as err:  # one tile did not fit (on any device): nothing else will
                if not is_out_of_memory(err):
                    raise
                self.pipelines.release()
                return resampled(f"The upscaling model ran out of memory ({self.device.device})")
        if upscale_factor(*image.size, with_model=True) != MODEL_FACTOR:
            return resampled("Too large for the upscaling model")
        # the x4 upscaler's own steps: a creative request's steps are those of its second pass
        steps, guidance = (request.steps, request.guidance) if request.strength <= 0 else (spec.steps, spec.guidance)
        try:
            pipe = self.pipelines.get(spec, "upscale")
            generator = torch.Generator().manual_seed(request.seed)
            callback = self._callback(request, on_step, should_stop)
            # the words, not the display text; a negative part (less of it) is not among them
            prompt = " ".join(plain_text(text) for text, _ in positive_parts(request.parts))
            upscaled: Image.Image = pipe(prompt=prompt, image=image, num_inference_steps=steps,
                                         guidance_scale=guidance, generator=generator, callback_steps=1,
                                         callback=legacy_callback(callback, total=steps)).images[0]
            return upscaled
        except Exception as err:
            if not is_out_of_memory(err):  # on any device: the CPU allocator's error too
                raise
            self.pipelines.release()
            return resampled(f"The upscaling model ran out of memory ({self.device.device})")

    # 4. /describe ------------------------------------------------------------------------------

    def _describe(self, request: Request, on_step: StepCallback, should_stop: Callable[[], bool]) -> Generated:
        """Four prompts for the picture `request.images[0]` by the captioner `request.model`
        (generation/captions.py; seeded by `request.seed`); progress after each caption, with
        the picture itself as the preview. Generated holds the picture (as read: RGB) and the
        prompts. Raises GenerationStopped when should_stop() says so, ValueError for a request
        without a picture or a model that is not a captioner, and what loading raises."""
        if not request.images:
            raise ValueError("a describe request needs the picture to describe (images)")
        spec = self.registry.get(request.model)
        if not spec.is_captioner:
            raise ValueError(f"{spec.name} is not a captioning model")
        captioner = self.pipelines.get(spec, "caption")
        picture = self._open(request.images[0])
        preview = picture.copy()
        preview.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
        prompts = captions.describe(captioner, picture, seed=request.seed, count=request.count,
                                    on_caption=lambda done, total: on_step(done, total, lambda: preview),
                                    should_stop=should_stop)
        if should_stop():
            raise GenerationStopped()
        return Generated(images=[picture], notices=[], captions=prompts)

    # ------------------------------------------------------------------------------------------

    @staticmethod
    def _open(path: str, size: tuple[int, int] | None = None) -> Image.Image:
        """An input picture as RGB; at `size` when given (image to image works at the request's size)."""
        with Image.open(path) as opened:
            image = flatten_to_rgb(opened)
        return image if size is None or image.size == size else image.resize(size, Image.Resampling.LANCZOS)

    @staticmethod
    def _callback(request: Request, on_step: StepCallback, should_stop: Callable[[], bool],
                  preview_of: Preview = latents_preview) -> StepEndCallback:
        """A `callback_on_step_end` for one job: progress (with a preview by `preview_of` on
        demand), and stopping."""
        return Engine._batch_callback([BatchJob(request, on_step, should_stop)], [False], preview_of)

    @staticmethod
    def _batch_callback(jobs: Sequence[BatchJob], stopped: list[bool],
                        preview_of: Preview = latents_preview) -> StepEndCallback:
        """A `callback_on_step_end` for a batch: each job that still runs hears its progress
        (its preview, by `preview_of`, shows its own images: the batch's latents are the jobs'
        images one job after another), then is asked whether to stop; `stopped[i]` is set for
        job i when it says so. Raises GenerationStopped when every job is stopped."""
        def callback(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any],
                     total: int | None = None) -> dict[str, Any]:
            latents = tensors.get("latents")
            start = 0
            for i, job in enumerate(jobs):
                request, end = job.request, start + job.request.count
                if not stopped[i]:
                    job_total = total or getattr(pipe, "_num_timesteps", None) or request.steps

                    def preview(request: Request = request, start: int = start, end: int = end) -> Image.Image:
                        if latents is None:
                            raise ValueError("this pipeline passes no latents to its step callback")
                        return preview_of(latents[start:end], request.width, request.height)

                    job.on_step(step + 1, job_total, preview)
                    stopped[i] = job.should_stop()
                start = end
            if all(stopped):
                # raised, not pipe._interrupt: Kandinsky's and the upscaler's loops ignore that flag
                raise GenerationStopped()
            return tensors
        return callback


def kandinsky_latents_shape(pipe: Any, width: int, height: int) -> tuple[int, int, int]:
    """One picture's starting latents in a Kandinsky 2.1/2.2 decoder `pipe` for a picture of
    width × height pixels: (channels as the pipeline takes them, H', W'), each side as the
    decoders compute it (diffusers' downscale_height_and_width / get_new_h_w with the MoVQ's
    scale factor s: the side divided by s², rounded up, times s; H/8 for sides that are
    multiples of 64)."""
    scale = int(pipe.movq_scale_factor)

    def side(pixels: int) -> int:
        return -(-pixels // scale**2) * scale
    # the ControlNet decoder's UNet reads the hint beside the latents: its latents are the MoVQ's
    controlled = "Controlnet" in type(pipe).__name__
    return (pipe.movq.config.latent_channels if controlled else pipe.unet.config.in_channels, side(height), side(width))


def prior_interpolate(prior: Any, items: Sequence[str | Image.Image], weights: Sequence[float], *, negative: str,
                      count: int, generator: torch.Generator) -> Any:
    """Kandinsky 2.2's `KandinskyV22PriorPipeline.interpolate` (diffusers 0.42), step for step,
    for both priors: 2.1's own `interpolate` sums its texts' draws into one embedding whatever
    `num_images_per_prompt` says, so a grid could not have a draw per picture.

    `prior`: a Kandinsky 2.1 or 2.2 prior pipeline; `items`: texts and pictures (PIL), mixed
    by `weights` (one each); `negative`: the negative text ("" for none); `count`: pictures.
    Each text is drawn `count` times by one prior call (num_images_per_prompt=count, the one
    `generator`, in order), each picture's CLIP image embedding is repeated `count` times,
    and the negative is drawn last. Returns the prior's output: `image_embeds` (count, width)
    the weighted sum, `negative_image_embeds` (count, width): the zero-image embedding for ""
    as the prior gives it, else the negative text's draw. Raises what the prior raises."""
    device = prior._execution_device
    weighted: list[torch.Tensor] = []
    with torch.no_grad():
        for item, weight in zip(items, weights, strict=True):
            if isinstance(item, str):
                embeds = prior(item, num_images_per_prompt=count, generator=generator).image_embeds
            else:
                pixels = prior.image_processor(item, return_tensors="pt").pixel_values[0].unsqueeze(0)
                embeds = prior.image_encoder(pixels.to(dtype=prior.image_encoder.dtype, device=device))[
                    "image_embeds"].repeat(count, 1)
            weighted.append(embeds.unsqueeze(0) * weight)
        zero = prior(negative, num_images_per_prompt=count, generator=generator)
    zero.negative_image_embeds = zero.negative_image_embeds if negative == "" else zero.image_embeds
    # summed in one reduction, as diffusers does: in 16 bits, adding one term at a time rounds
    # after each, and a tiny decoder turned that into pictures 112/255 apart (bfloat16)
    zero.image_embeds = torch.cat(weighted).sum(dim=0)
    return zero


def prior_view(image: Image.Image, processor: Any) -> Image.Image:
    """The part of `image` that a Kandinsky prior's CLIP image processor looks at, cut out before
    the processor runs.

    The processor (CLIPImageProcessor: `shortest_edge` 224, centre crop 224×224) scales the
    short side to 224 px first, so its work and memory grow with the aspect ratio: a 100000×8
    picture would become 224×2.8 million pixels before the crop. Its centre square, scaled, is
    the same crop (up to rounding), at a cost bounded by the pixel count. Pictures for a
    processor without a square centre crop come back unchanged.
    """
    crop = getattr(processor, "crop_size", None) or {}
    if not getattr(processor, "do_center_crop", False) or crop.get("height") != crop.get("width"):
        return image
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def prior_weights(weights: Sequence[float]) -> list[float]:
    """The weights a Kandinsky prior's `interpolate` mixes texts and images by, scaled to add up
    to 1 as in diffusers' examples (and as Stable Diffusion's parts are mixed here): raw `::`
    and /blend weights adding up to 2–6 would make an image embedding 2–6 times a real one.
    Weights that add up to 0 or less are returned as they are."""
    total = sum(weights)
    return [w / total for w in weights] if total > 0 else list(weights)


def weighted_embeds(pipe: Any, text: str, device: torch.device | str) -> torch.Tensor:
    """The text encoder's embeddings of `text` with its emphasis weights applied, by compel
    (the field's library for weighted prompts): shape (1, tokens, width); for SDXL both
    encoders' penultimate hidden states side by side, as diffusers' own encode_prompt gives.

    `pipe`: a Stable Diffusion or SDXL pipeline (its tokenizers and text encoders); `text`: a
    prompt part (or a negative) with `(word:1.3)` emphasis. A multi-vector textual-inversion
    embedding's token stands for all its vectors, each with the token's weight, as diffusers'
    `maybe_convert_prompt` reads it (compel alone reads only the first: damian0815/compel#28).
    Tokens beyond the encoder's length are cut."""
    segments = emphasis_segments(text)
    fragments, weights = [[f for f, _ in segments]], [[w for _, w in segments]]
    if hasattr(pipe, "text_encoder_2"):
        providers = [
            EmbeddingsProvider(tokenizer, encoder, MultiVectorTokens(tokenizer), truncate=True,
                               returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED)
            for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2))]
    else:
        providers = [EmbeddingsProvider(pipe.tokenizer, pipe.text_encoder, MultiVectorTokens(pipe.tokenizer),
                                        truncate=True)]
    with torch.no_grad():
        # SDXL: both encoders' embeddings side by side (compel's EmbeddingsProviderMulti does the same)
        return torch.cat([provider.get_embeddings_for_weighted_prompt_fragments(fragments, weights, device=device)
                          for provider in providers], dim=-1)


class MultiVectorTokens(BaseTextualInversionManager):  # type: ignore[misc]  # compel's classes are untyped
    """For compel: a multi-vector textual-inversion token's ids expanded to all its vectors'.

    diffusers' `load_textual_inversion` adds an embedding of n vectors as n tokens, `tok`,
    `tok_1` … `tok_{n-1}`, and its pipelines' `maybe_convert_prompt` writes them all where a
    prompt writes `tok`. This does the same on token ids, with the tokenizer of each text
    encoder (SDXL's second one has its own ids; compel's DiffusersTextualInversionManager
    reads only the first tokenizer)."""

    def __init__(self, tokenizer: Any):
        self.added: dict[str, int] = dict(tokenizer.added_tokens_encoder)
        self.names = {token_id: token for token, token_id in self.added.items()}

    def expand_textual_inversion_token_ids_if_necessary(self, token_ids: list[int]) -> list[int]:
        """`token_ids` (without start and end markers) with each multi-vector token followed
        by its further vectors' ids; other ids as they are."""
        expanded: list[int] = []
        for token_id in token_ids:
            expanded.append(token_id)
            token = self.names.get(token_id)
            more = 1
            while token is not None and f"{token}_{more}" in self.added:
                expanded.append(self.added[f"{token}_{more}"])
                more += 1
        return expanded


KANDINSKY3_TOKENS = 128  # what Kandinsky 3's pipelines pad and cut a text to (diffusers 0.42)


def kandinsky3_mix(pipe: Any, texts: Sequence[str], weights: Sequence[float], negative: str,
                   guided: bool, *, lessened: Sequence[tuple[str, float]] = ()) -> dict[str, torch.Tensor]:
    """A multi-prompt's parts as one text embedding for Kandinsky3Pipeline: each part's T5
    embeddings (1, KANDINSKY3_TOKENS, width), padding zeroed, mixed by weight; the attention
    mask is every token any part has. Returns the pipeline's keyword arguments `prompt_embeds`,
    `attention_mask` and, when `guided`, `negative_prompt_embeds` and `negative_attention_mask`:
    those of `negative` (the same for every part; "" for the pipeline's empty negative: zeros)
    or, when `lessened` ((text, share), …: generation.prompt.weight_sides' negative side) is
    given, each of its texts' embeddings by its share (the empty negative's zeros take the
    rest), the mask every token any of them has."""
    device = pipe._execution_device
    total = sum(weights)
    encoded = [pipe.encode_prompt(text, guided, num_images_per_prompt=1, device=device,
                                  negative_prompt=negative or None, _cut_context=False) for text in texts]
    mixed = sum(embeds * (weight / total) for (embeds, *_), weight in zip(encoded, weights, strict=True))
    mask = torch.stack([mask for _, _, mask, _ in encoded]).amax(dim=0)
    result = {"prompt_embeds": mixed, "attention_mask": mask}
    if guided and lessened:
        sides = [(pipe.encode_prompt(text, True, num_images_per_prompt=1, device=device, negative_prompt=text,
                                     _cut_context=False), share) for text, share in lessened]
        result |= {"negative_prompt_embeds": sum(enc[1] * share for enc, share in sides),
                   "negative_attention_mask": torch.stack([enc[3] for enc, _ in sides]).amax(dim=0)}
    elif guided:
        result |= {"negative_prompt_embeds": encoded[0][1], "negative_attention_mask": encoded[0][3]}
    return result


def legacy_callback(callback: StepEndCallback, *, total: int) -> Callable[[int, Any, torch.Tensor], dict[str, Any]]:
    """The same callback for pipelines that only have the older `callback(step, t, latents)`
    (the x4 upscaler, Kandinsky 2.1); they do not report their number of steps, so it is given."""
    return lambda step, timestep, latents: callback(None, step, timestep, {"latents": latents}, total)
