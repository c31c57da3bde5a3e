"""The package's top level: submodules reachable after ``import segedu``, as with torchvision."""
import importlib
import pkgutil
import subprocess
import sys

import pytest

import segedu


def test_every_submodule_is_listed():
    on_disk = {m.name for m in pkgutil.iter_modules(segedu.__path__)} - {"__main__"}
    assert on_disk <= segedu._SUBMODULES, f"add to segedu._SUBMODULES: {sorted(on_disk - segedu._SUBMODULES)}"


def test_submodules_are_reachable_after_the_top_level_import():
    # a fresh interpreter, so that no earlier import has put segedu.weights in place already
    code = "import segedu; print(segedu.weights.convert.__name__, segedu.data.IGNORE_INDEX)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["convert", "255"]


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        segedu.nonexistent  # noqa: B018
    assert importlib.import_module("segedu.weights") is segedu.weights
