"""Remote models (OpenAI's image API, generation/remote.py): the registry entry, sizes, the
engine and the worker against the local stand-in of the API (tests/openai_standin.py), and what
a member, the database and the logs hear of the provider's refusals (never the key or a request id)."""

from __future__ import annotations

import io
import logging
import multiprocessing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bot.settings import Settings
from bot.wiring import worker_config
from generation.devices import choose_device
from generation.engine import Engine, GenerationStopped
from generation.events import Done, Failed
from generation.registry import OPENAI_MODELS, Registry, RegistryError, RemoteLimits, load_registry, nearest_size
from generation.remote import RemoteRefusal, RemoteSettings, input_picture
from generation.request import JobKind
from generation.worker import WorkerConfig, _Worker
from tests.engine_helpers import picture_maker, request, run
from tests.openai_standin import REQUEST_ID, TEST_KEY, OpenAIStandIn

REMOTE_REGISTRY = '''
default = "dalle3"

[models.dalle3]
family = "openai"
model = "dall-e-3"
description = "DALL·E 3"

[models.dalle2]
family = "openai"
model = "dall-e-2"
native_side = 256

[models.gpt]
family = "openai"
model = "gpt-image-1"

[models.dalle3-one]
family = "openai"
model = "dall-e-3"
images = 1
'''


@pytest.fixture
def quiet_provider_loggers():
    """The provider's loggers quieted as the worker quiets them, and put back after the test."""
    from generation.remote import PROVIDER_LOGGERS, quiet_provider_logs

    levels = {name: logging.getLogger(name).level for name in PROVIDER_LOGGERS}
    quiet_provider_logs()
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    path = tmp_path / "models.toml"
    path.write_text(REMOTE_REGISTRY, encoding="utf-8")
    return load_registry(path)


@pytest.fixture(scope="module")
def api():
    with OpenAIStandIn() as standin:
        yield standin


@pytest.fixture
def engine(registry: Registry, api: OpenAIStandIn) -> Engine:
    api.reset()
    return Engine(registry, choose_device("cpu"),
                  remote_settings=RemoteSettings(api_key=TEST_KEY, base_url=api.base_url, timeout_s=5, max_retries=2))


# -- the registry entry and sizes ------------------------------------------------------------------

def test_remote_entries_parse_with_their_limits(registry: Registry):
    dalle3 = registry.get("dalle3")
    assert dalle3.is_remote and dalle3.can_generate and not dalle3.can_blend
    assert dalle3.model == "dall-e-3" and dalle3.images == 4 and dalle3.source == "openai:dall-e-3"
    assert dalle3.remote_limits is OPENAI_MODELS["dall-e-3"] and dalle3.remote_limits.max_n == 1
    assert registry.get("dalle3-one").images == 1
    assert registry.get("dalle2").remote_limits == OPENAI_MODELS["dall-e-2"] and OPENAI_MODELS["dall-e-2"].varies
    assert OPENAI_MODELS["gpt-image-1"].edits and not OPENAI_MODELS["gpt-image-1"].varies
    assert not (dalle3.remote_limits.edits or dalle3.remote_limits.varies)


@pytest.mark.parametrize(("entry", "says"), [
    ('family = "openai"', "'model' must be one of dall-e-2, dall-e-3, gpt-image-1"),
    ('family = "openai"\nmodel = "dall-e-4"', "not 'dall-e-4'"),
    ('family = "openai"\nmodel = "dall-e-3"\nimages = 2', "'images' must be 1"),
    ('family = "openai"\nmodel = "dall-e-3"\nimages = true', "'images' must be 1"),
    ('family = "openai"\nmodel = "dall-e-3"\nsource = "x"', "has no source"),
    ('family = "openai"\nmodel = "dall-e-3"\nvae = "x"', "has no vae"),
    ('family = "openai"\nmodel = "dall-e-3"\nbase_url = "ftp://x"', "'base_url' must be an http(s) URL"),
    ('family = "openai"\nmodel = "dall-e-3"\nnative_side = 8', "'native_side' must be"),
    ('source = "a/b"\nfamily = "sd"\nmodel = "dall-e-3"', "belong to remote families"),
])
def test_bad_remote_entries_are_refused_with_the_field(tmp_path: Path, entry: str, says: str):
    path = tmp_path / "models.toml"
    path.write_text(f"[models.x]\n{entry}\n", encoding="utf-8")
    with pytest.raises(RegistryError, match=says.replace("(", r"\(").replace(")", r"\)")):
        load_registry(path)


@pytest.mark.parametrize(("model", "width", "height", "expected"), [
    ("dall-e-3", 1024, 1024, (1024, 1024)),
    ("dall-e-3", 1456, 816, (1792, 1024)),   # --ar 16:9
    ("dall-e-3", 816, 1456, (1024, 1792)),   # --ar 9:16
    ("dall-e-3", 1140, 912, (1024, 1024)),   # --ar 5:4 is nearer 1:1 than 7:4
    ("dall-e-3", 1184, 880, (1792, 1024)),   # --ar 4:3 is (just) nearer 7:4, as logarithms of ratios
    ("dall-e-3", 2048, 512, (1792, 1024)),   # --ar 4:1: the widest it makes
    ("gpt-image-1", 1248, 832, (1536, 1024)),  # --ar 3:2
    ("gpt-image-1", 832, 1248, (1024, 1536)),
    ("dall-e-2", 1456, 816, (1024, 1024)),   # squares only: the pixel count decides
    ("dall-e-2", 256, 256, (256, 256)),
    ("dall-e-2", 600, 500, (512, 512)),
])
def test_the_nearest_supported_size(model: str, width: int, height: int, expected: tuple[int, int]):
    assert nearest_size(OPENAI_MODELS[model], width, height) == expected


def test_a_prompt_for_a_remote_model_is_sized_and_told_what_does_not_apply(registry: Registry):
    req = request(registry, "a lighthouse --ar 16:9 --model dalle3 --seed 7 --no fog")
    assert (req.width, req.height, req.count, req.negative) == (1792, 1024, 4, "")
    text = " ".join(req.notices)
    assert "1792×1024" in text and "takes no seed" in text and "--no" in text and "no negative" in text
    assert request(registry, "a lighthouse --model dalle3-one").count == 1
    assert (request(registry, "a lighthouse --model dalle2").width, request(registry, "x --model dalle2").height) \
        == (256, 256)


# -- the engine against the stand-in ----------------------------------------------------------------

def test_dall_e_3_makes_a_grid_of_four_with_four_requests(engine: Engine, registry: Registry, api: OpenAIStandIn):
    req = request(registry, "a red fox in snow --ar 16:9 --model dalle3")
    result, steps, previews = run(engine, req)
    calls = api.image_calls("generations")
    assert len(calls) == 4
    assert all(c.fields["model"] == "dall-e-3" and c.fields["n"] == 1 and c.fields["size"] == "1792x1024"
               and c.fields["prompt"] == "a red fox in snow" and c.fields["response_format"] == "b64_json"
               and c.authorization == f"Bearer {TEST_KEY}" for c in calls)
    assert [image.size for image in result.images] == [(1792, 1024)] * 4
    assert len({image.getpixel((0, 0)) for image in result.images}) == 4  # four different pictures
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)] and previews[0].size == (1792, 1024)


def test_dall_e_2_and_gpt_image_ask_for_four_at_once(engine: Engine, registry: Registry, api: OpenAIStandIn):
    run(engine, request(registry, "a fox --model dalle2"))
    result, _, _ = run(engine, request(registry, "a fox --model gpt --ar 2:3"))
    first, second = api.image_calls("generations")
    assert (first.fields["n"], first.fields["size"], first.fields["model"]) == (4, "256x256", "dall-e-2")
    # gpt-image-1 refuses response_format (it always answers base64): not sent
    assert (second.fields["n"], second.fields["size"], "response_format" in second.fields) == (4, "1024x1536", False)
    assert [image.size for image in result.images] == [(1024, 1536)] * 4


def test_pictures_given_by_url_are_fetched(engine: Engine, registry: Registry, api: OpenAIStandIn):
    api.answer = "url"
    result, _, _ = run(engine, request(registry, "a fox --model dalle2"))
    assert [image.size for image in result.images] == [(256, 256)] * 4 and result.images[0].mode == "RGB"


def test_v_on_dall_e_2_uses_variations_and_on_gpt_image_edits(engine: Engine, registry: Registry,
                                                              api: OpenAIStandIn, tmp_path: Path):
    picture = picture_maker(tmp_path)(256, 256)
    base = request(registry, "a fox --model dalle2")
    result, _, _ = run(engine, base.replace(kind=JobKind.VARIATION, init_image=picture, strength=0.6))
    [call] = api.image_calls("variations")
    assert (call.fields["n"], call.fields["size"], call.fields["model"]) == ("4", "256x256", "dall-e-2")
    assert Image.open(io.BytesIO(call.fields["image"])).size == (256, 256)  # the picture itself, as PNG
    assert len(result.images) == 4 and result.notices == []  # sent as it is: nothing to say
    gpt = request(registry, "a fox at dusk --model gpt")
    run(engine, gpt.replace(kind=JobKind.VARIATION, init_image=picture, strength=0.6))
    [edit] = api.image_calls("edits")
    assert (edit.fields["prompt"], edit.fields["model"], edit.fields["n"]) == ("a fox at dusk", "gpt-image-1", "4")


def test_v_on_dall_e_3_is_refused(engine: Engine, registry: Registry, api: OpenAIStandIn, tmp_path: Path):
    picture = picture_maker(tmp_path)(64, 64)
    req = request(registry, "a fox --model dalle3").replace(kind=JobKind.VARIATION, init_image=picture)
    with pytest.raises(RemoteRefusal, match="no variation or edit call"):
        run(engine, req)
    assert api.image_calls() == []


def test_a_stop_between_requests_stops_the_grid(engine: Engine, registry: Registry, api: OpenAIStandIn):
    with pytest.raises(GenerationStopped):
        run(engine, request(registry, "a fox --model dalle3"), stop_after=2)
    assert len(api.image_calls()) == 2  # the two left were never asked for (nor paid)


# -- refusals: clear, and never the key or a request id ---------------------------------------------

@pytest.mark.parametrize(("mode", "says", "tries"), [
    ("content_policy", "refused this prompt under its content policy", 1),
    ("bad_key", "refused Pintor's API key", 1),
    ("quota", "quota with the image provider is used up", 3),   # a 429: the client retries it
    ("rate_limit", "rate limit), still after 3 tries", 3),
    ("server_error", "failed (HTTP 500)", 3),
    ("slow", "did not answer within 0.3 s", 3),
])
def test_refusals_are_clear_and_keep_the_key_and_request_id_out(
        registry: Registry, api: OpenAIStandIn, caplog: pytest.LogCaptureFixture, quiet_provider_loggers,
        mode: str, says: str, tries: int):
    api.reset()
    api.mode, api.slow_s = mode, 1.0
    engine = Engine(registry, choose_device("cpu"), remote_settings=RemoteSettings(
        api_key=TEST_KEY, base_url=api.base_url, timeout_s=0.3, max_retries=2))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(RemoteRefusal) as refused:
        run(engine, request(registry, "a fox --model dalle2"))
    message = str(refused.value)
    assert says in message, message
    assert len(api.image_calls()) == tries  # the client's max_retries, then a clear failure
    for secret in (TEST_KEY, REQUEST_ID, TEST_KEY[-8:]):
        assert secret not in message
        assert secret not in caplog.text
    assert "dalle2: the image provider refused" in caplog.text  # the operator's log line: kind and status


def test_without_a_key_nothing_is_asked(registry: Registry, api: OpenAIStandIn):
    api.reset()
    engine = Engine(registry, choose_device("cpu"), remote_settings=RemoteSettings(base_url=api.base_url))
    with pytest.raises(RemoteRefusal, match="OPENAI_API_KEY"):
        run(engine, request(registry, "a fox --model dalle2"))
    assert api.calls == []


# -- the worker: its events and logs ---------------------------------------------------------------

def _worker_run(config: WorkerConfig, engine: Engine, jobs) -> list:
    ours, theirs = multiprocessing.Pipe()
    worker = _Worker(theirs, config)
    worker.run_batch(engine, jobs)
    events = []
    while ours.poll(0.1):
        events.append(ours.recv()[1])
    return events


def test_the_worker_posts_four_pictures_and_a_grid(engine: Engine, registry: Registry, tmp_path: Path):
    events = _worker_run(WorkerConfig(output_dir=str(tmp_path)), engine,
                         [(5, request(registry, "a fox --model dalle2"))])
    done = events[-1]
    assert isinstance(done, Done) and len(done.images) == 4 and (done.grid.width, done.grid.height) == (512, 512)
    assert (tmp_path / "jobs" / "5" / "grid.png").is_file()


def test_the_worker_fails_a_refused_job_with_the_member_message_only(
        registry: Registry, api: OpenAIStandIn, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        quiet_provider_loggers):
    api.reset()
    api.mode = "bad_key"
    caplog.set_level(logging.DEBUG)
    config = WorkerConfig(output_dir=str(tmp_path), openai_api_key=TEST_KEY, openai_base_url=api.base_url)
    engine = Engine(registry, choose_device("cpu"), remote_settings=RemoteSettings(
        api_key=TEST_KEY, base_url=api.base_url, max_retries=0))
    [failed] = _worker_run(config, engine, [(6, request(registry, "a fox --model dalle3"))])
    assert isinstance(failed, Failed) and "refused Pintor's API key" in failed.reason
    assert "Traceback" not in caplog.text
    for secret in (TEST_KEY, REQUEST_ID):
        assert secret not in failed.reason and secret not in caplog.text and secret not in repr(config)


def test_the_key_reaches_the_worker_from_either_setting_and_not_its_repr(tmp_path: Path):
    base: dict[str, Any] = {"_env_file": None, "pintor_data_dir": tmp_path}
    assert worker_config(Settings(**base | {"openai_api_key": TEST_KEY})).openai_api_key == TEST_KEY
    both = Settings(**base | {"openai_api_key": "sk-other", "pintor_openai_api_key": TEST_KEY,
                              "openai_base_url": "http://127.0.0.1:9/v1"})
    config = worker_config(both)
    assert (config.openai_api_key, config.openai_base_url) == (TEST_KEY, "http://127.0.0.1:9/v1")
    assert TEST_KEY not in repr(config) and TEST_KEY not in repr(both)
    assert worker_config(Settings(**base | {"openai_api_key": ""})).openai_api_key is None


# -- what the operator sees: pintor models, pintor doctor --------------------------------------------

def _settings(tmp_path: Path, **values: Any) -> Settings:
    path = tmp_path / "models.toml"
    path.write_text(REMOTE_REGISTRY, encoding="utf-8")
    return Settings(**{"_env_file": None, "pintor_data_dir": tmp_path / "data", "pintor_models": path,
                       "database_url": f"sqlite+aiosqlite:///{tmp_path / 'pintor.db'}"} | values)


def test_pintor_models_lists_remote_entries_and_never_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from bot.cli import models

    assert models(_settings(tmp_path, openai_api_key=TEST_KEY)) == 0
    out = capsys.readouterr().out
    assert "dalle3           openai       remote: dall-e-3 through the API at https://api.openai.com/v1" in out
    assert "no vary (the API has no variation or edit call)" in out and "vary (API variations)" in out
    assert "imagine (1 picture, no grid)" in out and "API key set" in out and TEST_KEY not in out
    assert models(_settings(tmp_path)) == 0
    assert "API key NOT set (OPENAI_API_KEY)" in capsys.readouterr().out


def test_pintor_doctor_checks_the_key_without_printing_it(tmp_path: Path, api: OpenAIStandIn,
                                                         capsys: pytest.CaptureFixture[str]):
    import asyncio

    from bot.doctor import doctor

    asyncio.run(doctor(_settings(tmp_path), reach=True))
    assert "[PROBLEM] remote models: dalle3, dalle2, gpt, dalle3-one need an OpenAI API key" in capsys.readouterr().out
    asyncio.run(doctor(_settings(tmp_path, openai_api_key=TEST_KEY, openai_base_url=api.base_url), reach=True))
    out = capsys.readouterr().out
    assert "[     ok] remote models: dalle3, dalle2, gpt, dalle3-one: API key set (not shown)" in out
    assert f"[     ok] remote API: {api.base_url} answers to the key" in out and TEST_KEY not in out
    asyncio.run(doctor(_settings(tmp_path, openai_api_key="sk-wrong", openai_base_url=api.base_url), reach=True))
    out = capsys.readouterr().out
    assert f"[PROBLEM] remote API: {api.base_url} refuses the key (401)" in out
    assert "sk-wrong" not in out and TEST_KEY not in out and REQUEST_ID not in out


def test_the_compile_warm_up_never_asks_the_paid_api(engine: Engine, api: OpenAIStandIn):
    from generation.warmup import warm_up

    report = warm_up(engine, "default")  # the registry's default is dalle3, and every model is remote
    assert report == {"compile": "default", "model": "none (remote models only)", "side": 0, "seconds": 0.0}
    assert api.calls == []


def test_a_prompt_longer_than_the_model_reads_is_cut_and_said(engine: Engine, registry: Registry,
                                                               api: OpenAIStandIn):
    words = "a very long description of a harbour at night " * 30  # 1,410 characters
    req = request(registry, f"{words} --model dalle2")
    assert any("reads 1000 characters" in notice for notice in req.notices)
    run(engine, req)
    [call] = api.image_calls("generations")
    assert call.fields["prompt"] == words.strip()[:1000]
    assert not any("reads" in n for n in request(registry, f"{words} --model dalle3").notices)


# -- the pictures a variation uploads fit the provider's limits (issue 26, item 19) ----------------


def _heavy_png(path: Path, width: int, height: int) -> str:
    """A PNG that compresses badly: random noise over its top half, a flat colour below (a
    2048² one is about 6.3 MB, as an upscaled DALL·E 2 picture is)."""
    rng = np.random.default_rng(3)
    pixels = np.full((height, width, 3), 90, dtype=np.uint8)
    pixels[: height // 2] = rng.integers(0, 256, (height // 2, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


def test_v_under_an_upscaled_dall_e_2_picture_sends_a_square_png_under_4_mb(engine: Engine, registry: Registry,
                                                                             api: OpenAIStandIn, tmp_path: Path):
    """The example: the 2048² upscale (6.3 MB) went as it was, over dall-e-2's 4 MB (the
    stand-in answers 400 as the API does). Now it goes at 1024² (the largest dall-e-2
    makes), under 4 MB, and the member is told."""
    upscaled = _heavy_png(tmp_path / "upscaled.png", 2048, 2048)
    assert Path(upscaled).stat().st_size > 6_000_000
    base = request(registry, "a fox --model dalle2")
    result, _, _ = run(engine, base.replace(kind=JobKind.VARIATION, init_image=upscaled, strength=0.6))
    [call] = api.image_calls("variations")
    sent = call.fields["image"]
    assert len(sent) < 4_000_000
    with Image.open(io.BytesIO(sent)) as picture:
        assert (picture.format, picture.size) == ("PNG", (1024, 1024))
    assert len(result.images) == 4
    assert result.notices == ["The picture was sent to dall-e-2 at 1024×1024 (it is 2048×2048): it takes PNG files "
                              "under 4 MB, square pictures, at most 1024 pixels a side (the largest it makes)."]


def test_v_on_dall_e_2_of_a_picture_that_is_not_square_sends_its_centre_square(
        engine: Engine, registry: Registry, api: OpenAIStandIn, tmp_path: Path):
    path = tmp_path / "wide.png"
    pixels = np.zeros((200, 300, 3), dtype=np.uint8)
    pixels[:, 50:250] = 255  # the centre square is white, the sides black
    Image.fromarray(pixels).save(path)
    result, _, _ = run(engine, request(registry, "a fox --model dalle2").replace(
        kind=JobKind.VARIATION, init_image=str(path), strength=0.6))
    [call] = api.image_calls("variations")
    with Image.open(io.BytesIO(call.fields["image"])) as picture:
        assert picture.size == (200, 200) and np.asarray(picture).min() == 255
    assert "at 200×200 (it is 300×200)" in result.notices[0] and "square pictures" in result.notices[0]


def test_v_on_gpt_image_keeps_the_shape_and_fits_its_largest_side(engine: Engine, registry: Registry,
                                                                  api: OpenAIStandIn, tmp_path: Path):
    wide = _heavy_png(tmp_path / "wide.png", 2048, 1024)
    result, _, _ = run(engine, request(registry, "a fox at dusk --model gpt").replace(
        kind=JobKind.VARIATION, init_image=wide, strength=0.6))
    [edit] = api.image_calls("edits")
    [image] = [value for name, value in edit.fields.items() if name.startswith("image")]
    with Image.open(io.BytesIO(image)) as picture:
        assert picture.size == (1536, 768)
    assert result.notices == ["The picture was sent to gpt-image-1 at 1536×768 (it is 2048×1024): it takes PNG "
                              "files under 50 MB, at most 1536 pixels a side (the largest it makes)."]


@pytest.mark.parametrize("square", [True, False])
def test_a_picture_over_the_byte_limit_is_scaled_down_until_it_fits(tmp_path: Path, square: bool):
    """input_picture with a limit of 200,000 bytes: a 600×400 noise picture (720 KB as PNG) is
    scaled down, keeping its shape (or its centre square), until its PNG is under the limit;
    one already small enough goes as it is."""
    limits = RemoteLimits(sizes=((256, 256),), max_n=1, max_prompt_chars=10, input_bytes=200_000,
                          square_input=square)
    with Image.open(_heavy_png(tmp_path / "noise.png", 600, 400)) as noisy:
        data, notice = input_picture(noisy, "model-x", limits)
    with Image.open(io.BytesIO(data)) as sent:
        width, height = sent.size
    assert len(data) < 200_000 and notice is not None and "PNG files under 0.2 MB" in notice
    assert (width == height) if square else abs(width / height - 1.5) < 0.02
    assert width > 150  # scaled by what the excess asks, not halved again and again
    with Image.new("RGB", (64, 64), (10, 20, 30)) as small:
        data, notice = input_picture(small, "model-x", limits)
    with Image.open(io.BytesIO(data)) as sent:
        assert notice is None and sent.size == (64, 64)
