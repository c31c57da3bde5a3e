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
