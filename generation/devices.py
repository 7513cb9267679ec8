"""Which device and dtype the engine runs on, how pipelines are placed in its memory (offload
modes), and what the machine has (for `pintor doctor`)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import torch

from generation.families import peak_gib

# Below this much VRAM, `pintor doctor` warns that bigger models need offloading.
LOW_VRAM_BYTES = 10 * 1024**3
GIB = 1024**3

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


# what each device's allocator says when it has no memory left, when it raises no
# torch.OutOfMemoryError: the CPU's ("[enforce fail at alloc_cpu.cpp:…] DefaultCPUAllocator:
# can't allocate memory: you tried to allocate … bytes"), Apple's MPS ("MPS backend out of memory")
_OUT_OF_MEMORY_WORDS = ("out of memory", "can't allocate memory", "cannot allocate memory", "defaultcpuallocator")


def is_out_of_memory(err: BaseException) -> bool:
    """Whether `err` is a device running out of memory, whichever the device: CUDA's
    torch.OutOfMemoryError, the CPU allocator's RuntimeError, MPS's, or Python's MemoryError.
    Each is handled as the GPU's is (a resampling fallback, a run with offloading, a plain reason)."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(err, RuntimeError) and any(words in str(err).lower() for words in _OUT_OF_MEMORY_WORDS)


class Offload(StrEnum):
    """How a pipeline's sub-models share the GPU's memory (PINTOR_OFFLOAD).

    NONE: every sub-model on the GPU (fastest). MODEL: each sub-model (text encoder, UNet,
    VAE) moves to the GPU for its turn (diffusers' enable_model_cpu_offload; costs little
    speed). SEQUENTIAL: each layer moves for its turn (enable_sequential_cpu_offload; least
    memory, much slower). AUTO: the first of NONE, MODEL, SEQUENTIAL whose measured peak fits
    the free memory (choose_offload)."""

    NONE = "none"
    MODEL = "model"
    SEQUENTIAL = "sequential"
    AUTO = "auto"


# what is kept free beyond the peak: other processes, the CUDA context, fragmentation
HEADROOM_BYTES = GIB // 2


@dataclass(frozen=True)
class DeviceChoice:
    device: str  # "cuda", "mps" or "cpu"
    dtype: torch.dtype
    name: str  # human-readable, e.g. "NVIDIA GeForce RTX 2060 (8.0 GiB)"
    vram_bytes: int | None = None

    @property
    def low_vram(self) -> bool:
        return self.vram_bytes is not None and self.vram_bytes < LOW_VRAM_BYTES

    @property
    def half(self) -> bool:
        """True for 16-bit weights (fp16 or bf16): fp16 weight files ("variant") serve both."""
        return self.dtype in (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class FastPath:
    """How pipelines are prepared on a GPU (bot/settings.py turns PINTOR_* into this).

    `offload`: an Offload mode. `channels_last`: UNet and VAE in channels-last memory format
    (None: on CUDA only, where convolutions gain from it). `compile`: None, or a torch.compile
    mode ("default", "reduce-overhead", "max-autotune"…) for the UNet, warmed up once when the
    worker starts (generation/warmup.py). `vae_tiling_pixels`: a picture of more pixels than
    this is decoded in tiles (less memory, faint seams possible), and a batch whose pictures
    together have more is decoded one picture at a time (slicing: same result, less memory).
    """

    offload: Offload = Offload.AUTO
    channels_last: bool | None = None
    compile: str | None = None
    vae_tiling_pixels: int = 1536 * 1536


def choose_device(preference: str = "auto", dtype: str = "auto") -> DeviceChoice:
    """`auto` takes CUDA, then Apple's MPS, then the CPU. An explicit choice that this machine
    cannot honour is an error, not a silent fallback.

    `dtype` (PINTOR_DTYPE): "auto", "fp16", "bf16" or "fp32". Auto is, on CUDA, bf16 where the
    card has it (torch.cuda.is_bf16_supported(): Ampere and later; same speed as fp16 and no
    overflow; native, not emulated), else fp16, except fp32 on GTX 16xx cards (they make black pictures in fp16);
    fp16 on MPS; fp32 on the CPU. Raises ValueError for an unknown name, or fp16 on the CPU
    (most CPU kernels have none)."""
    preference, dtype = preference.lower(), dtype.lower()
    if preference not in ("auto", "cuda", "mps", "cpu"):
        raise ValueError(f"PINTOR_DEVICE must be auto, cuda, mps or cpu, not '{preference}'")
    if dtype not in ("auto", *DTYPES):
        raise ValueError(f"PINTOR_DTYPE must be auto, fp16, bf16 or fp32, not '{dtype}'")
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if preference == "cuda" and not cuda:
        raise ValueError("PINTOR_DEVICE=cuda but torch sees no CUDA GPU (is a CUDA build of torch installed?)")
    if preference == "mps" and not mps:
        raise ValueError("PINTOR_DEVICE=mps but this torch build has no MPS support")
    if preference in ("auto", "cuda") and cuda:
        props = torch.cuda.get_device_properties(0)
        # native bf16 only (compute capability 8+): torch's default also counts cards that emulate it, slowly
        native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        chosen = DTYPES[dtype] if dtype != "auto" else cuda_dtype(props.name, native_bf16)
        return DeviceChoice("cuda", chosen, f"{props.name} ({props.total_memory / GIB:.1f} GiB)", props.total_memory)
    if preference in ("auto", "mps") and mps:
        return DeviceChoice("mps", DTYPES[dtype] if dtype != "auto" else torch.float16, "Apple MPS")
    if dtype == "fp16":
        raise ValueError("PINTOR_DTYPE=fp16 on the CPU: use fp32 (or bf16)")
    return DeviceChoice("cpu", DTYPES[dtype] if dtype != "auto" else torch.float32, "CPU")


def cuda_dtype(card_name: str, bf16_supported: bool) -> torch.dtype:
    """The automatic dtype of a CUDA card: bf16 where supported, fp32 on GTX 16xx (black
    pictures in fp16: a known fault of those cards), else fp16."""
    if bf16_supported:
        return torch.bfloat16
    if "GTX 16" in card_name.upper():
        return torch.float32
    return torch.float16


def choose_offload(mode: Offload | str, family: str, free_bytes: int | None) -> Offload:
    """The offload mode to load a model of `family` with.

    `mode`: an explicit mode is kept; AUTO takes the first of none, model, sequential whose
    peak (the family record's `peak_gib`, GiB) plus HEADROOM_BYTES fits in `free_bytes` (the GPU's free memory before
    loading), and sequential when none fits. `free_bytes` None (no GPU) gives NONE: offloading
    means nothing on the CPU. Returns a mode other than AUTO; raises ValueError for an
    unknown mode name."""
    mode = Offload(mode)
    if free_bytes is None:
        return Offload.NONE
    if mode != Offload.AUTO:
        return mode
    peaks = peak_gib(family)
    for candidate, peak in zip((Offload.NONE, Offload.MODEL, Offload.SEQUENTIAL), peaks, strict=True):
        if peak * GIB + HEADROOM_BYTES <= free_bytes:
            return candidate
    return Offload.SEQUENTIAL
