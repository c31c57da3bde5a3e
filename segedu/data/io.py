"""Image files in and out, and the files segedu made.

Every image and label map segedu reads (folders, the decoded cache, hub rows, ``predict``) goes through
:func:`read_image`, which decodes with Pillow (``docs/data.md`` gives the reasons). Images are read as
displayed: an EXIF orientation tag is applied, as mmseg's default loader does (OpenCV's ``IMREAD_COLOR``
rotates by EXIF; mmcv ``mmcv/image/io.py``). Label maps are read as stored, without EXIF, as mmseg's
``LoadAnnotations`` (``flag='unchanged'``) does; 16-bit label PNGs are read with their values.

Files that segedu writes and may later replace carry :data:`MARKER`: a PNG text chunk, a key of a
JSON file. :func:`check_replaceable` refuses to write over anything else.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError
from torch import Tensor

# File types the readers take (compared lower-case, so .JPG and .jpeg count).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LABEL_SUFFIXES = (".png",)
MARKER = "segedu"  # PNG text key / JSON key of every file segedu may replace; its value says what wrote it


def read_image(source: str | Path | bytes, label: bool = False, where: str | None = None) -> Tensor:
    """Decode an image file (or its encoded bytes) to a ``[C, H, W]`` tensor.

    ``label=False``: uint8 ``[3, H, W]`` RGB as displayed (EXIF orientation applied; greyscale,
    palette and CMYK converted). ``label=True``: the stored values, ``[1, H, W]`` for a single-channel
    map (uint8, or int32 for a 16-bit PNG), ``[C, H, W]`` otherwise, so that callers can refuse it.
    A missing, unreadable or corrupt file raises an error naming ``where`` (default: the path).
    """
    where = where or str(source)
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise FileNotFoundError(f"image {where} does not exist")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            img.load()
            if not label:
                img = ImageOps.exif_transpose(img).convert("RGB")
            elif img.mode == "F":
                raise ValueError(f"label map {where} holds floating-point values; label maps hold integers")
            elif img.mode == "1":
                img = img.convert("L")
            array = np.array(img)  # a writable copy
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"could not decode {where}: {err}") from err
    if array.dtype not in (np.uint8,):  # 16-bit (uint16) or 32-bit integer label maps
        array = array.astype(np.int32)
    tensor = torch.from_numpy(array)
    return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


def write_png(tensor: Tensor, path: str | Path, made_by: str) -> Path:
    """Write uint8 ``[1, H, W]`` or ``[3, H, W]`` as a PNG that carries :data:`MARKER` (value ``made_by``)."""
    array = tensor.cpu().numpy()
    array = array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
    info = PngImagePlugin.PngInfo()
    info.add_text(MARKER, made_by)
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG", pnginfo=info)
    return Path(path)


def made_by_segedu(path: str | Path) -> bool:
    """True if ``path`` is a PNG or JSON file that carries :data:`MARKER` (see :func:`write_png`)."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".png":
            with Image.open(path) as img:
                return MARKER in getattr(img, "text", {})
        if path.suffix.lower() == ".json":
            record = json.loads(path.read_text())
            return isinstance(record, dict) and MARKER in record
    except (OSError, ValueError, UnidentifiedImageError):
        return False
    return False


def check_output_folder(folder: str | Path, what: str) -> Path:
    """Fail before any work unless ``folder`` is (or can be made as) a writable folder; ``what`` names the option."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{what} {folder} is a file, not a folder; give a folder path")
    existing = next(p for p in (folder, *folder.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise NotADirectoryError(f"{what} {folder}: {existing} is a file, not a folder; give another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {folder}: {existing} is not writable; give a folder you may write to")
    return folder


def check_replaceable(paths, inputs=(), what: str = "--out") -> None:
    """Fail before any work if one of ``paths`` exists and is one of ``inputs`` or a file segedu did not make."""
    inputs = {Path(p).resolve() for p in inputs}
    for path in map(Path, paths):
        if not path.exists() and not path.is_symlink():
            continue
        if path.resolve() in inputs:
            raise FileExistsError(f"{what}: writing {path} would replace the input image {path}; "
                                  "give another output folder")
        if path.is_dir() or path.is_symlink() or not made_by_segedu(path):
            raise FileExistsError(f"{what}: {path} exists and segedu did not make it; "
                                  "move it away or give another output folder")


__all__ = ["IMAGE_SUFFIXES", "LABEL_SUFFIXES", "MARKER", "check_output_folder", "check_replaceable",
           "made_by_segedu", "read_image", "write_png"]
