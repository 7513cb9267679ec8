"""ControlNet in the registry and the engine, on tiny random-weight models built in code
(`ControlNetModel.from_unet`, a tiny DPT, a tiny Kandinsky 2.2 ControlNet decoder) and loaded
through the registry's path as real ones are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generation.availability import check_controlnet
from generation.control import ControlError, make_control_image
from generation.devices import choose_device
from generation.engine import Engine
from generation.pipelines import ModelLoadError
from generation.registry import Registry, RegistryError, load_registry
from tests.controlnet_helpers import build_controlnets, write_controlnet_registry
from tests.engine_helpers import pixels, request, run

CPU = choose_device("cpu")


@pytest.fixture(scope="module")
def controlnets(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_controlnets(tiny_models, tmp_path_factory.mktemp("controlnets"))


@pytest.fixture(scope="module")
def registry(tiny_models, controlnets, tmp_path_factory) -> Registry:
    path = write_controlnet_registry(tmp_path_factory.mktemp("cn-registry") / "models.toml", tiny_models, controlnets)
    return load_registry(path)


@pytest.fixture(scope="module")
def engine(registry: Registry) -> Engine:
    return Engine(registry, CPU, max_models=4)


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A picture with shapes (edges to find), not of the grid's shape (cropped to fit)."""
    pixels_ = np.zeros((60, 90, 3), np.uint8)
    pixels_[10:50, 20:45] = (250, 200, 30)
    pixels_[25:35, 55:85] = (40, 90, 240)
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(pixels_).save(path)
    return str(path)


def test_the_registry_reads_controlnets_and_says_what_each_model_can_do(registry: Registry):
    assert set(registry.controlnets) == {"sd-canny", "sd-depth", "sdxl-canny", "kandinsky-depth"}
    assert registry.control_kinds("sd") == ["canny", "depth"]
    assert registry.control_kinds("sdxl-turbo") == ["canny"]  # SDXL's ControlNets fit its Turbo
    assert registry.control_kinds("kandinsky22") == ["depth"]
    assert registry.control_kinds("sd-turbo") == []
    assert (depth := registry.controlnet_for("sd", "depth")) is not None and depth.name == "sd-depth"
    assert (first := registry.controlnet_for("sd", None)) is not None and first.name == "sd-canny"  # first listed
    for controlnet in registry.controlnets.values():
        assert all(state.ok and state.downloaded for _, state in check_controlnet(controlnet))


@pytest.mark.parametrize("entry, problem", [
    ('source = "x"\nfamily = "sd"\nkind = "sketch"', "'kind' must be one of canny, depth, pose"),
    ('source = "x"\nfamily = "sd2"\nkind = "canny"', "'family' must be one of sd, sdxl, kandinsky22"),
    ('source = "x"\nfamily = "kandinsky22"\nkind = "canny"', "depth maps only"),
    ('source = "x"\nfamily = "sd"\nkind = "canny"\nestimator = "y"', "'estimator' is a depth-estimation model"),
    ('source = "x"\nfamily = "sd"', "'kind' required"),
    ('source = "x"\nfamily = "sd"\nkind = "canny"\nweight = 2', "unknown field(s) weight"),
])
def test_a_bad_controlnet_entry_is_refused_when_the_file_is_read(tmp_path: Path, entry: str, problem: str):
    path = tmp_path / "models.toml"
    path.write_text(f'[models.m]\nsource = "s"\nfamily = "sd"\n\n[controlnets.c]\n{entry}\n', encoding="utf-8")
    with pytest.raises(RegistryError) as caught:
        load_registry(path)
    assert "ControlNet 'c'" in str(caught.value) and problem in str(caught.value)


def test_a_missing_controlnet_folder_is_said_with_what_to_do(tmp_path: Path):
    path = tmp_path / "models.toml"
    path.write_text(f'[models.m]\nsource = "s"\nfamily = "sd"\n\n[controlnets.c]\nsource = "{tmp_path}/gone"\n'
                    'family = "sd"\nkind = "canny"\n', encoding="utf-8")
    [(what, state)] = check_controlnet(load_registry(path).controlnets["c"])
    assert what == "ControlNet" and not state.ok and "does not exist" in state.detail


@pytest.mark.parametrize("kind", ["canny", "scribble", "lineart", "none"])
def test_control_images_are_made_at_the_grid_size(photo: str, kind: str):
    with Image.open(photo) as opened:
        control = make_control_image(opened, kind, (64, 48))
    assert control.size == (64, 48) and control.mode == "RGB"
    values = np.asarray(control)
    if kind != "none":  # white lines on black
        assert set(np.unique(values)) <= {0, 255} and 0 < (values == 255).mean() < 0.6


def test_pose_without_an_estimator_is_a_clear_refusal(photo: str):
    with Image.open(photo) as opened, pytest.raises(ControlError, match="OpenPose skeleton with --cn none"):
        make_control_image(opened, "pose", (64, 64))


def test_canny_control_steers_the_grid_and_comes_back_with_it(engine: Engine, registry: Registry, photo: str):
    plain = request(registry, "a red fox --seed 3 --model tiny-sd")
    steered = plain.replace(control=photo, control_kind="canny", controlnet="sd-canny")
    free, _, _ = run(engine, plain)
    held, steps, _ = run(engine, steered)
    assert len(held.images) == 4 and held.images[0].size == (64, 64)
    assert steps[-1] == (2, 2)
    assert held.control is not None and held.control.size == (64, 64)
    assert np.abs(pixels(held.images) - pixels(free.images)).max() > 5  # the control changes the result
    again, _, _ = run(engine, steered)
    assert np.array_equal(pixels(again.images), pixels(held.images))  # and repeats with the seed


def test_weight_zero_is_the_grid_without_control(engine: Engine, registry: Registry, photo: str):
    """--cw 0 scales every ControlNet residual by 0: the UNet sees what it sees without one."""
    plain = request(registry, "a red fox --seed 3 --model tiny-sd")
    free, _, _ = run(engine, plain)
    nothing, _, _ = run(engine, plain.replace(control=photo, control_kind="canny", controlnet="sd-canny",
                                              control_weight=0.0))
    assert np.abs(pixels(nothing.images) - pixels(free.images)).max() <= 1


def test_depth_control_uses_the_depth_estimator(engine: Engine, registry: Registry, photo: str):
    plain = request(registry, "a red fox --seed 3 --model tiny-sd")
    held, _, _ = run(engine, plain.replace(control=photo, control_kind="depth", controlnet="sd-depth"))
    values = np.asarray(held.control)
    assert held.control.size == (64, 64) and values.min() == 0 and values.max() == 255  # a normalised depth map
    assert len(np.unique(values)) > 10  # grey levels, not edges


def test_sdxl_controlnet_runs_from_the_cached_pipeline(engine: Engine, registry: Registry, photo: str):
    base = engine.pipelines.get(registry.get("tiny-sdxl"), "text2img")
    held, _, _ = run(engine, request(registry, "a red fox --seed 3 --model tiny-sdxl").replace(
        control=photo, control_kind="canny", controlnet="sdxl-canny"))
    assert len(held.images) == 4 and held.control is not None
    controlled = engine.pipelines.controlled(registry.get("tiny-sdxl"), registry.controlnets["sdxl-canny"])
    assert controlled.unet is base.unet and controlled.vae is base.vae  # from_pipe: one copy of the weights


def test_variation_of_a_controlled_grid_keeps_the_control(engine: Engine, registry: Registry, photo: str,
                                                          tmp_path: Path):
    grid = request(registry, "a red fox --seed 3 --model tiny-sd")
    source = tmp_path / "one.png"
    Image.new("RGB", (64, 64), (120, 30, 30)).save(source)
    varied = grid.replace(init_image=str(source), strength=0.6, control=photo, control_kind="canny",
                          controlnet="sd-canny")
    with_control, _, _ = run(engine, varied)
    without, _, _ = run(engine, varied.replace(control=None, control_kind=None, controlnet=None))
    assert with_control.control is not None
    assert np.abs(pixels(with_control.images) - pixels(without.images)).max() > 5


def test_kandinsky_depth_controlnet_mixes_text_and_images(engine: Engine, registry: Registry, photo: str,
                                                           tmp_path: Path):
    other = tmp_path / "blue.png"
    Image.new("RGB", (40, 40), (20, 40, 220)).save(other)
    blend = request(registry, "a cat --seed 4 --model tiny-kandinsky").replace(
        images=(photo, str(other)), image_weights=(1.0, 1.0))
    free, _, _ = run(engine, blend)
    held, steps, _ = run(engine, blend.replace(control=photo, control_kind="depth", controlnet="kandinsky-depth"))
    assert len(held.images) == 4 and held.control is not None and steps[-1][1] == 2
    assert np.abs(pixels(held.images) - pixels(free.images)).max() > 5
    # V of such a grid: image to image through the same ControlNet decoder's weights
    varied, _, _ = run(engine, blend.replace(control=photo, control_kind="depth", controlnet="kandinsky-depth",
                                             init_image=str(other), strength=0.6, width=64, height=48))
    assert varied.images[0].size == (64, 48) and varied.control is not None and varied.control.size == (64, 48)
    spec, controlnet = registry.get("tiny-kandinsky"), registry.controlnets["kandinsky-depth"]
    assert (engine.pipelines.controlled(spec, controlnet, img2img=True).unet
            is engine.pipelines.controlled(spec, controlnet).unet)


def test_a_controlnet_removed_since_the_job_fails_it_clearly(engine: Engine, registry: Registry, photo: str):
    req = request(registry, "a fox --seed 1 --model tiny-sd").replace(control=photo, control_kind="canny",
                                                                      controlnet="gone")
    with pytest.raises(ModelLoadError, match="ControlNet 'gone' is no longer configured"):
        run(engine, req)


@pytest.mark.parametrize("prompt, kind, weight, notice", [
    ("a fox --cn canny", "canny", None, None),
    ("a fox --cn DEPTH --cw 0.5", "depth", 0.5, None),
    ("a fox --cn none --cw 0", "none", 0.0, None),
    ("a fox --cw 3", None, 2.0, "--cw “3” is over the highest value; used 2."),
])
def test_cn_and_cw_are_read_and_written_back(prompt: str, kind, weight, notice):
    from generation.prompt import format_parameters, parse_prompt

    parsed = parse_prompt(prompt)
    assert (parsed.control_kind, parsed.control_weight) == (kind, weight)
    assert parsed.notices == ((notice,) if notice else ())
    again = parse_prompt(parsed.text + " " + format_parameters(parsed))
    assert (again.control_kind, again.control_weight) == (kind, weight)


@pytest.mark.parametrize("prompt, problem", [
    ("a fox --cn sketch", "--cn must be what the control: image becomes: canny, depth, pose, scribble, lineart"),
    ("a fox --cw -1", "--cw must be a number from 0 to 2"),
    ("a fox --cw strong", "“strong”"),
    ("a fox --cn", "--cn needs a value"),
])
def test_bad_cn_and_cw_values_are_clear_errors(prompt: str, problem: str):
    from generation.prompt import PromptError, parse_prompt

    with pytest.raises(PromptError) as caught:
        parse_prompt(prompt)
    assert problem in str(caught.value), str(caught.value)


def test_prepare_chooses_the_controlnet_and_says_what_cannot_be(registry: Registry):
    from bot.intake import RequestError, prepare_with_notices
    from storage.models import MemberPreferences

    request, _ = prepare_with_notices(registry, "a fox --cn depth --cw 0.7", control=True)
    assert (request.controlnet, request.control_kind, request.control_weight) == ("sd-depth", "depth", 0.7)
    request, _ = prepare_with_notices(registry, "a fox", control=True)  # no --cn: the family's first
    assert (request.controlnet, request.control_kind) == ("sd-canny", "canny")
    request, _ = prepare_with_notices(registry, "a fox --cn none --model tiny-sdxl", control=True)
    assert (request.controlnet, request.control_kind) == ("sdxl-canny", "none")
    request, _ = prepare_with_notices(registry, "a fox --cw 0.5")  # MidJourney's --cw, without an image
    assert request.controlnet is None and "--cw" not in request.parameters
    assert any("Ignored --cw 0.5" in n for n in request.notices)
    # "always append" may hold a --cw: it waits for a prompt with a control image
    defaults = MemberPreferences.new(1)
    defaults.append = "--cw 0.4"
    plain, _ = prepare_with_notices(registry, "a fox", defaults)
    steered, _ = prepare_with_notices(registry, "a fox", defaults, control=True)
    assert plain.controlnet is None and not plain.notices and steered.control_weight == 0.4
    for text, problem in (("a fox --model tiny-sdxl --cn depth", "No depth ControlNet is configured for tiny-sdxl"),
                          ("a fox --cn pose", "no pose estimator is configured"),
                          ("a fox --cn canny --model tiny-sdxl", None)):
        if problem is None:
            prepare_with_notices(registry, text, control=True)
            continue
        with pytest.raises(RequestError, match=problem):
            prepare_with_notices(registry, text, control=True)
    with pytest.raises(RequestError, match="attach one to the `control` option"):
        prepare_with_notices(registry, "a fox --cn canny")


def test_a_model_without_controlnets_names_those_that_have_one(registry: Registry):
    from bot.intake import RequestError, prepare_with_notices

    plain = load_registry(None)  # the built-in models: no ControlNets at all
    with pytest.raises(RequestError, match="No model here can: ask an admin"):
        prepare_with_notices(plain, "a fox", control=True)
    with pytest.raises(RequestError, match="tiny-upscaler"):  # (not a text-to-image model)
        prepare_with_notices(registry, "a fox --model tiny-upscaler", control=True)
