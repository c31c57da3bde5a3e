"""ADE20K (or any image / label-map set) from Hugging Face ``datasets``: the hub, parquet, ``save_to_disk``.

The hub's ``scene_parse_150`` (config ``scene_parsing``, docs/architectures.md section 5.1) has one row per
image with two Image columns: ``image`` (the JPEG) and ``annotation`` (the label PNG, values 0..150,
exactly the files of ``ADEChallengeData2016``). Parquet copies and ``save_to_disk`` folders keep the
same columns. :class:`HubSegmentation` reads the *encoded bytes* of both columns and decodes them with
:func:`segedu.data.io.read_image`, like :class:`~segedu.data.ade20k.SegmentationFolder` does with the files, so the same
JPEG/PNG gives the same ``(image, mask)`` sample whichever way it is stored.
Copies that name their columns otherwise are read with ``image_column`` / ``label_column``, or by
the names of :data:`IMAGE_COLUMNS` / :data:`LABEL_COLUMNS`; the columns are checked before any data is loaded.

:func:`open_dataset` turns a ``--data`` argument (a folder, a parquet file or folder, a
``save_to_disk`` folder, or a hub id) into a dataset of one split.
"""
from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor
from torch.utils.data import Dataset

from .ade20k import SPLIT_ALIASES, SegmentationFolder, Transform, prepare_mask, resolve_classes
from .io import read_image

# How each of our split names is spelled in hub datasets and parquet file names.
HUB_SPLIT_NAMES = {"training": ("train", "training"), "validation": ("validation", "val", "valid")}

# Hub ids that need more than ``load_dataset(id, split=...)``. scene_parse_150 is a loading script,
# which ``datasets`` >= 4 no longer runs; the hub's automatic parquet conversion of its
# ``scene_parsing`` config lives on the ``refs/convert/parquet`` branch (docs/architectures.md 5.1).
HUB_ALIASES = {
    "scene_parse_150": {"path": "zhoubolei/scene_parse_150", "revision": "refs/convert/parquet",
                        "data_dir": "scene_parsing"},
}
HUB_ALIASES["zhoubolei/scene_parse_150"] = HUB_ALIASES["scene_parse_150"]

# Column names taken without --image-column / --label-column, in order of preference.
IMAGE_COLUMNS = ("image", "img", "pixel_values", "jpg")
LABEL_COLUMNS = ("annotation", "label", "segmentation", "semantic_map", "label_map", "mask", "gt", "seg")
# The config of a multi-config parquet export that holds semantic segmentation (docs/architectures.md 5.1).
SCENE_PARSING = "scene_parsing"


def pick_columns(columns: Sequence[str], image_column: str | None = None, label_column: str | None = None,
                 where: str = "dataset") -> tuple[str, str]:
    """The image and label-map column names: the ones given, else the first known name present.

    Raises ``ValueError`` listing the columns when a given name is absent or none is recognised.
    """
    columns = list(columns)

    def pick(given, candidates, role, option):
        if given is not None:
            if given not in columns:
                raise ValueError(f"{where} has no column {given!r} ({option}); its columns are {columns}")
            return given
        found = next((c for c in candidates if c in columns), None)
        if found is None:
            raise ValueError(f"{where} has no {role} column I know ({', '.join(candidates)}); its columns are "
                             f"{columns}: name it with {option} COLUMN")
        return found

    return (pick(image_column, IMAGE_COLUMNS, "image", "--image-column"),
            pick(label_column, LABEL_COLUMNS, "label-map", "--label-column"))


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
                 num_classes: int = 150, classes: Sequence[str] | None = None, image_column: str | None = None,
                 label_column: str | None = None, name: str = "dataset") -> None:
        import datasets

        image_column, label_column = pick_columns(table.column_names, image_column, label_column, name)
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

    def summary(self) -> str:
        """One line: how many rows, where, and which columns are read."""
        return f"{self.name}: {len(self)} rows (image column {self.image_column!r}, labels {self.label_column!r})"

    def _decode_cell(self, index: int, column: str, label: bool) -> tuple[Tensor, str]:
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
        return read_image(cell, label, where), where

    def load_mask(self, index: int) -> Tensor:
        """The audited int64 ``[H, W]`` label map of row ``index`` (no image decoding)."""
        raw, where = self._decode_cell(index, self.label_column, label=True)  # [C, H, W]
        return prepare_mask(raw, self.num_classes, self.reduce_zero_label, where)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self.name} of {len(self)} rows")
        image, _ = self._decode_cell(index, self.image_column, label=False)  # [3, H, W] uint8
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
    """The key of ``splits`` (a DatasetDict's names) that spells ``split`` (``validation`` or ``val`` ...)."""
    for name in HUB_SPLIT_NAMES[split]:
        if name in splits:
            return name
    raise ValueError(f"{where} has no {split} split; its splits are {sorted(splits)}")


def _parquet_files(folder: Path, split: str) -> list[Path]:
    """The parquet files of one split in a folder: a path part named like the split
    (``scene_parsing/validation/0000.parquet``) or a file name starting with it
    (``data/validation-00000-of-00001.parquet``).

    An export with several configs (``scene_parsing/`` and ``instance_segmentation/``) is never mixed:
    ``scene_parsing`` is taken, otherwise the configs found are named in the error.
    """
    names = HUB_SPLIT_NAMES[split]
    files = sorted(folder.rglob("*.parquet"))
    configs: dict[str, list[Path]] = {}
    for f in files:
        parts = f.relative_to(folder).parts[:-1]
        if any(part in names for part in parts) or f.name.startswith(tuple(f"{n}{c}" for n in names for c in "-_.")):
            config = "/".join(p for p in parts if p not in names)
            configs.setdefault(config, []).append(f)
    if not configs:
        raise FileNotFoundError(f"no parquet file of the {split} split in {folder} (looked for a folder or a file "
                                f"name starting with one of {names}); found {[f.name for f in files][:8]}")
    if len(configs) == 1:
        return next(iter(configs.values()))
    for config in configs:
        if config == SCENE_PARSING or config.endswith(f"/{SCENE_PARSING}"):
            return configs[config]
    raise ValueError(f"{folder} holds several configs ({', '.join(sorted(configs))}) for the {split} split; "
                     f"give one of them as --data, e.g. --data {folder / sorted(configs)[0]}")


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def is_local_path(spec: str) -> bool:
    """True when ``spec`` names a local path rather than a hub id: it exists, starts like a path, ends in
    .parquet, has more than one ``/``, or its first part is a local folder (``data/synthtic``)."""
    path = Path(spec).expanduser()
    parts = spec.replace("\\", "/").split("/")
    return (path.exists() or spec.startswith((".", "/", "~")) or path.suffix == ".parquet" or len(parts) > 2
            or "\\" in spec or (len(parts) == 2 and Path(parts[0]).is_dir()))


def missing_path_error(spec: str, option: str = "--data") -> FileNotFoundError:
    """``--data data/synthtic: no such folder or parquet file (did you mean data/synthetic?)``."""
    path = Path(spec).expanduser()
    parent = next((p for p in path.absolute().parents if p.is_dir()), Path("."))
    near = difflib.get_close_matches(path.name, [p.name for p in parent.iterdir()], n=1) if path.name else []
    hint = f" (did you mean {Path(spec).parent / near[0]}?)" if near and path.parent.is_dir() else ""
    return FileNotFoundError(f"{option} {spec}: no such folder or parquet file{hint}")


def _hub_features(kwargs: dict, split: str):
    """The column names and the hub spelling of ``split`` from the dataset's metadata (no data download);
    ``(None, None)`` when the builder cannot say."""
    import datasets

    try:
        info = datasets.load_dataset_builder(**kwargs).info
    except Exception:  # offline, or a builder that needs its files first: the load below decides
        return None, None
    columns = list(info.features) if info.features else None
    name = _pick_split(info.splits, split, kwargs["path"]) if info.splits else None
    return columns, name


def _load_table(spec: str, split: str, image_column: str | None = None, label_column: str | None = None):
    """``(table, image_column, label_column)`` of one split from a parquet file/folder, a save_to_disk folder
    or a hub id. The columns are checked before any data is loaded."""
    import datasets

    path = Path(spec).expanduser()
    where = f"{spec} [{split}]"
    if path.is_dir() and _is_saved_dataset(path):
        saved = datasets.load_from_disk(str(path))
        table = saved[_pick_split(saved.keys(), split, str(path))] if isinstance(saved, datasets.DatasetDict) else saved
        return (table, *pick_columns(table.column_names, image_column, label_column, where))
    if path.is_file() and path.suffix.lower() == ".parquet":  # one file holds one split: it is returned as is
        files = [path]
    elif path.is_dir():
        files = _parquet_files(path, split)
    elif is_local_path(spec):
        raise missing_path_error(spec)
    else:
        return _load_hub(spec, split, image_column, label_column)
    import pyarrow.parquet as pq

    columns = pick_columns(pq.read_schema(files[0]).names, image_column, label_column, where)
    return datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train"), *columns


def _load_hub(spec: str, split: str, image_column: str | None, label_column: str | None):
    """A hub id: columns and split names from its metadata first, then the data (``validation`` / ``val``)."""
    import datasets

    kwargs = HUB_ALIASES.get(spec, {"path": spec})
    where = f"{spec} [{split}]"
    columns, name = _hub_features(kwargs, split)
    if columns is not None:
        pick_columns(columns, image_column, label_column, where)
    names = (name,) if name else HUB_SPLIT_NAMES[split]
    for i, candidate in enumerate(names):
        try:
            table = datasets.load_dataset(**kwargs, split=candidate)
            break
        except ValueError as err:  # e.g. "Unknown split": try the next spelling
            if i + 1 < len(names) and "split" in str(err).lower():
                continue
            raise ConnectionError(f"could not load the hub dataset {spec!r} ({type(err).__name__}: {err})") from err
        except Exception as err:  # offline, unknown id, gated repository ...
            raise ConnectionError(f"could not load the hub dataset {spec!r} ({type(err).__name__}: {err}). "
                                  "Without network access, download it elsewhere with datasets.load_dataset and "
                                  "save_to_disk, or use an ADEChallengeData2016 folder or parquet files.") from err
    return (table, *pick_columns(table.column_names, image_column, label_column, where))


def open_dataset(spec: str | Path, split: str, *, num_classes: int = 150, reduce_zero_label: bool = True,
                 classes: Sequence[str] | None = None, transforms: Transform | None = None,
                 image_column: str | None = None, label_column: str | None = None) -> Dataset:
    """One split of the dataset named by ``--data``, as ``(image, mask)`` pairs.

    ``spec`` is, in the order tried:

    * a folder in the ADE20K layout (``images/{training,validation}``, ``annotations/...``):
      :class:`~segedu.data.ade20k.SegmentationFolder`;
    * a ``save_to_disk`` folder (``dataset_dict.json`` or ``state.json``);
    * a ``.parquet`` file (one split: returned whatever ``split`` asks) or a folder of parquet files
      (the split's files are picked by folder or file name; of several configs, ``scene_parsing``);
    * otherwise a hub id for ``datasets.load_dataset`` (e.g. ``scene_parse_150``), which needs network.
      A missing relative path such as ``data/synthtic`` is reported as missing, not sent to the hub.

    The last three need an image column and a label-map column: ``image_column`` / ``label_column``,
    or the first of :data:`IMAGE_COLUMNS` / :data:`LABEL_COLUMNS` present. ``split`` is ``"training"``
    / ``"train"`` or ``"validation"`` / ``"val"``. ``classes`` (a custom dataset's names, e.g. from
    :func:`~segedu.data.ade20k.read_classes`) sets the class count; otherwise ``num_classes``.
    ``reduce_zero_label`` (on for ADE20K) maps label 0 to 255 and v to v - 1.
    """
    split = canonical_split(split)
    kw = dict(transforms=transforms, reduce_zero_label=reduce_zero_label, num_classes=num_classes, classes=classes)
    path = Path(spec).expanduser()
    if (path / "images").is_dir() or (path / "annotations").is_dir():
        return SegmentationFolder(path, split, **kw)
    table, image_column, label_column = _load_table(str(spec), split, image_column, label_column)
    return HubSegmentation(table, name=f"{spec} [{split}]", image_column=image_column, label_column=label_column,
                           **kw)


__all__ = ["HUB_ALIASES", "HubSegmentation", "IMAGE_COLUMNS", "LABEL_COLUMNS", "canonical_split", "is_local_path",
           "open_dataset", "pick_columns"]
