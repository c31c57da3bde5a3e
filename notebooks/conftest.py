"""nbval settings for the course notebooks, and a report of how long each notebook takes."""
from collections import defaultdict

_seconds = defaultdict(float)


def pytest_collectstart(collector):
    # Warnings on stderr (deprecations, progress bars) differ between library versions: don't compare them.
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += ("stderr",)


def pytest_runtest_logreport(report):
    _seconds[report.nodeid.split("::")[0]] += report.duration


def pytest_terminal_summary(terminalreporter):
    if not _seconds:
        return
    terminalreporter.section("notebook run times (slowest first)")
    for path, sec in sorted(_seconds.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{sec:7.1f} s  {path}")
