"""How Pintor decodes latents itself (CLIP guidance's per-step decode): in the precision the
pipeline's own final decode would use.

diffusers' SDXL-family and x4-upscaler pipelines decode in float32 when their VAE is in float16
and its config says `force_upcast` (the stock SDXL VAE overflows in float16: NaNs, black
pictures); Stable Diffusion 1.x/2.x pipelines never upcast; an AutoencoderTiny (TAESD) always
has `force_upcast` False. The rule is read from the pipeline class's own `__call__`, so a
pipeline follows whatever its diffusers version does."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

_RULES: dict[type, bool] = {}  # pipeline class → whether its __call__ applies the rule


def _pipeline_upcasts(cls: type) -> bool:
    """Whether the pipeline class's __call__ applies the VAE's force_upcast rule."""
    if cls not in _RULES:
        try:
            _RULES[cls] = "force_upcast" in inspect.getsource(cls.__call__)
        except (OSError, TypeError):  # no source (compiled, a stand-in): diffusers' attribute says it
            _RULES[cls] = hasattr(cls, "upcast_vae")
    return _RULES[cls]


def upcasts(pipe: Any, decoder: Any) -> bool:
    """Whether `pipe`'s own decode would run `decoder` (its VAE, or a tiny decoder standing in
    for it) in float32: the pipeline applies the rule, the decoder is in float16 and its config
    says force_upcast."""
    parameter = next(decoder.parameters(), None)
    return (parameter is not None and parameter.dtype == torch.float16
            and bool(getattr(decoder.config, "force_upcast", False)) and _pipeline_upcasts(type(pipe)))


@contextmanager
def decoding_precision(pipe: Any, decoder: Any) -> Iterator[None]:
    """Within the block, `decoder` is in the dtype `pipe` would decode in (float32 where it
    upcasts, as diffusers does for its final decode), and back in float16 after it."""
    if not upcasts(pipe, decoder):
        yield
        return
    decoder.to(dtype=torch.float32)
    try:
        yield
    finally:
        decoder.to(dtype=torch.float16)
