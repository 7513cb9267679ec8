"""Which device and dtype the engine runs on, and what the machine has (for `pintor doctor`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Below this much VRAM, pipelines are offloaded to the CPU between uses (8 GB cards and less).
LOW_VRAM_BYTES = 10 * 1024**3


@dataclass(frozen=True)
class DeviceChoice:
    device: str  # "cuda", "mps" or "cpu"
    dtype: torch.dtype
    name: str  # human-readable, e.g. "NVIDIA GeForce RTX 2060 (8.0 GiB)"
    vram_bytes: int | None = None

    @property
    def low_vram(self) -> bool:
        return self.vram_bytes is not None and self.vram_bytes < LOW_VRAM_BYTES


def choose_device(preference: str = "auto") -> DeviceChoice:
    """`auto` takes CUDA, then Apple's MPS, then the CPU. An explicit choice that this machine
    cannot honour is an error, not a silent fallback."""
    preference = preference.lower()
    if preference not in ("auto", "cuda", "mps", "cpu"):
        raise ValueError(f"PINTOR_DEVICE must be auto, cuda, mps or cpu, not '{preference}'")
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if preference == "cuda" and not cuda:
        raise ValueError("PINTOR_DEVICE=cuda but torch sees no CUDA GPU (is a CUDA build of torch installed?)")
    if preference == "mps" and not mps:
        raise ValueError("PINTOR_DEVICE=mps but this torch build has no MPS support")
    if preference in ("auto", "cuda") and cuda:
        props = torch.cuda.get_device_properties(0)
        return DeviceChoice("cuda", torch.float16, f"{props.name} ({props.total_memory / 1024**3:.1f} GiB)",
                            props.total_memory)
    if preference in ("auto", "mps") and mps:
        return DeviceChoice("mps", torch.float16, "Apple MPS")
    return DeviceChoice("cpu", torch.float32, "CPU")
