"""The classroom-assignment loop (segedu.assignments on nbgrader): student versions and autograding.

How the loop is covered without executing every notebook twice in CI:

* Student versions of *every* notebook in ``notebooks/`` are generated here with nbgrader and checked
  statically: no solution code, one ``NotImplementedError`` stub per solution region, no hidden tests, no
  outputs, valid and course-wide unique grade ids, every check cell after an exercise.
* "Every instructor notebook earns full points" is nbval's job (``make test``): it executes each notebook in
  full, and a check cell, hidden tests included, raises when its exercise is wrong, so a notebook that
  would lose a point fails CI. The autograder scores exactly those cells (points if no error).
* The full autograde loop runs on notebook 00 only (the cheapest, about 5 s): the instructor version earns
  full points, the student version earns none and fails only through NotImplementedError, and a planted
  classic mistake loses exactly its exercise. Check-level planted mistakes for every check are in
  ``tests/test_checks*.py``.
"""
from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("nbgrader")

from segedu.assignments import (
    DEFAULT_TIMEOUT,
    autograde,
    generate_assignments,
    nbgrader_config,
    write_gradebook,
)

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
NAMES = [p.stem for p in sorted(NOTEBOOKS.glob("*.ipynb"))]
CHEAPEST = "00_semantic_segmentation_and_ade20k"

SOLUTION = re.compile(r"^[ \t]*### BEGIN SOLUTION\n(.*?)^[ \t]*### END SOLUTION[^\n]*\n?", re.DOTALL | re.MULTILINE)
HIDDEN = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS\n(.*?)^[ \t]*### END HIDDEN TESTS[^\n]*\n?", re.DOTALL | re.MULTILINE)


def _cells(path: Path) -> list[dict]:
    return json.loads(Path(path).read_text())["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _meta(cell: dict) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("course")
    generate_assignments(NOTEBOOKS, root)
    return root


def _released(course: Path, name: str) -> Path:
    return course / "release" / name / f"{name}.ipynb"


# ----------------------------------------------------------------------------------------------
# Static checks on every notebook
# ----------------------------------------------------------------------------------------------
def test_every_notebook_gets_a_student_version(course):
    assert sorted(p.stem for p in (course / "release").glob("*/*.ipynb")) == NAMES


def test_student_versions_find_the_course_data(course):
    # a released notebook runs in release/<nb>/ and reads ../data/synthetic: the repository's data, not a new copy
    released = _released(course, NAMES[0]).parent
    assert (released / ".." / "data").resolve() == (NOTEBOOKS / ".." / "data").resolve()


@pytest.mark.parametrize("name", NAMES)
def test_exercise_and_check_cells_follow_the_conventions(name):
    cells = _cells(NOTEBOOKS / f"{name}.ipynb")
    exercises_since_check, exercises, checks = 0, 0, 0
    for i, cell in enumerate(cells):
        meta, text, tags = _meta(cell), _source(cell), cell.get("metadata", {}).get("tags", [])
        where = f"{name} cell {i}"
        if meta.get("solution"):
            assert cell["cell_type"] == "code" and "exercise" in tags, where
            assert meta["grade"] is False and meta["locked"] is False and meta["schema_version"] == 3, where
            regions = SOLUTION.findall(text)
            assert regions and text.count("BEGIN SOLUTION") == text.count("END SOLUTION") == len(regions), where
            exercises_since_check += 1
            exercises += 1
        elif meta.get("grade"):
            assert cell["cell_type"] == "code" and "check" in tags, where
            assert meta["solution"] is False and meta["locked"] is True and meta["points"] > 0, where
            assert meta["schema_version"] == 3, where
            assert exercises_since_check > 0, f"{where}: a check cell must follow an exercise"
            assert len(HIDDEN.findall(text)) == 1, f"{where}: a check cell carries one hidden-tests region"
            exercises_since_check = 0
            checks += 1
        else:
            assert "SOLUTION" not in text and "HIDDEN TESTS" not in text, f"{where}: markers outside nbgrader cells"
    assert exercises >= 2, f"{name}: every notebook has at least two exercises"
    assert exercises_since_check == 0, f"{name}: its last exercise has no check cell after it"


def test_grade_ids_are_unique_across_the_course():
    ids = [_meta(c)["grade_id"] for n in NAMES for c in _cells(NOTEBOOKS / f"{n}.ipynb") if _meta(c)]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    assert not duplicates, f"grade_id used more than once (the gradebook is keyed by it): {duplicates}"


@pytest.mark.parametrize("name", NAMES)
def test_student_version_has_stubs_and_no_solutions_hidden_tests_or_outputs(course, name):
    source, student = _cells(NOTEBOOKS / f"{name}.ipynb"), _cells(_released(course, name))
    assert len(student) == len(source)

    # Lines that only the instructor may see: solution and hidden-test regions, minus lines the scaffold also has.
    secret, public = set(), set()
    for cell in source:
        text = _source(cell)
        for region in SOLUTION.findall(text) + HIDDEN.findall(text):
            secret |= {line.strip() for line in region.splitlines() if line.strip()}
        public |= {line.strip() for line in HIDDEN.sub("", SOLUTION.sub("", text)).splitlines()}
    student_lines = {line.strip() for cell in student for line in _source(cell).splitlines()}
    leaked = sorted((secret - public) & student_lines)
    assert not leaked, f"{name}: solution or hidden-test lines in the student version: {leaked[:5]}"

    for i, (src, stu) in enumerate(zip(source, student)):
        where = f"{name} cell {i}"
        assert _meta(stu).get("grade_id") == _meta(src).get("grade_id"), where
        text = _source(stu)
        assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text, where
        if stu["cell_type"] == "code":
            assert stu["outputs"] == [] and stu["execution_count"] is None, f"{where}: outputs not cleared"
        if _meta(src).get("solution"):
            regions = len(SOLUTION.findall(_source(src)))
            assert text.count("raise NotImplementedError()") == regions, f"{where}: one stub per solution region"
            compile(text, where, "exec")  # the scaffold around the stubs is still valid Python
        if _meta(src).get("grade"):
            assert _meta(stu)["locked"] and _meta(stu)["checksum"], where
            assert text.strip() == HIDDEN.sub("", _source(src)).strip(), f"{where}: check cell changed"


def test_course_folder_is_ignored_by_git():
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    probe = "assignments/release/00_x/00_x.ipynb"
    assert subprocess.run(["git", "check-ignore", "-q", probe], cwd=REPO, check=False).returncode == 0, \
        "assignments/ (make assignments) must be ignored by git"
    tracked = subprocess.run(["git", "ls-files", "assignments"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout
    assert tracked == "", f"generated files are tracked: {tracked.split()[:3]}"


def test_timeout_suits_pytorch_and_bad_values_are_refused(tmp_path):
    assert nbgrader_config(tmp_path).Execute.timeout == DEFAULT_TIMEOUT >= 300  # nbgrader's default is 30 s
    with pytest.raises(ValueError, match="timeout"):
        nbgrader_config(tmp_path, timeout=0)


def test_grading_refuses_a_folder_without_course_notebooks(course, tmp_path):
    with pytest.raises(ValueError, match="no student folders"):
        autograde(tmp_path, course, NOTEBOOKS)
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "Untitled.ipynb").write_text("{}")
    with pytest.raises(ValueError, match="no course notebook"):
        autograde(tmp_path, course, NOTEBOOKS)
    (tmp_path / "ann smith").mkdir()
    with pytest.raises(ValueError, match="'ann smith'.*no spaces"):
        autograde(tmp_path, course, NOTEBOOKS)


def test_timeouts_hidden_tests_and_missing_notebooks_on_a_tiny_course(tmp_path):
    """A two-exercise notebook without torch code: cheap enough to try what the course notebooks cannot."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    def cell(source, tag, **nbgrader):
        meta = {"nbgrader": {"schema_version": 3, "task": False, **nbgrader}, "tags": [tag]}
        return new_code_cell(source, metadata=meta)

    exercise = {"solution": True, "grade": False, "locked": False}
    check = {"solution": False, "grade": True, "locked": True}
    nb = new_notebook(cells=[
        cell("def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION", "exercise",
             grade_id="ex-double", **exercise),
        cell("assert double(2) == 4\n### BEGIN HIDDEN TESTS\nassert double(-1) == -2, 'negative numbers'\n"
             "### END HIDDEN TESTS", "check", grade_id="check-double", points=1, **check),
        cell("def one():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION", "exercise",
             grade_id="ex-one", **exercise),
        cell("assert one() == 1", "check", grade_id="check-one", points=2, **check),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    (tmp_path / "notebooks").mkdir()
    nbformat.write(nb, tmp_path / "notebooks" / "tiny.ipynb")
    generate_assignments(tmp_path / "notebooks", tmp_path / "course")

    # zed passes the visible check but not the hidden one, and the second solution never returns.
    nb.cells[0].source = "def double(x):\n    return 2 * x if x > 0 else 0"
    nb.cells[2].source = "def one():\n    import time\n    time.sleep(120)\n    return 1"
    for student in ("zed", "yan"):
        (tmp_path / "subs" / student).mkdir(parents=True)
    nbformat.write(nb, tmp_path / "subs" / "zed" / "tiny.ipynb")
    (tmp_path / "subs" / "yan" / "Untitled.ipynb").write_text("{}")  # yan handed in nothing usable

    grades = {(g.student, g.exercise): g for g in autograde(tmp_path / "subs", tmp_path / "course",
                                                               tmp_path / "notebooks", timeout=5)}
    assert (grades["zed", "check-double"].points, grades["zed", "check-double"].max_points) == (0, 1)
    assert grades["zed", "check-double"].failure == "AssertionError: negative numbers"
    assert (grades["zed", "check-one"].points, grades["zed", "check-one"].max_points) == (0, 2)
    assert grades["zed", "check-one"].failure == "CellTimeoutError: the cell ran longer than 5 s"
    assert all(grades["yan", c].points == 0 and grades["yan", c].failure == "not submitted"
               for c in ("check-double", "check-one"))


# ----------------------------------------------------------------------------------------------
# The full loop on the cheapest notebook
# ----------------------------------------------------------------------------------------------
PLANTED = ("(pred[labelled] == target[labelled])", "(pred == target)")  # pixel accuracy counts ignored pixels
NETWORK_PROBE = """import socket
server = socket.create_server(("127.0.0.1", 0))
socket.create_connection(server.getsockname(), timeout=5).close()
print("loopback works")
socket.create_connection(("192.0.2.1", 80), timeout=5)  # TEST-NET-1: must be refused at once
"""


def _errors(cells: list[dict]) -> list[tuple[int, str, str]]:
    return [(i, o["ename"], o["evalue"]) for i, c in enumerate(cells) for o in c.get("outputs", [])
            if o.get("output_type") == "error"]


def test_autograde_loop_on_the_cheapest_notebook(course, tmp_path):
    source = NOTEBOOKS / f"{CHEAPEST}.ipynb"
    submissions = tmp_path / "submissions"
    for student in ("instructor", "student", "planted"):
        (submissions / student).mkdir(parents=True)
    shutil.copyfile(source, submissions / "instructor" / source.name)
    shutil.copyfile(_released(course, CHEAPEST), submissions / "student" / source.name)
    nb = json.loads(source.read_text())
    planted = [c for c in nb["cells"] if _meta(c).get("grade_id") == "ex00-pixel-accuracy"]
    assert len(planted) == 1 and PLANTED[0] in _source(planted[0])
    planted[0]["source"] = _source(planted[0]).replace(*PLANTED)
    nb["cells"].append({"cell_type": "code", "id": "network-probe", "metadata": {}, "source": NETWORK_PROBE, "outputs": [],
                        "execution_count": None})
    (submissions / "planted" / source.name).write_text(json.dumps(nb))

    grades = autograde(submissions, course, NOTEBOOKS)
    by_student = {s: {g.exercise: g for g in grades if g.student == s} for s in ("instructor", "student", "planted")}
    checks = [_meta(c)["grade_id"] for c in nb["cells"] if _meta(c).get("grade")]
    assert len(checks) >= 2 and all(set(row) == set(checks) for row in by_student.values())

    # The instructor notebook, hidden tests included, earns every point.
    assert all(g.points == g.max_points > 0 and g.failure == "" for g in by_student["instructor"].values())

    # The student version earns nothing, and fails only through NotImplementedError.
    assert all(g.points == 0 and g.failure.startswith("NotImplementedError") for g in by_student["student"].values())
    executed = _cells(course / "autograded" / "student" / CHEAPEST / f"{CHEAPEST}.ipynb")
    assert all("### BEGIN HIDDEN TESTS" in _source(c) for c in executed if _meta(c).get("grade")), \
        "autograde must put the hidden tests back into the check cells"
    failed_sources = []
    for i, ename, evalue in _errors(executed):
        if ename == "NameError":  # a name the learner's unfinished code was going to define
            name = re.search(r"name '(\w+)' is not defined", evalue).group(1)
            assert any(re.search(rf"\b{name}\b", s) for s in failed_sources), f"cell {i}: {evalue}"
        else:
            assert ename == "NotImplementedError", f"cell {i}: {ename}: {evalue}"
        failed_sources.append(_source(executed[i]))

    # The planted mistake loses exactly its exercise, with the check's diagnosis as the message.
    for check, g in by_student["planted"].items():
        if check == "check00-pixel-accuracy":
            assert g.points == 0 and "ignored pixels" in g.failure and g.failure.startswith("AssertionError")
        else:
            assert g.points == g.max_points and g.failure == ""

    # The grading kernel reaches the loopback interface but not the network.
    probe = _cells(course / "autograded" / "planted" / CHEAPEST / f"{CHEAPEST}.ipynb")[-1]
    assert "loopback works" in "".join("".join(o.get("text", "")) for o in probe["outputs"])
    assert "network access is disabled" in " ".join(e[2] for e in _errors([probe]))

    csv_path, md_path = write_gradebook(grades, tmp_path / "out")
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 3 * len(checks)
    assert {r["failure"] for r in rows if r["student"] == "planted" and r["points"] == "0"} == \
        {by_student["planted"]["check00-pixel-accuracy"].failure}
    table = md_path.read_text()
    full = [f"{by_student['instructor'][c].max_points:g}" for c in checks]
    assert f"| instructor | {' | '.join(full)} | {sum(map(float, full)):g} |" in table
    assert "- planted · 00-pixel-accuracy: AssertionError" in table
