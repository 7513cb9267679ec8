"""CLIP guidance (`--clip N`): every denoising step of a Stable Diffusion run is steered towards
a picture whose CLIP image embedding is closer to the CLIP text embedding of the prompt.

The method is that of diffusers' community pipeline `clip_guided_stable_diffusion` (after
Katherine Crowson's CLIP-guided diffusion): at each step the clean latents x0 are predicted
from the noise prediction, decoded to pixels, embedded by CLIP's image encoder; the spherical
distance to the prompt's CLIP text embedding, times the strength N (the example's
`clip_guidance_scale`, 100 in its docs), gives a gradient that nudges the noise prediction
before the scheduler's step. Pintor's differences, each for speed or reproducibility:

- the gradient is taken with the UNet's prediction held fixed (the example runs the UNet a
  second time with gradients); x0 is then a linear function of the latents, and the nudge
  ε' = ε − ∂L/∂ε (L the scaled distance) is exactly classifier guidance's ε' = ε − √(1−ᾱ)·∇ₓ log p
  with log p = −L (Dhariwal & Nichol 2021, eq. 14) for ε-prediction, and for σ-based samplers
  ε + σ·∇ₓL, which moves x0 by −σ²·∇ₓL: the step the example makes on the latents for LMS;
- the whole picture, centre-cropped and resized to CLIP's input, is embedded (the example's
  `use_cutouts=False`), not random cutouts: the same seed makes the same picture;
- predictions are decoded by the model's tiny preview decoder (TAESD, the entry's `preview`)
  when it has one, else by its VAE.

`steering(scheduler, guide)` replaces the scheduler's `step` for one pipeline call: the
pipelines in the cache are used as they are, and text to image, image to image, Zoom Out and
batches are steered alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

# latents (batch, channels, h, w) → pixels (batch, 3, H, W) in [-1, 1], differentiable
Decode = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class ClipScorer:
    """A CLIP model with what it reads texts and pictures with: `model` a transformers
    CLIPModel, `tokenizer` its tokenizer, `image_size` its input side in pixels,
    `mean`/`std` its pixel normalisation (3 values each, from its image processor)."""

    model: Any
    tokenizer: Any
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device  # type: ignore[no-any-return]

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit CLIP embeddings of `texts`: float32 (len(texts), projection width). Texts longer
        than the CLIP text encoder reads are cut."""
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            features = self.model.get_text_features(input_ids=tokens.input_ids.to(self.device),
                                                    attention_mask=tokens.attention_mask.to(self.device))
        features = getattr(features, "pooler_output", features).float()
        return F.normalize(features, dim=-1)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unit CLIP embeddings of pictures `pixels` (batch, 3, H, W) in [-1, 1], differentiable:
        centre-cropped to a square, resized to `image_size` (bilinear, antialiased) and
        normalised as CLIP's image processor does. Returns float32 (batch, projection width)."""
        parameter = next(self.model.parameters())
        images = (pixels.float() / 2 + 0.5).clamp(0, 1)
        height, width = images.shape[-2:]
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        images = images[..., top:top + side, left:left + side]
        images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                               antialias=True, align_corners=False)
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        images = ((images - mean) / std).to(parameter.device, parameter.dtype)
        features = self.model.get_image_features(pixel_values=images)
        return F.normalize(getattr(features, "pooler_output", features).float(), dim=-1)

    def score(self, pixels: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """The CLIP score of each picture against its text: the cosine similarity of their
        embeddings, float32 (batch,), in [−1, 1]. `pixels` (batch, 3, H, W) in [-1, 1]."""
        with torch.no_grad():
            return (self.image_features(pixels) * self.text_features(texts)).sum(dim=-1)


def load_clip(source: str, device: str, dtype: torch.dtype) -> ClipScorer:
    """The CLIP model, tokenizer and image processor saved at `source` (a hub id or a folder of
    a transformers CLIPModel, e.g. "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"), on `device` in
    `dtype`, in eval mode and frozen. Raises OSError or ValueError when it cannot be loaded."""
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    model: Any = CLIPModel.from_pretrained(source, dtype=dtype)
    model.to(device).eval().requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(source)
    processor = CLIPImageProcessor.from_pretrained(source)
    crop = processor.crop_size or {}
    side = int(crop.get("height") or model.config.vision_config.image_size)
    mean, std = tuple(processor.image_mean), tuple(processor.image_std)
    return ClipScorer(model, tokenizer, side, (mean[0], mean[1], mean[2]), (std[0], std[1], std[2]))


def spherical_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared great-circle distance of unit vectors, per row: 2·arcsin(|x − y| / 2)² (the
    example's `spherical_dist_loss`; 0 for the same direction)."""
    distance: torch.Tensor = (x - y).norm(dim=-1).div(2).arcsin().pow(2).mul(2)
    return distance


def predicted_original(scheduler: Any, model_output: torch.Tensor, timestep: Any,
                       sample: torch.Tensor) -> torch.Tensor:
    """The clean latents x0 a step's noise prediction implies, as diffusers' schedulers compute
    `pred_original_sample`: for σ-based samplers (started from noise × σ_max: Euler, Heun, LMS…)
    from σ of the current step, else from ᾱ at `timestep`; "epsilon" and "v_prediction"
    models (another prediction type: the output is x0). Differentiable in `model_output`."""
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind not in ("epsilon", "v_prediction"):
        return model_output
    if float(scheduler.init_noise_sigma) > 1.0 and hasattr(scheduler, "sigmas"):
        if getattr(scheduler, "step_index", None) is None and hasattr(scheduler, "_init_step_index"):
            scheduler._init_step_index(timestep)  # what its own step() does first
        sigma: torch.Tensor = scheduler.sigmas[scheduler.step_index].to(sample.device, torch.float32)
        if kind == "epsilon":
            return sample - sigma * model_output
        return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
    t = int(timestep.item() if isinstance(timestep, torch.Tensor) else timestep)
    alpha: torch.Tensor = scheduler.alphas_cumprod[t].to(sample.device, torch.float32)
    if kind == "epsilon":
        return (sample - (1 - alpha).sqrt() * model_output) / alpha.sqrt()
    return alpha.sqrt() * sample - (1 - alpha).sqrt() * model_output


@dataclass
class ClipGuide:
    """What steers one pipeline call: `scorer` the CLIP model, `targets` the unit CLIP text
    embedding of each picture's prompt (batch, width), `decode` latents → pixels, `strength`
    N of --clip. `precision` holds the decoder in the dtype the pipeline decodes in for each
    step's decode and gradient (generation.decoding.decoding_precision). `seconds` adds up the
    time spent steering (for the notice of how much slower the run was)."""

    scorer: ClipScorer
    targets: torch.Tensor
    decode: Decode
    strength: float
    seconds: float = 0.0
    steps: int = field(default=0)
    precision: Callable[[], AbstractContextManager[None]] = field(default=nullcontext)

    def nudge(self, scheduler: Any, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor) -> torch.Tensor:
        """The noise prediction `model_output` (batch, channels, h, w) moved along −∂L/∂ε,
        L = strength × the spherical distance between each decoded prediction and its prompt
        (summed over the batch: each picture is steered by its own). Same shape and dtype."""
        started = time.perf_counter()
        with self.precision(), torch.enable_grad():
            output = model_output.detach().float().requires_grad_()
            x0 = predicted_original(scheduler, output, timestep, sample.detach().float())
            features = self.scorer.image_features(self.decode(x0))
            loss = spherical_distance(features, self.targets.to(features.device)).sum() * self.strength
            (grad,) = torch.autograd.grad(loss, output)
        nudged = (model_output.float() - grad).to(model_output.dtype)
        self.seconds += time.perf_counter() - started
        self.steps += 1
        return nudged


@contextmanager
def steering(scheduler: Any, guide: ClipGuide) -> Iterator[None]:
    """Within the block, `scheduler.step(model_output, timestep, sample, …)` first nudges the
    model output by `guide` (ClipGuide.nudge); the scheduler's own step again after it."""
    own = scheduler.step

    def step(model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return own(guide.nudge(scheduler, model_output, timestep, sample), timestep, sample, *args, **kwargs)

    setattr(scheduler, "step", step)  # an instance attribute hides the class's method  # noqa: B010
    try:
        yield
    finally:
        delattr(scheduler, "step")


def vae_decoder(decoder: Any) -> Decode:
    """Latents → pixels in [-1, 1] by an AutoencoderKL or AutoencoderTiny (its scaling and
    shift factors undone first; TAESD's scaling factor is 1: it reads the scaled latents)."""
    config = decoder.config
    scale = float(getattr(config, "scaling_factor", 1.0) or 1.0)
    shift = float(getattr(config, "shift_factor", 0.0) or 0.0)

    def decode(latents: torch.Tensor) -> torch.Tensor:
        parameter = next(decoder.parameters())
        pixels: torch.Tensor = decoder.decode((latents / scale + shift).to(parameter.device, parameter.dtype)).sample
        return pixels

    return decode


def slower_notice(strength: float, total_s: float, steering_s: float) -> str:
    """What a result says of its CLIP guidance: the measured time ratio against the same run
    without it (the run's time less the time spent steering)."""
    plain = max(total_s - steering_s, 1e-6)
    return (f"CLIP guidance --clip {strength:g}: {total_s:.1f} s, {total_s / plain:.1f}× the time without it "
            f"({steering_s:.1f} s of it steering).")
