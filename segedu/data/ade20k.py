"""ADE20K: class names, palette, label conventions and a folder dataset.

ADE20K (the SceneParsing benchmark, ``ADEChallengeData2016``) stores every
image as ``images/{training,validation}/NAME.jpg`` and its label map as
``annotations/{training,validation}/NAME.png``. A label PNG holds one 8-bit
value per pixel: 0 means "other objects / unlabeled" and 1..150 are the 150
benchmark classes. Training code works with 0-based class indices, so the
values are shifted by ``reduce_zero_label`` (the rule of mmsegmentation's
``ADE20KDataset``): 0 becomes the ignore value 255 and v becomes v - 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .io import IMAGE_SUFFIXES, LABEL_SUFFIXES, read_image

IGNORE_INDEX = 255
SPLITS = ("training", "validation")
# Other spellings of the two split names (Hugging Face datasets say "train").
SPLIT_ALIASES = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}
# Folder names a split may have on disk, tried in order (ADE20K's first).
SPLIT_FOLDERS = {"training": ("training", "train"), "validation": ("validation", "val")}

# The 150 classes in benchmark order: class index k (after reduce_zero_label)
# is PNG value k + 1. Same order as mmsegmentation's ADE20KDataset; mmseg
# spells class 7 'bed ' with a trailing space, which we drop.
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree",  # 0-4
    "ceiling", "road", "bed", "windowpane", "grass",  # 5-9
    "cabinet", "sidewalk", "person", "earth", "door",  # 10-14
    "table", "mountain", "plant", "curtain", "chair",  # 15-19
    "car", "water", "painting", "sofa", "shelf",  # 20-24
    "house", "sea", "mirror", "rug", "field",  # 25-29
    "armchair", "seat", "fence", "desk", "rock",  # 30-34
    "wardrobe", "lamp", "bathtub", "railing", "cushion",  # 35-39
    "base", "box", "column", "signboard", "chest of drawers",  # 40-44
    "counter", "sand", "sink", "skyscraper", "fireplace",  # 45-49
    "refrigerator", "grandstand", "path", "stairs", "runway",  # 50-54
    "case", "pool table", "pillow", "screen door", "stairway",  # 55-59
    "river", "bridge", "bookcase", "blind", "coffee table",  # 60-64
    "toilet", "flower", "book", "hill", "bench",  # 65-69
    "countertop", "stove", "palm", "kitchen island", "computer",  # 70-74
    "swivel chair", "boat", "bar", "arcade machine", "hovel",  # 75-79
    "bus", "towel", "light", "truck", "tower",  # 80-84
    "chandelier", "awning", "streetlight", "booth", "television receiver",  # 85-89
    "airplane", "dirt track", "apparel", "pole", "land",  # 90-94
    "bannister", "escalator", "ottoman", "bottle", "buffet",  # 95-99
    "poster", "stage", "van", "ship", "fountain",  # 100-104
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool",  # 105-109
    "stool", "barrel", "basket", "waterfall", "tent",  # 110-114
    "bag", "minibike", "cradle", "oven", "ball",  # 115-119
    "food", "step", "tank", "trade name", "microwave",  # 120-124
    "pot", "animal", "bicycle", "lake", "dishwasher",  # 125-129
    "screen", "blanket", "sculpture", "hood", "sconce",  # 130-134
    "vase", "traffic light", "tray", "ashcan", "fan",  # 135-139
    "pier", "crt screen", "plate", "monitor", "bulletin board",  # 140-144
    "shower", "radiator", "glass", "clock", "flag",  # 145-149
)

# The colour of each class when label maps are drawn (mmseg's ADE20K palette,
# RGB, same order as ADE20K_CLASSES).
ADE20K_PALETTE = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50),  # 0-3
    (4, 200, 3), (120, 120, 80), (140, 140, 140), (204, 5, 255),  # 4-7
    (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),  # 8-11
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82),  # 12-15
    (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3),  # 16-19
    (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),  # 20-23
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220),  # 24-27
    (255, 9, 92), (112, 9, 255), (8, 255, 214), (7, 255, 224),  # 28-31
    (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),  # 32-35
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7),  # 36-39
    (255, 122, 8), (0, 255, 20), (255, 8, 41), (255, 5, 153),  # 40-43
    (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),  # 44-47
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0),  # 48-51
    (255, 31, 0), (255, 224, 0), (153, 255, 0), (0, 0, 255),  # 52-55
    (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),  # 56-59
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255),  # 60-63
    (0, 255, 112), (0, 255, 133), (255, 0, 0), (255, 163, 0),  # 64-67
    (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),  # 68-71
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255),  # 72-75
    (173, 255, 0), (0, 255, 153), (255, 92, 0), (255, 0, 255),  # 76-79
    (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),  # 80-83
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255),  # 84-87
    (255, 0, 204), (0, 255, 194), (0, 255, 82), (0, 10, 255),  # 88-91
    (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),  # 92-95
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0),  # 96-99
    (143, 255, 0), (82, 0, 255), (163, 255, 0), (255, 235, 0),  # 100-103
    (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),  # 104-107
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112),  # 108-111
    (92, 255, 0), (0, 224, 255), (112, 224, 255), (70, 184, 160),  # 112-115
    (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),  # 116-119
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0),  # 120-123
    (255, 0, 235), (245, 0, 255), (255, 0, 122), (255, 245, 0),  # 124-127
    (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),  # 128-131
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204),  # 132-135
    (41, 0, 255), (41, 255, 0), (173, 0, 255), (0, 245, 255),  # 136-139
    (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),  # 140-143
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194),  # 144-147
    (102, 255, 0), (92, 0, 255),  # 148-149
)

Transform = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def reduce_zero_label(mask: Tensor) -> Tensor:
    """Shift ADE20K PNG values to 0-based class indices (mmseg's rule).

    0 (unlabeled) -> 255, v -> v - 1 for 1..254, and 255 stays 255 (it would
    become 254, which mmseg maps back to 255). Works on uint8 and int64 and
    keeps the dtype. Example: 1 -> 0 (wall), 150 -> 149 (flag).
    """
    out = torch.where(mask == 0, torch.full_like(mask, IGNORE_INDEX), mask)
    out = out - 1  # the old zeros are now 254
    return torch.where(out == IGNORE_INDEX - 1, torch.full_like(out, IGNORE_INDEX), out)


def audit_labels(
    mask: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX, where: str = "mask"
) -> None:
    """Raise ``ValueError`` if ``mask`` holds a value that is neither a class
    index in [0, num_classes) nor ``ignore_index``.

    A silent out-of-range label is the most common data bug in segmentation:
    cross-entropy then crashes on the GPU with an unhelpful device assert, or
    a wrong class count quietly corrupts training. ``where`` names the file or
    sample in the message.
    """
    values = torch.unique(mask)
    bad = values[((values < 0) | (values >= num_classes)) & (values != ignore_index)]
    if bad.numel() > 0:
        raise ValueError(
            f"{where}: label values {bad.tolist()} are outside [0, {num_classes}) "
            f"and are not the ignore index {ignore_index}"
        )


def read_classes(path: str | Path) -> tuple[str, ...]:
    """Class names of a custom dataset from a text file, one name per line (blank lines skipped).

    Line k names class index k, i.e. label value k after ``reduce_zero_label`` (value k + 1 in the PNG)
    or label value k without it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class list {path} does not exist (expected one class name per line)")
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not names:
        raise ValueError(f"class list {path} is empty")
    return names


def resolve_classes(num_classes: int, classes: Sequence[str] | None) -> tuple[str, ...]:
    """The class names of a dataset: ``classes`` if given (it then fixes the class count),
    the ADE20K names for 150 classes, else ``class_0 ... class_{K-1}``."""
    if classes is not None:
        return tuple(classes)
    if num_classes == len(ADE20K_CLASSES):
        return ADE20K_CLASSES
    return tuple(f"class_{k}" for k in range(num_classes))


def prepare_mask(raw: Tensor, num_classes: int, reduce: bool, where: str) -> Tensor:
    """A decoded label PNG ``[1, H, W]`` (uint8, or int32 from 16 bits) -> audited int64 ``[H, W]`` class indices.

    16-bit maps are taken when every value fits 8 bits (0..255) and refused, naming the file, otherwise.
    Applies :func:`reduce_zero_label` when ``reduce`` and checks the values with
    :func:`audit_labels`; ``where`` (a file or sample name) goes into every error message.
    """
    if raw.shape[0] != 1:
        raise ValueError(f"{where}: expected a single-channel label PNG, got {raw.shape[0]} channels")
    mask = raw[0]  # [H, W]
    if mask.dtype != torch.uint8:  # a 16-bit PNG: its values are used when they fit 8 bits
        top = int(mask.max()) if mask.numel() else 0
        if top > IGNORE_INDEX or int(mask.min()) < 0:
            raise ValueError(f"{where}: a 16-bit label map with values up to {top}; segedu takes label values "
                             f"0..{IGNORE_INDEX} (save the map as 8-bit PNG with class indices)")
        mask = mask.to(torch.uint8)
    if reduce:
        mask = reduce_zero_label(mask)
    mask = mask.to(torch.int64)
    audit_labels(mask, num_classes, where=where)
    return mask


def label_histogram(
    dataset_or_masks: Dataset | Iterable[Tensor], num_classes: int, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """Count the pixels of every label value over a dataset or masks.

    Accepts a dataset of ``(image, mask)`` pairs, an iterable of masks, or
    a dataset with a ``load_mask(i)`` method (:class:`SegmentationFolder`,
    :class:`segedu.data.hub.HubSegmentation`: then only the label PNGs are
    decoded, and masks are counted before any transforms). Returns an int64 tensor ``hist`` indexed by value, at least
    ``max(num_classes, ignore_index + 1)`` long: ``hist[:num_classes]`` are
    the class pixels, ``hist[ignore_index]`` the ignored ones, and any other
    non-zero entry is an invalid value.
    """
    hist = torch.zeros(max(num_classes, ignore_index + 1), dtype=torch.int64)
    items: Iterable = dataset_or_masks
    if hasattr(dataset_or_masks, "load_mask"):
        dataset = dataset_or_masks
        items = (dataset.load_mask(i) for i in range(len(dataset)))
    for item in items:
        mask = item[1] if isinstance(item, (tuple, list)) else item
        counts = torch.bincount(mask.flatten().to(torch.int64), minlength=hist.numel())
        if counts.numel() > hist.numel():  # values above ignore_index (invalid)
            hist = torch.cat([hist, hist.new_zeros(counts.numel() - hist.numel())])
        hist[: counts.numel()] += counts
    return hist


def pair_files(image_dir: Path, annotation_dir: Path) -> tuple[list[Path], list[Path], list[tuple[Path, str]]]:
    """Images and label maps of one split paired by file stem; suffixes compared case-insensitively.

    Returns ``(images, annotations, skipped)`` where ``skipped`` lists ``(file, reason)`` for every file
    left out. Two images (or labels) with one stem, and an image without a label map, are errors.
    """
    images, labels, skipped = {}, {}, []
    for folder, suffixes, found in ((image_dir, IMAGE_SUFFIXES, images), (annotation_dir, LABEL_SUFFIXES, labels)):
        for path in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
            if not path.is_file() or path.suffix.lower() not in suffixes:
                skipped.append((path, f"not a {'/'.join(suffixes)} file"))
            elif path.stem in found:
                raise ValueError(f"{found[path.stem].name} and {path.name} in {folder} share the name "
                                 f"{path.stem!r}; keep one of them")
            else:
                found[path.stem] = path
    if not images:
        raise FileNotFoundError(f"no {'/'.join(IMAGE_SUFFIXES)} images in {image_dir}")
    missing = [images[s] for s in images if s not in labels]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) in {image_dir} have no label map in {annotation_dir}, "
                                f"e.g. {missing[0].name} needs {missing[0].stem}.png")
    skipped += [(labels[s], "label map without an image") for s in sorted(labels) if s not in images]
    stems = sorted(images)
    return [images[s] for s in stems], [labels[s] for s in stems], skipped


def describe_skipped(skipped: Sequence[tuple[Path, str]], limit: int = 5) -> str:
    """``"skipped 2: a.txt (not a ...), b.png (label map without an image)"`` (empty when none)."""
    if not skipped:
        return ""
    shown = ", ".join(f"{p.name} ({why})" for p, why in skipped[:limit])
    more = f" and {len(skipped) - limit} more" if len(skipped) > limit else ""
    return f"skipped {len(skipped)}: {shown}{more}"


class SegmentationFolder(Dataset):
    """Image/label pairs stored in the ADE20K folder layout.

    ``root/images/{split}/NAME.jpg`` (also ``.jpeg`` / ``.png``, any case) is paired by file stem with
    ``root/annotations/{split}/NAME.png``; a split folder may also be named ``train`` / ``val``.
    Other files are skipped and listed in ``skipped`` as ``(path, reason)``. Each item is
    ``(image, mask)``: image uint8 [3, H, W] RGB as displayed (:func:`segedu.data.io.read_image`),
    mask int64 [H, W] with class indices in [0, num_classes) and 255 = ignore, after
    ``reduce_zero_label`` when enabled. Every mask is checked with :func:`audit_labels`. If
    ``transforms`` is given it is called as ``transforms(image, mask)``.

    ``classes`` defaults to :data:`ADE20K_CLASSES`; a custom dataset passes
    its own names and ``num_classes`` becomes ``len(classes)``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "training",
        transforms: Transform | None = None,
        reduce_zero_label: bool = True,
        num_classes: int = 150,
        classes: Sequence[str] | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.classes = resolve_classes(num_classes, classes)  # given classes override num_classes
        self.num_classes = len(self.classes)
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        self.reduce_zero_label = reduce_zero_label
        names = SPLIT_FOLDERS[split]
        name = next((n for n in names if (self.root / "images" / n).is_dir()), names[0])
        self.image_dir = self.root / "images" / name
        self.annotation_dir = self.root / "annotations" / name
        for folder in (self.image_dir, self.annotation_dir):
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"missing folder {folder} (expected the ADE20K layout "
                    f"images/{split}/*.jpg and annotations/{split}/*.png under {self.root})"
                )
        self.images, self.annotations, self.skipped = pair_files(self.image_dir, self.annotation_dir)

    def __len__(self) -> int:
        return len(self.images)

    def summary(self) -> str:
        """One line: how many pairs were found where, and which files were skipped and why."""
        skipped = describe_skipped(self.skipped)
        return f"{self.split}: {len(self)} image/label pairs in {self.image_dir}" + (f"; {skipped}" if skipped else "")

    def load_mask(self, index: int) -> Tensor:
        """The audited int64 [H, W] label map of item ``index`` (no image decoding)."""
        path = self.annotations[index]
        raw = read_image(path, label=True)  # [C, H, W]
        return prepare_mask(raw, self.num_classes, self.reduce_zero_label, str(path))

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = read_image(self.images[index])  # [3, H, W] uint8, as displayed
        mask = self.load_mask(index)
        if mask.shape != image.shape[1:]:
            raise ValueError(
                f"size mismatch: {self.images[index]} is {tuple(image.shape[1:])} (as displayed) but "
                f"{self.annotations[index]} is {tuple(mask.shape)}"
            )
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
            f"n={len(self)}, num_classes={self.num_classes})"
        )
