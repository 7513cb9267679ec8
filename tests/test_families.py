"""generation/families.py: one record per model family, and nowhere else a table of families.

The capability sets below are pinned by value: a change to a record that moves a family in or
out of one must change this file too, deliberately."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from generation.families import FAMILIES, Family, family_of, names_where, peak_gib
from generation.registry import BUILTIN_MODELS, UNAVAILABLE_FAMILIES, RegistryError, load_registry

ROOT = Path(__file__).resolve().parent.parent
SD_LIKE = frozenset({"sd", "sd2", "sdxl", "sd-turbo", "sdxl-turbo"})


def test_every_family_the_registry_accepts_has_a_record(tmp_path: Path) -> None:
    for name in FAMILIES:
        record = family_of(name)
        assert isinstance(record, Family) and record.name == name
    for spec in BUILTIN_MODELS:
        assert spec.family in FAMILIES
    path = tmp_path / "models.toml"
    path.write_text('[models.m]\nsource = "a/b"\nfamily = "no-such-family"\n')
    with pytest.raises(RegistryError, match="unknown family"):
        load_registry(path)
    assert not set(UNAVAILABLE_FAMILIES) & set(FAMILIES)
    with pytest.raises(KeyError):
        family_of("no-such-family")


@pytest.mark.parametrize(("capability", "families"), [
    # the sets generation/registry.py held before the records, by value
    ("text_to_image", SD_LIKE | {"kandinsky21", "kandinsky22", "kandinsky3", "openai"}),  # TEXT_TO_IMAGE_FAMILIES
    ("blend", {"kandinsky21", "kandinsky22"}),  # BLEND_FAMILIES
    ("clip_guidance", SD_LIKE),  # CLIP_GUIDANCE_FAMILIES
    ("inpaint", SD_LIKE),  # INPAINT_FAMILIES
    ("emphasis", SD_LIKE),  # EMPHASIS_FAMILIES
    ("additions", SD_LIKE),  # ADDITION_FAMILIES
    ("single_file", SD_LIKE),  # SINGLE_FILE_FAMILIES
    ("upscaler", {"upscale-x4", "esrgan"}),  # UPSCALER_FAMILIES
    ("weights_file", {"esrgan"}),  # WEIGHTS_FILE_FAMILIES
    ("caption", {"blip"}),  # CAPTION_FAMILIES
    ("remote", {"openai"}),  # REMOTE_FAMILIES
    ("batches", SD_LIKE),  # generation/batching.py: BATCH_FAMILIES
    ("separate_inpaint", {"kandinsky22"}),
    ("controlnet_is_pipeline", {"kandinsky22"}),
])
def test_the_old_capability_sets_are_what_the_records_say(capability: str, families: set[str]) -> None:
    assert names_where(lambda f: bool(getattr(f, capability))) == families


def test_the_old_tables_are_what_the_records_say() -> None:
    # FAMILY_DEFAULTS (generation/registry.py): native side in pixels, steps, guidance
    assert {name: (f.side, f.steps, f.guidance) for name, f in FAMILIES.items()} == {
        "sd": (512, 30, 7.0), "sd2": (768, 30, 7.0), "sdxl": (1024, 30, 6.0), "sd-turbo": (512, 2, 0.0),
        "sdxl-turbo": (512, 2, 0.0), "kandinsky21": (768, 40, 4.0), "kandinsky22": (768, 40, 4.0),
        "kandinsky3": (1024, 25, 3.0), "upscale-x4": (512, 75, 9.0), "esrgan": (512, 1, 0.0),
        "openai": (1024, 1, 0.0), "blip": (384, 1, 0.0)}
    # PEAK_GIB (generation/devices.py), GiB per offload mode; families without a row: SDXL's
    assert {name: f.peak_gib for name, f in FAMILIES.items() if f.peak_gib} == {
        "sd": (5.0, 3.5, 1.5), "sd-turbo": (5.0, 3.5, 1.5), "sd2": (6.0, 4.0, 2.5), "sdxl": (10.0, 6.5, 3.0),
        "sdxl-turbo": (8.5, 6.0, 2.5), "kandinsky21": (7.0, 4.5, 2.5), "kandinsky22": (7.0, 4.5, 2.5),
        "kandinsky3": (25.0, 18.0, 4.0), "upscale-x4": (8.0, 7.0, 5.0)}
    assert peak_gib("esrgan") == peak_gib("no-such-family") == (10.0, 6.5, 3.0)
    # DEFAULT_BATCH_IMAGES["cuda"] (generation/batching.py)
    assert {name: f.batch_images_cuda for name, f in FAMILIES.items() if f.batches} == {
        "sd": 16, "sd2": 16, "sd-turbo": 16, "sdxl": 8, "sdxl-turbo": 16}
    # CONTROLNET_FAMILIES (generation/registry.py): a ControlNet's family → the families it steers
    assert {name: f.controlnet_families for name, f in FAMILIES.items() if f.controlnet_families} == {
        "sd": ("sd",), "sdxl": ("sdxl", "sdxl-turbo"), "kandinsky22": ("kandinsky22",)}
    assert family_of("kandinsky22").control_kinds == ("depth",)
    # FAMILY_LOOPS and FAMILY_RECIPES (generation/schedulers.py)
    assert {name: [(loop.name, loop.scheduler) for loop in f.loops] for name, f in FAMILIES.items() if f.loops} == {
        **{name: [("denoising loop", "EulerDiscreteScheduler")] for name in SD_LIKE},
        "kandinsky21": [("decoder", "DDIMScheduler"), ("prior", "UnCLIPScheduler")],
        "kandinsky22": [("decoder", "DDPMScheduler"), ("prior", "UnCLIPScheduler")],
        "kandinsky3": [("denoising loop", "DDPMScheduler")], "upscale-x4": [("upscaler", "DDIMScheduler")]}
    assert names_where(lambda f: f.recipe.max_steps is not None) == {"sd-turbo", "sdxl-turbo"}
    # the engine's loops (runners) and the Kandinsky pipeline classes (generation/pipelines.py)
    assert {name: f.runner for name, f in FAMILIES.items() if f.runner} == {
        **{name: "stable_diffusion" for name in SD_LIKE},
        "kandinsky21": "kandinsky", "kandinsky22": "kandinsky", "kandinsky3": "kandinsky_3"}
    assert family_of("kandinsky21").pipeline("prior") == "KandinskyPriorPipeline"
    assert family_of("kandinsky3").pipeline("prior") is None
    assert family_of("sdxl-turbo").pipeline("single_file") == "StableDiffusionXLPipeline"


def test_the_pipeline_class_names_exist_in_diffusers() -> None:
    diffusers = pytest.importorskip("diffusers")
    for record in FAMILIES.values():
        for _task, name in record.pipelines:
            assert hasattr(diffusers, name), (record.name, name)


# Modules that may spell a family's name as a string. Everywhere else a family's facts are read
# from its record (family_of(name).…): a comparison with a family name, or a set, tuple, list or
# dict of family names, fails this test.
ALLOWED = {
    # the records themselves
    "generation/families.py",
    # the built-in model entries name their family, as an admin's models.toml does (data, not a
    # rule about families); and the message of UNAVAILABLE_FAMILIES names the families to use
    "generation/registry.py",
}
NAMES = set(FAMILIES)
# Strings that are a family's name by coincidence, not a family: (module, string)
HOMONYMS = {
    ("bot/cli.py", "openai"), ("generation/remote.py", "openai"),  # the openai package's logger
    ("generation/pipelines.py", "esrgan"), ("generation/schedulers.py", "esrgan"),  # PipelineTask "esrgan"
}


def _family_literals(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for operand in operands:
                found += _names_in(operand)
        elif isinstance(node, ast.Set | ast.Tuple | ast.List):
            found += [(e.lineno, e.value) for e in node.elts
                      if isinstance(e, ast.Constant) and e.value in NAMES]
        elif isinstance(node, ast.Dict):
            found += [(k.lineno, k.value) for k in node.keys if isinstance(k, ast.Constant) and k.value in NAMES]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "startswith":
            found += [(a.lineno, a.value) for a in node.args if isinstance(a, ast.Constant)
                      and isinstance(a.value, str) and any(n.startswith(a.value) for n in NAMES)
                      and a.value in {"sd", "sdxl", "kandinsky", "kandinsky2"}]
    return found


def _names_in(node: ast.AST) -> list[tuple[int, str]]:
    if isinstance(node, ast.Constant) and node.value in NAMES:
        return [(node.lineno, node.value)]
    if isinstance(node, ast.Set | ast.Tuple | ast.List):
        return [(e.lineno, e.value) for e in node.elts if isinstance(e, ast.Constant) and e.value in NAMES]
    return []


def _product_modules() -> list[Path]:
    return sorted(p for package in ("bot", "generation", "storage") for p in (ROOT / package).rglob("*.py")
                  if "migrations" not in p.parts)


@pytest.mark.parametrize("path", _product_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_outside_the_records_keeps_a_table_of_family_names(path: Path) -> None:
    relative = str(path.relative_to(ROOT))
    if relative in ALLOWED:
        return
    found = [(line, name) for line, name in _family_literals(ast.parse(path.read_text(), filename=relative))
             if (relative, name) not in HOMONYMS]
    assert not found, (f"{relative} spells family names {found}: read the family's record instead "
                       "(generation.families.family_of(name).…), or add the fact to the record")


def test_the_check_fails_on_a_reintroduced_table() -> None:
    assert _family_literals(ast.parse('EMPHASIS = {"sd", "sdxl"}\nif family == "kandinsky22": pass'))
    assert _family_literals(ast.parse('x = family in ("kandinsky21", "kandinsky22")'))
    assert _family_literals(ast.parse('PEAK = {"sd": (1.0, 2.0, 3.0)}'))
    assert _family_literals(ast.parse('sdxl = spec.family.startswith("sdxl")'))
    assert not _family_literals(ast.parse('x = family_of(spec.family).emphasis'))
