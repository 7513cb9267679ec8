"""Whether a model's files can be had here, and what to say when they cannot.

Light on purpose (huggingface_hub and the file system, no torch): the front end asks it before
a job is stored, so a model that cannot be had is refused at once instead of after the worker
has started, and `pintor doctor` asks it for every configured model.

Two audiences: `ModelLoadError.detail` is for the admin (the log, the terminal, `pintor doctor`)
and shows hub ids and paths exactly as configured; `str(err)` is for the member and names no
server path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from generation.families import family_of

if TYPE_CHECKING:
    from generation.registry import ControlNetSpec

# what `from_pretrained` needs in a pipeline folder (diffusers' DiffusionPipeline.config_name)
PIPELINE_INDEX = "model_index.json"
# what `from_pretrained` needs in a transformers model folder (a captioner, a CLIP model)
MODEL_CONFIG = "config.json"


def index_for(family: str) -> str:
    """The file that makes a folder or hub repo a model of `family`: a transformers model's
    config.json for the captioners (a `caption` family's record, generation.families), else diffusers'
    model_index.json."""
    return MODEL_CONFIG if family_of(family).caption else PIPELINE_INDEX


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded. str(err): the member's short message (no server paths);
    `detail`: the admin's full message (hub ids and paths intact, what to do)."""

    def __init__(self, member: str, detail: str | None = None):
        super().__init__(member)
        self.detail = detail or member


@dataclass(frozen=True)
class SourceState:
    """What a source is here. `ok`: loadable as far as can be told without loading it;
    `detail`: one line for the admin; `fix`: what to do ("" when nothing)."""

    ok: bool
    detail: str
    fix: str = ""
    downloaded: bool = False  # a local folder, or a hub id whose files are in the cache


def offline() -> bool:
    """True when huggingface_hub may not reach the hub (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def looks_like_path(source: str) -> bool:
    """A source written as a file system path (absolute, ~, ./, ../ or a Windows drive) rather
    than a hub id ("owner/name")."""
    return source.startswith(("/", "~", "./", "../", "\\")) or (len(source) > 2 and source[1] == ":")


def pull_hint(name: str) -> str:
    return (f"run `pintor models pull {name}` where there is internet (then copy the Hugging Face cache here), "
            "or point the entry's source at a local folder")


def check_source(name: str, source: str, config: str | None = None, *, weights_file: bool = False,
                 index: str = PIPELINE_INDEX) -> SourceState:
    """What `source` (of model `name`) is here, without loading it and without the network.

    A folder must hold a diffusers pipeline (model_index.json and the sub-folders it names); a
    hub id is downloaded when its model_index.json is in the Hugging Face cache; offline, a hub
    id that is not downloaded cannot be had. A single-file checkpoint (.safetensors, .ckpt) must
    exist, and its `config` (a folder or hub id) must have its pipeline's configuration here:
    it is read with local files only, never fetched while loading. With `weights_file`, the
    source is an upscaler's weights file (`.pth`, `.safetensors`: generation/esrgan.py), which
    must exist. With `index` MODEL_CONFIG, the source is a transformers model (a captioner, a
    CLIP model): a folder or downloaded hub id with its config.json.
    """
    from generation.registry import is_single_file

    path = Path(source).expanduser()
    if weights_file:
        if not path.is_file():
            return SourceState(False, f"weights file {source} does not exist",
                               "fix the entry's source (the path of the .pth or .safetensors file)")
        return SourceState(True, f"weights file {source}", downloaded=True)
    if is_single_file(source) and index == PIPELINE_INDEX:
        if not path.is_file():
            return SourceState(False, f"single-file checkpoint {source} does not exist",
                               "fix the entry's source (the path of the .safetensors or .ckpt file)")
        if not config:
            return SourceState(False, f"single-file checkpoint {source} has no 'config'",
                               "set config to a diffusers folder or hub id of the same architecture")
        configured = check_source(name, config)
        if not configured.ok or not configured.downloaded:
            return SourceState(False, f"single-file checkpoint {source}: its config {configured.detail}",
                               configured.fix or pull_hint(name))
        return SourceState(True, f"single-file checkpoint {source} (config: {config})", downloaded=True)
    if path.exists() or looks_like_path(source):
        return _check_folder(name, source, path, index)
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = isinstance(try_to_load_from_cache(source, index), str)
    except ValueError as err:  # not a valid repo id either (huggingface_hub's HFValidationError)
        return SourceState(False, f"'{source}' is neither a folder here nor a hub id ({err})",
                           "set source to a hub id (owner/name) or an existing folder")
    if cached:
        return SourceState(True, f"hub id {source}, downloaded (in the Hugging Face cache)", downloaded=True)
    if offline():
        return SourceState(False, f"hub id {source} is not downloaded and HF_HUB_OFFLINE is set", pull_hint(name))
    return SourceState(True, f"hub id {source}, not downloaded yet: fetched on first use (needs internet)",
                       f"`pintor models pull {name}` downloads it ahead")


# the file a hub repo or folder is read from when the entry names none (diffusers' own names:
# LORA_WEIGHT_NAME_SAFE, TEXT_INVERSION_NAME_SAFE; an AutoencoderKL's config)
ADDITION_FILES = {"LoRA": "pytorch_lora_weights.safetensors", "embedding": "learned_embeds.safetensors",
                  "VAE": "config.json", "ControlNet": "config.json", "depth estimator": "config.json",
                  "CLIP model": "config.json"}
# the kinds whose source may be a folder (a model saved with save_pretrained: config.json at its top)
FOLDER_KINDS = {"VAE", "ControlNet", "depth estimator", "CLIP model"}


def check_addition(kind: str, name: str, source: str, weight_name: str | None = None) -> SourceState:
    """What the `source` of a LoRA, textual-inversion embedding or VAE (`kind`: "LoRA",
    "embedding", "VAE") of entry `name` is here, without loading it and without the network.

    A path must be a file (for a VAE, ControlNet or depth estimator also a folder with
    config.json: FOLDER_KINDS); a hub id is downloaded
    when its file (`weight_name`, else ADDITION_FILES[kind]) is in the Hugging Face cache, and
    cannot be had offline otherwise. Returns SourceState (`fix`: what to do)."""
    wanted = weight_name or ADDITION_FILES[kind]
    path = Path(source).expanduser()
    if path.exists() or looks_like_path(source):
        if (path.is_file() and kind not in FOLDER_KINDS - {"VAE"}) or (kind in FOLDER_KINDS
                                                                         and (path / wanted).is_file()):
            return SourceState(True, f"{kind} {source}", downloaded=True)
        if path.is_dir() and (path / wanted).is_file():
            return SourceState(True, f"{kind} {path / wanted}", downloaded=True)
        what = {"VAE": "a file or a folder with config.json"}.get(
            kind, "a folder with config.json" if kind in FOLDER_KINDS else "a file")
        return SourceState(False, f"{kind} {source} " + ("is not " + what if path.exists() else "does not exist"),
                           f"fix the source of '{name}' ({what})")
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = isinstance(try_to_load_from_cache(source, wanted), str)
    except ValueError as err:
        return SourceState(False, f"{kind} '{source}' is neither a file here nor a hub id ({err})",
                           f"set the source of '{name}' to a file or a hub id (owner/name)")
    if cached:
        return SourceState(True, f"{kind} hub id {source} ({wanted}), downloaded", downloaded=True)
    if offline():
        return SourceState(False, f"{kind} hub id {source} ({wanted}) is not downloaded and HF_HUB_OFFLINE is set",
                           f"run `pintor models pull` where there is internet, or point the source of '{name}' "
                           "at a local file")
    return SourceState(True, f"{kind} hub id {source} ({wanted}), not downloaded yet: fetched on first use",
                       "`pintor models pull` downloads it ahead")


def require_addition(kind: str, name: str, source: str, weight_name: str | None = None) -> None:
    """Raise ModelLoadError when a LoRA's, embedding's or VAE's files cannot be had here
    (`check_addition`); str(err) names the entry, not its path."""
    state = check_addition(kind, name, source, weight_name)
    if not state.ok:
        raise ModelLoadError(f"The {kind} '{name}' cannot be loaded on this server right now (its file is missing "
                             "or cannot be downloaded). An admin can see why with `pintor doctor`.",
                             f"cannot load {kind} '{name}': {state.detail}; {state.fix}")


def check_controlnet(controlnet: ControlNetSpec) -> list[tuple[str, SourceState]]:
    """What the files of a configured ControlNet are here, without loading them and without the
    network: its own (a diffusers ControlNetModel: config.json, as check_addition; a Kandinsky
    2.2 ControlNet is a whole decoder pipeline: check_source) and its depth estimator's (a
    transformers model folder or hub id: config.json). Returns (what, SourceState) pairs."""
    if family_of(controlnet.family).controlnet_is_pipeline:
        states = [("ControlNet", check_source(controlnet.name, controlnet.source))]
    else:
        states = [("ControlNet", check_addition("ControlNet", controlnet.name, controlnet.source))]
    if controlnet.estimator:
        states.append(("depth estimator", check_addition("depth estimator", controlnet.name, controlnet.estimator)))
    return states


def require_controlnet(controlnet: ControlNetSpec) -> None:
    """Raise ModelLoadError when a ControlNet's files (or its depth estimator's) cannot be had
    here (`check_controlnet`); str(err) names the entry, not its path."""
    for what, state in check_controlnet(controlnet):
        if not state.ok:
            raise ModelLoadError(f"The ControlNet '{controlnet.name}' cannot be loaded on this server right now (its "
                                 "files are missing or cannot be downloaded). An admin can see why with "
                                 "`pintor doctor`.",
                                 f"cannot load ControlNet '{controlnet.name}' ({what}): {state.detail}; {state.fix}")


def _check_folder(name: str, source: str, path: Path, index: str = PIPELINE_INDEX) -> SourceState:
    if not path.exists():
        return SourceState(False, f"{source} does not exist", "fix the entry's source (a folder or a hub id)")
    if index == MODEL_CONFIG:
        if not (path / MODEL_CONFIG).is_file():
            return SourceState(False, f"{source} is not a transformers model: it has no {MODEL_CONFIG}",
                               "point source at a folder saved with save_pretrained (config.json and weights)")
        return SourceState(True, f"local folder {source}", downloaded=True)
    if not path.is_dir():
        return SourceState(False, f"{source} is a file, not a diffusers pipeline folder",
                           "point source at a folder saved with save_pretrained")
    if not (path / PIPELINE_INDEX).is_file():
        return SourceState(False, f"{source} is not a diffusers pipeline: it has no {PIPELINE_INDEX}",
                           "point source at a folder saved with save_pretrained (it holds model_index.json, "
                           "unet/, vae/, …)")
    missing = _missing_components(path)
    if missing:
        return SourceState(False, f"{source} is not a complete diffusers pipeline: {PIPELINE_INDEX} names "
                           f"{', '.join(missing)}, missing from the folder",
                           "copy the whole pipeline folder (every sub-folder model_index.json names)")
    return SourceState(True, f"local folder {source}", downloaded=True)


def _missing_components(path: Path) -> list[str]:
    """The sub-folders model_index.json names (as [library, class] pairs) that are not there."""
    import json

    try:
        index = json.loads((path / PIPELINE_INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return [f"(a readable {PIPELINE_INDEX})"]
    return sorted(f"{key}/" for key, value in index.items()
                  if not key.startswith("_") and isinstance(value, list) and len(value) == 2
                  and value[0] is not None and value[1] is not None and not (path / key).is_dir())


def require(name: str, source: str, config: str | None = None, *, weights_file: bool = False,
            index: str = PIPELINE_INDEX) -> None:
    """Raise ModelLoadError when `source` cannot be had here (see `check_source`)."""
    state = check_source(name, source, config, weights_file=weights_file, index=index)
    if not state.ok:
        raise ModelLoadError(member_message(name), f"cannot load model '{name}': {state.detail}; {state.fix}")


def member_message(name: str) -> str:
    return (f"Model '{name}' cannot be loaded on this server right now (its files are missing or cannot be "
            "downloaded). An admin can see why with `pintor doctor`.")


def explain(name: str, source: str, err: BaseException) -> ModelLoadError:
    """The ModelLoadError for a failed `from_pretrained(source)`: why, from the hub's error that
    diffusers wrapped (it raises a plain OSError inside its `except`, so the hub's error is the
    `__context__`)."""
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    text = " ".join(str(e) for e in chain)
    # GatedRepoError before RepositoryNotFoundError, its parent class (the hub's 404 text also
    # mentions gated repos: only the class tells them apart)
    if any(isinstance(e, GatedRepoError) for e in chain):
        why = (f"hub id {source} is gated: accept its licence on https://huggingface.co/{source} with the "
               "account whose token Pintor uses (HF_TOKEN), then `pintor models pull " + name + "`")
    elif any(isinstance(e, RepositoryNotFoundError) for e in chain) or "not a valid model identifier" in text:
        why = (f"hub id {source} does not exist on the hub (or is private: set HF_TOKEN); "
               "check the spelling of the entry's source")
    elif (any(isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError)) for e in chain)
          or offline()):
        why = f"{source} is not downloaded and the hub cannot be reached; {pull_hint(name)}"
    else:
        why = f"{source}: {str(err).strip()}"
    return ModelLoadError(member_message(name), f"cannot load model '{name}': {why}")
