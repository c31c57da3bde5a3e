"""The repository stands alone: nothing in it points to a folder outside it, which a clone would not have."""
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = re.compile(r"\.\./shared|shared/(?:reference|seeds)")
# The facts the code relies on live in docs/: a cited reference file must be the repository's own.
CITED = re.compile(r"(?<![\w/])(architectures|performance_and_user_needs|course_practices)\.md")


def repository_files():
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    for name in listed:
        path = ROOT / name
        if path.is_file() and path.suffix in {".py", ".md", ".ipynb", ".toml", ".yml", ".cfg", ".txt", ""}:
            yield name, path.read_text(errors="replace")


def test_nothing_refers_outside_the_repository():
    hits = [f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
            for name, text in repository_files() for m in OUTSIDE.finditer(text)]
    assert not hits, "references to a folder outside the repository (cite docs/ or the paper instead):\n" + \
        "\n".join(hits)


def test_cited_reference_files_are_the_repositorys_own():
    hits = [f"{name}: {m.group(0)}" for name, text in repository_files() for m in CITED.finditer(text)]
    assert not hits, "cite docs/architectures.md or docs/performance.md (with the folder), not a bare file name:\n" + \
        "\n".join(hits)
    assert all((ROOT / name).is_file() for name in ("docs/architectures.md", "docs/performance.md"))
