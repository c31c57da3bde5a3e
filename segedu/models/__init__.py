"""Model families. Importing a family's module registers its variants."""
from . import segformer, segnext, setr, ssformer  # noqa: F401
from .base import SegmentationModel

__all__ = ["SegmentationModel"]
