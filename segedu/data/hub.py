"""ADE20K (or any image / label-map set) from Hugging Face ``datasets``: the hub, parquet, ``save_to_disk``.

The hub's ``scene_parse_150`` (config ``scene_parsing``, architectures.md section 5.1) has one row per
image with two Image columns: ``image`` (the JPEG) and ``annotation`` (the label PNG, values 0..150,
exactly the files of ``ADEChallengeData2016``). Parquet copies and ``save_to_disk`` folders keep the
same columns. :class:`HubSegmentation` reads the *encoded bytes* of both columns and decodes them with
torchvision, like :class:`~segedu.data.ade20k.SegmentationFolder` does with the files, so the same
JPEG/PNG gives the same ``(image, mask)`` sample whichever way it is stored.

:func:`open_dataset` turns a ``--data`` argument (a folder, a parquet file or folder, a
``save_to_disk`` folder, or a hub id) into a dataset of one split.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode

from .ade20k import SPLIT_ALIASES, SegmentationFolder, Transform, decode, prepare_mask, resolve_classes

# How each of our split names is spelled in hub datasets and parquet file names.
HUB_SPLIT_NAMES = {"training": ("train", "training"), "validation": ("validation", "val", "valid")}

# Hub ids that need more than ``load_dataset(id, split=...)``. scene_parse_150 is a loading script,
# which ``datasets`` >= 4 no longer runs; the hub's automatic parquet conversion of its
# ``scene_parsing`` config lives on the ``refs/convert/parquet`` branch (architectures.md 5.1).
HUB_ALIASES = {
    "scene_parse_150": {"path": "zhoubolei/scene_parse_150", "revision": "refs/convert/parquet",
                        "data_dir": "scene_parsing"},
}
HUB_ALIASES["zhoubolei/scene_parse_150"] = HUB_ALIASES["scene_parse_150"]


def canonical_split(split: str) -> str:
    """``"train"`` / ``"training"`` -> ``"training"``, ``"val"`` / ``"validation"`` -> ``"validation"``."""
    if split not in SPLIT_ALIASES:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_ALIASES)}")
    return SPLIT_ALIASES[split]


class HubSegmentation(Dataset):
    """A ``datasets.Dataset`` with an image column and a label-map column, as ``(image, mask)`` pairs.

    Items are the same as :class:`~segedu.data.ade20k.SegmentationFolder`'s: image uint8 ``[3, H, W]``
    RGB, mask int64 ``[H, W]`` after ``reduce_zero_label`` (when on), audited against
    ``[0, num_classes)`` and 255; then ``transforms(image, mask)`` if given.
    """

    def __init__(self, table, transforms: Transform | None = None, reduce_zero_label: bool = True,
                 num_classes: int = 150, classes: Sequence[str] | None = None, image_column: str = "image",
                 label_column: str = "annotation", name: str = "dataset") -> None:
        import datasets

        missing = [c for c in (image_column, label_column) if c not in table.column_names]
        if missing:
            raise ValueError(f"{name} has no column(s) {missing}; its columns are {table.column_names} "
                             f"(expected {image_column!r} with the images and {label_column!r} with the label maps)")
        for column in (image_column, label_column):  # keep the encoded bytes: torchvision decodes them
            if isinstance(table.features[column], datasets.Image):
                table = table.cast_column(column, datasets.Image(decode=False))
        self.table = table.select_columns([image_column, label_column])
        self.image_column, self.label_column, self.name = image_column, label_column, name
        self.classes = resolve_classes(num_classes, classes)
        self.num_classes = len(self.classes)
        self.transforms = transforms
        self.reduce_zero_label = reduce_zero_label

    def __len__(self) -> int:
        return len(self.table)

    def _decode_cell(self, index: int, column: str, mode: ImageReadMode) -> tuple[Tensor, str]:
        """Decode one cell; returns the uint8 ``[C, H, W]`` image and a name for error messages
        (row, column and the stored file name)."""
        cell = self.table[index][column]  # {"bytes": ..., "path": ...} for an Image column
        where = f"{self.name}[{index}].{column}"
        if cell is None:
            raise ValueError(f"{where} is empty (the test split of ADE20K has no annotations)")
        if isinstance(cell, dict):
            where += f" ({cell['path']})" if cell.get("path") else ""
            cell = cell["bytes"] if cell.get("bytes") is not None else cell.get("path")
        if not isinstance(cell, (bytes, str)):
            raise ValueError(f"{where}: expected encoded image bytes or a path, got {type(cell).__name__}")
        return decode(cell, mode, where), where

    def load_mask(self, index: int) -> Tensor:
        """The audited int64 ``[H, W]`` label map of row ``index`` (no image decoding)."""
        raw, where = self._decode_cell(index, self.label_column, ImageReadMode.UNCHANGED)  # [C, H, W]
        return prepare_mask(raw, self.num_classes, self.reduce_zero_label, where)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self.name} of {len(self)} rows")
        image, _ = self._decode_cell(index, self.image_column, ImageReadMode.RGB)  # [3, H, W] uint8
        mask = self.load_mask(index)
        if mask.shape != image.shape[1:]:
            raise ValueError(f"size mismatch in {self.name}[{index}]: image {tuple(image.shape[1:])}, "
                             f"label map {tuple(mask.shape)}")
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, n={len(self)}, num_classes={self.num_classes})"


def _pick_split(splits, split: str, where: str):
    """The key of ``splits`` (a DatasetDict's names) that spells ``split``."""
    for name in HUB_SPLIT_NAMES[split]:
        if name in splits:
            return name
    raise ValueError(f"{where} has no {split} split; its splits are {sorted(splits)}")


def _parquet_files(folder: Path, split: str) -> list[Path]:
    """The parquet files of one split in a folder: a path part named like the split
    (``scene_parsing/validation/0000.parquet``) or a file name starting with it
    (``data/validation-00000-of-00001.parquet``)."""
    names = HUB_SPLIT_NAMES[split]
    files = sorted(folder.rglob("*.parquet"))
    chosen = [f for f in files
              if any(part in names for part in f.relative_to(folder).parts[:-1])
              or any(f.name.startswith((f"{n}-", f"{n}_", f"{n}.")) for n in names)]
    if not chosen:
        raise FileNotFoundError(f"no parquet file of the {split} split in {folder} (looked for a folder or a file "
                                f"name starting with one of {names}); found {[f.name for f in files][:8]}")
    return chosen


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def _load_table(spec: str, split: str):
    """The ``datasets.Dataset`` of one split from a parquet file/folder, a save_to_disk folder or a hub id."""
    import datasets

    path = Path(spec).expanduser()
    if path.is_dir() and _is_saved_dataset(path):
        saved = datasets.load_from_disk(str(path))
        return saved[_pick_split(saved.keys(), split, str(path))] if isinstance(saved, datasets.DatasetDict) else saved
    if path.is_file() and path.suffix == ".parquet":  # one file holds one split: it is returned as is
        return datasets.load_dataset("parquet", data_files=[str(path)], split="train")
    if path.is_dir():
        files = _parquet_files(path, split)
        return datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")
    if path.exists() or spec.startswith((".", "/", "~")) or path.suffix == ".parquet":  # a path, not a hub id
        raise FileNotFoundError(f"--data {spec}: no such folder or parquet file")
    kwargs = HUB_ALIASES.get(spec, {"path": spec})
    try:
        return datasets.load_dataset(**kwargs, split=HUB_SPLIT_NAMES[split][0])
    except Exception as err:  # offline, unknown id, gated repository ...
        raise ConnectionError(f"could not load the hub dataset {spec!r} ({type(err).__name__}: {err}). "
                              "Without network access, download it elsewhere with datasets.load_dataset and "
                              "save_to_disk, or use an ADEChallengeData2016 folder or parquet files.") from err


def open_dataset(spec: str | Path, split: str, *, num_classes: int = 150, reduce_zero_label: bool = True,
                 classes: Sequence[str] | None = None, transforms: Transform | None = None) -> Dataset:
    """One split of the dataset named by ``--data``, as ``(image, mask)`` pairs.

    ``spec`` is, in the order tried:

    * a folder in the ADE20K layout (``images/{training,validation}``, ``annotations/...``):
      :class:`~segedu.data.ade20k.SegmentationFolder`;
    * a ``save_to_disk`` folder (``dataset_dict.json`` or ``state.json``);
    * a ``.parquet`` file (one split: returned whatever ``split`` asks) or a folder of parquet files
      (the split's files are picked by folder or file name);
    * otherwise a hub id for ``datasets.load_dataset`` (e.g. ``scene_parse_150``), which needs network.

    The last three must have ``image`` and ``annotation`` Image columns. ``split`` is ``"training"``
    / ``"train"`` or ``"validation"`` / ``"val"``. ``classes`` (a custom dataset's names, e.g. from
    :func:`~segedu.data.ade20k.read_classes`) sets the class count; otherwise ``num_classes``.
    ``reduce_zero_label`` (on for ADE20K) maps label 0 to 255 and v to v - 1.
    """
    split = canonical_split(split)
    kw = dict(transforms=transforms, reduce_zero_label=reduce_zero_label, num_classes=num_classes, classes=classes)
    path = Path(spec).expanduser()
    if (path / "images").is_dir() and (path / "annotations").is_dir():
        return SegmentationFolder(path, split, **kw)
    name = f"{spec} [{split}]"
    return HubSegmentation(_load_table(str(spec), split), name=name, **kw)


__all__ = ["HUB_ALIASES", "HubSegmentation", "canonical_split", "open_dataset"]
