"""The Docker image and compose file, checked without a container engine (none runs here).

What is read: the Dockerfile (with dockerfile-parse), the compose file (YAML, validated against
the compose-spec JSON schema vendored as docker/compose-spec.json), .env.example, and the
installed transformers/diffusers/accelerate's own requirements on torch. What is run: the
commands the image runs — its build-time torch check, `pintor run` (its CMD), `pintor health`
(its HEALTHCHECK), `pintor models` and `pintor doctor` — as written in the Dockerfile, in a copy
of what its COPY lines bring in, with the image's working directory, ENV and volumes laid out in
a temporary folder, as the image's numeric USER where these tests run as root.

Stand-ins, because no image can be built here: this machine's Python environment for the
image's (torch CPU instead of the base image's CUDA build; PYTHONPATH on the copied code
instead of `pip install .`), temporary folders for /app, /data and /models, the Discord
emulator for Discord, and the tiny test models for the hub's.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatch
from importlib.metadata import requires
from pathlib import Path

import jsonschema
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.version import Version

from tests.conftest import write_registry
from tests.discord_emulator import DiscordEmulator
from tests.discord_harness import is_result
from tests.secrets_check import secret

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / "docker" / "Dockerfile.dockerignore"
COMPOSE = ROOT / "docker" / "compose.yaml"
COMPOSE_SCHEMA = ROOT / "docker" / "compose-spec.json"
ENV_EXAMPLE = ROOT / ".env.example"
SECRET = secret("MTIz.docker-test-token.xyz")

# Variables compose may set that are not Pintor settings but are read by its libraries or by
# the images of the services beside it.
LIBRARY_VARIABLES = {"HF_HOME": "huggingface_hub's cache (the model volume)",
                     "POSTGRES_USER": "the postgres image's first user", "POSTGRES_DB": "the postgres image's database"}
# Base images whose tag starts with the torch version they carry.
TORCH_IMAGES = ("pytorch/pytorch",)


# ---- reading the files ---------------------------------------------------------------------

@dataclass
class Image:
    """What the Dockerfile says the image is, in its own words (paths as in the image)."""
    base: str
    workdir: str
    env: dict[str, str]
    user: str
    volumes: list[str]
    copies: list[tuple[list[str], str]]  # (sources relative to the build context, destination)
    runs: list[str]
    healthcheck: list[str]
    cmd: list[str]
    stopsignal: str
    instructions: list[str] = field(default_factory=list)


def read_dockerfile(path: Path = DOCKERFILE) -> Image:
    parser = DockerfileParser(path=str(path), cache_content=True)
    structure = [i for i in parser.structure if i["instruction"] != "COMMENT"]
    values = lambda name: [i["value"] for i in structure if i["instruction"] == name]  # noqa: E731
    copies = []
    for value in values("COPY"):
        parts = shlex.split(value)
        assert not any(p.startswith("--from") for p in parts), "multi-stage COPY: teach this test about it"
        copies.append(([p for p in parts[:-1] if not p.startswith("--")], parts[-1]))
    [healthcheck] = values("HEALTHCHECK")
    assert " CMD " in f" {healthcheck} ", healthcheck
    [cmd] = values("CMD")
    [user] = values("USER")
    [stopsignal] = values("STOPSIGNAL") or ["SIGTERM"]
    return Image(base=parser.baseimage, workdir=values("WORKDIR")[-1], env=parser.envs, user=user,
                 volumes=[v for value in values("VOLUME") for v in json.loads(value)], copies=copies,
                 runs=values("RUN"), healthcheck=json.loads(healthcheck.split(" CMD ", 1)[1]),
                 cmd=json.loads(cmd), stopsignal=stopsignal,
                 instructions=[i["instruction"] for i in structure])


def read_compose(path: Path = COMPOSE) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def env_example_names(path: Path = ENV_EXAMPLE) -> set[str]:
    return {m[1] for m in re.finditer(r"^\s*#?\s*([A-Z][A-Z0-9_]*)=", path.read_text(encoding="utf-8"), re.M)}


def torch_of_base_image(base: str) -> Version:
    """The torch version a base image carries, read from its tag (pytorch/pytorch:2.8.0-cuda…)."""
    name, _, tag = base.partition(":")
    assert name in TORCH_IMAGES, f"{base}: cannot tell which torch this base image carries"
    match = re.match(r"(\d+\.\d+(?:\.\d+)?)-", tag)
    assert match, f"{base}: the tag does not start with the torch version"
    return Version(match[1])


def torch_required_by(package: str) -> Version:
    """The lowest torch the installed `package` accepts: the `>=` of torch in its [torch]
    extra (transformers and diffusers), or in its plain requirements (accelerate)."""
    floors = []
    for text in requires(package) or []:
        requirement = Requirement(text)
        if requirement.name != "torch":
            continue
        if requirement.marker is None or requirement.marker.evaluate({"extra": "torch"}):
            floors += [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    return max(floors, default=Version("0"))


def torch_too_old(base: str, required: dict[str, Version] | None = None) -> list[str]:
    """What the libraries require of torch that the base image's torch is not; `required`
    (package → lowest torch) defaults to what the installed transformers, diffusers and
    accelerate say."""
    if required is None:
        required = {p: torch_required_by(p) for p in ("transformers", "diffusers", "accelerate")}
    torch = torch_of_base_image(base)
    return [f"{package} needs torch>={wanted}, {base} has {torch}"
            for package, wanted in required.items() if torch < wanted]


def unknown_settings(compose: dict, listed: set[str]) -> list[str]:
    """Variables the compose file sets or interpolates that .env.example does not list (and
    that are not library variables Pintor documents)."""
    known = listed | set(LIBRARY_VARIABLES)
    found = []
    for name, service in compose.get("services", {}).items():
        environment = service.get("environment") or {}
        keys = environment if isinstance(environment, dict) else [e.split("=", 1)[0] for e in environment]
        found += [f"services.{name}.environment.{key}" for key in keys if key not in known]
    text = json.dumps(compose)
    found += [f"${{{var}}}" for var in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", text) if var not in known]
    return found


# ---- the files themselves ------------------------------------------------------------------

def test_the_compose_file_is_valid_against_the_compose_spec():
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    assert schema["$schema"].startswith("https://json-schema.org/draft-07/")
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    compose = read_compose()
    errors = sorted(validator.iter_errors(compose), key=str)
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)
    # the schema really checks: a misspelt key and a wrong type are both caught
    broken = read_compose()
    broken["services"]["pintor"]["stop_grace_periode"] = "2m"
    broken["services"]["pintor-cpu"]["profiles"] = "cpu"
    assert len(list(validator.iter_errors(broken))) >= 2


def test_the_gpu_service_reserves_a_gpu_and_the_cpu_variant_runs_without():
    services = read_compose()["services"]
    [device] = services["pintor"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    cpu = services["pintor-cpu"]
    assert "deploy" not in cpu and cpu["profiles"] == ["cpu"]
    assert cpu["environment"]["PINTOR_DEVICE"] == "cpu"
    for name in ("pintor", "pintor-cpu"):
        service = services[name]
        assert service["env_file"] == "../.env" and (COMPOSE.parent / "../.env.example").resolve() == ENV_EXAMPLE
        assert service["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
        assert (COMPOSE.parent / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == DOCKERFILE
        mounts = {v.split(":")[1] for v in service["volumes"]}
        assert mounts == set(read_dockerfile().volumes), "compose must mount every VOLUME of the image"
        # the settings that say where data lives point into the volumes
        assert service["environment"]["PINTOR_DATA_DIR"] == "/data"
        assert service["environment"]["DATABASE_URL"].endswith("////data/pintor.db")
        assert service["environment"]["HF_HOME"] == "/models"
        assert service["stop_grace_period"] and service["init"] is True


def test_the_scaled_setup_is_one_bot_postgres_redis_and_gpu_workers():
    """Profile "scale": the bot on PostgreSQL and the Redis queue, serving /metrics on the host's
    loopback; workers that reserve a GPU each, need neither the database nor the bot, and can
    be scaled (no fixed container name, no host port)."""
    from sqlalchemy.engine import make_url

    from bot.cli import build_parser

    services = read_compose()["services"]
    scaled = {name for name, service in services.items() if service.get("profiles") == ["scale"]}
    assert scaled == {"postgres", "redis", "bot", "worker"}
    assert "profiles" not in services["pintor"]  # the one-machine service is unchanged
    # the tests' throwaway server is the same major version as the compose file's
    from tests.postgres_server import POSTGRES_ROOTS

    if POSTGRES_ROOTS:
        assert services["postgres"]["image"] == f"postgres:{POSTGRES_ROOTS[0].parent.name}"
    fill = lambda text: re.sub(r"\$\{(\w+)(:[?-][^}]*)?\}", lambda m: {"REDIS_HOST": "redis"}.get(m[1], "pw"), text)  # noqa: E731
    bot, worker = services["bot"], services["worker"]
    url = make_url(fill(bot["environment"]["DATABASE_URL"]))
    assert (url.drivername, url.host, url.database, url.username) == ("postgresql+asyncpg", "postgres", "pintor",
                                                                      services["postgres"]["environment"]["POSTGRES_USER"])
    assert url.database == services["postgres"]["environment"]["POSTGRES_DB"]
    for service in (bot, worker):
        assert fill(service["environment"]["PINTOR_QUEUE_URL"]) == "redis://:pw@redis:6379/0"
    assert bot["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                 "redis": {"condition": "service_healthy"}}
    assert bot["ports"] == ["127.0.0.1:9464:9464"] and bot["environment"]["PINTOR_METRICS_PORT"] == "9464"
    # a worker: the GPU, no database, no bot, nothing that stops it being scaled
    [device] = worker["deploy"]["resources"]["reservations"]["devices"]
    assert (device["driver"], device["count"], device["capabilities"]) == ("nvidia", 1, ["gpu"])
    assert "DATABASE_URL" not in worker["environment"] and "depends_on" not in worker
    assert "container_name" not in worker and "ports" not in worker
    assert worker["healthcheck"] == {"disable": True} and worker["stop_grace_period"]
    # the commands are `pintor`'s (what the image's entry point parses)
    assert bot["command"] == ["pintor", "run"] and build_parser().parse_args(["run"]).command == "run"
    assert worker["command"] == ["pintor", "worker"]
    try:
        build_parser().parse_args(["worker"])
    except SystemExit:
        pytest.skip("`pintor worker` comes with issue 12's queue branch (issue12a), not merged here")


def test_compose_refers_only_to_settings_env_example_lists():
    listed = env_example_names()
    assert "DISCORD_TOKEN" in listed
    assert unknown_settings(read_compose(), listed) == []
    assert [k for k in read_dockerfile().env if k.startswith(("PINTOR_", "DISCORD_", "DATABASE_"))
            and k not in listed] == []
    # and the check sees a setting nobody documented, set or interpolated
    compose = read_compose()
    compose["services"]["pintor"]["environment"]["PINTOR_TURBO_MODE"] = "1"
    compose["services"]["pintor-cpu"]["image"] = "pintor:${PINTOR_TAG}"
    assert unknown_settings(compose, listed) == ["services.pintor.environment.PINTOR_TURBO_MODE", "${PINTOR_TAG}"]


@pytest.mark.smoke
def test_the_base_images_torch_is_what_the_installed_libraries_require():
    image = read_dockerfile()
    assert torch_too_old(image.base) == []
    with (ROOT / "pyproject.toml").open("rb") as file:
        [torch] = [Requirement(r) for r in tomllib.load(file)["project"]["dependencies"]
                   if Requirement(r).name == "torch"]
    assert torch.specifier.contains(str(torch_of_base_image(image.base))), \
        f"pyproject.toml's {torch} refuses the base image's torch"
    assert torch_required_by("transformers") > Version("0") and torch_required_by("diffusers") > Version("0"), \
        "transformers or diffusers no longer say what torch they need: read it from elsewhere"
    # the image this issue was about: torch 2.5.1 under transformers 5.24 (which needs 2.6)
    old = torch_too_old("pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime", {"transformers": Version("2.6")})
    assert old == ["transformers needs torch>=2.6, pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime has 2.5.1"]


def test_what_the_image_copies_exists_and_is_all_of_pintor():
    image = read_dockerfile()
    ignored = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    copied = set()
    for sources, _ in image.copies:
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such path in the build context"
            assert f"!{source}" in ignored or f"!{source}/" in ignored, \
                f"COPY {source}: {DOCKERIGNORE.name} keeps it out of the build context"
            copied.add(source)
    # every package pip installs from the context is copied into it
    with (ROOT / "pyproject.toml").open("rb") as file:
        config = tomllib.load(file)
    patterns = config["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists() and
                any(fnmatch(p.name, pattern) for pattern in patterns)}
    assert packages and packages <= copied
    assert {"pyproject.toml", "README.md"} <= copied  # pip install . needs both (readme = README.md)


def test_the_image_runs_unprivileged_keeps_state_on_volumes_and_stops_on_sigterm():
    image = read_dockerfile()
    uid, _, gid = image.user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit(), "a numeric, non-root USER"
    assert image.instructions.index("USER") < image.instructions.index("CMD")
    assert image.env["HF_HOME"] in image.volumes
    assert image.env["PINTOR_DATA_DIR"] in image.volumes
    assert image.env["DATABASE_URL"] == f"sqlite+aiosqlite:///{image.env['PINTOR_DATA_DIR']}/pintor.db"
    assert any(f"chown {image.user} {' '.join(image.volumes)}" in run for run in image.runs), \
        "the volumes' folders belong to the image's user"
    assert image.stopsignal == "SIGTERM" and image.cmd[0] == "pintor" and image.healthcheck[0] == "pintor"
    assert any("--constraint /tmp/base-torch.txt ." in run for run in image.runs), "pip keeps the base torch"


# ---- the image's commands, run here as written ---------------------------------------------

@dataclass
class Container:
    """The image's file system and process settings, laid out in a temporary folder."""
    root: Path
    cwd: Path
    env: dict[str, str]
    uid: int | None  # run as this uid (and gid) when the tests run as root
    gid: int | None

    def here(self, image_path: str) -> str:
        return str(self.root / image_path.lstrip("/"))

    def run(self, argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(argv, cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=timeout, **self.process_user())

    def process_user(self) -> dict:
        return {"user": self.uid, "group": self.gid, "extra_groups": []} if self.uid is not None else {}


def _remap(value: str, paths: list[str], container_root: Path) -> str:
    for path in sorted(paths, key=len, reverse=True):
        value = re.sub(rf"(?<![\w/]){re.escape(path)}(?=/|$)|(?<=///){re.escape(path)}(?=/|$)",
                       str(container_root / path.lstrip("/")), value)
    return value


def image_user(image: Image) -> tuple[int, int]:
    uid, _, gid = image.user.partition(":")
    return int(uid), int(gid)


def _can_run_python_as(uid: int, gid: int) -> bool:
    """Whether this machine's Python starts for that user (it may live in a folder only root
    can enter, as pyenv's under /root does)."""
    try:
        subprocess.run([sys.executable, "-c", "import bot.cli"], cwd="/", env={"PYTHONPATH": str(ROOT)},
                       user=uid, group=gid, extra_groups=[], check=True, capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


@pytest.fixture
def container(tiny_models: dict[str, Path]) -> Iterator[Container]:
    image = read_dockerfile()
    compose_env = read_compose()["services"]["pintor-cpu"]["environment"]
    root = Path(tempfile.mkdtemp(prefix="pintor-image-"))
    root.chmod(0o755)  # the image's user must reach it, as it reaches / in the image
    try:
        workdir = root / image.workdir.lstrip("/")
        workdir.mkdir(parents=True)
        for sources, destination in image.copies:  # COPY, relative to WORKDIR
            target = workdir / destination
            for source in sources:
                src = ROOT / source
                dst = target / src.name if destination.endswith("/") else target
                if src.is_dir():
                    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(src, dst)
        uid = gid = None
        if os.geteuid() == 0 and _can_run_python_as(*image_user(image)):
            uid, gid = image_user(image)
        for volume in image.volumes:  # RUN mkdir -p /data /models && chown …
            (root / volume.lstrip("/")).mkdir(parents=True)
            if uid is not None:
                os.chown(root / volume.lstrip("/"), uid, gid)
        home = root / "home" / "pintor"  # useradd --create-home
        home.mkdir(parents=True)
        if uid is not None:
            os.chown(home, uid, gid)
        # what an admin's .env brings (env_file), with the test stand-ins for Discord and models
        models = root / "tiny-models"
        shutil.copytree(tiny_models["sd"].parent, models)
        registry = write_registry(root / "models.toml", {k: models / p.name for k, p in tiny_models.items()},
                                  native_side=64)
        paths = image.volumes + [image.workdir]
        env = {key: _remap(value, paths, root) for key, value in (image.env | compose_env).items()}
        env |= {
            "DISCORD_TOKEN": SECRET, "PINTOR_MODELS": str(registry), "PINTOR_LOG_LEVEL": "INFO",
            # this machine's stand-ins for the image's Python and for `pip install .`
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            "PYTHONPATH": str(workdir), "HOME": str(home),
            "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
        }
        yield Container(root=root, cwd=workdir, env=env, uid=uid, gid=gid)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_containers_paths_stand_where_the_image_has_them(container: Container):
    """The fixture's remapping of /data, /models, /app (the rest of the test relies on it)."""
    assert container.env["PINTOR_DATA_DIR"] == container.here("/data")
    assert container.env["DATABASE_URL"] == f"sqlite+aiosqlite:///{container.here('/data')}/pintor.db"
    assert container.env["HF_HOME"] == container.here("/models")
    assert container.cwd == Path(container.here("/app"))
    assert shutil.which("pintor", path=container.env["PATH"]), "pintor is not installed in this environment"
    # the code that runs is the copy the COPY lines made, not the checkout
    where = container.run(["python", "-c", "import bot.cli, storage.db; print(bot.cli.__file__, storage.db.__file__)"])
    assert all(Path(f).is_relative_to(container.cwd) for f in where.stdout.split()), where


def test_the_commands_run_as_the_images_user(container: Container):
    image = read_dockerfile()
    if os.geteuid() != 0:
        pytest.skip(f"not root: the commands run as this user ({os.geteuid()}), not as the image's {image.user}")
    if container.uid is None:
        pytest.skip(f"this machine's Python ({sys.executable}) cannot be started by uid {image.user}: "
                    "the commands run as root here")
    result = container.run(["python", "-c", "import os; print(os.getuid(), os.getgid())"])
    assert result.stdout.split() == image.user.split(":")


def test_the_build_time_torch_check_passes_here(container: Container):
    image = read_dockerfile()
    [check] = [step for run in image.runs for step in run.split(" && ") if "is_torch_available" in step]
    result = container.run(["bash", "-c", check.strip()])
    assert result.returncode == 0, result.stderr


@pytest.mark.smoke
async def test_the_images_commands_run_as_written(container: Container):
    image = read_dockerfile()
    # before the first start: the health check says what is wrong, and fails
    unhealthy = container.run(image.healthcheck)
    assert unhealthy.returncode == 1 and "unhealthy" in unhealthy.stdout, unhealthy
    models = container.run(["pintor", "models"])
    assert models.returncode == 0 and "tiny-sd" in models.stdout, models

    async with DiscordEmulator() as emu:
        container.env |= {"DISCORD_API_BASE": emu.api_base, "DISCORD_GATEWAY_URL": emu.gateway_url,
                          "DISCORD_GUILD_IDS": str(emu.guild_id)}
        process = await asyncio.create_subprocess_exec(
            *image.cmd, cwd=container.cwd, env=container.env, **container.process_user(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        output = asyncio.create_task(process.stdout.read())
        try:
            await emu.wait_ready(timeout=90)
            healthy = await asyncio.to_thread(container.run, image.healthcheck)
            assert healthy.returncode == 0 and healthy.stdout.startswith("healthy"), healthy
            inter = await emu.slash("imagine", {"prompt": "a lighthouse in a container --seed 3"})
            assert (await inter.wait_callback(timeout=3))["type"] == 5
            final = await inter.wait_original(is_result, timeout=120)
            assert "seed 3" in final["content"]
        finally:
            if process.returncode is None:
                process.send_signal(getattr(signal, image.stopsignal))
            returncode = await asyncio.wait_for(process.wait(), 60)
            log = (await output).decode(errors="replace")
    assert returncode == 0, log
    assert "Pintor stopped" in log and SECRET not in log
    # the state is on the volumes, written by the image's user
    data = Path(container.here("/data"))
    assert (data / "pintor.db").is_file() and list(data.glob("images/jobs/*/grid.png"))
    if container.uid is not None:
        assert (data / "pintor.db").stat().st_uid == container.uid
    doctor = container.run(["pintor", "doctor"])
    assert doctor.returncode == 0 and "All good." in doctor.stdout, doctor.stdout + doctor.stderr
