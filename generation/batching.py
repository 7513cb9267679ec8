"""Which jobs may share one pipeline call, and how many images one call may hold.

Pure rules, no torch: the queue (in the front end) uses them to pick a batch in fair order
(`FairQueue.pop_batch`), the worker to tell the queue its limits, the engine runs the batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from typing import Any

from generation.families import family_of
from generation.request import JobKind, Request

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

# Images per pipeline call, unless the operator sets PINTOR_BATCH_IMAGES. On CUDA: each
# family's record (Family.batch_images_cuda, generation/families.py). On a CPU or Apple GPU one job: at real sizes
# the cores are busy at batch 4 already (benchmarks/README.md: ×1.09 for 4 images in one call
# vs four at 256²; batching only pays where fixed costs per call dominate, ×2.8 with 16² latents
# on a loaded machine), while every member of a batch waits for the whole batch.
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
    `configured`: the operator's PINTOR_BATCH_IMAGES (None: the family's `batch_images_cuda` on CUDA, else
    one job of ONE_JOB images). Families whose record does not say `batches` give 0: their jobs never share a
    call. A job is always run, even one larger than the limit (alone)."""
    if not family_of(family).batches:
        return 0
    if configured is not None:
        return max(0, configured)
    return family_of(family).batch_images_cuda if device == "cuda" else ONE_JOB
