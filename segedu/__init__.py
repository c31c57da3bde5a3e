"""segedu: transformer semantic segmentation built step by step (SETR, SSformer, SegFormer, SegNeXt).

``import segedu`` registers the model families; every other submodule (``segedu.weights``, ``segedu.data``,
``segedu.train``, ...) is reachable as an attribute and imported on first use, as torchvision's are.
"""
import importlib

from . import models  # noqa: F401  (registers every model family)
from .registry import build_model, list_models

__version__ = "0.1.0"
__all__ = ["build_model", "list_models", "__version__"]

_SUBMODULES = {"assignments", "bench", "checkpoint", "checks", "cli", "course", "data", "diagrams", "distributed",
               "evaluate", "layers", "logs", "losses", "metrics", "models", "optim", "predict", "recipes", "registry",
               "report", "train", "utils", "viz", "weights", "zoo"}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'segedu' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _SUBMODULES)
