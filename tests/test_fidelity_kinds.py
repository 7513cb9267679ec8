"""Kinds of fault where Pintor's pictures left diffusers' reference behaviour (issue 26, items
4–10, 12): pipelines built from another keep their dtype and device; each family's sampling
recipe is enforced (Turbo: 'trailing'); Pintor's own VAE decodes follow the pipeline's upcast
rule; Kandinsky's prior mixes weights that add up to 1 and draws one image embedding per
picture, which --chaos spreads by a documented formula; a negative `::` weight is less of
it, on the negative side, as MidJourney's `--no`; the safety checker runs on the
pipeline's device, the x4 upscaler at its model card's settings; every job that repaints uses
the job's LoRAs and embeddings. On the tiny pipelines, on the CPU (bfloat16 where dtypes matter)."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny, KandinskyV22PriorPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

from generation.clip_guidance import ClipGuide, vae_decoder
from generation.decoding import decoding_precision, upcasts
from generation.devices import DeviceChoice, choose_device
from generation.engine import Engine, prior_weights
from generation.families import family_of
from generation.pipelines import PipelineCache, derived
from generation.registry import BUILTIN_MODELS, RegistryError, load_registry
from generation.safety import SafetyChecker
from generation.schedulers import following_recipe
from generation.upscale import RESAMPLE
from tests.adapter_helpers import build_additions, registry_text
from tests.controlnet_helpers import build_controlnets, write_controlnet_registry
from tests.engine_helpers import picture_maker, pixels, request, run
from tests.tiny_models import build_sd_single_file

CPU = choose_device("cpu")
BF16 = DeviceChoice("cpu", torch.bfloat16, "CPU (bfloat16)")


def dtypes(pipe) -> dict[str, set[torch.dtype]]:
    """Each torch module of a pipeline → the dtypes of its floating-point parameters."""
    return {name: {p.dtype for p in module.parameters() if p.is_floating_point()}
            for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}


# -- 4. a pipeline built from another keeps its dtype and device -------------------------------


@pytest.fixture(scope="module")
def controlnet_registry(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity-controlnets")
    controlnets = build_controlnets(tiny_models, root)
    return load_registry(write_controlnet_registry(root / "models.toml", tiny_models, controlnets))


def test_every_pipeline_built_from_another_keeps_bfloat16(controlnet_registry, tmp_path):
    engine = Engine(controlnet_registry, BF16)
    cache = engine.pipelines
    spec, sd_canny = controlnet_registry.get("tiny-sd"), controlnet_registry.controlnets["sd-canny"]
    # a ControlNet job in bfloat16 runs (diffusers' float32 cast made the UNet refuse bf16 latents)
    photo = picture_maker(tmp_path)(64, 64)
    plain = request(controlnet_registry, "a fox --seed 3")
    steered, _, _ = run(engine, plain.replace(control=photo, control_kind="canny", controlnet="sd-canny"))
    assert len(steered.images) == 4
    base = cache.get(spec, "text2img")
    built = {"img2img": cache.get(spec, "img2img"), "inpaint": cache.get(spec, "inpaint"),
             "controlnet": cache.controlled(spec, sd_canny),
             "controlnet img2img": cache.controlled(spec, sd_canny, img2img=True)}
    for name, pipe in {"text2img": base, **built}.items():
        assert all(kinds == {torch.bfloat16} for kinds in dtypes(pipe).values()), (name, dtypes(pipe))
        assert {p.device.type for m in pipe.components.values() if isinstance(m, torch.nn.Module)
                for p in m.parameters()} == {"cpu"}, name


def test_derived_restores_a_module_that_from_pipe_recast(tiny_models):
    """A base whose modules differ in dtype (a VAE kept in float32 beside a bfloat16 UNet) keeps
    each one's own dtype after `derived`, though diffusers' from_pipe casts them all."""
    from diffusers import StableDiffusionImg2ImgPipeline

    base = StableDiffusionPipeline.from_pretrained(tiny_models["sd"], dtype=torch.bfloat16, safety_checker=None,
                                                   requires_safety_checker=False)
    base.vae.to(torch.float32)
    derived(StableDiffusionImg2ImgPipeline, base, torch.bfloat16)
    assert dtypes(base)["vae"] == {torch.float32} and dtypes(base)["unet"] == {torch.bfloat16}
    # what diffusers itself does (huggingface/diffusers#12754): everything float32
    StableDiffusionImg2ImgPipeline.from_pipe(base)
    assert dtypes(base)["unet"] == {torch.float32}


# -- 5. each family's sampling recipe is enforced, not inherited from its configuration ---------


@pytest.fixture(scope="module")
def turbo_registry(tiny_models, tmp_path_factory):
    """A Turbo read from one file with an SD base config ('leading'), a Turbo folder whose
    scheduler says 'leading', one with a configured scheduler, and the plain SD model."""
    root = tmp_path_factory.mktemp("turbo")
    single = build_sd_single_file(tiny_models["sd"], root / "turbo.safetensors")
    path = root / "models.toml"
    path.write_text(f'''
[models.file-turbo]
source = "{single}"
config = "{tiny_models['sd']}"
family = "sd-turbo"
native_side = 64

[models.folder-turbo]
source = "{tiny_models['sd']}"
family = "sd-turbo"
native_side = 64
scheduler = "DPMSolverMultistepScheduler"

[models.tiny-sd]
source = "{tiny_models['sd']}"
family = "sd"
native_side = 64
''', encoding="utf-8")
    return load_registry(path)


def test_turbo_samples_from_the_last_timestep_whatever_its_config_says(turbo_registry):
    cache = PipelineCache(CPU)
    for name in ("file-turbo", "folder-turbo"):
        spec = turbo_registry.get(name)
        for task in ("text2img", "img2img", "inpaint"):
            scheduler = cache.get(spec, task).scheduler
            assert scheduler.config.timestep_spacing == "trailing", (name, task)
            scheduler.set_timesteps(1)
            assert int(scheduler.timesteps[0]) == 999, (name, task)  # 'leading' gave 1: noise
    assert type(cache.get(turbo_registry.get("folder-turbo"), "text2img").scheduler).__name__ == \
        "DPMSolverMultistepScheduler"
    # the other families keep their model's own spacing (the tiny SD's: 'leading')
    assert cache.get(turbo_registry.get("tiny-sd"), "text2img").scheduler.config.timestep_spacing == "leading"
    # and a run from the single file makes Turbo's two steps
    result, steps, _ = run(Engine(turbo_registry, CPU), request(turbo_registry, "a fox --model file-turbo --seed 1"))
    assert steps == [(1, 2), (2, 2)] and len(result.images) == 4


def test_following_recipe_copies_only_a_scheduler_that_breaks_it(turbo_registry):
    from diffusers import EulerDiscreteScheduler

    leading = EulerDiscreteScheduler(timestep_spacing="leading", steps_offset=1)
    trailing = following_recipe(leading, "sdxl-turbo")
    assert trailing is not leading and trailing.config.timestep_spacing == "trailing"
    assert trailing.config.steps_offset == 1  # the rest of its configuration kept
    assert following_recipe(trailing, "sdxl-turbo") is trailing
    assert following_recipe(leading, "sdxl") is leading


@pytest.mark.parametrize(("field", "value", "message"), [
    ("guidance", "5.0", "run without classifier-free guidance"),
    ("steps", "8", "made for 1–4 steps"),
])
def test_a_turbo_entry_beyond_its_recipe_is_refused(tmp_path, field, value, message):
    path = tmp_path / "models.toml"
    path.write_text(f'[models.fast]\nsource = "stabilityai/sdxl-turbo"\nfamily = "sdxl-turbo"\n{field} = {value}\n',
                    encoding="utf-8")
    with pytest.raises(RegistryError, match=f"model 'fast': .*{message}"):
        load_registry(path)


# -- 6. Pintor's own VAE decodes follow the pipeline's upcast rule --------------------------------


def test_decodes_follow_the_pipelines_own_upcast_rule(tiny_models):
    xl = StableDiffusionXLPipeline.from_pretrained(tiny_models["sdxl"])
    sd = StableDiffusionPipeline.from_pretrained(tiny_models["sd"], safety_checker=None,
                                                 requires_safety_checker=False)
    xl.vae.to(torch.float16)
    sd.vae.to(torch.float16)
    assert xl.vae.config.force_upcast and sd.vae.config.force_upcast
    # diffusers' SDXL pipelines upcast a float16 VAE with force_upcast; SD 1.x's never do
    assert upcasts(xl, xl.vae) and not upcasts(sd, sd.vae)
    tiny: Any = AutoencoderTiny(latent_channels=4, encoder_block_out_channels=(8,), decoder_block_out_channels=(8,),
                           num_encoder_blocks=(1,), num_decoder_blocks=(1,), upsampling_scaling_factor=1)
    assert not upcasts(xl, tiny.to(torch.float16))  # TAESD: force_upcast is always False
    xl.vae.register_to_config(force_upcast=False)  # e.g. madebyollin/sdxl-vae-fp16-fix
    assert not upcasts(xl, xl.vae)
    xl.vae.register_to_config(force_upcast=True)

    # CLIP guidance's per-step decode and gradient run in float32 on SDXL's float16 VAE, then the
    # VAE is float16 again for the pipeline's own decode
    seen: list[torch.dtype] = []

    class Scorer:
        def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
            seen.append(pixels.dtype)
            return torch.nn.functional.normalize(pixels.float().mean(dim=(2, 3)), dim=-1)

    pipe: Any
    for pipe, wanted in ((xl, torch.float32), (sd, torch.float16)):
        seen.clear()

        def precision(pipe: Any = pipe) -> contextlib.AbstractContextManager[None]:
            return decoding_precision(pipe, pipe.vae)

        guide = ClipGuide(Scorer(), torch.nn.functional.normalize(torch.ones(1, 3), dim=-1),  # type: ignore[arg-type]
                          vae_decoder(pipe.vae), 10.0, precision=precision)
        pipe.scheduler.set_timesteps(2)
        output = torch.randn(1, 4, 8, 8, dtype=torch.float16)
        with contextlib.suppress(RuntimeError) if wanted == torch.float16 else contextlib.nullcontext():
            nudged = guide.nudge(pipe.scheduler, output, pipe.scheduler.timesteps[0], torch.randn(1, 4, 8, 8))
            assert nudged.dtype == torch.float16 and torch.isfinite(nudged).all()
        assert seen and seen[0] == wanted
        assert {p.dtype for p in pipe.vae.parameters()} == {torch.float16}


# -- 7. Kandinsky's prior mixes weights that add up to 1 ---------------------------------------


def test_prior_weights_add_up_to_one():
    assert prior_weights([2, 2, 2]) == pytest.approx([1 / 3] * 3)
    assert prior_weights([0.5, 0.25, 0.25]) == [0.5, 0.25, 0.25]
    assert prior_weights([3.0]) == [1.0]


def test_a_kandinsky_mix_is_the_reference_mix_whatever_the_weights_add_up_to(tiny_models, tmp_path):
    from tests.conftest import write_registry

    registry = load_registry(write_registry(tmp_path / "models.toml", tiny_models, native_side=64))
    engine = Engine(registry, CPU)
    spec = registry.get("tiny-kandinsky")
    photo = picture_maker(tmp_path)(64, 64)
    # a /blend of two pictures and a text, its weights adding up to 3 (as /blend sends them)
    blend = request(registry, "a red fox --model tiny-kandinsky --seed 4").replace(
        images=(photo, photo), image_weights=(1.0, 1.0))
    embeds, _, _ = engine._image_embeds(blend, spec, [])
    # diffusers' example: weights that add up to 1
    prior = KandinskyV22PriorPipeline.from_pretrained(tiny_models["kandinsky22-prior"])
    from PIL import Image

    from generation.engine import prior_view

    with Image.open(photo) as opened:
        picture = prior_view(opened.convert("RGB"), prior.image_processor)
    reference = prior.interpolate(["a red fox", picture, picture], [1 / 3, 1 / 3, 1 / 3], negative_prompt="",
                                  num_images_per_prompt=4, generator=torch.Generator().manual_seed(4)).image_embeds
    assert torch.allclose(embeds[0], reference[0], atol=1e-5)  # (rows 1-3: leaned by --chaos 0, item 8)
    assert torch.allclose(embeds[1:], slerp_rows(0.6, reference)[1:], atol=1e-5)
    # `a::2 b::4` is `a::1 b::2`: the same pictures
    double = run(engine, request(registry, "a fox::2 snow::4 --model tiny-kandinsky --seed 2"))[0]
    single = run(engine, request(registry, "a fox::1 snow::2 --model tiny-kandinsky --seed 2"))[0]
    assert np.array_equal(pixels(double.images), pixels(single.images))


# -- 8. a Kandinsky grid: each picture its own prior draw; --chaos spreads them ------------------


@pytest.fixture(scope="module")
def kandinsky(tiny_models, tmp_path_factory):
    """(registry, engine, prior, decoder): the tiny Kandinsky 2.2 in Pintor and as plain diffusers pipelines."""
    from diffusers import KandinskyV22Pipeline

    from tests.conftest import write_registry

    registry = load_registry(write_registry(tmp_path_factory.mktemp("fidelity-kandinsky") / "models.toml",
                                            tiny_models, native_side=64))
    prior = KandinskyV22PriorPipeline.from_pretrained(tiny_models["kandinsky22-prior"])
    return registry, Engine(registry, CPU), prior, KandinskyV22Pipeline.from_pretrained(tiny_models["kandinsky22"])


def slerp_rows(share: float, embeds: torch.Tensor) -> torch.Tensor:
    """The documented --chaos formula for a grid's embeddings, written out again: row i > 0 goes
    from row 0 toward its own draw by `share` along the great circle (row 0 unchanged)."""
    first = embeds[0]
    rows = [first]
    for row in embeds[1:]:
        omega = torch.acos(((first * row).sum() / (first.norm() * row.norm())).clamp(-1, 1))
        rows.append(row if omega.abs() < 1e-4 else
                    (torch.sin((1 - share) * omega) * first + torch.sin(share * omega) * row) / torch.sin(omega))
    return torch.stack(rows)


def reference_grid(kandinsky, req, embeds, negative) -> np.ndarray:
    """The plain decoder's pictures for `req` from these embeddings: Pintor's starting noise
    (initial_noise, the documented formula of every family) and one generator per picture."""
    from generation.engine import initial_noise, kandinsky_latents_shape

    _, _, _, decoder = kandinsky
    latents = initial_noise(req, kandinsky_latents_shape(decoder, req.width, req.height))
    assert latents.shape == (4, 4, 8, 8)  # 64 px pictures: (count, channels, 64/8, 64/8)
    out = decoder(image_embeds=embeds, negative_image_embeds=negative, latents=latents, width=req.width,
                  height=req.height, num_inference_steps=req.steps, guidance_scale=req.guidance,
                  generator=[torch.Generator().manual_seed(s) for s in req.seeds()])
    return pixels(out.images)


@pytest.mark.parametrize("text", ["a red fox --seed 8 --chaos 100", "a red fox --seed 8 --chaos 100 --no snow"])
def test_each_kandinsky_picture_has_its_own_prior_draw_as_diffusers_combined_pipeline(kandinsky, text):
    registry, engine, prior, _ = kandinsky
    req = request(registry, text + " --model tiny-kandinsky")
    result = run(engine, req)[0]
    # diffusers' KandinskyV22CombinedPipeline: one prior call, num_images_per_prompt=4, one generator
    drawn = prior("a red fox", negative_prompt=req.negative or None, num_images_per_prompt=4,
                  generator=torch.Generator().manual_seed(8))
    assert drawn.image_embeds.shape == (4, 32)
    assert min(float((drawn.image_embeds[i] - drawn.image_embeds[0]).abs().max()) for i in (1, 2, 3)) > 1e-4
    got, _, _ = engine._image_embeds(req, registry.get("tiny-kandinsky"), [])
    assert torch.allclose(got, drawn.image_embeds, atol=1e-5)  # --chaos 100: each its own draw, unchanged
    expected = reference_grid(kandinsky, req, drawn.image_embeds, drawn.negative_image_embeds)
    assert np.abs(pixels(result.images) - expected).max() <= 2  # within 2/255 per pixel


def test_kandinsky_chaos_leans_the_pictures_toward_the_first_by_the_documented_formula(kandinsky):
    registry, engine, prior, _ = kandinsky
    drawn = prior("a red fox", num_images_per_prompt=4, generator=torch.Generator().manual_seed(8))
    spread = {}
    for chaos in (0, 50, 100):
        req = request(registry, f"a red fox --seed 8 --chaos {chaos} --model tiny-kandinsky")
        share = 0.6 + 0.4 * chaos / 100  # docs/models.md: the own share of each picture
        embeds = slerp_rows(share, drawn.image_embeds)
        got, negative, _ = engine._image_embeds(req, registry.get("tiny-kandinsky"), [])
        assert torch.allclose(got, embeds, atol=1e-5)
        assert torch.equal(negative, drawn.negative_image_embeds)  # the zero embedding, the same for all
        result = run(engine, req)[0]
        assert np.abs(pixels(result.images) - reference_grid(kandinsky, req, embeds, negative)).max() <= 2
        unit = got / got.norm(dim=1, keepdim=True)
        spread[chaos] = float((unit @ unit.T)[~torch.eye(4, dtype=torch.bool)].mean())
    assert spread[0] > spread[50] > spread[100]  # chaos 0: more alike; 100: as diffusers draws them


# -- 9. a negative `::` part is less of it (MidJourney: `--no x` is `x::-.5`) -----------------


@pytest.fixture(scope="module")
def sd(tiny_models, tmp_path_factory):
    """(registry, engine, pipe): the tiny Stable Diffusion 1.x in Pintor and as the plain pipeline."""
    from tests.conftest import write_registry

    registry = load_registry(write_registry(tmp_path_factory.mktemp("fidelity-sd") / "models.toml",
                                            tiny_models, native_side=64))
    pipe = StableDiffusionPipeline.from_pretrained(tiny_models["sd"], safety_checker=None,
                                                   requires_safety_checker=False)
    return registry, Engine(registry, CPU), pipe


def reference_sd(pipe, req, prompt_embeds, negative_embeds) -> np.ndarray:
    """The plain pipeline's pictures for `req` from these embeddings (1, tokens, width), with
    Pintor's starting noise (initial_noise, the documented formula) and one generator per picture."""
    from generation.engine import initial_noise

    latents = initial_noise(req, (4, req.height // 8, req.width // 8))
    out = pipe(prompt_embeds=prompt_embeds.repeat(4, 1, 1), negative_prompt_embeds=negative_embeds.repeat(4, 1, 1),
               latents=latents, num_inference_steps=req.steps, guidance_scale=req.guidance,
               generator=[torch.Generator().manual_seed(s) for s in req.seeds()], width=req.width, height=req.height)
    return pixels(out.images)


def encoded(pipe, text: str, negative: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' own (prompt, negative) embeddings of a text, each (1, tokens, width)."""
    with torch.no_grad():
        return pipe.encode_prompt(text, "cpu", 1, True, negative)


def test_the_issues_negative_weight_is_less_of_it_as_no_says(sd):
    """The issue's example: `::-.5` beside a weight of 1 is MidJourney's `--no`, not 2·a − b."""
    registry, engine, pipe = sd
    lessened = request(registry, "still life gouache painting::1 fruit::-.5 --seed 3")
    assert lessened.parts == (("still life gouache painting", 1.0), ("fruit", -0.5))
    assert lessened.prompt == "still life gouache painting::1 fruit::-0.5"  # what the message shows
    assert lessened.notices == ("Read “fruit” (“::-.5”) as less of it, as --no does: it goes to the negative side "
                                "(::-0.5 beside parts weighing 1 counts as much as --no).",)
    no = request(registry, "still life gouache painting --no fruit --seed 3")
    got, as_no = pixels(run(engine, lessened)[0].images), pixels(run(engine, no)[0].images)
    assert np.array_equal(got, as_no)
    positive, _ = encoded(pipe, "still life gouache painting")
    fruit, _ = encoded(pipe, "fruit")
    assert np.abs(got - reference_sd(pipe, lessened, positive, fruit)).max() <= 2  # within 2/255
    # what it was before: extrapolation, (1·a − 0.5·b) / 0.5 = 2a − b, with an empty negative
    _, empty = encoded(pipe, "still life gouache painting")
    assert np.abs(got - reference_sd(pipe, lessened, 2 * positive - fruit, empty)).mean() > 1


@pytest.mark.parametrize("text, shares", [
    # (positive weights add up to P; a part of weight −m counts (m / P) / 0.5; --no counts 1;
    # scaled to add up to 1 when they add up to more, the empty negative takes the rest)
    ("still life::1 fruit::-.25", {"fruit": 0.5, "": 0.5}),
    ("still life::2 fruit::-.25", {"fruit": 0.25, "": 0.75}),
    ("still life::1 fruit::-.25 --no dog", {"dog": 2 / 3, "fruit": 1 / 3}),
    ("still life::1 a bowl::1 fruit::-.5 dust::-.5", {"fruit": 0.5, "dust": 0.5}),
])
def test_a_mixed_negative_side_is_each_texts_negative_by_its_share(sd, text, shares):
    registry, engine, pipe = sd
    req = request(registry, text + " --seed 5")
    positives = [t for t, w in req.parts if w > 0]
    prompt = sum(encoded(pipe, t)[0] for t in positives) / len(positives)  # equal weights here
    negative = sum(share * encoded(pipe, "still life", t or None)[1] for t, share in shares.items())
    got = pixels(run(engine, req)[0].images)
    assert np.abs(got - reference_sd(pipe, req, prompt, negative)).max() <= 2
    alone = pixels(run(engine, request(registry, " ".join(p for p in text.split() if "::-" not in p) + " --seed 5"))[0]
                   .images)
    assert np.abs(got - alone).mean() > 0.3  # the negative part changed the pictures


def test_sdxl_mixes_its_negative_side_with_its_empty_negative_zeros(tiny_models, tmp_path):
    from tests.conftest import write_registry

    registry = load_registry(write_registry(tmp_path / "models.toml", tiny_models, native_side=64))
    engine = Engine(registry, CPU)
    pipe = engine.pipelines.get(registry.get("tiny-sdxl"), "text2img")
    req = request(registry, "a lighthouse::1 fog::-.25 --model tiny-sdxl --seed 2")
    got = engine._prompt_embeds(pipe, req, True, [])
    with torch.no_grad():
        plain = pipe.encode_prompt(prompt="a lighthouse", device="cpu", num_images_per_prompt=1,
                                   do_classifier_free_guidance=True)
        fog = pipe.encode_prompt(prompt="a lighthouse", device="cpu", num_images_per_prompt=1,
                                 do_classifier_free_guidance=True, negative_prompt="fog")
    assert not plain[1].any()  # SDXL's empty negative: zeros (force_zeros_for_empty_prompt)
    assert torch.allclose(got["prompt_embeds"][0], plain[0][0], atol=1e-6)
    assert torch.allclose(got["negative_prompt_embeds"][0], 0.5 * fog[1][0], atol=1e-6)
    assert torch.allclose(got["negative_pooled_prompt_embeds"][0], 0.5 * fog[3][0], atol=1e-6)
    assert got["negative_prompt_embeds"].shape[0] == 4


def test_kandinsky_reads_a_negative_part_on_its_priors_negative_side(kandinsky):
    registry, engine, prior, _ = kandinsky
    spec = registry.get("tiny-kandinsky")
    lessened = request(registry, "a red fox::1 snow::-.5 --seed 8 --model tiny-kandinsky")
    no = request(registry, "a red fox --no snow --seed 8 --model tiny-kandinsky")
    assert np.array_equal(pixels(run(engine, lessened)[0].images), pixels(run(engine, no)[0].images))
    # a mix: the zero-image embedding by the rest, the part's own draws (after the pictures') by its share
    req = request(registry, "a red fox::1 snow::-.25 --seed 8 --chaos 100 --model tiny-kandinsky")
    generator = torch.Generator().manual_seed(8)
    drawn = prior("a red fox", num_images_per_prompt=4, generator=generator)
    snow = prior("snow", num_images_per_prompt=4, generator=generator).image_embeds
    embeds, negative, texts = engine._image_embeds(req, spec, [])
    assert texts == ["a red fox"]
    assert torch.allclose(embeds, drawn.image_embeds, atol=1e-5)
    assert torch.allclose(negative, 0.5 * drawn.negative_image_embeds + 0.5 * snow, atol=1e-5)
    result = run(engine, req)[0]
    assert np.abs(pixels(result.images) - reference_grid(kandinsky, req, embeds, negative)).max() <= 2


# -- 10. the safety checker on the pipeline's device; the x4 upscaler's documented settings ------


class Recorder(torch.nn.Module):
    """A stand-in safety checker that records where it is moved and says nothing is flagged."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.moves: list[str] = []

    def to(self, *args, **kwargs):
        self.moves.append(str(args[0] if args else kwargs.get("device")))
        return self

    def forward(self, images, clip_input):
        return images, [False] * len(images)


def test_the_safety_checker_runs_where_the_pipeline_runs(tiny_models, tmp_path, monkeypatch):
    from tests.tiny_models import build_sd_with_safety_checker

    folder = build_sd_with_safety_checker(tmp_path / "checked", flag_everything=False)
    path = tmp_path / "models.toml"
    path.write_text(f'[models.checked]\nsource = "{folder}"\nfamily = "sd"\nnative_side = 64\n', encoding="utf-8")
    placed: list[tuple[str, bool]] = []
    real = SafetyChecker.place

    def place(self: SafetyChecker, device: str, *, resident: bool) -> None:
        placed.append((device, resident))
        real(self, device, resident=resident)

    monkeypatch.setattr(SafetyChecker, "place", place)
    cache = PipelineCache(DeviceChoice("cpu", torch.bfloat16, "CPU"))
    checker = cache.safety_checker(load_registry(path).get("checked"))
    assert checker is not None and placed == [("cpu", True)]  # the pipeline's device, kept there
    assert {p.dtype for p in checker.checker.parameters()} == {torch.bfloat16}
    # an offloaded pipeline's checker goes to the device for each check only
    from PIL import Image

    stand_in = SafetyChecker(Recorder(), checker.feature_extractor)
    stand_in.place("cuda", resident=False)
    assert stand_in.checker.moves == ["cpu"]
    assert stand_in.flags([Image.new("RGB", (64, 64))]) == [False]
    assert stand_in.checker.moves == ["cpu", "cuda", "cpu"]


def test_the_x4_upscaler_runs_at_its_model_cards_settings_unless_the_admin_sets_others(tmp_path):
    assert (family_of("upscale-x4").steps, family_of("upscale-x4").guidance) == (75, 9.0)
    builtin = next(spec for spec in BUILTIN_MODELS if spec.family == "upscale-x4")
    assert (builtin.steps, builtin.guidance) == (75, 9.0)
    path = tmp_path / "models.toml"
    path.write_text('default = "sd"\n[models.sd]\nsource = "stabilityai/sd-turbo"\nfamily = "sd-turbo"\n'
                    '[models.up]\nsource = "stabilityai/stable-diffusion-x4-upscaler"\nfamily = "upscale-x4"\n'
                    'steps = 30\n', encoding="utf-8")
    assert (load_registry(path).get("up").steps, load_registry(path).get("up").guidance) == (30, 9.0)


# -- 12. every job that repaints uses the job's LoRAs and embeddings ----------------------------


@pytest.fixture(scope="module")
def lora_registry(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity-loras")
    files = build_additions(tiny_models, root)
    path = root / "models.toml"
    path.write_text(registry_text(tiny_models, files) + f'''
[models.tiny-sd-inpaint]
source = "{tiny_models['sd']}"
inpaint = "{tiny_models['sd']}"
family = "sd"
native_side = 64
steps = 2
guidance = 5.0
''', encoding="utf-8")
    return load_registry(path)


@pytest.mark.parametrize("kind", ["creative upscale", "outpaint on a dedicated inpainting checkpoint"])
def test_every_repainting_job_takes_the_jobs_lora(lora_registry, tmp_path, kind):
    engine = Engine(lora_registry, CPU)
    picture = picture_maker(tmp_path)(64, 64)
    if kind == "creative upscale":
        job = request(lora_registry, "a lighthouse --seed 5", kind="upscale", upscaler=RESAMPLE, init_image=picture,
                      count=1, strength=0.5, steps=4)
    else:
        job = request(lora_registry, "a lighthouse --model tiny-sd-inpaint --seed 5", kind="outpaint",
                      init_image=picture, outpaint=(0.5, 0.0, 0.0, 0.0), width=64, height=64, strength=1.0)
    before = pixels(run(engine, job)[0].images)
    with_lora = pixels(run(engine, job.replace(loras=(("ink", 1.0),)))[0].images)
    assert np.abs(with_lora - before).mean() > 0.5  # the LoRA changed the repaint
    assert np.array_equal(pixels(run(engine, job)[0].images), before)  # and was switched off after it
    # an embedding the prompt writes is loaded into the pipeline that paints
    run(engine, job.replace(negative="easyneg"))
    painter = engine.pipelines.get(lora_registry.get(job.model), "inpaint" if kind != "creative upscale" else "img2img")
    assert "easyneg" in painter.tokenizer.get_added_vocab()
