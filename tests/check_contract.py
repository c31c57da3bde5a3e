"""What every exercise check promises, asserted once for the tests/test_checks*.py files.

A check (segedu.checks.check_*) takes the learner's function or class (some take two):
- on a correct solution it prints exactly one line, "<name> passed: ...", and leaves the caller's global torch RNG as it
  was (the checks run on their own seeds);
- on a planted mistake it raises an AssertionError that names the mistake (the concept, and where to read about it);
  the fix comes only with ``hint=True`` or on a second call that fails the same way (segedu.checks._core.teaches);
- on an unsolved exercise (a stub raising NotImplementedError, as nbgrader's student version does) it lets that very
  error through unchanged.
"""
import pytest
import torch
from torch import nn

STUB_MESSAGE = "unsolved exercise (check_contract stub)"


def stub(*args, **kwargs):
    """An unsolved function exercise."""
    raise NotImplementedError(STUB_MESSAGE)


class Stub(nn.Module):
    """An unsolved module exercise: constructing it raises."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        raise NotImplementedError(STUB_MESSAGE)


def fails(check, *args_and_match, hint: bool = False):
    """``fails(check, arg, ..., match)``: check(arg, ...) raises an AssertionError whose message matches ``match``.

    ``hint=True`` asks the check for its hint (the fix), for tests that match the fix's text."""
    *args, match = args_and_match
    with pytest.raises(AssertionError, match=match) as raised:
        check(*args, hint=True) if hint else check(*args)
    return str(raised.value)


def first_failure_and_hint(check, *args):
    """The messages of a first failure (forgotten state: the check passes on nothing in between) and of the same
    failure repeated. Returns (first, second)."""
    from segedu.checks import _core

    _core._LAST_FAILURE.pop(check.__name__, None)
    messages = []
    for _ in range(2):
        with pytest.raises(AssertionError) as raised:
            check(*args)
        messages.append(str(raised.value))
    return tuple(messages)


def assert_passes_quietly(capsys, name, check, *args):
    """check(*args) prints one line, "<name> passed: ...", and leaves the global torch RNG state as it was."""
    capsys.readouterr()  # drop whatever was printed before
    state = torch.get_rng_state()
    check(*args)
    out = capsys.readouterr().out
    assert out.startswith(f"{name} passed:") and out.count("\n") == 1, out
    assert torch.equal(torch.get_rng_state(), state), f"{name} changed the global RNG state"  # the learner's stream


def assert_stub_passes_through(check, *args):
    """check(*args), given a stub among args, lets the stub's NotImplementedError through unchanged."""
    with pytest.raises(NotImplementedError) as raised:
        check(*args)
    assert type(raised.value) is NotImplementedError and raised.value.args == (STUB_MESSAGE,), repr(raised.value)


# ---------------------------------------------------------------------------- design exercises and their cells
# The exercise cells are written as JSON lists under /tmp/g_cells/<notebook stem>.json ({"after_cell_containing":
# ..., "cells": [...]}) and then inserted into the notebooks. These helpers read an exercise's cell from the
# notebook once it is there, and from the waiting JSON before that.
import json  # noqa: E402
from pathlib import Path  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PENDING_CELLS = Path("/tmp/g_cells")


def _notebook_cells(stem: str) -> list[dict]:
    nb = json.loads((NOTEBOOKS / f"{stem}.ipynb").read_text())
    return [dict(c, source="".join(c["source"]) if isinstance(c["source"], list) else c["source"]) for c in nb["cells"]]


def _pending_entries(stem: str) -> list[dict]:
    path = PENDING_CELLS / f"{stem}.json"
    return json.loads(path.read_text()) if path.exists() else []


def _grade_id(cell: dict):
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def exercise_source(stem: str, grade_id: str) -> str:
    """The source of the cell with nbgrader ``grade_id``: the notebook's, else the pending JSON's (else skip)."""
    for cell in _notebook_cells(stem):
        if _grade_id(cell) == grade_id:
            return cell["source"]
    for entry in _pending_entries(stem):
        for cell in entry["cells"]:
            if _grade_id(cell) == grade_id:
                return cell["source"]
    pytest.skip(f"{grade_id} is neither in notebooks/{stem}.ipynb nor in {PENDING_CELLS}/{stem}.json")


def exec_exercise(stem: str, grade_id: str, **namespace) -> dict:
    """Run the exercise cell's source (solution included) in ``namespace`` (the notebook's globals it uses)."""
    import math

    import torch.nn.functional as F
    from einops import rearrange

    ns = dict(torch=torch, nn=nn, F=F, math=math, rearrange=rearrange)
    ns.update(namespace)
    exec(compile(exercise_source(stem, grade_id), f"<{stem}:{grade_id}>", "exec"), ns)
    return ns


def assert_pending_cells_fit(stem: str) -> None:
    """Each pending entry either is in the notebook already (its exercise cells by grade_id, a markdown-only entry
    by its heading line), with the same code as the JSON, or has an anchor that occurs in exactly one cell and
    exercise cells whose nbgrader metadata follow the course's pattern with grade_ids new to the notebook."""
    entries = _pending_entries(stem)
    if not entries:
        pytest.skip(f"no pending cells for {stem}")
    cells = _notebook_cells(stem)
    by_id = {_grade_id(c): c for c in cells if _grade_id(c)}
    headings = {c["source"].splitlines()[0] for c in cells if c["source"].strip()}
    for entry in entries:
        new = entry["cells"]
        code = [c for c in new if c["cell_type"] == "code"]
        inserted = any(_grade_id(c) in by_id for c in code) if code else new[0]["source"].splitlines()[0] in headings
        if inserted:
            for c in code:
                assert _grade_id(c) in by_id, f"{stem}: {_grade_id(c)} is missing next to its inserted exercise"
                assert by_id[_grade_id(c)]["source"] == c["source"], f"{stem}: {_grade_id(c)} differs from the JSON"
            continue
        anchor = entry["after_cell_containing"]
        hits = sum(anchor in c["source"] for c in cells)
        assert hits == 1, f"{stem}: the anchor {anchor!r} occurs in {hits} cells"
        for c in new:
            assert c["cell_type"] in ("markdown", "code") and isinstance(c["source"], str)
            nbg = c.get("metadata", {}).get("nbgrader")
            if c["cell_type"] == "code":
                assert nbg and _grade_id(c) not in by_id, f"{stem}: {_grade_id(c)} missing or not unique"
                if nbg["solution"]:
                    assert "### BEGIN SOLUTION" in c["source"] and "### END SOLUTION" in c["source"]
                    assert c["metadata"]["tags"] == ["exercise"]
                else:
                    assert nbg["grade"] and nbg["locked"] and nbg["points"] == 1
                    assert c["source"].rstrip().endswith("### END HIDDEN TESTS") and c["metadata"]["tags"] == ["check"]
