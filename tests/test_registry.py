"""generation.registry: the built-in models, the admin's TOML file and its errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from generation.families import family_of
from generation.registry import (
    BUILTIN_DEFAULT,
    ModelSpec,
    RegistryError,
    UnknownLoraError,
    UnknownModelError,
    load_registry,
)

pytestmark = pytest.mark.smoke  # also run on the dependency floors (constraints-floors.txt)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text, encoding="utf-8")
    return path


# -- the built-in registry --------------------------------------------------------------------


def test_builtin_registry_has_the_documented_models():
    registry = load_registry()
    assert registry.default == BUILTIN_DEFAULT == "sd-turbo"
    assert registry.origin == "built-in"
    assert {"sd-turbo", "sd-1.5", "sdxl", "kandinsky-2.2", "upscaler"} <= set(registry.names)
    assert registry.get(None).name == "sd-turbo"
    assert registry.get("sd-turbo").steps <= 4 and registry.get("sd-turbo").guidance == 0.0

    kandinsky = registry.get("kandinsky-2.2")
    assert kandinsky.family == "kandinsky22" and kandinsky.prior and kandinsky.can_blend
    assert registry.upscaler == "upscaler"
    upscaler = registry.get("upscaler")
    assert upscaler.is_upscaler and not upscaler.can_generate
    assert registry.get("sdxl").native_side == 1024 and registry.get("sd-1.5").native_side == 512
    assert upscaler not in registry.generators()
    assert {m.name for m in registry.generators()} >= {"sd-turbo", "sd-1.5", "sdxl", "kandinsky-2.2"}


def test_builtin_default_can_be_overridden_but_must_generate():
    assert load_registry(default="sd-1.5").default == "sd-1.5"
    with pytest.raises(RegistryError, match="'upscaler' is not a configured text-to-image model"):
        load_registry(default="upscaler")
    with pytest.raises(RegistryError, match="'nope'"):
        load_registry(default="nope")


def test_get_unknown_model_lists_the_configured_names():
    registry = load_registry()
    with pytest.raises(UnknownModelError) as info:
        registry.get("midjourney-v6")
    message = str(info.value)
    assert "midjourney-v6" in message
    for name in registry.names:
        assert name in message


def test_get_is_case_insensitive_for_lowercase_names():
    assert load_registry().get("SD-Turbo").name == "sd-turbo"


# -- the TOML file ----------------------------------------------------------------------------


def test_toml_entries_take_their_family_defaults(tmp_path: Path):
    path = write(tmp_path, '''
default = "xl"

[models.xl]
source = "stabilityai/stable-diffusion-xl-base-1.0"
family = "sdxl"

[models.one-five]
source = "/models/sd15"
family = "sd"

[models.kandy]
source = "kandinsky-community/kandinsky-2-2-decoder"
prior = "kandinsky-community/kandinsky-2-2-prior"
family = "kandinsky22"

[models.up]
source = "stabilityai/stable-diffusion-x4-upscaler"
family = "upscale-x4"
''')
    registry = load_registry(path)
    assert registry.origin == str(path)
    assert registry.default == "xl"
    assert registry.upscaler == "up"  # the only upscale model, found without being named
    for name in ("xl", "one-five", "kandy", "up"):
        spec = registry.get(name)
        assert isinstance(spec, ModelSpec) and spec.name == name
        record = family_of(spec.family)
        side, steps, guidance = record.side, record.steps, record.guidance
        assert (spec.native_side, spec.steps, spec.guidance) == (side, steps, guidance)
    assert registry.get("one-five").source == "/models/sd15"
    assert registry.get("kandy").prior == "kandinsky-community/kandinsky-2-2-prior"
    assert registry.get("xl").scheduler is None and registry.get("xl").variant is None


def test_toml_overrides_replace_the_defaults(tmp_path: Path):
    path = write(tmp_path, '''
[models.fast]
source = "/models/fast"
family = "sd"
native_side = 384
steps = 4
guidance = 1.5
scheduler = "EulerAncestralDiscreteScheduler"
variant = "fp16"
description = "mine"
''')
    registry = load_registry(path)
    spec = registry.get("fast")
    assert (spec.native_side, spec.steps, spec.guidance) == (384, 4, 1.5)
    assert spec.scheduler == "EulerAncestralDiscreteScheduler" and spec.variant == "fp16"
    assert spec.description == "mine"
    assert registry.default == "fast"  # the first model that generates
    assert registry.upscaler is None  # none configured: upscaling falls back to resampling


def test_the_tiny_test_registry(registry_file: Path):
    registry = load_registry(registry_file)
    assert registry.default == "tiny-sd" and registry.upscaler == "tiny-upscaler"
    assert registry.get(None).native_side == 128 and registry.get(None).steps == 2
    assert registry.get("tiny-kandinsky").can_blend
    assert load_registry(registry_file, default="tiny-sdxl").default == "tiny-sdxl"


@pytest.mark.parametrize(("text", "message"), [
    ('[models.a]\nsource = "x"\nfamily = "sd3"\n', r"model 'a': unknown family 'sd3' \(one of sd, "),
    ('[models.a]\nfamily = "sd"\n', "model 'a': 'source' and 'family' are required"),
    ('[models.a]\nsource = "x"\n', "model 'a': 'source' and 'family' are required"),
    ('[models.k]\nsource = "x"\nfamily = "kandinsky22"\n', "model 'k': Kandinsky models need a 'prior' source"),
    ('[models.a]\nsource = "x"\nfamily = "sd"\nstep = 3\n', r"model 'a': unknown field\(s\) step"),
    ('default = "b"\n[models.a]\nsource = "x"\nfamily = "sd"\n',
     r"default model 'b' is not a configured text-to-image model \(configured: a\)"),
    ('default = "u"\n[models.a]\nsource = "x"\nfamily = "sd"\n[models.u]\nsource = "y"\nfamily = "upscale-x4"\n',
     "default model 'u' is not a configured text-to-image model"),
    ('[models.u]\nsource = "y"\nfamily = "upscale-x4"\n', "default model 'None' is not a configured text-to-image"),
    ('upscaler = "a"\n[models.a]\nsource = "x"\nfamily = "sd"\n', "upscaler 'a' is not a configured upscale model"),
    ('default = "a"\n', "no \\[models.NAME\\] entries"),
    ('[models.a\nsource = "x"\n', "cannot read model registry"),
    # values of the wrong type are refused when the file is read, not when a member uses the model
    ('[models.a]\nsource = "x"\nfamily = "sd"\nsteps = "many"\n', "model 'a': 'steps' must be a whole number"),
    ('[models.a]\nsource = "x"\nfamily = "sd"\nsteps = 0\n', "model 'a': 'steps' must be a whole number, at least 1"),
    ('[models.a]\nsource = "x"\nfamily = "sd"\nnative_side = -512\n', "'native_side' must be a whole number of pixels"),
    ('[models.a]\nsource = "x"\nfamily = "sd"\nguidance = true\n', "'guidance' must be a number"),
    ('[models.a]\nsource = 5\nfamily = "sd"\n', "'source' must be a string, not 5"),
    ('[models.a]\nsource = "x"\nfamily = ["sd"]\n', "'family' must be a string"),
    ('[models]\na = "x"\n', r"model 'a': expected a \[models.a\] table"),
    ('default = ["a"]\n[models.a]\nsource = "x"\nfamily = "sd"\n', "is not a configured text-to-image model"),
], ids=["unknown-family", "missing-source", "missing-family", "kandinsky-without-prior", "unknown-field",
        "default-not-configured", "default-is-upscaler", "no-generator", "upscaler-not-upscale",
        "no-models", "bad-toml", "steps-not-a-number", "steps-zero", "negative-side", "bool-guidance",
        "source-not-a-string", "family-not-a-string", "entry-not-a-table", "default-not-a-string"])
def test_malformed_files_are_registry_errors_with_a_clear_message(tmp_path: Path, text: str, message: str):
    with pytest.raises(RegistryError, match=message):
        load_registry(write(tmp_path, text))


def test_unreadable_files_are_registry_errors(tmp_path: Path):
    with pytest.raises(RegistryError, match="cannot read model registry .*missing.toml"):
        load_registry(tmp_path / "missing.toml")
    with pytest.raises(RegistryError, match="cannot read model registry"):
        load_registry(tmp_path)  # a folder
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(RegistryError, match="cannot read model registry"):
        load_registry(binary)


# -- schedulers: checked when the file is read, against the loops they would replace ---------

KANDINSKY = 'source = "k"\nprior = "p"\nfamily = "kandinsky22"\n'


def entry(body: str, scheduler: str) -> str:
    return f'default = "a"\n[models.a]\nsource = "x"\nfamily = "sd"\n[models.m]\n{body}scheduler = "{scheduler}"\n'


@pytest.mark.parametrize("body, scheduler, fitting", [
    ('source = "x"\nfamily = "sd"\n', "DPMSolverMultistepScheduler", ["denoising loop"]),
    ('source = "x"\nfamily = "sdxl"\n', "EulerAncestralDiscreteScheduler", ["denoising loop"]),
    ('source = "x"\nfamily = "sd"\n', "LCMScheduler", ["denoising loop"]),  # LCM-LoRA
    (KANDINSKY, "DDIMScheduler", ["decoder"]),  # the decoder's; the prior keeps its own
    (KANDINSKY, "DPMSolverSinglestepScheduler", ["decoder"]),
    (KANDINSKY.replace("22", "21"), "DPMSolverMultistepScheduler", ["decoder"]),
    (KANDINSKY, "UnCLIPScheduler", ["prior"]),
    ('source = "x"\nfamily = "upscale-x4"\n', "EulerDiscreteScheduler", ["upscaler"]),
])
def test_a_scheduler_is_accepted_for_the_loops_it_fits(tmp_path: Path, body, scheduler, fitting):
    from generation.schedulers import check_scheduler

    spec = load_registry(write(tmp_path, entry(body, scheduler))).get("m")
    assert spec.scheduler == scheduler
    assert check_scheduler(scheduler, spec.family) == fitting


@pytest.mark.parametrize("body, scheduler, message", [
    ('source = "x"\nfamily = "sd"\n', "EulerAncestral",
     r"model 'm': unknown scheduler 'EulerAncestral' \(did you mean .*EulerAncestralDiscreteScheduler"),
    ('source = "x"\nfamily = "sd"\n', "NopeScheduler", r"model 'm': unknown scheduler 'NopeScheduler'"),
    ('source = "x"\nfamily = "sd"\n', "UNet2DConditionModel", "model 'm': unknown scheduler 'UNet2DConditionModel'"),
    ('source = "x"\nfamily = "sd"\n', "os.system", "model 'm': unknown scheduler 'os.system'"),
    ('source = "x"\nfamily = "sd"\n', "UnCLIPScheduler",
     r"model 'm': scheduler 'UnCLIPScheduler' fits none of the sd family's denoising loop; these do: .*DDIMScheduler"),
    ('source = "x"\nfamily = "sd"\n', "FlowMatchEulerDiscreteScheduler", "model 'm': .* fits none of the sd family"),
    # Kandinsky's decoders never scale the model's input: sigma-based samplers would start from
    # noise 157 times too strong; the prior takes only its own UnCLIPScheduler
    (KANDINSKY, "EulerAncestralDiscreteScheduler",
     "model 'm': scheduler 'EulerAncestralDiscreteScheduler' fits none of the kandinsky22 family's decoder and prior"),
    (KANDINSKY, "HeunDiscreteScheduler", "model 'm': .* fits none of the kandinsky22 family"),
    (KANDINSKY, "LCMScheduler", "model 'm': .* fits none of the kandinsky22 family"),
    # the Kandinsky decoders pass step(..., generator=…), which these do not take
    (KANDINSKY, "UniPCMultistepScheduler", "model 'm': .* fits none of the kandinsky22 family"),
    (KANDINSKY.replace("22", "21"), "DEISMultistepScheduler", "model 'm': .* fits none of the kandinsky21 family"),
    (KANDINSKY, "PNDMScheduler", "model 'm': .* fits none of the kandinsky22 family"),
    # for EDM-trained models: it cannot be built from a DDPM-style model's configuration
    ('source = "x"\nfamily = "sd"\n', "EDMEulerScheduler", "model 'm': .* fits none of the sd family"),
], ids=["misspelt", "unknown", "not-a-scheduler", "not-a-name", "prior-only-on-sd", "flow-matching-on-sd",
        "sigma-sampler-on-kandinsky", "heun-on-kandinsky", "lcm-on-kandinsky", "unipc-on-kandinsky",
        "deis-on-kandinsky21", "pndm-on-kandinsky", "edm-on-sd"])
def test_a_scheduler_that_cannot_work_stops_the_start_naming_the_entry(tmp_path: Path, body, scheduler, message):
    with pytest.raises(RegistryError, match=message):
        load_registry(write(tmp_path, entry(body, scheduler)))


@pytest.mark.parametrize("scheduler, package", [
    ("DPMSolverSDEScheduler", "torchsde"), ("LMSDiscreteScheduler", "scipy"),
    ("CosineDPMSolverMultistepScheduler", "torchsde"),
])
def test_a_scheduler_whose_package_is_missing_stops_the_start_naming_it(tmp_path: Path, scheduler, package):
    import importlib.util

    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here")
    with pytest.raises(RegistryError, match=rf"model 'm': scheduler '{scheduler}' needs {package}, which is "
                                            rf"not installed \(pip install {package}\)"):
        load_registry(write(tmp_path, entry('source = "x"\nfamily = "sd"\n', scheduler)))
MAPPED = '''
[models.a]
source = "x"
family = "sd"
[models.anime]
source = "y"
family = "sdxl"
[models.u]
source = "z"
family = "upscale-x4"
[midjourney]
"--v 6" = "anime"
"--V 6.1" = "a"
"--niji" = "anime"
"--style raw" = "a"
"--version 5.0" = "a"
'''


def test_midjourney_parameters_map_to_models(tmp_path: Path):
    registry = load_registry(write(tmp_path, MAPPED))
    assert registry.selectors == {("v", "6"): "anime", ("v", "6.1"): "a", ("niji", ""): "anime",
                                  ("style", "raw"): "a", ("v", "5"): "a"}
    assert registry.for_selector("v", "6") == "anime" and registry.for_selector("v", "7") is None
    assert registry.for_selector("niji", "6") == "anime" and registry.for_selector("niji", "") == "anime"
    assert registry.for_selector("style", "raw") == "a" and registry.for_selector("style", "cute") is None
    assert load_registry().selectors == {}  # the built-in registry maps nothing


@pytest.mark.parametrize(("table", "message"), [
    ('"--sref 1" = "a"', "'--sref 1' is not one of --v N, --niji"),
    ('"v 6" = "a"', "'v 6' is not one of"),
    ('"--v 6" = "nope"', "'--v 6' maps to 'nope', which is not a configured text-to-image model"),
    ('"--v 6" = "u"', "maps to 'u', which is not a configured text-to-image model"),
    ('"--v 6" = 6', "maps to '6'"),
])
def test_malformed_midjourney_tables(tmp_path: Path, table: str, message: str):
    text = ('[models.a]\nsource = "x"\nfamily = "sd"\n[models.u]\nsource = "z"\nfamily = "upscale-x4"\n'
            f"[midjourney]\n{table}\n")
    with pytest.raises(RegistryError, match=message):
        load_registry(write(tmp_path, text))


# --- LoRAs, embeddings and a VAE override (docs/models.md) -------------------------------------

ADDITIONS = '''
[models.sd]
source = "/m/sd"
family = "sd"
vae = "madebyollin/sd-vae-ft-mse"

[models.xl]
source = "/m/xl"
family = "sdxl"

[loras.pixel-art]
source = "/loras/pixel.safetensors"
families = ["sd", "sd2"]
weight = 0.8
triggers = ["pixel art", "8-bit"]

[loras.xl-ink]
source = "someone/xl-ink-lora"
weight_name = "ink.safetensors"
families = ["sdxl"]

[embeddings.easyneg]
source = "/emb/easynegative.safetensors"
families = ["sd"]

[embeddings.cat-style]
source = "/emb/cat.pt"
token = "<cat-style>"
families = ["sd", "sdxl"]
'''


def test_loras_embeddings_and_a_vae_are_read_with_their_defaults(tmp_path: Path):
    path = tmp_path / "models.toml"
    path.write_text(ADDITIONS, encoding="utf-8")
    registry = load_registry(path)
    assert registry.models["sd"].vae == "madebyollin/sd-vae-ft-mse" and registry.models["xl"].vae is None
    pixel = registry.lora("Pixel-Art")  # any case, as members type it
    assert (pixel.name, pixel.source, pixel.families, pixel.weight, pixel.triggers) == (
        "pixel-art", "/loras/pixel.safetensors", ("sd", "sd2"), 0.8, ("pixel art", "8-bit"))
    assert pixel.fits("sd") and not pixel.fits("sdxl")
    ink = registry.lora("xl-ink")
    assert (ink.weight, ink.weight_name, ink.triggers) == (1.0, "ink.safetensors", ())
    assert registry.embeddings["easyneg"].token == "easyneg"  # the name is the token by default
    assert registry.embeddings["cat-style"].token == "<cat-style>"
    with pytest.raises(UnknownLoraError, match=r"Unknown LoRA 'nope'\. Available: pixel-art, xl-ink\."):
        registry.lora("nope")
    assert load_registry().loras == {} and load_registry().embeddings == {}


@pytest.mark.parametrize("table, message", [
    ('[loras.x]\nfamilies = ["sd"]\n', "LoRA 'x': 'source' required"),
    ('[loras.x]\nsource = "/a.safetensors"\n', "LoRA 'x': 'families' required"),
    ('[loras.x]\nsource = "/a.safetensors"\nfamilies = ["kandinsky22"]\n',
     "LoRA 'x': family 'kandinsky22' takes no LoRAs or embeddings"),
    ('[loras.x]\nsource = "/a.safetensors"\nfamilies = []\n', "'families' must be a list of model families"),
    ('[loras.x]\nsource = "/a.safetensors"\nfamilies = ["sd"]\nweight = 5\n',
     "LoRA 'x': 'weight' must be a number from -2 to 2, not 5"),
    ('[loras.x]\nsource = "/a.safetensors"\nfamilies = ["sd"]\ntriggers = [1]\n', "'triggers' must be a list"),
    ('[loras.x]\nsource = "/a.safetensors"\nfamilies = ["sd"]\nstrength = 1\n', "LoRA 'x': unknown field(s) strength"),
    ('[loras."a b"]\nsource = "/a.safetensors"\nfamilies = ["sd"]\n', "LoRA 'a b': a name is letters"),
    ('[embeddings.e]\nsource = "/e.pt"\nfamilies = ["sd"]\ntoken = "two words"\n', "'token' must be one word"),
    ('[embeddings.e]\nsource = "/e.pt"\nfamilies = ["sd"]\n[embeddings.f]\nsource = "/f.pt"\nfamilies = ["sd"]\n'
     'token = "e"\n', "two embeddings have the token 'e'"),
    ('[models.k2]\nsource = "k"\nprior = "p"\nfamily = "kandinsky22"\nvae = "v/v"\n',
     "model 'k2': 'vae' replaces the VAE of the families"),
])
def test_malformed_loras_and_embeddings_name_the_entry(tmp_path: Path, table: str, message: str):
    path = tmp_path / "models.toml"
    path.write_text('[models.sd]\nsource = "/m/sd"\nfamily = "sd"\n' + table, encoding="utf-8")
    with pytest.raises(RegistryError, match=re.escape(message)):
        load_registry(path)


@pytest.mark.parametrize("family, inpaint, zooms", [
    ("sd", None, True), ("sdxl", None, True), ("sd", "some/sd-inpainting", True),
    ("kandinsky22", "kandinsky-community/kandinsky-2-2-decoder-inpaint", True),  # listed nowhere before
    ("kandinsky22", None, False), ("kandinsky21", None, False), ("kandinsky3", None, False),
])
def test_zoom_and_pan_are_listed_exactly_where_they_work(family, inpaint, zooms):
    """`pintor models` and /info (ModelSpec.capabilities) left Zoom/Pan out for a Kandinsky 2.2
    entry with its inpainting decoder, though the Studio makes them: both now read
    ModelSpec.can_outpaint, the one rule the Studio checks."""
    from generation.registry import ModelSpec

    side, steps, guidance = family_of(family).side, family_of(family).steps, family_of(family).guidance
    spec = ModelSpec(name="m", source="a/b", family=family, native_side=side, steps=steps, guidance=guidance,
                     inpaint=inpaint, prior="a/prior" if family.startswith("kandinsky2") else None)
    assert spec.can_outpaint is zooms
    assert ("zoom/pan (inpaint)" in spec.capabilities()) is zooms
