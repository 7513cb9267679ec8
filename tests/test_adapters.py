"""LoRAs, textual-inversion embeddings and VAE overrides (generation/adapters.py, the registry's
[loras.NAME] / [embeddings.NAME] / vae), built tiny in code and loaded through the registry and
the loading code users' files take, offline, on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from generation import adapters
from generation.availability import ModelLoadError, check_addition
from generation.devices import choose_device
from generation.engine import Engine, MultiVectorTokens, weighted_embeds
from generation.pipelines import PipelineCache
from generation.registry import Registry, load_registry
from tests.adapter_helpers import build_additions, registry_text
from tests.engine_helpers import picture_maker, pixels, request, run
from tests.tiny_models import build_embedding

CPU = choose_device("cpu")


@pytest.fixture(scope="module")
def files(tiny_models, tmp_path_factory) -> dict[str, Path]:
    return build_additions(tiny_models, tmp_path_factory.mktemp("additions"))


@pytest.fixture(scope="module")
def registry(tiny_models, files, tmp_path_factory) -> Registry:
    path = tmp_path_factory.mktemp("reg") / "models.toml"
    path.write_text(registry_text(tiny_models, files), encoding="utf-8")
    return load_registry(path)


class Counted:
    """Counts calls of a method on a class (the real method still runs)."""

    def __init__(self, monkeypatch, owner, name: str):
        self.calls: list[tuple] = []
        real = getattr(owner, name)

        def counting(*args, **kwargs):
            self.calls.append(args[1:3])
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, counting)


def test_a_lora_changes_only_its_own_job_and_never_reloads_the_base_model(registry, monkeypatch):
    loads = Counted(monkeypatch, PipelineCache, "_load")
    engine = Engine(registry, CPU)
    plain = request(registry, "a lighthouse at dusk --seed 7")
    with_lora = plain.replace(loras=(("ink", 0.9),))
    before = pixels(run(engine, plain)[0].images)
    pipe = engine.pipelines.get(registry.get("tiny-sd"), "text2img")
    lora_loads = Counted(monkeypatch, type(pipe), "load_lora_weights")
    changed = pixels(run(engine, with_lora)[0].images)
    after = pixels(run(engine, plain)[0].images)
    again = pixels(run(engine, with_lora)[0].images)

    assert np.array_equal(before, after)  # nothing of the LoRA leaked into the next job
    assert np.abs(changed - before).mean() > 1.0  # and it did change its own job's pictures
    assert np.array_equal(changed, again)  # the same job twice: the same pictures
    assert len(loads.calls) == 1  # the base model loaded once for all four jobs
    assert len(lora_loads.calls) == 1 and adapters.loaded_loras(pipe) == ["ink"]  # kept loaded, switched off


def test_weights_and_several_loras_at_once(registry):
    engine = Engine(registry, CPU)
    plain = request(registry, "a lighthouse at dusk --seed 3")
    grids = {loras: pixels(run(engine, plain.replace(loras=loras))[0].images) for loras in [
        (), (("ink", 0.9),), (("ink", 0.3),), (("glow", 1.0),), (("ink", 0.9), ("glow", 1.0))]}
    keys = list(grids)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            assert not np.array_equal(grids[a], grids[b]), (a, b)
    # glow ran above with ink loaded (switched off): the same as glow in a model that never saw ink
    fresh = Engine(registry, CPU)
    assert np.array_equal(pixels(run(fresh, plain.replace(loras=(("glow", 1.0),)))[0].images), grids[(("glow", 1.0),)])
    # weight 0 is the model without the LoRA
    assert np.array_equal(pixels(run(engine, plain.replace(loras=(("ink", 0.0),)))[0].images), grids[()])
    assert np.array_equal(pixels(run(engine, plain)[0].images), grids[()])


def test_image_to_image_takes_the_lora_too_and_leaves_it_behind(registry, tmp_path):
    engine = Engine(registry, CPU)
    picture = picture_maker(tmp_path)(64, 64)
    vary = request(registry, "a lighthouse --seed 5").replace(init_image=picture, strength=0.5, steps=4)
    before = pixels(run(engine, vary)[0].images)
    with_lora = pixels(run(engine, vary.replace(loras=(("ink", 1.0),)))[0].images)
    assert not np.array_equal(before, with_lora)
    assert np.array_equal(pixels(run(engine, vary)[0].images), before)


def test_an_sdxl_lora_and_embedding_work_on_sdxl(registry):
    engine = Engine(registry, CPU)
    plain = request(registry, "a castle --model tiny-sdxl --seed 2")
    base = pixels(run(engine, plain)[0].images)
    assert not np.array_equal(pixels(run(engine, plain.replace(loras=(("xl-ink", 1.0),)))[0].images), base)
    assert np.array_equal(pixels(run(engine, plain)[0].images), base)
    styled = pixels(run(engine, request(registry, "a castle <xl-style> --model tiny-sdxl --seed 2"))[0].images)
    pipe = engine.pipelines.get(registry.get("tiny-sdxl"), "text2img")
    assert "<xl-style>" in pipe.tokenizer.get_added_vocab() and "<xl-style>" in pipe.tokenizer_2.get_added_vocab()
    assert styled.shape == base.shape


def test_an_embedding_is_loaded_when_a_prompt_writes_its_token(registry, tmp_path):
    engine = Engine(registry, CPU)
    pipe = engine.pipelines.get(registry.get("tiny-sd"), "text2img")
    plain = request(registry, "a cat --seed 4")
    base = pixels(run(engine, plain)[0].images)
    assert "easyneg" not in pipe.tokenizer.get_added_vocab()  # not loaded before a prompt writes it
    negative = pixels(run(engine, request(registry, "a cat --seed 4 --no easyneg"))[0].images)
    assert "easyneg" in pipe.tokenizer.get_added_vocab()
    assert np.array_equal(pixels(run(engine, plain)[0].images), base)  # prompts without it: unchanged

    # the same words on a registry without the embedding: read as plain letters, another picture
    bare = tmp_path / "bare.toml"
    bare.write_text(f'[models.tiny-sd]\nsource = "{registry.get("tiny-sd").source}"\nfamily = "sd"\n'
                    'native_side = 64\nsteps = 2\nguidance = 5.0\n', encoding="utf-8")
    other = load_registry(bare)
    spelled = pixels(run(Engine(other, CPU), request(other, "a cat --seed 4 --no easyneg"))[0].images)
    assert not np.array_equal(negative, spelled)
    assert np.array_equal(pixels(run(Engine(other, CPU), request(other, "a cat --seed 4"))[0].images), base)


def test_a_vae_override_replaces_the_pipelines_vae(tiny_models, files, tmp_path):
    path = tmp_path / "models.toml"
    path.write_text(registry_text(tiny_models, files, vae=True), encoding="utf-8")
    registry = load_registry(path)
    spec = registry.get("tiny-sd")
    assert spec.vae is not None and check_addition("VAE", spec.name, spec.vae).ok
    pipe = PipelineCache(CPU).get(spec, "text2img")
    mine = pipe.vae.state_dict()
    from diffusers import AutoencoderKL

    folder = AutoencoderKL.from_pretrained(files["vae"]).state_dict()
    assert all(torch.equal(mine[k], folder[k]) for k in folder)
    plain = request(registry, "a cat --seed 1")
    with_vae = pixels(run(Engine(registry, CPU), plain)[0].images)
    stock = tmp_path / "stock.toml"
    stock.write_text(registry_text(tiny_models, files), encoding="utf-8")
    assert not np.array_equal(with_vae, pixels(run(Engine(load_registry(stock), CPU), plain)[0].images))


def test_missing_or_unreadable_files_are_clear_errors(registry, files, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    gone = tmp_path / "gone.safetensors"
    state = check_addition("LoRA", "ink", str(gone))
    assert not state.ok and state.detail == f"LoRA {gone} does not exist"
    state = check_addition("LoRA", "ink", "someone/ink-lora", "ink.safetensors")
    assert not state.ok and "is not downloaded and HF_HUB_OFFLINE is set" in state.detail

    # a LoRA made for SDXL loaded into SD: said, nothing left half-loaded, the next job unchanged
    engine = Engine(registry, CPU)
    plain = request(registry, "a cat --seed 9")
    base = pixels(run(engine, plain)[0].images)
    wrong = registry.lora("ink").__class__(name="wrong", source=str(files["xl-ink"]), families=("sd",))
    pipe = engine.pipelines.get(registry.get("tiny-sd"), "text2img")
    with pytest.raises(ModelLoadError) as raised:
        with adapters.applied(pipe, [(wrong, 1.0)]):
            pass
    assert "cannot load LoRA 'wrong' from" in raised.value.detail and str(files["xl-ink"]) not in str(raised.value)
    assert "wrong" not in adapters.loaded_loras(pipe)
    assert np.array_equal(pixels(run(engine, plain)[0].images), base)


def test_a_single_file_vae_is_read_with_the_models_own_vae_config(tiny_models, files, tmp_path):
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from tests.tiny_models import _ldm_vae

    vae = AutoencoderKL.from_pretrained(files["vae"])
    single = tmp_path / "tiny-vae.safetensors"
    save_file({k: v.contiguous() for k, v in _ldm_vae(vae).items()}, str(single))
    path = tmp_path / "models.toml"
    path.write_text(registry_text(tiny_models, files).replace(
        'guidance = 5.0\n', f'guidance = 5.0\nvae = "{single}"\n', 1), encoding="utf-8")
    spec = load_registry(path).get("tiny-sd")
    assert spec.vae == str(single)
    loaded = PipelineCache(CPU).get(spec, "text2img").vae.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in vae.state_dict().items())


def test_a_job_whose_lora_was_removed_since_fails_with_a_message(registry):
    engine = Engine(registry, CPU)
    with pytest.raises(ModelLoadError, match="Unknown LoRA 'retired'.*removed since this job was asked for"):
        run(engine, request(registry, "a cat --seed 1").replace(loras=(("retired", 1.0),)))


# -- multi-vector embeddings with emphasis (issue 26, item 13; damian0815/compel#28) -------------

VECTORS = 8  # EasyNegative's count: most embeddings on model sites have several


@pytest.fixture(scope="module")
def multi(tiny_models, files, tmp_path_factory) -> Registry:
    """The adapter registry with an 8-vector embedding for SD ("easynegative") and one for SDXL
    ("xl-neg", clip_l and clip_g of 8 vectors each)."""
    root = tmp_path_factory.mktemp("multi")
    sd = build_embedding(root / "easynegative.safetensors", vectors=VECTORS, seed=6)
    xl = build_embedding(root / "xl-neg.safetensors", vectors=VECTORS, seed=7, sdxl=True)
    path = root / "models.toml"
    path.write_text(registry_text(tiny_models, files) + f"""
[embeddings.easynegative]
source = "{sd}"
families = ["sd"]

[embeddings.xl-neg]
source = "{xl}"
families = ["sdxl"]
""", encoding="utf-8")
    return load_registry(path)


def _encode(pipe, text: str) -> torch.Tensor:
    """diffusers' own embeddings of `text` (its encode_prompt expands multi-vector tokens)."""
    return pipe.encode_prompt(prompt=text, device="cpu", num_images_per_prompt=1,
                              do_classifier_free_guidance=False)[0]


def _emphasised(pipe, text: str, token: str, weight: float) -> torch.Tensor:
    """What `(token:weight)` in `text` must give: diffusers' embeddings of the plain text, each of
    the token's VECTORS positions moved away from the empty prompt's by `weight` (compel's
    rule for weights above 1: empty + (z − empty)·w), every other position as it is."""
    plain, empty = _encode(pipe, text), _encode(pipe, "")
    ids = pipe.tokenizer(pipe.maybe_convert_prompt(text, pipe.tokenizer)).input_ids
    added = pipe.tokenizer.added_tokens_encoder
    vector_ids = {added[token]} | {added[f"{token}_{k}"] for k in range(1, VECTORS)}
    positions = [i for i, token_id in enumerate(ids) if token_id in vector_ids]
    assert len(positions) == VECTORS  # the token written once stands for all its vectors
    expected = plain.clone()
    expected[:, positions] = empty[:, positions] + (plain[:, positions] - empty[:, positions]) * weight
    return expected


@pytest.mark.parametrize(("model", "token"), [("tiny-sd", "easynegative"), ("tiny-sdxl", "xl-neg")])
def test_a_multi_vector_embedding_keeps_every_vector_with_emphasis(multi, model, token):
    """The example: `(easynegative:1.3)` used to give one token (compel reads only the first
    vector); now all 8, each weighted 1.3, in the prompt, in `--no`, and on SDXL in both text
    encoders (their embeddings side by side); at weight 1 exactly diffusers' own embeddings."""
    engine = Engine(multi, CPU)
    spec = multi.get(model)
    pipe = engine.pipelines.get(spec, "text2img")
    run(engine, request(multi, f"a cat {token} --model {model} --seed 1"))  # loads the embedding
    for tokenizer in [pipe.tokenizer] + ([pipe.tokenizer_2] if model == "tiny-sdxl" else []):
        assert f"{token}_{VECTORS - 1}" in tokenizer.added_tokens_encoder

    # weight 1 everywhere: the same embeddings as diffusers', all 8 vectors (before: one)
    assert torch.allclose(weighted_embeds(pipe, f"a cat {token}", "cpu"), _encode(pipe, f"a cat {token}"), atol=1e-5)
    # (token:1.3) and nested ((token)) = 1.21: every vector weighted
    for written, weight in [(f"a cat ({token}:1.3)", 1.3), (f"a cat (({token}))", 1.21), (f"({token}:1.5)", 1.5)]:
        plain = written.replace("(", "").replace(")", "").replace(f":{weight}", "")
        assert torch.allclose(weighted_embeds(pipe, written, "cpu"), _emphasised(pipe, plain, token, weight),
                              atol=1e-5), written

    # what the engine hands the pipeline: the prompt part and the negative, both weighted
    notices: list[str] = []
    req = request(multi, f"a cat ({token}:1.3) --no ({token}:1.4), blurry --model {model} --seed 1")
    embeds = engine._prompt_embeds(pipe, req, True, notices)
    assert torch.allclose(embeds["prompt_embeds"], _emphasised(pipe, f"a cat {token}", token, 1.3).repeat(4, 1, 1),
                          atol=1e-5)
    negative = weighted_embeds(pipe, f"({token}:1.4), blurry", "cpu")
    assert torch.allclose(negative, _emphasised(pipe, f"{token}, blurry", token, 1.4), atol=1e-5)
    assert torch.allclose(embeds["negative_prompt_embeds"], negative.repeat(4, 1, 1), atol=1e-5)
    assert notices == []
    # the encoder's 75 tokens count every vector: 70 words and the token (8 vectors) are cut
    long = "x " * 70 + token
    assert len(pipe.tokenizer(long, add_special_tokens=False).input_ids) == 71
    assert Engine._fit_tokens(pipe.tokenizer, long, notices) != long and "was cut" in notices[-1]
    assert Engine._fit_tokens(pipe.tokenizer, "x " * 60 + token, []) == "x " * 60 + token
    # and the picture follows the weight of the negative (1.4 is not 1)
    heavier, _, _ = run(engine, req)
    lighter, _, _ = run(engine, request(multi, f"a cat ({token}:1.3) --no {token}, blurry --model {model} --seed 1"))
    assert np.abs(pixels(heavier.images) - pixels(lighter.images)).mean() > 0.1


def test_a_multi_vector_token_counts_all_its_vectors():
    """MultiVectorTokens on ids: tok → tok tok_1 … tok_7 (in place, each time it is written);
    other ids, single-vector tokens and a written `tok_3` alone are left as they are."""

    class Tokenizer:
        added_tokens_encoder = {"<|endoftext|>": 1, "neg": 10, **{f"neg_{k}": 10 + k for k in range(1, 8)},
                                "one": 30}

    vectors = MultiVectorTokens(Tokenizer())
    assert vectors.expand_textual_inversion_token_ids_if_necessary([5, 10, 6, 10]) == [
        5, *range(10, 18), 6, *range(10, 18)]
    assert vectors.expand_textual_inversion_token_ids_if_necessary([30, 13, 1, 2]) == [30, 13, 1, 2]
    assert vectors.expand_textual_inversion_token_ids_if_necessary([]) == []
