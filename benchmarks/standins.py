"""True-cost stand-ins for benchmarks: the real SD 1.5 and SDXL architectures (their published
configs: layer counts and widths) with random weights, built in code. Nothing is downloaded, so
the benchmarks run offline; the pictures are noise, but every step costs what a real model's does.

Also the two sides every benchmark compares: one job through Pintor's whole path
(`Studio.imagine` → queue → worker process → PNG files → image rows) and one plain diffusers call
doing the same work.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.tiny_models import build_sd, build_sdxl, make_clip_tokenizer  # noqa: E402

# the schedulers the two models ship with (their scheduler_config.json)
_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
              steps_offset=1)


def _clip(hidden: int, layers: int, heads: int, *, projection: bool, act: str) -> Any:
    tokenizer = make_clip_tokenizer()  # a small byte-level vocabulary: the encoder's cost is its layers
    config = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=4 * hidden,
                            num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                            hidden_act=act, projection_dim=hidden if projection else 768,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    model = CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)
    return tokenizer, model


def _vae(sample_size: int, scaling_factor: float, force_upcast: bool) -> AutoencoderKL:
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         block_out_channels=(128, 256, 512, 512), sample_size=sample_size,
                         scaling_factor=scaling_factor, force_upcast=force_upcast)


def sd15(device: str = "cpu") -> StableDiffusionPipeline:
    """Stable Diffusion 1.5's architecture (UNet 859.5 M parameters, CLIP ViT-L/14 text encoder
    123 M, VAE 83.7 M), random weights, built on `device` in fp32."""
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
        tokenizer, text_encoder = _clip(768, 12, 12, projection=False, act="quick_gelu")
        vae = _vae(512, 0.18215, force_upcast=True)
    scheduler = PNDMScheduler(**_BETAS, skip_prk_steps=True, set_alpha_to_one=False)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def sdxl(device: str = "cpu") -> StableDiffusionXLPipeline:
    """SDXL 1.0 base's architecture (UNet 2.57 G parameters, CLIP ViT-L + OpenCLIP ViT-bigG text
    encoders 123 M + 695 M, VAE 83.7 M; its VAE overflows in fp16 and is upcast, force_upcast),
    random weights, built on `device` in fp32 (about 14 GB: build it on the GPU)."""
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
        tokenizer, text_encoder = _clip(768, 12, 12, projection=False, act="quick_gelu")
        tokenizer_2, text_encoder_2 = _clip(1280, 32, 20, projection=True, act="gelu")
        vae = _vae(1024, 0.13025, force_upcast=True)
    scheduler = EulerDiscreteScheduler(**_BETAS, timestep_spacing="leading")
    return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
                                     add_watermarker=False)


def taesd(device: str = "cpu") -> Any:
    """TAESD's architecture (diffusers' AutoencoderTiny with its default config: what
    madebyollin/taesd and taesdxl are), random weights."""
    torch.manual_seed(0)
    with torch.device(device):
        return AutoencoderTiny()


@dataclass(frozen=True)
class Model:
    """A stand-in saved as a pipeline folder, with what a registry entry needs."""

    name: str
    family: str
    folder: Path
    side: int  # native side in pixels
    params_m: float  # UNet parameters, millions


def save(kind: str, folder: Path, *, quick: bool, device: str, dtype: torch.dtype) -> Model:
    """Build stand-in `kind` ("sd15" or "sdxl") and save it to `folder` in `dtype`. `quick`: the
    tests' tiny pipelines of the same families (64², a few MB) instead of the real sizes."""
    if quick:
        (build_sd if kind == "sd15" else build_sdxl)(folder)
        pipe: Any = (StableDiffusionPipeline if kind == "sd15" else StableDiffusionXLPipeline).from_pretrained(folder)
        side = 64
    else:
        pipe = sd15(device) if kind == "sd15" else sdxl(device)
        if dtype != torch.float32:
            pipe.to(dtype=dtype)
        pipe.save_pretrained(folder)
        side = 512 if kind == "sd15" else 1024
    params = sum(p.numel() for p in pipe.unet.parameters()) / 1e6
    del pipe
    return Model(name=kind, family="sd" if kind == "sd15" else "sdxl", folder=folder, side=side, params_m=params)


def write_registry(path: Path, models: list[Model], *, steps: int, guidance: float) -> Path:
    """A models.toml naming the stand-ins (default: the first), as an admin would write it."""
    lines = [f'default = "{models[0].name}"']
    for m in models:
        lines += [f"[models.{m.name}]", f'source = "{m.folder}"', f'family = "{m.family}"',
                  f"native_side = {m.side}", f"steps = {steps}", f"guidance = {guidance}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def plain_call(pipe: Any, *, prompt: str, side: int, steps: int, guidance: float, count: int, seed: int,
               device: str) -> float:
    """Seconds of one plain diffusers call making `count` pictures of side² pixels from `prompt`
    (text encoding, `steps` guided steps, VAE decode, PIL images): the work of one Pintor job."""
    sync(device)
    start = time.perf_counter()
    pipe(prompt=prompt, negative_prompt=None, num_images_per_prompt=count, num_inference_steps=steps,
         guidance_scale=guidance, height=side, width=side,
         generator=[torch.Generator().manual_seed(seed + i) for i in range(count)])
    sync(device)
    return time.perf_counter() - start


def load_plain(folder: Path, family: str, device: str, dtype: torch.dtype) -> Any:
    """The saved stand-in as a plain diffusers pipeline on `device`, as a user of diffusers loads it,
    with UNet and VAE in channels-last memory format on CUDA as Pintor's worker has them (so that
    a comparison shows Pintor's machinery, not a memory format)."""
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipe: Any = cls.from_pretrained(folder, dtype=dtype)
    pipe.to(device)
    if device == "cuda":
        for module in (pipe.unet, pipe.vae):
            module.to(memory_format=torch.channels_last)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class WholePath:
    """Pintor's whole path, started once (database, Studio, LocalQueue and its worker process
    with the model loaded): `job(prompt)` times one `Studio.imagine` until its Done event, which
    the Studio passes on after the PNG files are written and the image rows committed."""

    def __init__(self, root: Path, registry: Path, *, device: str, dtype: str = "auto",
                 compile_mode: str | None = None, offload: str = "none"):
        from bot.settings import Settings

        # `_env_file` (no .env file read) is pydantic-settings' own keyword, unknown to its types
        values: dict[str, Any] = {"_env_file": None, "database_url": f"sqlite+aiosqlite:///{root / 'pintor.db'}",
                                  "pintor_data_dir": root / "data", "pintor_models": registry,
                                  "pintor_device": device, "pintor_dtype": dtype, "pintor_compile": compile_mode,
                                  "pintor_offload": offload}
        self.settings = Settings(**values)
        self.loop = asyncio.new_event_loop()
        self._context: Any = None
        self.studio: Any = None

    def __enter__(self) -> WholePath:
        from bot.wiring import open_studio

        self._context = open_studio(self.settings)
        self.studio = self.loop.run_until_complete(self._context.__aenter__())
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.run_until_complete(self._context.__aexit__(None, None, None))
        self.loop.close()

    @property
    def worker_info(self) -> dict[str, Any]:
        """What the worker said of its device ("device", "device_name", "dtype", "offload")."""
        return dict(self._worker().device)

    def _worker(self) -> Any:
        [state] = self.loop.run_until_complete(self.studio.workers())  # the one local worker
        return state

    def job(self, prompt: str) -> float:
        """Seconds from Studio.imagine to the job's Done event (files and rows stored)."""
        from bot.intake import Member
        from generation.events import Done

        async def one() -> float:
            start = time.perf_counter()
            submitted = await self.studio.imagine(Member(0, "benchmark"), prompt)
            async for event in submitted.events:
                if not isinstance(event, Done) and type(event).__name__ in ("Failed", "Cancelled", "Interrupted"):
                    raise RuntimeError(f"job failed: {event}")
                if isinstance(event, Done):
                    return time.perf_counter() - start
            raise RuntimeError("the job's events ended without Done")

        return self.loop.run_until_complete(one())

    def ready(self, timeout_s: float = 900) -> None:
        """Wait until the worker has started (and, with compile, warmed up)."""
        async def wait() -> None:
            deadline = time.monotonic() + timeout_s
            while not (state := (await self.studio.workers())[0]).ready:
                if state.error:
                    raise RuntimeError(f"worker: {state.error}")
                if time.monotonic() > deadline:
                    raise TimeoutError("the worker did not start")
                await asyncio.sleep(0.05)

        self.loop.run_until_complete(wait())
