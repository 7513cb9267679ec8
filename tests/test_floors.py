"""The dependency floors: constraints-floors.txt says what pyproject.toml says, and the torch
floor is at least what the installed transformers and diffusers ask of torch."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib.metadata import requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

pytestmark = pytest.mark.smoke  # also run on the dependency floors (constraints-floors.txt)

ROOT = Path(__file__).resolve().parents[1]
FLOORS_SCRIPT = ROOT / ".ci" / "floors.py"


def run_floors(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(FLOORS_SCRIPT), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def torch_floor() -> Version:
    with (ROOT / "pyproject.toml").open("rb") as file:
        for text in tomllib.load(file)["project"]["dependencies"]:
            requirement = Requirement(text)
            if requirement.name == "torch":
                [spec] = [s for s in requirement.specifier if s.operator == ">="]
                return Version(spec.version)
    raise AssertionError("pyproject.toml does not depend on torch")


def torch_wanted_by(package: str) -> Version:
    """The lowest torch the installed `package` accepts: its `[torch]` extra's requirement."""
    for text in requires(package) or []:
        requirement = Requirement(text)
        if requirement.name == "torch" and requirement.marker and requirement.marker.evaluate({"extra": "torch"}):
            return max((Version(s.version) for s in requirement.specifier if s.operator == ">="), default=Version("0"))
    return Version("0")


def test_the_constraints_file_matches_pyproject():
    result = run_floors("--check")
    assert result.returncode == 0, result.stderr


def test_the_check_fails_when_a_floor_changes(tmp_path: Path):
    # a copy of the script and pyproject with one floor raised: --check must see it
    (tmp_path / ".ci").mkdir()
    (tmp_path / ".ci" / "floors.py").write_text(FLOORS_SCRIPT.read_text())
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"tqdm>=4.66"' in pyproject
    (tmp_path / "pyproject.toml").write_text(pyproject.replace('"tqdm>=4.66"', '"tqdm>=4.67"'))
    (tmp_path / "constraints-floors.txt").write_text((ROOT / "constraints-floors.txt").read_text())
    script = tmp_path / ".ci" / "floors.py"
    check = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 1 and "python .ci/floors.py" in check.stderr
    subprocess.run([sys.executable, str(script)], check=True, capture_output=True, timeout=60)
    assert "tqdm==4.67\n" in (tmp_path / "constraints-floors.txt").read_text()


def test_every_dependency_has_a_floor_and_torch_is_left_to_the_machine():
    pins = [line for line in (ROOT / "constraints-floors.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    names = {Requirement(pin).name.lower() for pin in pins}
    assert "torch" not in names
    assert {"diffusers", "transformers", "accelerate", "discord.py", "sqlalchemy", "pillow",
            "huggingface-hub", "pytest"} <= names
    assert all("==" in pin for pin in pins)


@pytest.mark.parametrize("package", ["transformers", "diffusers"])
def test_the_torch_floor_is_what_transformers_and_diffusers_require(package: str):
    wanted = torch_wanted_by(package)
    assert wanted > Version("0"), f"{package} no longer states what torch it needs in its [torch] extra"
    assert torch_floor() >= wanted, (
        f"pyproject.toml allows torch {torch_floor()}, but the installed {package} needs torch>={wanted}")
