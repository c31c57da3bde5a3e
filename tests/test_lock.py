"""The locked environment: requirements.lock is what the stored notebook outputs were made with.

`make install` installs it, `make lock` regenerates it (uv pip compile) under the bounds in constraints.txt, and
environment.yml installs the same file for conda users. The drift test fails when the running environment differs
from the lock in a package that shapes stored outputs, naming the package and the fix.
"""
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"

# Packages whose version can change a stored notebook output (numbers, figures, reprs, nbval's comparison).
SHAPES_OUTPUTS = ("torch", "torchvision", "numpy", "matplotlib", "pillow", "einops", "transformers", "timm",
                  "torchmetrics", "safetensors", "nbval", "nbformat", "nbclient", "ipykernel", "jupyter-client")

FIX = ("fix: `make install` (or `pip install -r requirements.lock`) to get the locked version; to move to a new one, "
       "change constraints.txt, run `make lock`, re-execute the notebooks and run `make test` (README: Upgrading)")


def locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line).groups()
            pins[canonicalize_name(name)] = version
    return pins


def installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _public(version: str) -> Version:
    return Version(Version(version).public)  # torch 2.14.1+cu130 is the locked 2.14.1


def test_lock_pins_every_package_exactly():
    pins = locked()
    assert len(pins) > 100, "the lock holds the whole closure, dependencies included"
    for name in ("torch", "torchvision", "numpy", "matplotlib", "einops", "datasets", "transformers", "timm",
                 "torchmetrics", "mmsegmentation", "mmcv-lite", "mmengine", "nbval", "nbgrader", "jupyterlab",
                 "nbformat", "pillow"):
        assert name in pins, f"{name} is imported by the tests, notebooks or CLI but missing from requirements.lock"


def test_lock_satisfies_pyproject_and_constraints():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted += extra
    pins = locked()
    for text in wanted:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"pyproject asks for {req}, the lock lacks it: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"pyproject asks for {req}, the lock has {pins[name]}: run `make lock`"
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            assert req.specifier.contains(pins[canonicalize_name(req.name)]), f"{line}: the lock is stale, `make lock`"


def test_environment_yml_installs_the_lock():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"], "conda-forge only: the pytorch channel is dead"
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(conda) == ["pip", "python=3.11"], "conda provides Python alone; packages come from the lock"
    assert pip == ["-r requirements.lock", "-e ."], "the exact lock, then segedu itself"
    makefile = (ROOT / "Makefile").read_text()
    assert "--python-version 3.11" in makefile, "the lock is compiled for the Python that environment.yml installs"


@pytest.mark.parametrize("name", SHAPES_OUTPUTS)
def test_environment_matches_the_lock(name):
    want, have = locked()[name], installed(name)
    assert have is not None, f"{name} is not installed; the lock has {want}. {FIX}"
    assert _public(have) == Version(want), f"{name} {have} is installed, but the notebooks' outputs were made " \
                                           f"with {name} {want} (requirements.lock). {FIX}"


def test_other_locked_packages_report_drift():
    """Drift outside SHAPES_OUTPUTS does not fail, but is named so that a red notebook can be traced."""
    drift = [f"{n} {installed(n)} (lock {v})" for n, v in locked().items()
             if n not in SHAPES_OUTPUTS and installed(n) and _public(installed(n)) != Version(v)]
    if drift:
        pytest.skip("differs from requirements.lock: " + ", ".join(drift[:20]))
