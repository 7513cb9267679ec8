"""ESRGAN-family upscalers (generation/esrgan.py, generation/tiling.py) and Upscale (Creative)
(generation/creative.py): tiny random-weight networks of the real architectures (Real-ESRGAN's
SRVGGNetCompact, ESRGAN's RRDBNet), saved as .pth and .safetensors files in code and loaded
through the registry and the engine's pipeline cache, as an admin's downloaded files are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generation.availability import ModelLoadError
from generation.devices import choose_device
from generation.engine import Engine, GenerationStopped
from generation.esrgan import enlarge, unusable
from generation.registry import RegistryError, load_registry
from generation.request import JobKind, Request
from generation.tiling import Stop, blend_tiles, tile_count, tile_starts
from tests.engine_helpers import picture_maker, request, run
from tests.tiny_models import build_esrgan

CPU = choose_device("cpu")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("esrgan")
    return {
        "compact-x2": build_esrgan(folder / "RealESRGAN-compact-x2.pth", arch="compact", scale=2),
        "compact-x4": build_esrgan(folder / "compact-x4.safetensors", arch="compact", scale=4),
        "rrdb-x4": build_esrgan(folder / "4x-rrdb.safetensors", arch="rrdb", scale=4),
    }


def registry_with(tmp_path: Path, sd: Path, upscaler: Path, *, native_side: int = 64):
    path = tmp_path / "models.toml"
    path.write_text(f'''
default = "tiny-sd"
upscaler = "esrgan"

[models.tiny-sd]
source = "{sd}"
family = "sd"
native_side = {native_side}
steps = 2

[models.esrgan]
source = "{upscaler}"
family = "esrgan"
''', encoding="utf-8")
    return load_registry(path)


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory):
    return picture_maker(tmp_path_factory.mktemp("pictures"))


def array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# -- tiles ------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 31, 32, 33, 47, 48, 100, 257, 1000])
def test_tiles_cover_each_side_and_overlap_their_neighbours(length: int):
    tile, overlap = 32, 8
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and min(starts[-1] + tile, length) == length
    for a, b in zip(starts, starts[1:], strict=False):
        assert a + tile - b >= overlap  # neighbours share at least the overlap
    # and no more tiles than needed: one fewer could not cover the side with that overlap
    assert len(starts) == 1 or (len(starts) - 1) * (tile - overlap) + overlap < length


def test_overlap_must_be_smaller_than_the_tile():
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(100, 16, 16)


# -- the network through the registry -----------------------------------------------------------


@pytest.mark.parametrize("name", ["compact-x2", "compact-x4", "rrdb-x4"])
def test_a_weights_file_loads_through_the_registry_and_the_pipeline_cache(tmp_path, tiny_models, weights, name):
    registry = registry_with(tmp_path, tiny_models["sd"], weights[name])
    spec = registry.get("esrgan")
    assert spec.is_upscaler and not spec.can_generate and not spec.single_file and registry.upscaler == "esrgan"
    model = Engine(registry, CPU).pipelines.get(spec, "esrgan")
    assert model.scale == int(name[-1]) and model.architecture.id in ("Compact", "ESRGAN")


@pytest.mark.parametrize("name", ["compact-x2", "compact-x4", "rrdb-x4"])
def test_tiled_is_the_untiled_picture(tmp_path, tiny_models, weights, picture, name):
    """Overlapping tiles, cross-faded, give what the network gives on the whole picture (to the
    last bit where it sees few pixels: these nets' receptive fields lie within a quarter of the
    overlap; a rounding step at most elsewhere)."""
    model = Engine(registry_with(tmp_path, tiny_models["sd"], weights[name]), CPU).pipelines.get(
        load_registry(tmp_path / "models.toml").get("esrgan"), "esrgan")
    image = Image.open(picture(90, 70)).convert("RGB")
    whole = enlarge(model, image, model.scale, tile=1000, overlap=0)
    tiled = enlarge(model, image, model.scale, tile=32, overlap=16)
    assert tiled.size == whole.size == (90 * model.scale, 70 * model.scale)
    difference = np.abs(array(tiled) - array(whole))
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3


def test_memory_is_one_tile_whatever_the_picture(tmp_path, tiny_models, weights, picture):
    """The network only ever sees tiles of at most tile × tile pixels, as many as tile_count
    says: the device holds one tile and its enlargement, for a picture of any size."""
    model = Engine(registry_with(tmp_path, tiny_models["sd"], weights["compact-x2"]), CPU).pipelines.get(
        load_registry(tmp_path / "models.toml").get("esrgan"), "esrgan")
    seen: list[tuple[int, ...]] = []

    class Recording:
        scale, device, dtype = model.scale, model.device, model.dtype

        def __call__(self, pixels):
            seen.append(tuple(pixels.shape))
            return model(pixels)

    image = Image.open(picture(200, 130)).convert("RGB")
    reported: list[tuple[int, int]] = []
    out = enlarge(Recording(), image, 2, tile=48, overlap=12,
                  on_tile=lambda done, total: reported.append((done, total)))
    assert out.size == (400, 260)
    assert len(seen) == tile_count(200, 130, tile=48, overlap=12) == 6 * 4  # ⌈(200 − 12)/36⌉ × ⌈(130 − 12)/36⌉
    assert all(shape[2] <= 48 and shape[3] <= 48 for shape in seen)
    assert reported == [(i, len(seen)) for i in range(1, len(seen) + 1)]


def test_a_four_times_network_makes_a_two_times_upscale(tmp_path, tiny_models, weights, picture):
    model = Engine(registry_with(tmp_path, tiny_models["sd"], weights["rrdb-x4"]), CPU).pipelines.get(
        load_registry(tmp_path / "models.toml").get("esrgan"), "esrgan")
    image = Image.open(picture(40, 24)).convert("RGB")
    assert enlarge(model, image, 2).size == (80, 48)


def test_stopping_between_tiles():
    calls: list[Image.Image] = []

    def process(tile: Image.Image) -> Image.Image:
        calls.append(tile)
        return tile

    with pytest.raises(Stop):
        blend_tiles(Image.new("RGB", (100, 100)), process, scale=1, tile=40, overlap=10,
                    should_stop=lambda: len(calls) >= 2)
    assert len(calls) == 2


def test_files_that_are_not_an_upscaler_are_refused(tmp_path, tiny_models, weights):
    bad = tmp_path / "notes.pth"
    import torch

    torch.save({"hello": torch.zeros(3)}, bad)
    registry = registry_with(tmp_path, tiny_models["sd"], bad)
    with pytest.raises(ModelLoadError) as err:
        Engine(registry, CPU).pipelines.get(registry.get("esrgan"), "esrgan")
    assert "esrgan" in str(err.value) and str(bad) not in str(err.value)  # the member sees no path
    assert str(bad) in err.value.detail  # the log does


@pytest.mark.parametrize("source, config", [("/models/4x.bin", ""), ("/models/4x.pth", 'config = "x"\n')])
def test_the_registry_wants_a_weights_file_for_an_esrgan_entry(tmp_path, source, config):
    path = tmp_path / "models.toml"
    path.write_text(f'[models.up]\nsource = "{source}"\nfamily = "esrgan"\n{config}', encoding="utf-8")
    with pytest.raises(RegistryError, match="weights file"):
        load_registry(path)


# -- through the engine: Upscale (Subtle) and (Creative) -----------------------------------------


def upscale(registry, init: str, **changes) -> Request:
    return request(registry, "a red fox --seed 9", kind="upscale", model="esrgan", init_image=init, count=1,
                   steps=2, guidance=0.0).replace(**changes)


def test_subtle_upscale_by_the_network_is_two_times_and_reproducible(tmp_path, tiny_models, weights, picture):
    registry = registry_with(tmp_path, tiny_models["sd"], weights["compact-x4"])
    engine = Engine(registry, CPU)
    result, steps, _ = run(engine, upscale(registry, picture(48, 40)))
    assert [image.size for image in result.images] == [(96, 80)] and result.notices == []
    assert steps == [(1, 1)]  # one tile: progress per tile
    again, _, _ = run(engine, upscale(registry, picture(48, 40)))
    assert np.array_equal(array(result.images[0]), array(again.images[0]))


def test_creative_upscale_repaints_the_enlarged_picture_with_the_model_that_made_it(tmp_path, tiny_models,
                                                                                       weights, picture):
    registry = registry_with(tmp_path, tiny_models["sd"], weights["compact-x2"], native_side=64)
    engine = Engine(registry, CPU)
    subtle, _, _ = run(engine, upscale(registry, picture(80, 72)))
    creative_request = upscale(registry, picture(80, 72), model="tiny-sd", upscaler="esrgan", strength=0.5,
                               steps=2, guidance=5.0)
    creative, steps, _ = run(engine, creative_request)
    assert creative.images[0].size == subtle.images[0].size == (160, 144)
    # repainted: not the network's picture, but close to it (a low strength keeps the picture)
    difference = np.abs(array(creative.images[0]) - array(subtle.images[0]))
    assert difference.mean() > 1
    # the network's one tile, then 160×144 at a native 64 px: repainted in tiles of 64
    # overlapping by 16, one img2img step each (int(2 steps × 0.5))
    assert len(steps) == 1 + tile_count(160, 144, tile=64, overlap=16) == 1 + 9
    again, _, _ = run(engine, creative_request)
    assert np.array_equal(array(creative.images[0]), array(again.images[0]))


def test_creative_upscale_stops_between_steps(tmp_path, tiny_models, weights, picture):
    registry = registry_with(tmp_path, tiny_models["sd"], weights["compact-x2"], native_side=64)
    with pytest.raises(GenerationStopped):
        run(Engine(registry, CPU), upscale(registry, picture(80, 72), model="tiny-sd", upscaler="esrgan",
                                           strength=0.5, steps=2), stop_after=2)


# -- grey, RGBA and unusable networks (issue 26, item 18) -----------------------------------------


def _net_on(model, planes: np.ndarray) -> np.ndarray:
    """The network itself on (H, W, C) 8-bit planes, whole: (sH, sW, C') 8-bit, as enlarge rounds."""
    import torch

    pixels = torch.from_numpy(planes.astype(np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)
    with torch.no_grad():
        out = model(pixels)[0].clamp(0, 1).mul(255).round()
    return out.to(torch.uint8).permute(1, 2, 0).numpy().astype(np.int16)


def _load(tmp_path, tiny_models, path):
    registry = registry_with(tmp_path, tiny_models["sd"], path)
    return registry, Engine(registry, CPU).pipelines.get(registry.get("esrgan"), "esrgan")


@pytest.mark.parametrize("arch", ["compact", "rrdb"])
def test_a_grey_network_enlarges_the_luma_and_keeps_the_colour(tmp_path, tiny_models, picture, arch):
    """The example: a one-channel (greyscale) ESRGAN loaded, then failed every upscale (a
    3-channel tile into a 1-channel convolution). It reads the picture's luma now: a grey
    picture comes back grey, exactly the network's own result on its grey values (tiles
    cross-faded: within 1); a colour picture keeps its colour (Cb, Cr as Lanczos enlarges them)
    around the network's luma. Upscale (Subtle) through the engine works."""
    path = build_esrgan(tmp_path / f"1x-grey-{arch}.pth", arch=arch, scale=2, channels=(1, 1))
    registry, model = _load(tmp_path, tiny_models, path)
    assert (model.input_channels, model.output_channels, model.scale) == (1, 1, 2) and unusable(model) is None

    grey = Image.open(picture(90, 70)).convert("L")
    enlarged = enlarge(model, grey.convert("RGB"), 2, tile=32, overlap=16)
    assert enlarged.mode == "RGB" and enlarged.size == (180, 140)
    rgb = array(enlarged)
    assert np.abs(rgb[..., 0] - rgb[..., 1]).max() <= 1 and np.abs(rgb[..., 0] - rgb[..., 2]).max() <= 1
    expected = _net_on(model, np.asarray(grey)[..., None])[..., 0]
    difference = np.abs(rgb[..., 1] - expected)
    assert difference.max() <= 2 and difference.mean() < 0.2  # cross-faded tiles, YCbCr rounding

    colour = Image.open(picture(90, 70)).convert("RGB")
    result = enlarge(model, colour, 2, tile=1000, overlap=0)
    assert result.mode == "RGB" and result.size == (180, 140)
    if arch == "compact":  # (the random RRDBNet writes mostly 0 and 255: no colour fits there)
        ycbcr = array(result.convert("YCbCr"))
        luma = _net_on(model, np.asarray(colour.convert("YCbCr"))[..., :1])[..., 0]
        chroma = array(colour.convert("YCbCr").resize((180, 140), Image.Resampling.LANCZOS))
        # where the colour fits in RGB at that luma (not clipped), it is the picture's own colour
        inside = (array(result) > 0).all(axis=-1) & (array(result) < 255).all(axis=-1)
        assert inside.mean() > 0.3
        assert np.abs(ycbcr[..., 0] - luma)[inside].mean() < 1.0  # YCbCr → RGB → YCbCr rounds
        assert np.abs(ycbcr[..., 1:] - chroma[..., 1:])[inside].mean() < 1.5
        assert np.abs(ycbcr[..., 1:] - 128).mean() > 10  # still a colour picture

    upscale = request(registry, "a fox").replace(kind=JobKind.UPSCALE, model="esrgan", init_image=picture(48, 40),
                                                 count=1, steps=0, width=48, height=40)
    done, _, _ = run(Engine(registry, CPU), upscale)
    assert done.images[0].size == (96, 80) and done.notices == []


def test_an_rgba_network_reads_the_picture_opaque(tmp_path, tiny_models, picture):
    path = build_esrgan(tmp_path / "rgba.pth", arch="compact", scale=2, channels=(4, 4))
    _, model = _load(tmp_path, tiny_models, path)
    image = Image.open(picture(40, 30)).convert("RGB")
    planes = np.concatenate([np.asarray(image), np.full((30, 40, 1), 255, np.uint8)], axis=-1)
    assert np.abs(array(enlarge(model, image, 2, tile=1000, overlap=0)) - _net_on(model, planes)[..., :3]).max() == 0


@pytest.mark.parametrize("channels", [(2, 2), (5, 3), (3, 6)])
def test_a_network_of_other_channel_counts_is_refused_naming_the_entry(tmp_path, tiny_models, channels):
    """What Pintor cannot feed or show is refused when the model is loaded, naming the entry,
    the file and the counts (a 6-channel output spandrel itself refuses, with an assertion:
    refused the same way, in spandrel's words), never a failure inside an upscale."""
    path = build_esrgan(tmp_path / f"odd-{channels[0]}-{channels[1]}.pth", arch="compact", channels=channels)
    registry = registry_with(tmp_path, tiny_models["sd"], path)
    with pytest.raises(ModelLoadError) as err:
        Engine(registry, CPU).pipelines.get(registry.get("esrgan"), "esrgan")
    assert "'esrgan'" in err.value.detail and str(path) in err.value.detail
    if channels[1] == 6:
        assert "AssertionError" in err.value.detail and "output channels" in err.value.detail
    else:
        assert f"reads {channels[0]} and writes {channels[1]} colour channels" in err.value.detail
    assert str(path) not in str(err.value)  # the member sees no path


def test_pintor_doctor_names_an_upscaler_it_cannot_use(tmp_path, tiny_models, capsys):
    """`pintor doctor` reads each upscaler's file as the worker would: a 2-channel network is a
    problem named by its entry before any job; a grey one is fine, with its channels."""
    import asyncio

    from bot.doctor import doctor
    from bot.settings import Settings

    def checked(path: Path) -> str:
        registry_with(tmp_path, tiny_models["sd"], path)
        settings = Settings(**{"_env_file": None, "pintor_data_dir": tmp_path / "data",
                               "pintor_models": tmp_path / "models.toml",
                               "database_url": f"sqlite+aiosqlite:///{tmp_path / 'pintor.db'}"})
        asyncio.run(doctor(settings))
        return capsys.readouterr().out

    odd = checked(build_esrgan(tmp_path / "odd.pth", channels=(2, 2)))
    assert "[PROBLEM] upscaler esrgan: cannot use upscaler 'esrgan' from" in odd
    assert "reads 2 and writes 2 colour channels" in odd
    grey = checked(build_esrgan(tmp_path / "grey.pth", channels=(1, 1)))
    assert "[     ok] upscaler esrgan: RealESRGAN Compact ×2, 1 → 1 channels" in grey


def test_unusable_names_what_cannot_be_used():
    class Described:
        def __init__(self, channels_in, channels_out, scale):
            self.input_channels, self.output_channels, self.scale = channels_in, channels_out, scale

    assert [unusable(Described(*args)) is None for args in [(3, 3, 4), (1, 1, 2), (4, 3, 1), (1, 3, 8)]] == [True] * 4
    assert "scale is 0" in str(unusable(Described(3, 3, 0)))
    assert "scale is 1.5" in str(unusable(Described(3, 3, 1.5)))
    assert "reads 3 and writes 2" in str(unusable(Described(3, 2, 2)))
