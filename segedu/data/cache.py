"""A pre-decoded copy of an ADE20K-layout folder, for data loaders that cannot decode fast enough.

``segedu bench --data`` measures the training pipeline per DataLoader worker: JPEG/PNG decoding is about a
third of a sample's CPU time at ADE20K's size, so reading decoded pixels back lets fewer workers keep a GPU
fed (``segedu train --data-cache DIR``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


CACHE_FILES = ("images.u8", "masks.u8", "index.json")


class DecodedCache(torch.utils.data.Dataset):
    """The samples of a ``SegmentationFolder``, decoded once and kept as raw uint8 in memory-mapped files.

    JPEG/PNG decoding is about a third of the CPU time of a training sample (``bench_loader``); reading a
    decoded image back is a memory copy. Files in ``cache_dir``: ``images.u8`` (every image ``[3, H, W]``
    one after another), ``masks.u8`` (every label map ``[H, W]`` after ``reduce_zero_label``, so 255 =
    ignore) and ``index.json`` (written last: file stems, sizes, offsets, the folder's settings). The cache is
    rebuilt when the folder's files or settings no longer match the index. DataLoader workers share the
    files through the page cache. Items are what the folder returns: ``(uint8 [3, H, W], int64 [H, W])``,
    then ``transforms(image, mask)`` if given. ADE20K training takes about 28 GB (20,210 images of about
    512 x 683 x 4 bytes).
    """

    def __init__(self, folder, cache_dir: str | Path, transforms=None):
        self.transforms = transforms
        self.cache_dir = Path(cache_dir)
        wanted = {"version": 1, "root": str(folder.root.resolve()), "split": folder.split,
                  "reduce_zero_label": folder.reduce_zero_label, "num_classes": folder.num_classes,
                  "stems": [p.stem for p in folder.images]}
        index_path = self.cache_dir / "index.json"
        try:
            index = json.loads(index_path.read_text())
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            index = None
        self.built = index is None or {k: index.get(k) for k in wanted} != wanted
        if self.built:
            index = self._build(folder, wanted)
        self.sizes = index["sizes"]  # [(H, W), ...]
        self.image_offsets = index["image_offsets"]
        self.mask_offsets = index["mask_offsets"]
        self.images = np.memmap(self.cache_dir / "images.u8", dtype=np.uint8, mode="r")
        self.masks = np.memmap(self.cache_dir / "masks.u8", dtype=np.uint8, mode="r")

    def _build(self, folder, wanted: dict) -> dict:
        if folder.num_classes > 255:
            raise ValueError(f"the decoded cache stores labels in 8 bits: {folder.num_classes} classes do not fit")
        if self.cache_dir.exists() and not self.cache_dir.is_dir():
            raise FileExistsError(f"--data-cache {self.cache_dir} is a file; give a folder")
        if self.cache_dir.is_dir():  # written only where it holds nothing but its own files
            foreign = sorted(p.name for p in self.cache_dir.iterdir() if p.name not in CACHE_FILES)
            if foreign or ((self.cache_dir / "index.json").exists() and not self._own_index()):
                raise FileExistsError(f"--data-cache {self.cache_dir} holds files segedu did not make "
                                      f"({', '.join(foreign) or 'index.json'}); give an empty or new folder")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        (self.cache_dir / "index.json").unlink(missing_ok=True)  # a half-written cache is never taken as valid
        sizes, image_offsets, mask_offsets = [], [0], [0]
        transforms, folder.transforms = folder.transforms, None  # cache the decoded, untransformed sample
        try:
            with open(self.cache_dir / "images.u8", "wb") as fi, open(self.cache_dir / "masks.u8", "wb") as fm:
                for i in range(len(folder)):
                    image, mask = folder[i]  # uint8 [3, H, W], int64 [H, W] (audited)
                    fi.write(image.numpy().tobytes())
                    fm.write(mask.to(torch.uint8).numpy().tobytes())
                    sizes.append(list(mask.shape))
                    image_offsets.append(image_offsets[-1] + image.numel())
                    mask_offsets.append(mask_offsets[-1] + mask.numel())
        finally:
            folder.transforms = transforms
        index = {**wanted, "sizes": sizes, "image_offsets": image_offsets, "mask_offsets": mask_offsets}
        (self.cache_dir / "index.json").write_text(json.dumps(index))
        return index

    def _own_index(self) -> bool:
        """True if ``index.json`` is one this class wrote (it holds the folder's file stems)."""
        try:
            index = json.loads((self.cache_dir / "index.json").read_text())
        except (OSError, json.JSONDecodeError):
            return False
        return isinstance(index, dict) and "stems" in index and "version" in index

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = self.sizes[i]
        image = torch.from_numpy(self.images[self.image_offsets[i]:self.image_offsets[i + 1]].copy()).view(3, h, w)
        mask = torch.from_numpy(self.masks[self.mask_offsets[i]:self.mask_offsets[i + 1]].copy()).view(h, w).long()
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask
