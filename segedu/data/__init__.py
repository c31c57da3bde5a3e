"""Data: ADE20K conventions and loaders (folder, parquet, save_to_disk, hub), a synthetic
ADE20K-style set, the mmseg pipeline. ``open_dataset(spec, split)`` resolves a ``--data`` argument."""

from .ade20k import (
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    IGNORE_INDEX,
    SegmentationFolder,
    audit_labels,
    label_histogram,
    read_classes,
    reduce_zero_label,
)
from .cache import DecodedCache
from .hub import HubSegmentation, open_dataset
from .synthetic import SYNTHETIC_CLASSES, ensure_synthetic, generate, render_scene
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PhotoMetricDistortion,
    RandomCropCatMax,
    RandomResize,
    denormalize,
    test_transforms,
    train_transforms,
)

__all__ = [
    "ADE20K_CLASSES",
    "ADE20K_PALETTE",
    "DecodedCache",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "HubSegmentation",
    "PhotoMetricDistortion",
    "RandomCropCatMax",
    "RandomResize",
    "SYNTHETIC_CLASSES",
    "SegmentationFolder",
    "audit_labels",
    "denormalize",
    "ensure_synthetic",
    "generate",
    "label_histogram",
    "open_dataset",
    "read_classes",
    "reduce_zero_label",
    "render_scene",
    "test_transforms",
    "train_transforms",
]
