"""CLIP guidance (--clip N) on tiny random-weight models: a tiny SD and a tiny CLIPModel built
from configs in code, saved and loaded through the registry as real ones are.

The claim that matters: with a fixed seed, the CLIP score of the result (by the same tiny CLIP)
rises with --clip. Around it: the x0 the guidance decodes is the scheduler's own prediction,
results say how much slower they were, and --clip is refused plainly (nothing stored) where
the model has no CLIP model, is not a Stable Diffusion model, or the server turned it off."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytest_asyncio
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler
from sqlalchemy import func, select

from bot.intake import USER_ERRORS, LimitError, Member, RequestError, prepare
from generation.clip_guidance import ClipScorer, load_clip, predicted_original
from generation.devices import choose_device
from generation.engine import Engine
from generation.prompt import PromptError, format_parameters, parse_prompt
from generation.registry import Registry, RegistryError, load_registry
from generation.request import JobKind, Request
from storage.models import Job, ServerRules
from tests.engine_helpers import picture_maker, request, run
from tests.studio_helpers import finish, started_studio
from tests.tiny_models import build_clip, build_kandinsky3, build_sd

ANN = Member(1, "ann")
PROMPT = "a red fox in the snow"


def registry_text(root: Path) -> str:
    sd = build_sd(root / "sd")
    return f'''
default = "tiny-sd"

[models.tiny-sd]
source = "{sd}"
family = "sd"
native_side = 64
steps = 2
guidance = 5.0
clip_model = "{build_clip(root / 'clip')}"

[models.plain-sd]
source = "{sd}"
family = "sd"
native_side = 64
steps = 2

[models.tiny-kandinsky3]
source = "{build_kandinsky3(root / 'k3')}"
family = "kandinsky3"
native_side = 64
steps = 2
'''


@pytest.fixture(scope="module")
def registry_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clip")
    path = root / "models.toml"
    path.write_text(registry_text(root), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def registry(registry_file: Path) -> Registry:
    return load_registry(registry_file)


@pytest.fixture(scope="module")
def engine(registry: Registry) -> Engine:
    return Engine(registry, choose_device("cpu"))


@pytest.fixture(scope="module")
def scorer(registry: Registry) -> ClipScorer:
    """The same tiny CLIP the model is steered by, loaded apart: the judge of the results."""
    source = registry.get("tiny-sd").clip_model
    assert source is not None
    return load_clip(source, "cpu", torch.float32)


def clip_scores(scorer: ClipScorer, images, text: str = PROMPT) -> np.ndarray:
    pixels = torch.stack([torch.from_numpy(np.asarray(i, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
                          for i in images])
    return scorer.score(pixels, [text] * len(images)).numpy()


def test_the_clip_score_of_the_result_rises_with_clip(engine, registry, scorer):
    scores = {}
    for strength in (0, 10, 100):
        result, steps, _ = run(engine, request(registry, f"{PROMPT} --seed 6 --clip {strength}"))
        assert [image.size for image in result.images] == [(64, 64)] * 4 and steps == [(1, 2), (2, 2)]
        scores[strength] = clip_scores(scorer, result.images)
        slower = [n for n in result.notices if n.startswith("CLIP guidance")]
        if strength == 0:
            assert slower == []
        else:
            [notice] = slower
            assert f"--clip {strength}:" in notice and "× the time without it" in notice and "steering" in notice
    # every picture of the grid (the same seeds each time), not only on average
    assert (scores[0] < scores[10]).all() and (scores[10] < scores[100]).all(), scores
    assert scores[100].mean() - scores[0].mean() > 0.05


def test_guided_runs_repeat_per_seed_and_differ_from_unguided(engine, registry):
    req = request(registry, f"{PROMPT} --seed 6 --clip 100")
    assert req.clip == 100.0 and "--clip 100" in req.parameters
    first, _, _ = run(engine, req)
    again, _, _ = run(engine, req)
    plain, _, _ = run(engine, req.replace(clip=0.0))
    stack = [np.stack([np.asarray(i, dtype=np.float32) for i in r.images]) for r in (first, again, plain)]
    assert np.array_equal(stack[0], stack[1])
    assert np.abs(stack[0] - stack[2]).mean() > 1.0


def test_a_variation_is_steered_too(engine, registry, scorer, tmp_path):
    init = picture_maker(tmp_path)(64, 64, 3)
    base = request(registry, f"{PROMPT} --seed 6", kind="variation", init_image=init, strength=1.0, steps=2)
    plain, _, _ = run(engine, base)
    guided, _, _ = run(engine, base.replace(clip=100.0))
    assert clip_scores(scorer, guided.images).mean() > clip_scores(scorer, plain.images).mean()
    assert any(n.startswith("CLIP guidance --clip 100:") for n in guided.notices)


def test_zoom_and_pan_are_steered_too(engine, registry, scorer, tmp_path):
    from generation.outpaint import PAN_DIRECTIONS, canvas_size
    from generation.prompt import size_for_aspect

    source = picture_maker(tmp_path)(64, 64, 5)
    width, height = size_for_aspect(canvas_size(64, 64, PAN_DIRECTIONS["left"]), 64, multiple=8)
    base = request(registry, f"{PROMPT} --seed 3", kind="outpaint", init_image=source,
                   outpaint=PAN_DIRECTIONS["left"], width=width, height=height, strength=1.0)
    plain, _, _ = run(engine, base)
    guided, _, _ = run(engine, base.replace(clip=100.0))
    assert {image.size for image in guided.images} == {(width, height)}
    assert any(n.startswith("CLIP guidance --clip 100:") for n in guided.notices)
    assert not any(n.startswith("CLIP guidance") for n in plain.notices)
    assert clip_scores(scorer, guided.images).mean() > clip_scores(scorer, plain.images).mean()


@pytest.mark.parametrize("scheduler", [EulerDiscreteScheduler, DDIMScheduler])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_the_predicted_picture_is_the_schedulers_own(scheduler, prediction):
    extra = {"clip_sample": False} if scheduler is DDIMScheduler else {}  # as Stable Diffusion ships it
    sched = scheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                      prediction_type=prediction, steps_offset=1, **extra)
    sched.set_timesteps(5)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, generator=generator) * float(sched.init_noise_sigma)
    output = torch.randn(2, 4, 8, 8, generator=generator)
    for t in sched.timesteps[:3]:
        mine = predicted_original(sched, output, t, sample)
        own = sched.step(output, t, sample).pred_original_sample
        assert torch.allclose(mine, own, atol=1e-4), (scheduler.__name__, prediction, int(t))


def test_clip_is_read_clamped_and_written_back():
    parsed = parse_prompt("a fox --clip 1500")
    assert parsed.clip == 1000 and any("--clip “1500” is over the highest value" in n for n in parsed.notices)
    assert parse_prompt(f"a fox {format_parameters(parse_prompt('a fox --clip 50'))}").clip == 50
    with pytest.raises(PromptError, match="--clip must be a whole number from 0"):
        parse_prompt("a fox --clip strong")


@pytest.mark.parametrize("prompt, message", [
    ("a fox --clip 50 --model plain-sd", "--clip cannot be used here: 'plain-sd' has no CLIP model configured "
                                         "(an admin names one as clip_model in models.toml). "
                                         "Models with CLIP guidance: tiny-sd."),
    ("a fox --clip 50 --model tiny-kandinsky3", "--clip cannot be used here: CLIP guidance steers Stable Diffusion "
                                                "models, and 'tiny-kandinsky3' is a kandinsky3 model. "
                                                "Models with CLIP guidance: tiny-sd."),
])
def test_clip_without_a_clip_model_is_refused_plainly(registry, prompt, message):
    with pytest.raises(RequestError) as refused:
        prepare(registry, prompt)
    assert str(refused.value) == message
    assert prepare(registry, prompt.replace("--clip 50", "--clip 0")).clip == 0.0  # 0 is off: fine anywhere


def test_capabilities_name_clip_guidance_and_a_clip_model_needs_an_sd_family(registry, tmp_path):
    assert "CLIP guidance (--clip)" in registry.get("tiny-sd").capabilities()
    assert "CLIP guidance (--clip)" not in registry.get("plain-sd").capabilities()
    path = tmp_path / "models.toml"
    path.write_text('[models.k]\nsource = "k"\nprior = "p"\nfamily = "kandinsky22"\nclip_model = "c"\n',
                    encoding="utf-8")
    with pytest.raises(RegistryError, match="'clip_model' .* works with the families sd, sd-turbo, sd2, sdxl"):
        load_registry(path)


# -- through the Studio: a real SQLite file and a real worker process ---------------------------

@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def env(registry_file: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("clip-studio")
    async with started_studio(root, registry_file) as studio:
        yield SimpleNamespace(studio=studio, db=studio.store.engine)


async def job_count(env) -> int:
    async with env.db.connect() as conn:
        return await conn.scalar(select(func.count()).select_from(Job.__table__))


def server(**values) -> ServerRules:
    rules = ServerRules.new(77)
    for name, value in values.items():
        setattr(rules, name, value)
    return rules


@pytest.mark.asyncio(loop_scope="module")
async def test_a_server_decides_and_a_refused_job_stores_nothing(env):
    assert ServerRules.new(1).clip_guidance is True  # allowed unless an admin turns it off
    before = await job_count(env)
    with pytest.raises(USER_ERRORS) as refused:
        await env.studio.imagine(ANN, f"{PROMPT} --clip 100", rules=server(clip_guidance=False), guild_id=77)
    assert isinstance(refused.value, LimitError)
    assert str(refused.value) == ("CLIP guidance (--clip) is turned off on this server by its admins: "
                                  "ask without --clip.")
    assert await job_count(env) == before
    plain = await env.studio.imagine(ANN, f"{PROMPT} --seed 2", rules=server(clip_guidance=False), guild_id=77)
    assert (await finish(env.studio, plain)).status == "done"

    made = await env.studio.imagine(ANN, f"{PROMPT} --seed 2 --clip 100", rules=server(), guild_id=77)
    job = await finish(env.studio, made)
    assert Request.from_json(job.request).clip == 100.0
    assert "CLIP guidance --clip 100:" in (job.notices or "") and "× the time without it" in (job.notices or "")
    # V of a guided picture is guided too: refused where the server turned it off, nothing stored
    before = await job_count(env)
    with pytest.raises(LimitError, match="this picture was made with it"):
        await env.studio.vary(ANN, job.id, 1, strong=True, rules=server(clip_guidance=False), guild_id=77)
    assert await job_count(env) == before
    varied = await finish(env.studio, await env.studio.vary(ANN, job.id, 1, strong=True, rules=server(),
                                                             guild_id=77))
    assert (varied.kind, Request.from_json(varied.request).clip) == (JobKind.VARIATION, 100.0)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_guided_request_for_a_model_without_clip_is_refused_before_it_is_stored(env, registry):
    before = await job_count(env)
    request_ = prepare(registry, f"{PROMPT} --seed 4 --clip 100").replace(model="plain-sd")  # as a stored V would
    with pytest.raises(RequestError, match="'plain-sd' has no CLIP model configured"):
        await env.studio.submit(ANN, request_)
    assert await job_count(env) == before


def test_models_pull_plans_a_hub_clip_model_and_skips_a_folder(registry):
    import dataclasses

    from generation.hub import CLIP_FILES, addition_sources

    hub = dataclasses.replace(registry.get("tiny-sd"), clip_model="laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    pulled = addition_sources(dataclasses.replace(registry, models=registry.models | {"tiny-sd": hub}))
    assert pulled == [("tiny-sd", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", CLIP_FILES)]
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= set(CLIP_FILES)
    assert addition_sources(registry) == []  # the tiny CLIP is a folder: nothing to pull
