"""environment.yml (conda) and pyproject.toml (pip) name the same packages with the same bounds."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _split(requirement: str) -> tuple[str, str]:
    name, bound = re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", requirement.strip()).groups()
    return name.lower().replace("_", "-"), bound.replace(" ", "")


def test_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = dict(_split(r) for r in project["dependencies"])
    for extra in ("dev", "course"):
        wanted.update(_split(r) for r in project["optional-dependencies"][extra])

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"], "conda-forge only: the pytorch channel is dead"
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "python=3.11" in conda
    assert "-e .[dev,course]" in pip, "the package itself, editable, with the same extras"
    have = dict(_split(r) for r in conda + pip if not r.startswith(("python=", "-e ")) and r != "pip")
    assert have == wanted
