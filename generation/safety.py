"""The NSFW check of pipelines that ship one (Stable Diffusion 1.x's safety checker).

diffusers' own use of the checker turns a flagged image black without a word. Pintor takes the
checker out of the pipeline and runs it itself, so a flagged image is blurred and marked —
the front end posts it behind a spoiler — instead of silently replaced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter


@dataclass
class SafetyChecker:
    checker: Any  # StableDiffusionSafetyChecker
    feature_extractor: Any  # CLIPImageProcessor
    device: str = "cpu"  # where it runs: the pipeline's device
    resident: bool = True  # kept there; False: moved there for each check and back (offloaded models)

    def place(self, device: str, *, resident: bool) -> None:
        """Run on `device` (the pipeline's), kept there when `resident`, else moved there for
        each check and back to the CPU after it (how an offloaded pipeline's models run)."""
        self.device, self.resident = device, resident
        self.checker.to(device if resident else "cpu")

    @classmethod
    def take_from(cls, pipe: Any) -> SafetyChecker | None:
        """Detach a pipeline's checker (so the pipeline leaves images alone); None if it has none."""
        checker = getattr(pipe, "safety_checker", None)
        extractor = getattr(pipe, "feature_extractor", None)
        if checker is None or extractor is None:
            return None
        pipe.safety_checker = None
        return cls(checker, extractor)

    @torch.no_grad()
    def flags(self, images: list[Image.Image]) -> list[bool]:
        if not self.resident:
            self.checker.to(self.device)
        try:
            param = next(self.checker.parameters())
            clip_input = self.feature_extractor(images, return_tensors="pt").pixel_values.to(param.device, param.dtype)
            arrays = np.stack([np.asarray(image, dtype=np.float32) / 255 for image in images])
            _, flagged = self.checker(images=arrays, clip_input=clip_input)
            return [bool(f) for f in flagged]
        finally:
            if not self.resident:
                self.checker.to("cpu")


def blur(image: Image.Image) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius=max(image.size) / 16))
