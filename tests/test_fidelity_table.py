"""Pintor's pictures against the plain diffusers pipelines, one row per (family, job kind), in
float32 and bfloat16 (issue 26, item 11).

Pintor's side runs through `Engine.generate`, the code a worker runs, on a models.toml naming
tiny models; the reference side is the plain diffusers pipeline (spandrel's model for ESRGAN)
loaded with `from_pretrained` from the same folders, in the same dtype, asked for the same
picture: the same prompt, seed, steps, guidance, size and input picture. Every pixel of every
picture must agree within TOLERANCE (2/255).

Where Pintor differs on purpose, the reference is given what the documented formula says
(docs/architecture.md, "Where Pintor's pictures differ from diffusers' on purpose"):

- text to image starts from Pintor's own noise (`initial_noise`: `--chaos`), recomputed here
  from its docstring by `documented_noise`, not imported;
- `::` parts are mixed as embeddings by weight / sum of weights (Kandinsky 2.x: the prior's
  `interpolate` with those weights);
- Zoom Out and Pan paint `generation.outpaint.prepare`'s canvas and mask (the inputs of the
  request) and put the picture's own pixels back through its blend mask;
- Upscale (Creative) repaints the Lanczos ×2 enlargement;
- `(word:1.3)` is compel's weighting (its own syntax, `(word)1.3`, through its public class);
- a scheduler a model entry names is built from the model's scheduler configuration with
  Pintor's changes (DDIM: `clip_sample` off; Kandinsky 2.2: no learned variance); Turbo
  families sample 'trailing' timesteps.

One picture per row (two where `--chaos` is what is tested), 64 px or less (Stable Diffusion:
32), 2 denoising steps (4 at strength 0.6);
each tiny model is loaded once per module and dtype on either side.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from generation.devices import DeviceChoice
from generation.engine import Engine, Generated
from generation.outpaint import PAN_DIRECTIONS, prepare, zoom_extension
from generation.prompt import size_for_aspect
from generation.registry import Registry, load_registry
from generation.request import JobKind, Request
from tests.controlnet_helpers import build_controlnets
from tests.engine_helpers import picture_maker, request, run
from tests.tiny_models import build_esrgan, build_kandinsky3, build_kandinsky21, build_kandinsky22_inpaint

TOLERANCE = 2  # of 255, per pixel and channel
SIDE = 32  # Stable Diffusion rows' pictures (Kandinsky's decoders round sizes up to 64)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
measured: dict[str, int] = {}  # row id → the largest difference seen (printed at the module's end)


# -- the tiny models and the models.toml an admin would write for them -----------------------------


@dataclass
class Setup:
    """The module's tiny models (name → folder or file), the registry naming them, a maker of
    random input pictures, and what is made once: Pintor's engines by dtype, the reference
    pipelines, and Pintor's results by (request, dtype)."""

    models: dict[str, Path]
    registry: Registry
    picture: Callable[..., str]
    engines: dict[str, Engine]
    references: dict[tuple[Any, ...], Any]
    results: dict[tuple[Request, str], Generated]

    def engine(self, dtype: str) -> Engine:
        if dtype not in self.engines:
            device = DeviceChoice("cpu", DTYPES[dtype], f"CPU ({dtype})")
            self.engines[dtype] = Engine(self.registry, device, max_models=32)
        return self.engines[dtype]

    def run(self, req: Request, dtype: str) -> Generated:
        """Pintor's result for `req` (Engine.generate, as a worker runs it), made once."""
        key = (req, dtype)
        if key not in self.results:
            self.results[key] = run(self.engine(dtype), req)[0]
        return self.results[key]

    def reference(self, cls: Any, folder: str | Path, dtype: str, **components: Any) -> Any:
        """The plain diffusers pipeline `cls` from `folder` in `dtype`, loaded once."""
        key = (cls, str(folder), dtype, tuple(sorted(components)))
        if key not in self.references:
            pipe = cls.from_pretrained(folder, dtype=DTYPES[dtype], **components)
            if hasattr(pipe, "set_progress_bar_config"):
                pipe.set_progress_bar_config(disable=True)
            self.references[key] = pipe
        return self.references[key]

    def derived(self, cls: Any, base: Any, folder: str | Path, dtype: str, **components: Any) -> Any:
        """`cls` built with diffusers' `from_pipe` from the plain pipeline `base` (no second load)."""
        key = (cls, base, str(folder), dtype)
        if key not in self.references:
            pipe = cls.from_pipe(self.reference(base, folder, dtype, **components), dtype=DTYPES[dtype])
            pipe.set_progress_bar_config(disable=True)
            self.references[key] = pipe
        return self.references[key]


@pytest.fixture(scope="module")
def setup(tiny_models, tmp_path_factory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("fidelity-table")
    models = dict(tiny_models)
    models["kandinsky22-inpaint"] = build_kandinsky22_inpaint(root / "kandinsky22-inpaint")
    models["kandinsky21-prior"], models["kandinsky21"] = build_kandinsky21(root / "k21-prior", root / "k21")
    models["kandinsky3"] = build_kandinsky3(root / "kandinsky3")
    models["esrgan"] = build_esrgan(root / "esrgan.pth")
    models |= {f"cn-{name}": path for name, path in build_controlnets(tiny_models, root / "controlnets").items()}
    sd, sdxl = models["sd"], models["sdxl"]
    entries = {
        "tiny-sd": f'source = "{sd}"\nfamily = "sd"\nguidance = 5.0',
        "tiny-sd-dpm": f'source = "{sd}"\nfamily = "sd"\nguidance = 5.0\nscheduler = "DPMSolverMultistepScheduler"',
        "tiny-sd-ancestral": f'source = "{sd}"\nfamily = "sd"\nguidance = 5.0\n'
                             'scheduler = "EulerAncestralDiscreteScheduler"',
        "tiny-sd-ddim": f'source = "{sd}"\nfamily = "sd"\nguidance = 5.0\nscheduler = "DDIMScheduler"',
        "tiny-sd-turbo": f'source = "{sd}"\nfamily = "sd-turbo"\nguidance = 0.0',
        "tiny-sdxl": f'source = "{sdxl}"\nfamily = "sdxl"\nguidance = 5.0',
        "tiny-sdxl-turbo": f'source = "{sdxl}"\nfamily = "sdxl-turbo"\nguidance = 0.0',
        "tiny-kandinsky": f'source = "{models["kandinsky22"]}"\nprior = "{models["kandinsky22-prior"]}"\n'
                          f'inpaint = "{models["kandinsky22-inpaint"]}"\nfamily = "kandinsky22"\nguidance = 4.0',
        "tiny-kandinsky-ddim": f'source = "{models["kandinsky22"]}"\nprior = "{models["kandinsky22-prior"]}"\n'
                               'family = "kandinsky22"\nguidance = 4.0\nscheduler = "DDIMScheduler"',
        "tiny-kandinsky21": f'source = "{models["kandinsky21"]}"\nprior = "{models["kandinsky21-prior"]}"\n'
                            'family = "kandinsky21"\nguidance = 4.0',
        "tiny-kandinsky3": f'source = "{models["kandinsky3"]}"\nfamily = "kandinsky3"\nguidance = 3.0',
        "tiny-upscaler": f'source = "{models["upscaler-x4"]}"\nfamily = "upscale-x4"\nguidance = 9.0',
        "tiny-esrgan": f'source = "{models["esrgan"]}"\nfamily = "esrgan"',
    }
    text = 'default = "tiny-sd"\n' + "".join(
        f"\n[models.{name}]\n{body}\nnative_side = 64\nsteps = 2\n" for name, body in entries.items())
    text += f'''
[controlnets.sd-canny]
source = "{models['cn-sd-canny']}"
family = "sd"
kind = "canny"

[controlnets.sdxl-canny]
source = "{models['cn-sdxl-canny']}"
family = "sdxl"
kind = "canny"

[controlnets.kandinsky-depth]
source = "{models['cn-kandinsky22-depth']}"
family = "kandinsky22"
kind = "depth"
estimator = "{models['cn-depth']}"
'''
    path = root / "models.toml"
    path.write_text(text, encoding="utf-8")
    folder = root / "pictures"
    folder.mkdir()
    yield Setup(models, load_registry(path), picture_maker(folder), {}, {}, {})
    if measured:
        print("\nlargest difference per row (of 255):")
        for row, diff in sorted(measured.items()):
            print(f"  {row}: {diff}")


# -- what the reference is given where Pintor differs on purpose ------------------------------------


def documented_noise(req: Request, shape: tuple[int, ...]) -> torch.Tensor:
    """Pintor's starting noise as generation.engine.initial_noise's docstring documents it
    (written again here, not imported): per picture i, the grid seed's noise and picture i's own
    (seed + i + 1,000,003·(i + 1)) mixed by slerp, the own share 0.6 + 0.4·chaos/100.
    Returns (count, *shape), float32."""
    def normal(seed: int) -> torch.Tensor:
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed))

    shared, share = normal(req.seed), 0.6 + 0.4 * req.chaos / 100
    out = []
    for i in range(req.count):
        own = normal(req.seed + i + 1_000_003 * (i + 1))
        if share >= 1:
            out.append(own)
            continue
        omega = math.acos(float((shared * own).sum() / (shared.norm() * own.norm())))
        out.append((math.sin((1 - share) * omega) * shared + math.sin(share * omega) * own) / math.sin(omega))
    return torch.stack(out)


def kandinsky_noise(req: Request, decoder: Any, dtype: str) -> torch.Tensor:
    """Pintor's starting noise (documented_noise) for a Kandinsky 2.1/2.2 decoder's text to
    image: one picture's latents as the decoders size them (diffusers' downscale_height_and_width
    and get_new_h_w with the MoVQ's scale factor s: each side divided by s², rounded up, times s),
    with the channels the decoder's UNet takes (the ControlNet decoder's: the MoVQ's latents)."""
    scale = decoder.movq_scale_factor
    channels = (decoder.movq.config.latent_channels if "Controlnet" in type(decoder).__name__
                else decoder.unet.config.in_channels)
    shape = (channels, -(-req.height // scale**2) * scale, -(-req.width // scale**2) * scale)
    return documented_noise(req, shape).to(DTYPES[dtype])


def generators(req: Request) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(req.seed + i) for i in range(req.count)]


def opened(path: str, size: tuple[int, int] | None = None) -> Image.Image:
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    return rgb if size is None or rgb.size == size else rgb.resize(size, Image.Resampling.LANCZOS)


def mixed(pipe: Any, parts: tuple[tuple[str, float], ...], sdxl: bool = False) -> dict[str, torch.Tensor]:
    """`::` parts as the docs say: each part's prompt embeddings (and SDXL's pooled ones) times
    weight / sum of weights, added; the negative ones those of the empty negative prompt."""
    total = sum(w for _, w in parts)
    encoded = [pipe.encode_prompt(prompt=text, device="cpu", num_images_per_prompt=1,
                                  do_classifier_free_guidance=True) for text, _ in parts]
    out = {"prompt_embeds": sum(e[0] * (w / total) for e, (_, w) in zip(encoded, parts, strict=True)),
           "negative_prompt_embeds": encoded[0][1]}
    if sdxl:
        out |= {"pooled_prompt_embeds": sum(e[2] * (w / total) for e, (_, w) in zip(encoded, parts, strict=True)),
                "negative_pooled_prompt_embeds": encoded[0][3]}
    return out


# -- the rows ----------------------------------------------------------------------------------------

# Each row: (Pintor's request, the reference's pictures) from the setup and a dtype.
Row = Callable[[Setup, str], tuple[Request, list[Image.Image]]]
ROWS: dict[tuple[str, str], Row] = {}


def row(family: str, kind: str) -> Callable[[Row], Row]:
    def register(make: Row) -> Row:
        ROWS[(family, kind)] = make
        return make
    return register


SD_CLASSES = {"sd": "StableDiffusion", "sdxl": "StableDiffusionXL"}


def _sd_text(s: Setup, dtype: str, model: str, prompt: str, *, folder: str = "sd", scheduler: str | None = None,
             spacing: str | None = None, **changes: Any) -> tuple[Request, list[Image.Image]]:
    import diffusers

    req = request(s.registry, f"{prompt} --model {model} --seed 7",
                  **({"count": 1, "width": SIDE, "height": SIDE} | changes))
    cls = getattr(diffusers, f"{SD_CLASSES[folder]}Pipeline")
    pipe = s.reference(cls, s.models[folder], dtype, **({"safety_checker": None} if folder == "sd" else {}))
    if scheduler or spacing:
        config = dict(pipe.scheduler.config) | ({"timestep_spacing": spacing} if spacing else {})
        if scheduler == "DDIMScheduler":
            config["clip_sample"] = False  # Pintor's choice for latents (generation.schedulers.replacement)
        pipe = cls.from_pipe(pipe, scheduler=getattr(diffusers, scheduler or type(pipe.scheduler).__name__)
                             .from_config(config), dtype=DTYPES[dtype])
        pipe.set_progress_bar_config(disable=True)
    latents = documented_noise(req, (4, req.height // 8, req.width // 8)).to(DTYPES[dtype])
    kwargs: dict[str, Any] = {}
    if len(req.parts) > 1:
        kwargs = mixed(pipe, req.parts, sdxl=folder == "sdxl")
    else:
        kwargs["prompt"] = req.parts[0][0]
    images = pipe(**kwargs, latents=latents, num_inference_steps=req.steps, guidance_scale=req.guidance,
                  generator=generators(req), width=req.width, height=req.height,
                  num_images_per_prompt=req.count).images
    return req, images


for _family, _model, _folder in (("sd", "tiny-sd", "sd"), ("sdxl", "tiny-sdxl", "sdxl")):
    row(_family, "text to image")(partial(_sd_text, model=_model, prompt="a red fox in snow", folder=_folder))
    row(_family, "`::` mixing")(partial(_sd_text, model=_model, prompt="a red fox::2 deep snow::1", folder=_folder))
row("sd", "--chaos 50, two pictures")(lambda s, d: _sd_text(s, d, "tiny-sd", "a red fox --chaos 50", count=2))
row("sd-turbo", "text to image")(
    lambda s, d: _sd_text(s, d, "tiny-sd-turbo", "a red fox", spacing="trailing"))
row("sdxl-turbo", "text to image")(
    lambda s, d: _sd_text(s, d, "tiny-sdxl-turbo", "a red fox", folder="sdxl", spacing="trailing"))
for _name, _scheduler in (("dpm", "DPMSolverMultistepScheduler"), ("ancestral", "EulerAncestralDiscreteScheduler"),
                          ("ddim", "DDIMScheduler")):
    row("sd", f"scheduler {_scheduler}")(
        partial(_sd_text, model=f"tiny-sd-{_name}", prompt="a red fox", scheduler=_scheduler))


def _sd_emphasis(s: Setup, dtype: str, model: str, folder: str) -> tuple[Request, list[Image.Image]]:
    """`(words:1.3)`: the reference is compel's own prompt syntax (`(words)1.3`) through its
    public Compel class; SDXL's pooled embedding is the plain words' (compel does not weight it)."""
    import diffusers
    from compel import Compel, ReturnedEmbeddingsType

    req = request(s.registry, f"a (red fox:1.3) in snow --model {model} --seed 7", count=1, width=SIDE, height=SIDE)
    cls = getattr(diffusers, f"{SD_CLASSES[folder]}Pipeline")
    pipe = s.reference(cls, s.models[folder], dtype, **({"safety_checker": None} if folder == "sd" else {}))
    plain = pipe.encode_prompt(prompt="a red fox in snow", device="cpu", num_images_per_prompt=1,
                               do_classifier_free_guidance=True)
    if folder == "sdxl":
        compel = Compel(tokenizer=[pipe.tokenizer, pipe.tokenizer_2],
                        text_encoder=[pipe.text_encoder, pipe.text_encoder_2],
                        returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
                        requires_pooled=[False, True], truncate_long_prompts=True)
        weighted, _ = compel("a (red fox)1.3 in snow")
        kwargs = {"pooled_prompt_embeds": plain[2], "negative_pooled_prompt_embeds": plain[3]}
    else:
        compel = Compel(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, truncate_long_prompts=True)
        weighted, kwargs = compel("a (red fox)1.3 in snow"), {}
    latents = documented_noise(req, (4, req.height // 8, req.width // 8)).to(DTYPES[dtype])
    images = pipe(prompt_embeds=weighted.to(DTYPES[dtype]), negative_prompt_embeds=plain[1], **kwargs,
                  latents=latents, num_inference_steps=req.steps, guidance_scale=req.guidance,
                  generator=generators(req), width=req.width, height=req.height).images
    return req, images


row("sd", "emphasis (word:1.3)")(lambda s, d: _sd_emphasis(s, d, "tiny-sd", "sd"))
row("sdxl", "emphasis (word:1.3)")(lambda s, d: _sd_emphasis(s, d, "tiny-sdxl", "sdxl"))


def _sd_image_to_image(s: Setup, dtype: str, model: str, folder: str, kind: JobKind,
                       prompt: str = "a red fox") -> tuple[Request, list[Image.Image]]:
    """A variation (V), Remix (the same with new words) or an SD image prompt: image to image at
    the request's strength, the picture at the request's size."""
    import diffusers

    picture = s.picture(SIDE, SIDE, seed=1)
    req = request(s.registry, f"{prompt} --model {model} --seed 11", count=1, kind=kind, init_image=picture,
                  strength=0.6, steps=4, width=SIDE, height=SIDE)
    pipe = s.derived(getattr(diffusers, f"{SD_CLASSES[folder]}Img2ImgPipeline"),
                     getattr(diffusers, f"{SD_CLASSES[folder]}Pipeline"), s.models[folder], dtype,
                     **({"safety_checker": None} if folder == "sd" else {}))
    images = pipe(prompt=req.parts[0][0], image=opened(picture, (req.width, req.height)), strength=req.strength,
                  num_inference_steps=req.steps, guidance_scale=req.guidance, generator=generators(req)).images
    return req, images


row("sd", "variation")(lambda s, d: _sd_image_to_image(s, d, "tiny-sd", "sd", JobKind.VARIATION))
row("sd", "remix / image prompt")(
    lambda s, d: _sd_image_to_image(s, d, "tiny-sd", "sd", JobKind.IMAGINE, "a grey wolf at night"))
row("sdxl", "variation")(lambda s, d: _sd_image_to_image(s, d, "tiny-sdxl", "sdxl", JobKind.VARIATION))


def _sd_controlnet(s: Setup, dtype: str, model: str, folder: str, controlnet: str) -> tuple[Request, list[Image.Image]]:
    """A ControlNet (canny) job: the reference is the family's ControlNet pipeline given the
    control image Pintor made (returned with the result: generation/control.py's work is the
    request's preprocessing, held by test_controlnet.py)."""
    import diffusers

    req = request(s.registry, f"a red fox --model {model} --seed 5", count=1, control=s.picture(SIDE, SIDE, seed=2),
                  control_kind="canny", controlnet=controlnet, width=SIDE, height=SIDE)
    control = s.run(req, dtype).control
    net = s.reference(diffusers.ControlNetModel, s.models[f"cn-{controlnet}"], dtype)
    cls = getattr(diffusers, f"{SD_CLASSES[folder]}ControlNetPipeline")
    key = (cls, folder, dtype, "controlnet")
    if key not in s.references:
        s.references[key] = cls.from_pretrained(s.models[folder], controlnet=net, dtype=DTYPES[dtype],
                                                **({"safety_checker": None} if folder == "sd" else {}))
        s.references[key].set_progress_bar_config(disable=True)
    latents = documented_noise(req, (4, req.height // 8, req.width // 8)).to(DTYPES[dtype])
    images = s.references[key](prompt=req.parts[0][0], image=control, controlnet_conditioning_scale=req.control_weight,
                               latents=latents, num_inference_steps=req.steps, guidance_scale=req.guidance,
                               generator=generators(req), width=req.width, height=req.height).images
    return req, images


row("sd", "ControlNet canny")(lambda s, d: _sd_controlnet(s, d, "tiny-sd", "sd", "sd-canny"))
row("sdxl", "ControlNet canny")(lambda s, d: _sd_controlnet(s, d, "tiny-sdxl", "sdxl", "sdxl-canny"))


def _outpainted(req: Request, pipe: Any, embeds: dict[str, Any], **extra: Any) -> list[Image.Image]:
    """The reference of Zoom Out / Pan: the inpainting pipeline on outpaint.prepare's canvas and
    mask, the picture's own pixels put back through its blend mask (docs/architecture.md)."""
    assert req.init_image is not None and req.outpaint is not None
    canvas, mask, blend = prepare(opened(req.init_image), req.outpaint, (req.width, req.height))
    out = pipe(image=[canvas], mask_image=[mask], width=req.width, height=req.height,
               num_inference_steps=req.steps, guidance_scale=req.guidance, generator=generators(req),
               **embeds, **extra).images
    return [Image.composite(image.convert("RGB").resize((req.width, req.height)), canvas, blend) for image in out]


def _sd_outpaint(s: Setup, dtype: str, extension: tuple[float, float, float, float],
                 size: tuple[int, int], folder: str = "sd") -> tuple[Request, list[Image.Image]]:
    import diffusers

    picture = s.picture(SIDE, SIDE, seed=3)
    req = request(s.registry, f"a lighthouse --model tiny-{folder} --seed 9", count=1, kind=JobKind.OUTPAINT,
                  init_image=picture, outpaint=extension, width=size[0], height=size[1], strength=1.0)
    pipe = s.derived(getattr(diffusers, f"{SD_CLASSES[folder]}InpaintPipeline"),
                     getattr(diffusers, f"{SD_CLASSES[folder]}Pipeline"), s.models[folder], dtype,
                     **({"safety_checker": None} if folder == "sd" else {}))
    return req, _outpainted(req, pipe, {"prompt": req.parts[0][0]}, strength=1.0)


row("sd", "zoom out 2x")(lambda s, d: _sd_outpaint(s, d, zoom_extension(2.0), (48, 48)))
# (a zoomed picture must keep more than its two seams, SEAM_PX each: 48 px, not 32)
row("sdxl", "zoom out 2x")(lambda s, d: _sd_outpaint(s, d, zoom_extension(2.0), (48, 48), "sdxl"))
row("sd", "pan left")(lambda s, d: _sd_outpaint(s, d, PAN_DIRECTIONS["left"],
                                               size_for_aspect((3 * SIDE, 2 * SIDE), SIDE, multiple=8)))


def _x4_upscale(s: Setup, dtype: str) -> tuple[Request, list[Image.Image]]:
    import diffusers

    picture = s.picture(SIDE // 4, SIDE // 4, seed=4)
    req = request(s.registry, "a red fox --seed 3", kind=JobKind.UPSCALE, model="tiny-upscaler",
                  init_image=picture, count=1, strength=0.0, guidance=9.0)
    pipe = s.reference(diffusers.StableDiffusionUpscalePipeline, s.models["upscaler-x4"], dtype)
    image = pipe(prompt="a red fox", image=opened(picture), num_inference_steps=req.steps,
                 guidance_scale=req.guidance, generator=torch.Generator().manual_seed(req.seed)).images[0]
    return req, [image]


def _esrgan_upscale(s: Setup, dtype: str) -> tuple[Request, list[Image.Image]]:
    """ESRGAN-family ×2 (Upscale (Subtle)): spandrel's model on the whole picture, as its
    documentation runs one, in bfloat16 where the architecture supports it."""
    from spandrel import ModelLoader

    picture = s.picture(32, 32, seed=5)
    req = request(s.registry, "a red fox --seed 3", kind=JobKind.UPSCALE, model="tiny-esrgan",
                  init_image=picture, count=1, strength=0.0)
    key = ("esrgan", dtype)
    if key not in s.references:
        model = ModelLoader().load_from_file(s.models["esrgan"]).eval()
        if dtype == "bfloat16" and model.supports_bfloat16:
            model.bfloat16()
        s.references[key] = model
    model = s.references[key]
    pixels = torch.from_numpy(np.asarray(opened(picture), dtype=np.float32) / 255).permute(2, 0, 1).unsqueeze(0)
    with torch.no_grad():
        out = model(pixels.to(model.dtype))[0].float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return req, [Image.fromarray(out.permute(1, 2, 0).numpy())]


def _creative_upscale(s: Setup, dtype: str) -> tuple[Request, list[Image.Image]]:
    import diffusers

    picture = s.picture(SIDE // 2, SIDE // 2, seed=6)
    req = request(s.registry, "a lighthouse --model tiny-sd --seed 5", kind=JobKind.UPSCALE, upscaler="resample",
                  init_image=picture, count=1, strength=0.5, steps=4)
    pipe = s.derived(diffusers.StableDiffusionImg2ImgPipeline, diffusers.StableDiffusionPipeline, s.models["sd"], dtype,
                     safety_checker=None)
    enlarged = opened(picture).resize((SIDE, SIDE), Image.Resampling.LANCZOS)
    image = pipe(prompt="a lighthouse", image=[enlarged], strength=req.strength, num_inference_steps=req.steps,
                 guidance_scale=req.guidance, generator=[torch.Generator().manual_seed(req.seed)]).images[0]
    return req, [image]


row("upscale-x4", "upscale (subtle)")(_x4_upscale)
row("esrgan", "upscale (subtle)")(_esrgan_upscale)
row("sd", "upscale (creative)")(_creative_upscale)


def _kandinsky22(s: Setup, dtype: str, kind: str) -> tuple[Request, list[Image.Image]]:
    """Kandinsky 2.2: the prior's image embedding (one text: the prior's call; texts and
    pictures: `interpolate` with weights adding up to 1), then the decoder."""
    import diffusers

    if kind == "scheduler DDIMScheduler":
        # the decoder's DDIM without the DDPM decoder's variance_type (Pintor's rule for
        # samplers that cannot use a learned variance: generation.schedulers.replacement)
        req = request(s.registry, "a red fox --model tiny-kandinsky-ddim --seed 4", count=1)
        prior = s.reference(diffusers.KandinskyV22PriorPipeline, s.models["kandinsky22-prior"], dtype)
        out = prior("a red fox", generator=torch.Generator().manual_seed(req.seed))
        plain = s.reference(diffusers.KandinskyV22Pipeline, s.models["kandinsky22"], dtype)
        config = {k: v for k, v in plain.scheduler.config.items() if k != "variance_type"}
        decoder: Any = diffusers.KandinskyV22Pipeline(unet=plain.unet, movq=plain.movq,
                                                 scheduler=diffusers.DDIMScheduler.from_config(config))
        decoder.set_progress_bar_config(disable=True)
        images = decoder(image_embeds=out.image_embeds, negative_image_embeds=out.negative_image_embeds,
                         num_inference_steps=req.steps, guidance_scale=req.guidance, generator=generators(req),
                         height=req.height, width=req.width, latents=kandinsky_noise(req, decoder, dtype)).images
        return req, images

    photo, other = s.picture(64, 64, seed=7), s.picture(64, 64, seed=8)
    base = request(s.registry, "a red fox --model tiny-kandinsky --seed 4", count=1)
    prior = s.reference(diffusers.KandinskyV22PriorPipeline, s.models["kandinsky22-prior"], dtype)
    items: list[Any]
    if kind == "text to image":
        req = base
        out = prior("a red fox", generator=torch.Generator().manual_seed(req.seed))
    else:
        if kind == "`::` mixing":
            req = request(s.registry, "a red fox::2 deep snow::1 --model tiny-kandinsky --seed 4", count=1)
            items, weights = ["a red fox", "deep snow"], [2 / 3, 1 / 3]
        elif kind == "/blend":  # two pictures, no text, as /blend sends them (weights 1 and 1)
            req = base.replace(kind=JobKind.BLEND, parts=(), images=(photo, other), image_weights=(1.0, 1.0))
            items, weights = [opened(photo), opened(other)], [0.5, 0.5]
        else:  # a variation, an image prompt, Zoom Out: the picture's embedding with the words
            items, weights = ["a red fox", opened(photo)], [0.5, 0.5]
            req = base.replace(images=(photo,), image_weights=(1.0,))
        out = prior.interpolate(items, weights, negative_prompt="", generator=torch.Generator().manual_seed(req.seed))
    embeds = {"image_embeds": out.image_embeds, "negative_image_embeds": out.negative_image_embeds}
    common = dict(num_inference_steps=req.steps, guidance_scale=req.guidance, generator=generators(req))
    if kind == "variation":
        req = req.replace(kind=JobKind.VARIATION, init_image=photo, strength=0.6, steps=4)
        decoder = s.derived(diffusers.KandinskyV22Img2ImgPipeline, diffusers.KandinskyV22Pipeline,
                            s.models["kandinsky22"], dtype)
        common["num_inference_steps"] = req.steps
        images = decoder(**embeds, image=[opened(photo)], strength=req.strength, height=req.height,
                         width=req.width, **common).images
    elif kind == "zoom out 2x":
        req = req.replace(kind=JobKind.OUTPAINT, init_image=photo, outpaint=zoom_extension(2.0), strength=1.0)
        decoder = s.reference(diffusers.KandinskyV22InpaintPipeline, s.models["kandinsky22-inpaint"], dtype)
        images = _outpainted(req, decoder, embeds)
    elif kind == "ControlNet depth":
        req = req.replace(control=photo, control_kind="depth", controlnet="kandinsky-depth")
        control = s.run(req, dtype).control
        assert control is not None
        hint = torch.from_numpy(np.asarray(control, dtype=np.float32) / 255).permute(2, 0, 1).unsqueeze(0)
        decoder = s.reference(diffusers.KandinskyV22ControlnetPipeline, s.models["cn-kandinsky22-depth"], dtype)
        images = decoder(**embeds, hint=hint.to(DTYPES[dtype]), height=req.height, width=req.width,
                         latents=kandinsky_noise(req, decoder, dtype), **common).images
    else:
        decoder = s.reference(diffusers.KandinskyV22Pipeline, s.models["kandinsky22"], dtype)
        images = decoder(**embeds, height=req.height, width=req.width, latents=kandinsky_noise(req, decoder, dtype),
                         **common).images
    return req, images


# (an image prompt is the variation's prior input, a text and a picture, without the picture to
# start from: the same two calls as "variation" and "text to image" make; no row of its own)
for _kind in ("text to image", "`::` mixing", "/blend", "variation", "zoom out 2x", "ControlNet depth",
              "scheduler DDIMScheduler"):
    row("kandinsky22", _kind)(partial(_kandinsky22, kind=_kind))


def _kandinsky21(s: Setup, dtype: str, kind: str) -> tuple[Request, list[Image.Image]]:
    """Kandinsky 2.1: the prior (texts and pictures mixed by `interpolate`, weights adding up to
    1), then the decoder, which reads the text as well."""
    import diffusers

    photo, other = s.picture(64, 64, seed=10), s.picture(64, 64, seed=11)
    req = request(s.registry, "a red fox --model tiny-kandinsky21 --seed 4", count=1)
    prior = s.reference(diffusers.KandinskyPriorPipeline, s.models["kandinsky21-prior"], dtype)
    generator = torch.Generator().manual_seed(req.seed)
    if kind == "/blend":  # a text and two pictures, each weighing 1
        req = req.replace(kind=JobKind.BLEND, images=(photo, other), image_weights=(1.0, 1.0))
        out = prior.interpolate(["a red fox", opened(photo), opened(other)], [1 / 3] * 3, negative_prompt="",
                                generator=generator)
    elif kind == "variation":
        req = req.replace(kind=JobKind.VARIATION, images=(photo,), image_weights=(1.0,), init_image=photo,
                          strength=0.6, steps=4)
        out = prior.interpolate(["a red fox", opened(photo)], [0.5, 0.5], negative_prompt="", generator=generator)
    else:
        out = prior("a red fox", generator=generator)
    common = dict(prompt="a red fox", image_embeds=out.image_embeds, negative_image_embeds=out.negative_image_embeds,
                  num_inference_steps=req.steps, guidance_scale=req.guidance, generator=generators(req),
                  height=req.height, width=req.width)
    if kind == "variation":
        decoder = s.derived(diffusers.KandinskyImg2ImgPipeline, diffusers.KandinskyPipeline, s.models["kandinsky21"],
                            dtype)
        return req, decoder(**common, image=[opened(photo)], strength=req.strength).images
    decoder = s.reference(diffusers.KandinskyPipeline, s.models["kandinsky21"], dtype)
    return req, decoder(**common, latents=kandinsky_noise(req, decoder, dtype)).images


def _kandinsky3(s: Setup, dtype: str, kind: str) -> tuple[Request, list[Image.Image]]:
    import diffusers

    req = request(s.registry, "a red fox --model tiny-kandinsky3 --seed 4", count=1)
    common = dict(prompt="a red fox", guidance_scale=req.guidance, generator=generators(req))
    if kind == "`::` mixing":
        # each part's T5 embeddings (128 tokens, padding zeroed) × weight / sum of weights, the
        # attention mask every token any part has; the negative diffusers' own for no negative
        # prompt (zeros, nothing attended)
        req = request(s.registry, "a red fox::2 deep snow::1 --model tiny-kandinsky3 --seed 4", count=1)
        pipe = s.reference(diffusers.Kandinsky3Pipeline, s.models["kandinsky3"], dtype)
        embeds, masks = [], []
        for text, _ in req.parts:
            tokens = pipe.tokenizer(text, padding="max_length", max_length=128, truncation=True, return_tensors="pt")
            with torch.no_grad():
                hidden = pipe.text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
            embeds.append(hidden * tokens.attention_mask.unsqueeze(2))
            masks.append(tokens.attention_mask)
        total = sum(w for _, w in req.parts)
        prompt_embeds = sum(e * (w / total) for e, (_, w) in zip(embeds, req.parts, strict=True))
        mask = torch.stack(masks).amax(dim=0)
        latents = documented_noise(req, (4, req.height // 8, req.width // 8)).to(DTYPES[dtype])
        images = pipe(prompt_embeds=prompt_embeds, attention_mask=mask,
                      negative_prompt_embeds=torch.zeros_like(prompt_embeds),
                      negative_attention_mask=torch.zeros_like(mask), latents=latents,
                      num_inference_steps=req.steps, guidance_scale=req.guidance, generator=generators(req),
                      height=req.height, width=req.width).images
        return req, images
    if kind == "variation":
        photo = s.picture(64, 64, seed=9)
        req = req.replace(kind=JobKind.VARIATION, init_image=photo, strength=0.6, steps=4)
        pipe = s.derived(diffusers.Kandinsky3Img2ImgPipeline, diffusers.Kandinsky3Pipeline, s.models["kandinsky3"],
                         dtype)
        images = pipe(**common, image=opened(photo), strength=req.strength, num_inference_steps=req.steps).images
    else:
        pipe = s.reference(diffusers.Kandinsky3Pipeline, s.models["kandinsky3"], dtype)
        latents = documented_noise(req, (4, req.height // 8, req.width // 8)).to(DTYPES[dtype])
        images = pipe(**common, latents=latents, num_inference_steps=req.steps, height=req.height,
                      width=req.width).images
    return req, images


for _kind in ("text to image", "/blend", "variation"):
    row("kandinsky21", _kind)(partial(_kandinsky21, kind=_kind))
row("kandinsky3", "text to image")(lambda s, d: _kandinsky3(s, d, "text to image"))
row("kandinsky3", "variation")(lambda s, d: _kandinsky3(s, d, "variation"))
row("kandinsky3", "`::` mixing")(lambda s, d: _kandinsky3(s, d, "`::` mixing"))


# -- the test ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize(("family", "kind"), list(ROWS), ids=[f"{f}: {k}" for f, k in ROWS])
def test_pintor_paints_what_diffusers_paints(setup, family, kind, dtype):
    """Pintor's pictures (through the engine a worker runs) equal the plain pipeline's for the
    same request, within TOLERANCE per pixel and channel."""
    req, reference = ROWS[(family, kind)](setup, dtype)
    ours = setup.run(req, dtype).images
    assert len(ours) == len(reference) == req.count
    worst = 0
    for mine, theirs in zip(ours, reference, strict=True):
        assert mine.size == theirs.size
        diff = np.abs(np.asarray(mine.convert("RGB"), dtype=np.int16)
                      - np.asarray(theirs.convert("RGB"), dtype=np.int16))
        worst = max(worst, int(diff.max()))
    measured[f"{family}: {kind} [{dtype}]"] = worst
    # Pintor ran the request in that dtype (every module it loaded for the model)
    loaded = setup.engine(dtype).pipelines._models.get(req.model, {}).values()
    modules = [m for pipe in loaded  # a diffusers pipeline's modules, or a spandrel model (ESRGAN)
               for m in (getattr(pipe, "components", {}) or {"model": getattr(pipe, "model", None)}).values()
               if isinstance(m, torch.nn.Module)]
    kinds = {p.dtype for module in modules for p in module.parameters() if p.is_floating_point()}
    assert kinds == {DTYPES[dtype]}, kinds
    # not a picture of one colour, where anything would agree
    assert np.asarray(ours[0]).std() > 1
    assert worst <= TOLERANCE, f"{family} {kind} in {dtype}: {worst}/255 apart"
