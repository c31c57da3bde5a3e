"""Classroom assignments with nbgrader: student versions of the course notebooks, and autograding.

The course notebooks in ``notebooks/`` are the instructor source. Each notebook is one nbgrader
assignment with the notebook's name (``05b_segformer_mix_ffn_and_hierarchy``). Everything nbgrader
needs lives in one course folder (``assignments/``, ignored by git and rebuilt on demand)::

    assignments/
      source/<nb>/<nb>.ipynb                 copies of notebooks/<nb>.ipynb
      release/<nb>/<nb>.ipynb                the student versions (what learners get)
      submitted/<student>/<nb>/<nb>.ipynb    copies of the submissions being graded
      autograded/<student>/<nb>/<nb>.ipynb   the submissions as executed by the grader
      gradebook.db                           nbgrader's database (grade cells, scores)
      gradebook.csv, gradebook.md            the grades: student x exercise

Both steps use nbgrader's own converters. ``GenerateAssignment`` runs the preprocessors that replace
every ``### BEGIN SOLUTION`` region by ``raise NotImplementedError()``, clear every output, remove the
``### BEGIN HIDDEN TESTS`` regions and lock the check cells (it records their full source, hidden tests
included, in the database). ``Autograde`` puts that recorded source back into each submission's check
cells, executes the notebook and scores every check cell: its points if it ran without an error, 0 if
not.

Command line (the Makefile's ``make assignments`` and ``make grade SUBMISSIONS=DIR``)::

    python -m segedu.assignments generate [--notebooks notebooks] [--course assignments]
    python -m segedu.assignments grade DIR [--course assignments] [--timeout 300]
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import errno
import ipaddress
import json
import logging
import os
import re
import shutil
import socket
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

# nbgrader's default of 30 s per cell is too short for PyTorch: building and training a model in one
# cell takes minutes on a loaded CPU. nbval runs the notebooks with the same 300 s limit (make test).
DEFAULT_TIMEOUT = 300

# Code the grading kernel runs before the notebook: see refuse_network().
_KERNEL_STARTUP = "import segedu.assignments; segedu.assignments.refuse_network()"

# Libraries that would otherwise try to download models or data sets during grading.
_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

log = logging.getLogger("segedu.assignments")
_nbgrader_log = logging.getLogger("nbgrader")  # where nbgrader's converters report what they do


# ----------------------------------------------------------------------------------------------
# Configuration and the network guard
# ----------------------------------------------------------------------------------------------
def nbgrader_config(course: Path, timeout: int = DEFAULT_TIMEOUT):
    """The nbgrader configuration for a course folder (a ``traitlets`` Config)."""
    from traitlets.config import Config

    if timeout <= 0:
        raise ValueError(f"the per-cell timeout must be a positive number of seconds, got {timeout}")
    c = Config()
    c.CourseDirectory.root = str(Path(course).resolve())
    c.Execute.timeout = timeout
    c.Execute.error_on_timeout = {"ename": "CellTimeoutError", "evalue": f"the cell ran longer than {timeout} s",
                                  "traceback": [f"CellTimeoutError: the cell ran longer than {timeout} s"]}
    c.Execute.extra_arguments = ["--HistoryManager.enabled=False", f"--IPKernelApp.exec_lines={_KERNEL_STARTUP}"]
    c.ClearSolutions.enforce_metadata = True  # a solution region outside a solution cell is an error
    return c


@contextlib.contextmanager
def _environment(**variables: str):
    """Set environment variables (inherited by nbgrader's tools and kernels) and restore them afterwards.

    This interpreter's bin/ goes first on PATH: nbgrader runs the ``alembic`` script to set up its database.
    """
    saved = dict(os.environ)
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    os.environ.update(variables)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _is_local(host) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:  # a host name other than localhost
        return False


def refuse_network() -> None:
    """Make every Python socket refuse connections to other machines (loopback and Unix sockets still work).

    The grading kernel runs this before the submission. It stops accidental downloads (torch.hub,
    Hugging Face, urllib) with a clear message; it is a guard, not a sandbox: code that wants to can undo
    it. Grade untrusted code in a container without a network (``docker run --network none``).
    """
    if getattr(socket.socket.connect, "_segedu_guard", False):
        return
    originals = {"connect": socket.socket.connect, "connect_ex": socket.socket.connect_ex}

    def guarded(name):
        def method(sock, address):
            if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
                raise OSError(errno.ENETUNREACH, f"network access is disabled while grading "
                                                 f"(connection to {address[0]} refused)")
            return originals[name](sock, address)
        method._segedu_guard = True
        return method

    socket.socket.connect = guarded("connect")
    socket.socket.connect_ex = guarded("connect_ex")


# ----------------------------------------------------------------------------------------------
# Student versions
# ----------------------------------------------------------------------------------------------
def course_notebooks(notebooks: Path) -> list[Path]:
    """Every notebook in the course folder, in course order (``00_…``, ``01_…``, ``05a_…``)."""
    found = sorted(Path(notebooks).glob("*.ipynb"))
    if not found:
        raise FileNotFoundError(f"no notebooks (*.ipynb) in {notebooks}")
    return found


def generate_assignments(notebooks: Path, course: Path) -> list[Path]:
    """Student versions of every notebook in ``notebooks`` into ``course/release``; returns their paths.

    ``source/`` and ``release/`` are rebuilt from scratch, so a renamed or removed notebook leaves nothing
    stale behind. The database keeps earlier grades.
    """
    from nbgrader.converters import GenerateAssignment
    from nbgrader.coursedir import CourseDirectory

    course = Path(course)
    for folder in ("source", "release"):
        shutil.rmtree(course / folder, ignore_errors=True)
    for nb in course_notebooks(notebooks):
        dest = course / "source" / nb.stem / nb.name
        dest.parent.mkdir(parents=True)
        shutil.copyfile(nb, dest)

    config = nbgrader_config(course)
    coursedir = CourseDirectory(config=config)
    coursedir.assignment_id = "*"  # every folder under source/
    app = GenerateAssignment(coursedir=coursedir, config=config, log=_nbgrader_log)
    app.force = True
    with _environment():
        app.start()  # raises NbGraderException, after logging the reason, when a notebook is malformed
    link_course_data(course / "release", notebooks)
    return sorted((course / "release").glob("*/*.ipynb"))


def link_course_data(folder: Path, notebooks: Path) -> None:
    """Make ``folder/data`` the course's ``data/`` (the sibling of ``notebooks``).

    A notebook reads ``../data/synthetic`` relative to its own folder; a student version runs in
    ``folder/<nb>/``, so without this link it would generate a second copy of the data set.
    """
    data = Path(notebooks).resolve().parent / "data"
    data.mkdir(exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data").symlink_to(data, target_is_directory=True)


# ----------------------------------------------------------------------------------------------
# Autograding
# ----------------------------------------------------------------------------------------------
@dataclass
class Grade:
    """One row of the gradebook: a student's score on one check cell (one exercise)."""
    student: str
    notebook: str
    exercise: str  # the check cell's grade_id, e.g. check05b-mix-ffn
    points: float
    max_points: float
    failure: str  # the first error message, "" when the exercise earned its points


def _copy_submissions(submissions: Path, course: Path, released: set[str]) -> dict[str, set[str]]:
    """SUBMISSIONS/<student>/**/<nb>.ipynb -> course/submitted/<student>/<nb>/<nb>.ipynb; student -> notebooks."""
    submissions = Path(submissions)
    if not submissions.is_dir():
        raise FileNotFoundError(f"submissions folder {submissions} does not exist")
    students = sorted(d for d in submissions.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not students:
        raise ValueError(f"{submissions} has no student folders; expected {submissions}/<student>/<notebook>.ipynb")
    shutil.rmtree(course / "submitted", ignore_errors=True)
    handed_in: dict[str, set[str]] = {}
    for student_dir in students:
        student = student_dir.name
        if not re.fullmatch(r"[\w.@-]+", student):
            raise ValueError(f"student folder {student!r}: its name becomes the student id in nbgrader, so use only "
                             f"letters, digits and . _ - @ (no spaces)")
        handed_in[student] = set()
        for nb in sorted(student_dir.rglob("*.ipynb")):
            if ".ipynb_checkpoints" in nb.parts:
                continue
            if nb.stem not in released:
                log.warning("ignoring %s: not the name of a course notebook", nb)
                continue
            if nb.stem in handed_in[student]:
                raise ValueError(f"{student_dir} holds {nb.name} twice; keep one copy per notebook")
            dest = course / "submitted" / student / nb.stem / nb.name
            dest.parent.mkdir(parents=True)
            shutil.copyfile(nb, dest)
            handed_in[student].add(nb.stem)
    if not any(handed_in.values()):
        raise ValueError(f"no course notebook in {submissions}: the files must keep their released names, "
                         f"e.g. {min(released)}.ipynb")
    return handed_in


def _first_line(output) -> str:
    text = f"{output.get('ename', 'Error')}: {output.get('evalue', '')}".strip()
    return text.splitlines()[0] if text else ""


def failure_messages(notebook: Path) -> dict[str, str]:
    """grade_id of every check cell -> its first failure message ("" when it passed).

    The first failure is the first error in a solution cell since the previous check cell (a syntax
    error in the learner's code says more than the NameError it causes later), else the check cell's own.
    """
    cells = json.loads(Path(notebook).read_text())["cells"]
    messages, pending = {}, ""
    for cell in cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        errors.sort(key=lambda o: o.get("ename") != "CellTimeoutError")  # a timeout explains its KeyboardInterrupt
        error = _first_line(errors[0]) if errors else ""
        if meta.get("solution") and error and not pending:
            pending = error
        if meta.get("grade") and cell["cell_type"] == "code":
            messages[meta["grade_id"]] = (pending or error) if error else ""
            pending = ""
    return messages


def _check_ids(notebook: Path) -> list[str]:
    cells = json.loads(Path(notebook).read_text())["cells"]
    return [c["metadata"]["nbgrader"]["grade_id"] for c in cells
            if c.get("metadata", {}).get("nbgrader", {}).get("grade") and c["cell_type"] == "code"]


def autograde(submissions: Path, course: Path, notebooks: Path, timeout: int = DEFAULT_TIMEOUT) -> list[Grade]:
    """Autograde ``submissions/<student>/<nb>.ipynb`` against the student versions in ``course/release``.

    Run ``generate_assignments`` first: the database must hold the check cells of the current notebooks.
    ``notebooks`` is the instructor folder; its sibling ``data/`` is where the notebooks find
    ``../data/synthetic``. Returns one Grade per student and check cell of every notebook handed in by
    anyone; a notebook a student did not hand in scores 0 with the failure "not submitted".
    """
    from nbgrader.api import Gradebook
    from nbgrader.converters import Autograde
    from nbgrader.converters.base import NbGraderException
    from nbgrader.coursedir import CourseDirectory

    course = Path(course).resolve()
    released = {p.stem: p for p in (course / "release").glob("*/*.ipynb")}
    if not released:
        raise FileNotFoundError(f"no student versions in {course / 'release'}; run `make assignments` first")
    handed_in = _copy_submissions(submissions, course, set(released))
    graded_notebooks = sorted(set().union(*handed_in.values()))

    # The notebooks run in autograded/<student>/<nb>/ and read ../data/synthetic: point that at the course data.
    shutil.rmtree(course / "autograded", ignore_errors=True)
    for student in handed_in:
        link_course_data(course / "autograded" / student, notebooks)

    config = nbgrader_config(course, timeout)
    for nb in graded_notebooks:
        coursedir = CourseDirectory(config=config)
        coursedir.assignment_id = nb
        app = Autograde(coursedir=coursedir, config=config, log=_nbgrader_log)
        app.force = True
        app.create_student = True
        with _environment(**_OFFLINE_ENV), warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="nbgrader")  # its own SQLAlchemy session warnings
            try:
                app.start()
            except NbGraderException as err:  # some submissions could not be graded; the others were
                log.error("autograding %s: %s", nb, err)

    grades = []
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for student in sorted(handed_in):
            for nb in graded_notebooks:
                executed = course / "autograded" / student / nb / f"{nb}.ipynb"
                messages = failure_messages(executed) if executed.exists() else {}
                for check in _check_ids(released[nb]):
                    max_points = gb.find_grade_cell(check, nb, nb).max_score
                    if nb not in handed_in[student]:
                        points, failure = 0.0, "not submitted"
                    elif not executed.exists():
                        points, failure = 0.0, "autograding failed (see the nbgrader log above)"
                    else:
                        points = gb.find_grade(check, nb, nb, student).score
                        failure = messages.get(check, "") if points < max_points else ""
                    grades.append(Grade(student, nb, check, points, max_points, failure))
    return grades


# ----------------------------------------------------------------------------------------------
# The gradebook
# ----------------------------------------------------------------------------------------------
def write_gradebook(grades: list[Grade], out: Path) -> tuple[Path, Path]:
    """``gradebook.csv`` (one row per student and exercise) and ``gradebook.md`` (student x exercise)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "gradebook.csv", out / "gradebook.md"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["student", "notebook", "exercise", "points", "max_points", "failure"])
        for g in grades:
            writer.writerow([g.student, g.notebook, g.exercise, f"{g.points:g}", f"{g.max_points:g}", g.failure])
    md_path.write_text(gradebook_table(grades))
    return csv_path, md_path


def _short(exercise: str) -> str:
    """check05b-mix-ffn -> 05b-mix-ffn (column names of the table)."""
    return exercise.removeprefix("check").lstrip("-_") or exercise


def gradebook_table(grades: list[Grade]) -> str:
    """A Markdown table (rows: students, columns: exercises, cells: points) and the failures under it."""
    exercises = list(dict.fromkeys(g.exercise for g in grades))
    students = list(dict.fromkeys(g.student for g in grades))
    by_key = {(g.student, g.exercise): g for g in grades}
    short = [_short(e) for e in exercises]
    lines = ["| student | " + " | ".join(short) + " | total |", "|---" * (len(exercises) + 2) + "|"]
    available = [next(g.max_points for g in grades if g.exercise == e) for e in exercises]
    lines.append("| *out of* | " + " | ".join(f"{p:g}" for p in available) + f" | {sum(available):g} |")
    for s in students:
        row = [by_key[s, e] for e in exercises]
        lines.append(f"| {s} | " + " | ".join(f"{g.points:g}" for g in row) + f" | {sum(g.points for g in row):g} |")
    failures = [g for g in grades if g.failure]
    lines.append("")
    lines.append("First failure per student and exercise:" if failures else "No failures.")
    lines += [f"- {g.student} · {_short(g.exercise)}: {g.failure[:300]}" for g in failures]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m segedu.assignments", description=__doc__.split("\n")[0])
    parser.add_argument("--course", type=Path, default=Path("assignments"), help="nbgrader course folder")
    parser.add_argument("--notebooks", type=Path, default=Path("notebooks"), help="instructor notebooks")
    parser.add_argument("-v", "--verbose", action="store_true", help="show nbgrader's progress log")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("generate", help="student versions into COURSE/release")
    grade = sub.add_parser("grade", help="autograde DIR/<student>/<notebook>.ipynb; write the gradebook")
    grade.add_argument("submissions", type=Path)
    grade.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT, help="seconds per cell")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="[%(name)s] %(message)s")
    if args.command == "generate":
        released = generate_assignments(args.notebooks, args.course)
        print(f"{len(released)} student notebooks in {args.course / 'release'}:")
        for path in released:
            print(f"  {path}")
    else:
        grades = autograde(args.submissions, args.course, args.notebooks, args.timeout)
        csv_path, md_path = write_gradebook(grades, args.course)
        print(md_path.read_text())
        print(f"gradebook: {csv_path} and {md_path}")


if __name__ == "__main__":
    main()
