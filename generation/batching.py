"""Which jobs may share one pipeline call, and how many images one call may hold.

Pure rules, no torch: the queue (in the front end) uses them to pick a batch in fair order
(`FairQueue.pop_batch`), the worker to tell the queue its limits, the engine runs the batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping
from typing import Any

from generation.request import JobKind, Request

# The families whose jobs can share one call: Stable Diffusion's pipelines take a list of
# generators and per-image prompt embeddings. Kandinsky's prior runs per prompt and the
# upscaler per picture, so their jobs stay one call each.
BATCH_FAMILIES = frozenset({"sd", "sd2", "sdxl", "sd-turbo", "sdxl-turbo"})

# Request fields that each job of a batch keeps for itself (its prompt embeddings, seeds,
# noise, input picture, checks). Every other field goes into the batch key, so that a field
# added later (per-job LoRAs, say) keeps jobs apart until someone decides it may not.
PER_JOB_FIELDS = frozenset({
    "kind",  # imagine, reroll and variation differ in how the job came, not in the call
    "prompt", "parts", "negative", "seed", "chaos", "count", "parameters",
    "init_image",  # each job its own picture; whether there is one is in the key
    "safety_check", "notices",
    # where a job's image prompts came from and their --iw: shown with it; what they do to the
    # call is in init_image and strength (SD), which are handled as above
    "image_prompts", "image_weight",
})

# Images per pipeline call, unless the operator sets PINTOR_BATCH_IMAGES. On CUDA: SD 1.x/2.x
# four jobs of four (public figures: most of the batching gain is reached by then), SDXL two
# (its 1024² latents take four times the memory). On a CPU or Apple GPU one job: at real sizes
# the cores are busy at batch 4 already (benchmarks/README.md: ×1.09 for 4 images in one call
# vs four at 256²; batching only pays where fixed costs per call dominate, ×2.8 with 16² latents
# on a loaded machine), while every member of a batch waits for the whole batch.
DEFAULT_BATCH_IMAGES: Mapping[str, Mapping[str, int]] = {
    "cuda": {"sd": 16, "sd2": 16, "sd-turbo": 16, "sdxl": 8, "sdxl-turbo": 16},
}
ONE_JOB = 4  # images: Pintor's grid


def batch_key(request: Request) -> Hashable | None:
    """What two requests must share to run in one pipeline call, or None when `request` never
    shares one (an upscale, a Zoom Out or Pan, a picked picture, a /describe; Kandinsky is kept apart by its
    batch limit, which needs the family).

    The key is the model (and with it the pipeline family and scheduler), text to image or
    image to image, and every request field not in PER_JOB_FIELDS: size in pixels, steps,
    guidance scale (so guidance on or off), image-to-image strength, and any field added later
    (a request's `loras`, for one). Lists and dicts are made hashable. A job steered by a
    ControlNet (`control`) runs alone: its control image is made for it in the worker."""
    if (request.kind in (JobKind.UPSCALE, JobKind.OUTPAINT, JobKind.PICK, JobKind.DESCRIBE)
            or request.control is not None):
        return None
    shared = tuple((f.name, _hashable(getattr(request, f.name)))
                   for f in dataclasses.fields(request) if f.name not in PER_JOB_FIELDS)
    return (*shared, ("image_to_image", request.init_image is not None))


def _hashable(value: Any) -> Hashable:
    if isinstance(value, dict):
        return tuple(sorted((str(k), _hashable(v)) for k, v in value.items()))
    if isinstance(value, list | tuple | set | frozenset):
        return tuple(_hashable(v) for v in value)
    return value  # type: ignore[no-any-return]  # str, int, float, bool, None


def max_batch_images(family: str, device: str, configured: int | None = None) -> int:
    """The most images one pipeline call of a model may make, counting every job in it.

    `family`: the model's family (generation.registry); `device`: "cuda", "mps" or "cpu";
    `configured`: the operator's PINTOR_BATCH_IMAGES (None: DEFAULT_BATCH_IMAGES, else one
    job of ONE_JOB images). Families outside BATCH_FAMILIES give 0: their jobs never share a
    call. A job is always run, even one larger than the limit (alone)."""
    if family not in BATCH_FAMILIES:
        return 0
    if configured is not None:
        return max(0, configured)
    return DEFAULT_BATCH_IMAGES.get(device, {}).get(family, ONE_JOB)
