"""`pintor models pull` against a local stand-in of the hub (tests/hub_standin.py), then the
pulled model used offline, as an admin does on a machine that reaches the internet rarely."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import constants

from generation.hub import Plan, PullError, choose_files, plan, pull
from tests.hub_standin import Hub, HubServer

UNET = "unet/diffusion_pytorch_model.safetensors"


def run_pintor(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], check=False, env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=240)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    registry = tmp_path / "models.toml"
    registry.write_text('[models.hub-sd]\nsource = "tiny/sd"\nfamily = "sd"\nsteps = 2\nnative_side = 64\n',
                        encoding="utf-8")
    env = os.environ | {
        "PINTOR_MODELS": str(registry), "PINTOR_DEVICE": "cpu", "PINTOR_DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'data' / 'pintor.db'}", "HF_HOME": str(tmp_path / "hf"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("HF_HUB_CACHE", None)
    return env


def test_pull_then_list_offline(env, tmp_path, tiny_models):
    """The pulled model is listed as downloaded offline. (That it then makes pictures offline is
    test_pull_fetches_vaes_loras_and_embeddings_then_they_work_offline's imagine, on the same
    pulled model with a VAE, a LoRA and an embedding besides: one worker's start, not two.)"""
    hub = Hub({"tiny/sd": tiny_models["sd"]})
    with HubServer(hub) as url:
        pulled = run_pintor(env | {"HF_ENDPOINT": url}, "models", "pull", cwd=tmp_path)
    assert pulled.returncode == 0, pulled.stderr
    assert "hub-sd: tiny/sd: 10 files, 4.2 MiB (4.2 MiB to download)" in pulled.stdout
    assert "hub-sd: tiny/sd downloaded" in pulled.stdout
    assert "Fetching 10 files" in pulled.stderr  # huggingface_hub's progress bar
    assert sorted(hub.downloads) == sorted(p.relative_to(tiny_models["sd"]).as_posix()
                                           for p in tiny_models["sd"].rglob("*") if p.is_file())

    offline = env | {"HF_HUB_OFFLINE": "1"}
    listed = run_pintor(offline, "models", cwd=tmp_path)
    assert "can: text to image, image to image (V), zoom/pan (inpaint); downloaded, 4.2 MiB" in listed.stdout, \
        listed.stdout


def test_listing_says_not_downloaded(env, tmp_path):
    """A hub id not pulled is NOT downloaded; a path that is not here is a local folder (it was
    labelled "(hub id)") that no download can give: `models pull` fails on it (it said "is here:
    nothing to download", exit 0), naming the entry and what to fix, as for a missing LoRA file."""
    registry = Path(env["PINTOR_MODELS"])
    registry.write_text(registry.read_text(encoding="utf-8")
                        + '[models.gone]\nsource = "/nowhere/sd"\nfamily = "sd"\n'
                        + '[models.kept]\nsource = "tiny/sd"\nfamily = "sd"\ninpaint = "./gone-inpaint"\n'
                        + '[loras.lost]\nsource = "~/nowhere/lost.safetensors"\nfamilies = ["sd"]\n', encoding="utf-8")
    listed = run_pintor(env | {"HF_HUB_OFFLINE": "1"}, "models", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "can: text to image, image to image (V), zoom/pan (inpaint); NOT downloaded" in listed.stdout
    assert "/nowhere/sd (local folder)" in listed.stdout and "/nowhere/sd (hub id)" not in listed.stdout
    assert "NOT usable — /nowhere/sd does not exist" in listed.stdout
    assert "~/nowhere/lost.safetensors; NOT usable — LoRA ~/nowhere/lost.safetensors does not exist" in listed.stdout

    pulled = run_pintor(env | {"HF_HUB_OFFLINE": "1"}, "models", "pull", "gone", "kept", "lost", cwd=tmp_path)
    assert pulled.returncode == 1, pulled.stdout + pulled.stderr
    assert "nothing to download" not in pulled.stdout
    for name, what, path in (("gone", "source", "/nowhere/sd"), ("kept", "inpaint", "./gone-inpaint"),
                             ("lost", "source", "~/nowhere/lost.safetensors")):
        assert f"error: {name}: its {what} {path} does not exist here" in pulled.stderr, pulled.stderr


@pytest.mark.parametrize("gated, message", [
    (True, "hub id tiny/sd is gated: accept its licence on https://huggingface.co/tiny/sd"),
    (False, "hub id tiny/nope does not exist on the hub"),
])
def test_pull_says_gated_or_missing(env, tmp_path, tiny_models, gated, message):
    hub = Hub({"tiny/sd": tiny_models["sd"]}, gated={"tiny/sd"} if gated else set())
    source = "tiny/sd" if gated else "tiny/nope"
    registry = tmp_path / "models.toml"
    registry.write_text(f'[models.hub-sd]\nsource = "{source}"\nfamily = "sd"\n', encoding="utf-8")
    with HubServer(hub) as url:
        pulled = run_pintor(env | {"HF_ENDPOINT": url}, "models", "pull", "hub-sd", cwd=tmp_path)
    assert pulled.returncode == 1
    assert f"error: cannot load model 'hub-sd': {message}" in pulled.stderr
    assert "Traceback" not in pulled.stderr
    assert hub.downloads == []


@pytest.fixture
def hub_here(tmp_path, monkeypatch):
    """huggingface_hub in this process pointed at a stand-in and an empty cache."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def serve(hub: Hub) -> HubServer:
        server = HubServer(hub)
        url = server.__enter__()
        # what HF_ENDPOINT sets when huggingface_hub is imported
        monkeypatch.setattr(constants, "ENDPOINT", url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
        return server

    servers: list[HubServer] = []
    yield lambda hub: servers.append(serve(hub)) or servers[-1]
    for server in servers:
        server.__exit__(None, None, None)


def test_an_interrupted_download_resumes_where_it_stopped(hub_here, tiny_models, monkeypatch):
    # huggingface_hub writes what it received in chunks; small chunks so that part of the file
    # is on disk when the connection drops
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    hub = Hub({"tiny/sd": tiny_models["sd"]})
    hub.cut[f"tiny/sd/{UNET}"] = 1024 * 1024  # the line drops after 1 MiB of the UNet's weights
    hub_here(hub)
    found = plan("tiny/sd")
    folder = Path(pull(found))
    assert [r for r in hub.ranges if r.startswith(UNET)] == [f"{UNET} bytes={1024 * 1024}-"]
    original = (tiny_models["sd"] / UNET).read_bytes()
    assert hashlib.sha256((folder / UNET).read_bytes()).digest() == hashlib.sha256(original).digest()
    again = plan("tiny/sd")
    assert again.missing_bytes == 0 and again.total_bytes == found.total_bytes


def test_pull_refuses_to_start_without_the_disk_space(hub_here, tiny_models):
    hub = Hub({"tiny/sd": tiny_models["sd"]})
    hub_here(hub)
    found = plan("tiny/sd")
    huge = Plan(found.repo_id, found.files, found.total_bytes, 10**18)
    with pytest.raises(PullError, match=r"tiny/sd needs .* more but .* free"):
        pull(huge)
    assert hub.downloads == []


def test_choose_files_takes_what_from_pretrained_reads():
    paths = ["model_index.json", "sd_turbo.safetensors", "v2-1.ckpt", "README.md",
             "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
             "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.bin",
             "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors",
             "text_encoder/pytorch_model.bin", "tokenizer/vocab.json", "tokenizer/merges.txt",
             "vae/diffusion_pytorch_model.bin", "vae/config.json"]
    assert choose_files(paths, None) == [
        "model_index.json", "text_encoder/model.safetensors", "tokenizer/merges.txt", "tokenizer/vocab.json",
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
        "vae/diffusion_pytorch_model.bin"]
    fp16 = choose_files(paths, "fp16")
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in fp16
    assert "unet/diffusion_pytorch_model.safetensors" not in fp16
    assert "vae/diffusion_pytorch_model.bin" in fp16  # no fp16 file there: the plain weights


def test_a_single_file_checkpoint_pulls_only_its_configs_hub_configuration(env, tmp_path, tiny_models):
    from tests.tiny_models import build_sd_single_file

    checkpoint = build_sd_single_file(tiny_models["sd"], tmp_path / "mine.safetensors")
    (tmp_path / "models.toml").write_text(
        f'[models.mine]\nsource = "{checkpoint}"\nfamily = "sd"\nconfig = "tiny/sd"\nnative_side = 64\nsteps = 2\n',
        encoding="utf-8")
    hub = Hub({"tiny/sd": tiny_models["sd"]})
    offline = env | {"HF_HUB_OFFLINE": "1"}
    refused = run_pintor(offline, "imagine", "a fox", "-o", "out.png", cwd=tmp_path)
    assert refused.returncode == 1
    assert (f"error: cannot load model 'mine': single-file checkpoint {checkpoint}: its config hub id tiny/sd "
            "is not downloaded") in refused.stderr
    with HubServer(hub) as url:
        pulled = run_pintor(env | {"HF_ENDPOINT": url}, "models", "pull", "mine", cwd=tmp_path)
    assert pulled.returncode == 0, pulled.stderr
    assert not any(name.endswith((".safetensors", ".bin")) for name in hub.downloads)  # configs only
    assert "model_index.json" in hub.downloads and "tokenizer/tokenizer.json" in hub.downloads
    made = run_pintor(offline, "imagine", "a fox --seed 2", "-o", "out.png", cwd=tmp_path)
    assert made.returncode == 0, made.stderr


def test_online_a_hub_id_that_does_not_exist_fails_in_the_worker_without_a_traceback(env, tmp_path, tiny_models):
    (tmp_path / "models.toml").write_text('[models.hub-sd]\nsource = "tiny/nope"\nfamily = "sd"\nsteps = 2\n',
                                          encoding="utf-8")
    hub = Hub({"tiny/sd": tiny_models["sd"]})
    with HubServer(hub) as url:  # online: not downloaded is no reason to refuse; the hub says it does not exist
        made = run_pintor(env | {"HF_ENDPOINT": url}, "imagine", "a fox", "-o", "out.png", cwd=tmp_path)
    assert made.returncode == 1
    assert "cannot load model 'hub-sd': hub id tiny/nope does not exist on the hub" in made.stderr  # the log
    assert "error: job 1: Model 'hub-sd' cannot be loaded on this server right now" in made.stderr  # the member's
    assert "Traceback" not in made.stderr


def test_doctor_online_says_which_models_can_be_downloaded(env, tmp_path, tiny_models):
    (tmp_path / "models.toml").write_text(
        '[models.ready]\nsource = "tiny/sd"\nfamily = "sd"\n'
        '[models.locked]\nsource = "tiny/gated"\nfamily = "sd"\n'
        '[models.typo]\nsource = "tiny/nope"\nfamily = "sd"\n', encoding="utf-8")
    hub = Hub({"tiny/sd": tiny_models["sd"], "tiny/gated": tiny_models["sd"]}, gated={"tiny/gated"})
    with HubServer(hub) as url:
        doctor = run_pintor(env | {"HF_ENDPOINT": url}, "doctor", cwd=tmp_path)
    assert "[     ok] model ready: hub id tiny/sd, not downloaded yet: fetched on first use" in doctor.stdout
    assert "fix: `pintor models pull ready` downloads it ahead" in doctor.stdout
    assert "[PROBLEM] model locked: hub id tiny/gated is gated: accept its licence" in doctor.stdout
    assert "[PROBLEM] model typo: hub id tiny/nope does not exist on the hub" in doctor.stdout
    assert hub.downloads == []


def test_pull_fetches_vaes_loras_and_embeddings_then_they_work_offline(env, tmp_path, tiny_models):
    from tests.tiny_models import build_embedding, build_lora, build_vae

    repos = {"tiny/sd": tiny_models["sd"], "tiny/vae": build_vae(tmp_path / "repos" / "vae"),
             "tiny/ink": tmp_path / "repos" / "ink", "tiny/neg": tmp_path / "repos" / "neg"}
    build_lora(tiny_models["sd"], repos["tiny/ink"] / "ink_v1.safetensors")
    repos["tiny/neg"].mkdir(parents=True)
    build_embedding(repos["tiny/neg"] / "learned_embeds.safetensors")
    (tmp_path / "models.toml").write_text(
        '[models.hub-sd]\nsource = "tiny/sd"\nfamily = "sd"\nsteps = 2\nnative_side = 64\nvae = "tiny/vae"\n'
        '[loras.ink]\nsource = "tiny/ink"\nweight_name = "ink_v1.safetensors"\nfamilies = ["sd"]\n'
        '[embeddings.neg]\nsource = "tiny/neg"\nfamilies = ["sd"]\n', encoding="utf-8")
    offline = env | {"HF_HUB_OFFLINE": "1"}
    listed = run_pintor(offline, "models", cwd=tmp_path)
    assert "vae: tiny/vae; NOT downloaded — VAE hub id tiny/vae (config.json) is not downloaded" in listed.stdout
    assert "LoRA ink" in listed.stdout and "embedding neg" in listed.stdout, listed.stdout

    hub = Hub(repos)
    with HubServer(hub) as url:
        pulled = run_pintor(env | {"HF_ENDPOINT": url}, "models", "pull", cwd=tmp_path)
    assert pulled.returncode == 0, pulled.stderr
    assert "hub-sd: tiny/vae: config.json, diffusion_pytorch_model.safetensors" in pulled.stdout
    assert "ink: tiny/ink downloaded" in pulled.stdout and "neg: tiny/neg downloaded" in pulled.stdout

    listed = run_pintor(offline, "models", cwd=tmp_path)
    assert "vae: tiny/vae; here" in listed.stdout and "NOT downloaded" not in listed.stdout, listed.stdout
    made = run_pintor(offline, "imagine", "a fox --lora ink:0.8 --no neg --seed 2", "-o", "out.png", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "out.png").is_file()


def test_pull_fetches_controlnets_and_depth_estimators_then_they_work_offline(env, tmp_path, tiny_models):
    from tests.tiny_models import build_controlnet, build_depth_estimator

    repos = {"tiny/sd": tiny_models["sd"], "tiny/canny": build_controlnet(tiny_models["sd"], tmp_path / "r" / "canny"),
             "tiny/depth": build_depth_estimator(tmp_path / "r" / "depth")}
    (tmp_path / "models.toml").write_text(
        '[models.hub-sd]\nsource = "tiny/sd"\nfamily = "sd"\nsteps = 2\nnative_side = 64\n'
        '[controlnets.depth]\nsource = "tiny/canny"\nfamily = "sd"\nkind = "depth"\nestimator = "tiny/depth"\n',
        encoding="utf-8")
    offline = env | {"HF_HUB_OFFLINE": "1"}
    listed = run_pintor(offline, "models", cwd=tmp_path)
    assert "can: text to image, image to image (V), zoom/pan (inpaint), ControlNet (depth);" in listed.stdout, \
        listed.stdout
    assert "ControlNet: tiny/canny; NOT downloaded" in listed.stdout
    doctor = run_pintor(offline, "doctor", cwd=tmp_path)
    assert ("[PROBLEM] depth estimator depth: depth estimator hub id tiny/depth (config.json) is not downloaded"
            in doctor.stdout), doctor.stdout

    with HubServer(Hub(repos)) as url:
        pulled = run_pintor(env | {"HF_ENDPOINT": url}, "models", "pull", cwd=tmp_path)
    assert pulled.returncode == 0, pulled.stderr
    assert "depth: tiny/canny: config.json, diffusion_pytorch_model.safetensors" in pulled.stdout
    assert "depth: tiny/depth: config.json, preprocessor_config.json, model.safetensors" in pulled.stdout

    picture = tmp_path / "photo.png"
    from PIL import Image
    Image.effect_noise((80, 60), 60).convert("RGB").save(picture)
    script = (  # the worker's path: the registry, the engine, the ControlNet and estimator from the cache
        "from generation.devices import choose_device\nfrom generation.engine import Engine\n"
        "from generation.registry import load_registry\nfrom tests.engine_helpers import request, run\n"
        "registry = load_registry(__import__('pathlib').Path('models.toml'))\n"
        f"req = request(registry, 'a fox --seed 1').replace(control={str(picture)!r}, control_kind='depth', "
        "controlnet='depth')\n"
        "result, _, _ = run(Engine(registry, choose_device('cpu')), req)\n"
        "print('made', len(result.images), result.control.size)\n")
    made = subprocess.run([sys.executable, "-c", script], env=offline, cwd=tmp_path, capture_output=True, text=True,
                          timeout=240, check=False)
    assert made.returncode == 0, made.stderr
    assert "made 4 (64, 64)" in made.stdout
