"""segedu: transformer semantic segmentation built step by step (SETR, SSformer, SegFormer, SegNeXt)."""
from . import models  # noqa: F401  (registers every model family)
from .registry import build_model, list_models

__version__ = "0.1.0"
__all__ = ["build_model", "list_models", "__version__"]
