"""Static rules every course notebook keeps (nbval executes them; these catch what execution cannot)."""
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_nbval_markers_stand_alone(path):
    # nbval recognises a marker only when the whole comment is the marker; "# NBVAL_IGNORE_OUTPUT (why)" is ignored.
    for i, cell in enumerate(json.loads(path.read_text())["cells"]):
        for line in "".join(cell["source"]).splitlines():
            comment = line.strip().lstrip("#").strip()
            if line.strip().startswith("#") and comment.startswith("NBVAL_"):
                assert comment in {"NBVAL_IGNORE_OUTPUT", "NBVAL_CHECK_OUTPUT", "NBVAL_RAISES_EXCEPTION",
                                   "NBVAL_SKIP"}, f"cell {i}: {line.strip()!r} is not an nbval marker"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_executed_in_order_with_python3_kernel(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    counts = [c["execution_count"] for c in nb["cells"] if c["cell_type"] == "code"]
    assert counts == list(range(1, len(counts) + 1)), "re-execute the notebook top to bottom in a fresh kernel"
    assert path.stat().st_size < 1_000_000, "figures too large: keep the notebook under 1 MB"


# The shared first code cell, as notebooks/README.md (section "First cells") shows it.
SETUP = '''# Setup: imports, seeds, threads and small figures (the same first cell in every notebook)
import torch
import torch.nn as nn
import torch.nn.functional as F
import matplotlib.pyplot as plt
from einops import rearrange

import segedu
from segedu.utils import seed_everything

torch.manual_seed(0)
seed_everything(0)
torch.set_num_threads(2)
plt.rcParams.update({"figure.dpi": 100, "figure.figsize": (5, 3), "font.size": 9})
'''


def test_readme_shows_the_shared_setup_cell():
    readme = (Path(__file__).resolve().parents[1] / "notebooks" / "README.md").read_text()
    indented = "".join(f"   {line}\n" if line else "\n" for line in SETUP.splitlines())
    assert indented in readme, "notebooks/README.md and tests/test_notebooks.py must show the same setup cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_code_cell_is_the_shared_setup(path):
    # Figures at 100 dpi (readable on GitHub), the same seeds and threads everywhere.
    first = next(c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
    assert "".join(first["source"]).startswith(SETUP), "start the first code cell with the setup block of README.md"
