"""LoRAs and textual-inversion embeddings on a loaded Stable Diffusion pipeline, for one job.

A LoRA is loaded into the pipeline's UNet and text encoders once (diffusers'
`load_lora_weights(..., adapter_name=NAME)`, through peft) and kept there while the model stays
loaded: a job that names it switches it on with its weight (`set_adapters`), and every job ends
with all LoRAs switched off (`disable_lora`), so one member's LoRA never reaches the next job and
the base model is never reloaded for a LoRA. At most MAX_CACHED_LORAS stay loaded per model;
beyond that the oldest not used by the job is deleted.

An embedding adds its token to the tokenizer and its vectors to the text encoder(s)
(`load_textual_inversion`) the first time a prompt of that model's family writes its token; it
changes nothing for prompts without the token, so it stays.

`text2img` and `img2img` pipelines of one model share their UNet, text encoders and tokenizers
(`from_pipe`): what is applied to one is applied to both.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from generation.availability import ModelLoadError, looks_like_path, require_addition
from generation.registry import EmbeddingSpec, LoraSpec

log = logging.getLogger(__name__)

MAX_CACHED_LORAS = 8  # LoRAs kept loaded per model (each a few to a few hundred MB)


def loaded_loras(pipe: Any) -> list[str]:
    """The adapter names loaded into the pipeline's UNet or text encoders, oldest first."""
    if not hasattr(pipe, "get_list_adapters"):
        return []
    names: dict[str, None] = {}
    for adapters in pipe.get_list_adapters().values():
        names.update(dict.fromkeys(adapters))
    return list(names)


@contextmanager
def applied(pipe: Any, loras: Sequence[tuple[LoraSpec, float]], embeddings: Iterable[EmbeddingSpec] = (),
            texts: Iterable[str] = ()) -> Iterator[None]:
    """Run the body with `loras` ((LoRA, weight), …) switched on in `pipe` and every embedding
    of `embeddings` whose token one of `texts` (prompt parts, the negative) writes loaded; on
    leaving (also on an error) every LoRA is switched off again.

    `pipe`: a Stable Diffusion / SDXL pipeline (diffusers' LoRA and textual-inversion mixins).
    Raises ModelLoadError when a LoRA's or embedding's file cannot be had or read (another
    family, not a LoRA); diffusers' and torch's errors otherwise."""
    for embedding in needed_embeddings(pipe, embeddings, texts):
        _load_embedding(pipe, embedding)
    if not loras:
        if loaded_loras(pipe):
            pipe.disable_lora()  # off already after each job; said again in case a job died half-way
        yield
        return
    try:
        _make_room(pipe, {lora.name for lora, _ in loras})
        for lora, _ in loras:
            if lora.name not in loaded_loras(pipe):
                _load_lora(pipe, lora)
        pipe.enable_lora()
        pipe.set_adapters([lora.name for lora, _ in loras], [float(weight) for _, weight in loras])
        yield
    finally:
        if loaded_loras(pipe):
            pipe.disable_lora()


def needed_embeddings(pipe: Any, embeddings: Iterable[EmbeddingSpec], texts: Iterable[str]) -> list[EmbeddingSpec]:
    """The embeddings whose token the texts write (as a word) and that `pipe` does not hold yet."""
    words = " ".join(texts)
    have = pipe.tokenizer.get_added_vocab() if hasattr(pipe, "tokenizer") else {}
    return [e for e in embeddings if e.token not in have
            and re.search(rf"(?<![\w<>-]){re.escape(e.token)}(?![\w<>-])", words)]


def _make_room(pipe: Any, keep: set[str]) -> None:
    loaded = loaded_loras(pipe)
    extra = len(loaded) + len(keep - set(loaded)) - MAX_CACHED_LORAS
    old = [name for name in loaded if name not in keep][:max(0, extra)]
    if old:
        log.info("unloading LoRAs %s", ", ".join(old))
        pipe.delete_adapters(old)


def _load_lora(pipe: Any, lora: LoraSpec) -> None:
    require_addition("LoRA", lora.name, lora.source, lora.weight_name)
    log.info("loading LoRA %s from %s", lora.name, lora.source)
    source, kwargs = _where(lora.source, lora.weight_name)
    try:
        with warnings.catch_warnings():
            # peft warns when a second named adapter joins a model: several LoRAs are what is meant
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute", category=UserWarning)
            pipe.load_lora_weights(source, adapter_name=lora.name, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        if lora.name in loaded_loras(pipe):  # half-loaded (some components): leave nothing behind
            pipe.delete_adapters([lora.name])
        raise _unreadable("LoRA", lora.name, lora.source, err) from err


def _load_embedding(pipe: Any, embedding: EmbeddingSpec) -> None:
    require_addition("embedding", embedding.name, embedding.source, embedding.weight_name)
    log.info("loading embedding %s (%s) from %s", embedding.name, embedding.token, embedding.source)
    source, kwargs = _where(embedding.source, embedding.weight_name)
    try:
        if hasattr(pipe, "text_encoder_2"):
            # SDXL embeddings hold one tensor per text encoder: "clip_l" (the first), "clip_g"
            state = _read_tensors(source, kwargs.get("weight_name"))
            if not {"clip_l", "clip_g"} <= set(state):
                raise ValueError(f"an SDXL embedding needs 'clip_l' and 'clip_g' tensors, not {sorted(state)}")
            pipe.load_textual_inversion(state["clip_l"], token=embedding.token,
                                        text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
            pipe.load_textual_inversion(state["clip_g"], token=embedding.token,
                                        text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
        else:
            pipe.load_textual_inversion(source, token=embedding.token, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise _unreadable("embedding", embedding.name, embedding.source, err) from err


def _where(source: str, weight_name: str | None) -> tuple[str, dict[str, Any]]:
    """`from_pretrained`-style (source, weight_name keyword) of a file, a folder or a hub id."""
    path = Path(source).expanduser()
    if path.is_file():
        return str(path.parent), {"weight_name": path.name}
    if path.is_dir() or looks_like_path(source):
        return str(path), {"weight_name": weight_name} if weight_name else {}
    return source, {"weight_name": weight_name} if weight_name else {}


def _read_tensors(folder: str, weight_name: str | None) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    path = Path(folder) / weight_name if weight_name else None
    if path is None or not path.is_file():
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(folder, weight_name or "learned_embeds.safetensors"))
    if path.suffix == ".safetensors":
        return dict(load_file(path))
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    return dict(loaded) if isinstance(loaded, dict) else {}


def _unreadable(kind: str, name: str, source: str, err: BaseException) -> ModelLoadError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ModelLoadError(f"The {kind} '{name}' cannot be used on this server right now (its file does not load). "
                          "An admin can see why with `pintor doctor`.",
                          f"cannot load {kind} '{name}' from {source} (another model family, or not a {kind} "
                          f"file?): {type(err).__name__}: {first}")
