"""Models from the Hugging Face hub ahead of use: what `pintor models pull` downloads, how big
it is, and what is already on disk. huggingface_hub does the downloading (progress bars per
file, resumption of an interrupted download from its `.incomplete` file); this module chooses
the files and checks the disk first.

Tests point huggingface_hub at a local stand-in of the hub with HF_ENDPOINT.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from generation.availability import ADDITION_FILES, looks_like_path
from generation.families import family_of
from generation.registry import ModelSpec, Registry

# the files diffusers reads from a pipeline repo, besides the weights (configs, tokenizers)
_SMALL_FILES = ("model_index.json", "*/*.json", "*/*.txt", "*/*.model")
_WEIGHTS = (".safetensors", ".bin")


class PullError(RuntimeError):
    """A download that cannot start or did not finish; str(err) says why and what to do."""


@dataclass(frozen=True)
class Plan:
    """What pulling one hub repo means: its files, their total size and what is still missing."""

    repo_id: str
    files: tuple[str, ...]
    total_bytes: int
    missing_bytes: int  # not yet in the cache: what the download adds to the disk


def _is_hub_id(source: str | None) -> bool:
    return source is not None and source != "" and not looks_like_path(source) and not Path(source).exists()


def is_local(source: str) -> bool:
    """Whether `source` names a file or folder of this machine (written as a path, or one that
    exists here) rather than a hub id: nothing of it can be downloaded."""
    return looks_like_path(source) or Path(source).expanduser().exists()


def missing_local_sources(registry: Registry, names: list[str] | None = None) -> list[tuple[str, str, str]]:
    """Every file or folder an entry (of `names`, all for None) names as its source, prior,
    inpainting pipeline, config, VAE, CLIP model or captioner CLIP — or a LoRA, embedding,
    ControlNet or depth estimator as its source — that does not exist here: (entry name,
    what, path). No download can give them: the entry must be fixed."""
    found = []
    for spec in registry.models.values():
        if spec.is_remote or (names is not None and spec.name not in names):
            continue
        for what, source in (("source", spec.source), ("prior", spec.prior), ("inpaint", spec.inpaint),
                             ("config", spec.config), ("vae", spec.vae), ("clip_model", spec.clip_model),
                             ("clip", spec.clip), ("preview", spec.preview)):
            # an upscaler's weights file and a single-file checkpoint are files wherever written
            if not source:
                continue
            local = looks_like_path(source) or (what == "source" and (
                spec.single_file or family_of(spec.family).weights_file))
            if local and not Path(source).expanduser().exists():
                found.append((spec.name, what, source))
    additions = [(e.name, e.source) for e in registry.loras.values()]
    additions += [(e.name, e.source) for e in registry.embeddings.values()]
    for name, source in additions:
        if (names is None or name in names) and looks_like_path(source) and not Path(source).expanduser().exists():
            found.append((name, "source", source))
    for controlnet in registry.controlnets.values():
        if names is not None and controlnet.name not in names:
            continue
        for what, source in (("source", controlnet.source), ("estimator", controlnet.estimator)):
            if source and looks_like_path(source) and not Path(source).expanduser().exists():
                found.append((controlnet.name, what, source))
    return found


def hub_sources(spec: ModelSpec) -> list[tuple[str, bool]]:
    """The hub ids a model loads from, each with whether its weights are needed: its source
    and, for Kandinsky, its prior (weights), a single-file checkpoint's config (configs and
    tokenizer only), a dedicated inpainting pipeline (weights). Folders and files are not pulled."""
    if family_of(spec.family).weights_file or spec.is_remote:
        return []  # an upscaler's weights file (a local file, never pulled); a provider's API
    if family_of(spec.family).caption:
        return []  # transformers repos: model_sources
    wanted = [(spec.config, False)] if spec.single_file else [(spec.source, True), (spec.prior, True)]
    wanted.append((spec.inpaint, True))  # a dedicated inpainting pipeline (Zoom Out, Pan)
    return [(source, weights) for source, weights in wanted if source and _is_hub_id(source)]


# what CLIPModel, its tokenizer and its image processor read from a CLIP repo (--clip)
CLIP_FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.json",
              "merges.txt", "special_tokens_map.json", "preprocessor_config.json"]


def model_sources(spec: ModelSpec) -> list[str]:
    """The hub ids of a captioner's transformers models (its BLIP source, its CLIP), pulled
    with plan_model; [] for other entries and for folders."""
    if not family_of(spec.family).caption:
        return []
    return [source for source in (spec.source, spec.clip) if source and _is_hub_id(source)]


def choose_model_files(paths: list[str]) -> list[str]:
    """The files of a transformers model repo that `from_pretrained` reads: its top-level
    configs, tokenizer and processor files, and its weights as safetensors where the repo has
    them (one file or shards with their index), else as PyTorch .bin; the TensorFlow, Flax and
    other copies of the same weights are left out."""
    top = [p for p in paths if "/" not in p]
    chosen = [p for p in top if p.endswith((".json", ".txt", ".model")) and not p.endswith(".index.json")]
    for stem in ("model", "pytorch_model"):
        ext = ".safetensors" if stem == "model" else ".bin"
        weights = [p for p in top if p == f"{stem}{ext}" or (p.startswith(f"{stem}-") and p.endswith(ext))]
        if weights:
            index = f"{stem}{ext}.index.json"
            return sorted(chosen + weights + ([index] if index in top else []))
    return sorted(chosen)


def plan_model(repo_id: str) -> Plan:
    """The plan to pull a transformers model repo (choose_model_files), with sizes from the
    hub (no download). Raises the hub's errors, as `plan` does."""
    from huggingface_hub import HfApi

    return plan_files(repo_id, choose_model_files(HfApi().list_repo_files(repo_id)))


def addition_sources(registry: Registry, names: list[str] | None = None) -> list[tuple[str, str, list[str]]]:
    """The hub ids of the VAE overrides, CLIP models (--clip), LoRAs and embeddings (of the
    entries `names`, all for None) with the files to pull from each: (entry name, hub id,
    files). A VAE repo gives its config.json and diffusion_pytorch_model.safetensors (what
    AutoencoderKL.from_pretrained reads), a CLIP repo CLIP_FILES, a LoRA or embedding its
    `weight_name` (else diffusers' default file name)."""
    wanted = []
    for spec in registry.models.values():
        if spec.vae and _is_hub_id(spec.vae) and (names is None or spec.name in names):
            wanted.append((spec.name, spec.vae, ["config.json", "diffusion_pytorch_model.safetensors"]))
        if spec.clip_model and _is_hub_id(spec.clip_model) and (names is None or spec.name in names):
            wanted.append((spec.name, spec.clip_model, CLIP_FILES))
    for kind, entries in (("LoRA", registry.loras), ("embedding", registry.embeddings)):
        for entry in entries.values():
            if _is_hub_id(entry.source) and (names is None or entry.name in names):
                wanted.append((entry.name, entry.source, [entry.weight_name or ADDITION_FILES[kind]]))
    return wanted


# what ControlNetModel.from_pretrained and a transformers depth model read from a hub repo
CONTROLNET_FILES = ["config.json", "diffusion_pytorch_model.safetensors"]
DEPTH_ESTIMATOR_FILES = ["config.json", "preprocessor_config.json", "model.safetensors"]


def controlnet_sources(registry: Registry, names: list[str] | None = None) -> list[tuple[str, str, list[str] | None]]:
    """The hub ids of the ControlNets (of the entries `names`, all for None) and of their depth
    estimators, with the files to pull from each: (entry name, hub id, files), files None for
    a whole pipeline (a Kandinsky 2.2 ControlNet decoder: pulled as `plan` chooses)."""
    wanted: list[tuple[str, str, list[str] | None]] = []
    for controlnet in registry.controlnets.values():
        if names is not None and controlnet.name not in names:
            continue
        if _is_hub_id(controlnet.source):
            files = None if family_of(controlnet.family).controlnet_is_pipeline else CONTROLNET_FILES
            wanted.append((controlnet.name, controlnet.source, files))
        if controlnet.estimator and _is_hub_id(controlnet.estimator):
            wanted.append((controlnet.name, controlnet.estimator, DEPTH_ESTIMATOR_FILES))
    return wanted


def plan_files(repo_id: str, files: list[str]) -> Plan:
    """The plan to pull exactly `files` of `repo_id` (sizes from the hub, no download). Raises the
    hub's errors, as `plan` does."""
    from huggingface_hub import snapshot_download

    infos = snapshot_download(repo_id, allow_patterns=files, dry_run=True)
    if not infos:
        raise PullError(f"{repo_id} has none of {', '.join(files)}; check the entry's weight_name")
    return Plan(repo_id, tuple(files), sum(i.file_size or 0 for i in infos),
                sum(i.file_size or 0 for i in infos if i.will_download))


def choose_files(paths: list[str], variant: str | None, *, weights: bool = True) -> list[str]:
    """The files of a diffusers pipeline repo that `from_pretrained` reads: configs, tokenizers
    and, per component folder, the weights of `variant` ("fp16": `*.fp16.safetensors`) where the
    folder has them, else its plain weights; safetensors over .bin. Top-level checkpoints
    (single-file versions of the same model) are left out."""
    chosen = [p for p in paths if any(fnmatch.fnmatch(p, pattern) for pattern in _SMALL_FILES)
              and not p.endswith(_WEIGHTS)]
    by_folder: dict[str, list[str]] = {}
    for path in paths:
        if weights and "/" in path and path.endswith(_WEIGHTS):
            by_folder.setdefault(path.rsplit("/", 1)[0], []).append(path)
    for files in by_folder.values():
        for ext in _WEIGHTS:
            of_kind = [f for f in files if f.endswith(ext)]
            marked = [f for f in of_kind if variant and f".{variant}." in f.rsplit("/", 1)[1]]
            plain = [f for f in of_kind if f.rsplit("/", 1)[1].count(".") == 1]
            pick = marked or plain
            if pick:
                chosen.extend(pick)
                break
    return sorted(set(chosen))


def access_problem(name: str, repo_id: str) -> str | None:
    """Whether this machine may download `repo_id` now (one small request to the hub): None when
    it may, else the admin's message (gated, does not exist, hub unreachable), as
    `generation.availability.explain` words it."""
    from huggingface_hub import HfApi

    from generation.availability import explain

    try:
        HfApi().auth_check(repo_id)
    except Exception as err:  # noqa: BLE001 - the hub's errors and connection errors are the finding
        return explain(name, repo_id, err).detail
    return None


def plan(repo_id: str, variant: str | None = None, *, weights: bool = True) -> Plan:
    """The files to pull for `repo_id` (without weights: configs and tokenizer only), with their
    sizes from the hub's file listing (no download). Raises the hub's errors
    (RepositoryNotFoundError, GatedRepoError, connection errors)."""
    from huggingface_hub import HfApi, snapshot_download

    paths = HfApi().list_repo_files(repo_id)
    files = choose_files(paths, variant, weights=weights)
    infos = snapshot_download(repo_id, allow_patterns=files, dry_run=True)
    total = sum(i.file_size or 0 for i in infos)
    missing = sum(i.file_size or 0 for i in infos if i.will_download)
    return Plan(repo_id, tuple(files), total, missing)


def pull(found: Plan, *, reserve_bytes: int = 1024**3) -> str:
    """Download a plan's files into the Hugging Face cache (progress bars on stderr; an
    interrupted download resumes where it stopped). Refuses to start when the cache's disk has
    less free space than what is missing plus `reserve_bytes` (1 GiB: room for the rest of the
    system). Returns the snapshot folder; raises PullError."""
    from huggingface_hub import constants, snapshot_download

    cache = Path(constants.HF_HUB_CACHE)
    cache.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cache).free
    if found.missing_bytes + reserve_bytes > free:
        raise PullError(f"{found.repo_id} needs {human_size(found.missing_bytes)} more but {cache} has "
                        f"{human_size(free)} free (and keeps {human_size(reserve_bytes)} spare); free some "
                        "space or set HF_HOME to a bigger disk")
    return snapshot_download(found.repo_id, allow_patterns=list(found.files))


def size_on_disk(source: str) -> int | None:
    """Bytes a source takes here: a folder's files, or a hub id's blobs in the cache; None when
    nothing of it is here."""
    if looks_like_path(source) or Path(source).exists():
        path = Path(source).expanduser()
        if not path.exists():
            return None
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        return sum(p.stat().st_size for p in files)
    from huggingface_hub import constants

    blobs = Path(constants.HF_HUB_CACHE) / f"models--{source.replace('/', '--')}" / "blobs"
    if not blobs.is_dir():
        return None
    return sum(os.path.getsize(p) for p in blobs.iterdir() if p.is_file() and not p.name.endswith(".incomplete"))


def human_size(count: int) -> str:
    """1536 → "1.5 KiB" (binary units, as `du -h` prints them)."""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
