"""Inference and dataset-level evaluation: whole image, sliding window, multi-scale + flip.

The three test modes of the papers (docs/architectures.md sections 1.3, 3.4, 5.2-5.3):

* ``whole``: one forward pass on the test-resized image (SegFormer, SegNeXt, SSformer on ADE20K).
* ``slide``: crops of ``crop_size`` every ``stride`` pixels; the logits of overlapping windows are
  averaged with a count map (SETR on ADE20K: crop 512, stride 341; Cityscapes recipes: 1024 / 768).
* ``ms-flip``: the image at 0.5, 0.75, ..., 1.75 times its test size, each also mirrored; the
  softmax of every pass is resized to the label size and the 12 passes are averaged.

Every function takes a normalised batch ``[B, 3, H, W]`` and returns per-pixel class scores
``[B, K, H', W']``; ``argmax(1)`` gives the prediction.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from .metrics import SegMetrics
from .utils import stop_workers

MODES = ("whole", "slide", "ms-flip")
MS_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _resize(logits: torch.Tensor, size) -> torch.Tensor:
    if logits.shape[-2:] == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


@torch.no_grad()
def predict_logits(model: torch.nn.Module, image: torch.Tensor, out_size: tuple[int, int] | None = None,
                   amp: bool = False) -> torch.Tensor:
    """Whole-image logits ``[B, K, H, W]`` for a normalised batch, bilinearly resized to ``out_size`` if given
    (default: the model's own output size)."""
    with torch.autocast(image.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(image)
    logits = logits.float()
    return logits if out_size is None else _resize(logits, out_size)


def slide_windows(height: int, width: int, crop_size: int | tuple[int, int],
                  stride: int | tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """The ``(y1, y2, x1, x2)`` windows of sliding-window inference (mmseg ``slide_inference``, section 5.3).

    ``grids = max(H - crop + stride - 1, 0) // stride + 1`` rows (likewise columns); window i starts
    at ``i * stride`` and the last one is shifted back inside the image instead of being padded, so
    every window has the same size ``min(crop, H) x min(crop, W)``. An image no larger than the crop
    is a single window: the whole image.
    """
    (crop_h, crop_w), (stride_h, stride_w) = _pair(crop_size), _pair(stride)
    if min(crop_h, crop_w, stride_h, stride_w) <= 0:
        raise ValueError(f"crop_size {crop_size} and stride {stride} must be positive")
    if stride_h > crop_h or stride_w > crop_w:
        raise ValueError(f"stride {stride} is larger than crop_size {crop_size}: pixels would be skipped")
    grids_h = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    grids_w = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    windows = []
    for i in range(grids_h):
        for j in range(grids_w):
            y2, x2 = min(i * stride_h + crop_h, height), min(j * stride_w + crop_w, width)
            windows.append((max(y2 - crop_h, 0), y2, max(x2 - crop_w, 0), x2))
    return windows


@torch.no_grad()
def slide_logits(model: torch.nn.Module, image: torch.Tensor, crop_size: int | tuple[int, int],
                 stride: int | tuple[int, int], num_classes: int, amp: bool = False,
                 batch_size: int = 8) -> torch.Tensor:
    """Sliding-window logits ``[B, K, H, W]`` at the input size (section 5.3).

    Each window's logits are resized to the window, added to a canvas, and the canvas is divided by
    a count map holding how many windows cover each pixel. All windows have the same size, so up
    to ``batch_size`` windows (times B images) go through the model in one batch.
    """
    b, _, height, width = image.shape
    windows = slide_windows(height, width, crop_size, stride)
    canvas = image.new_zeros(b, num_classes, height, width, dtype=torch.float32)
    count = image.new_zeros(1, 1, height, width, dtype=torch.float32)
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        crops = torch.cat([image[..., y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])  # [n * B, 3, h, w]
        logits = predict_logits(model, crops, crops.shape[-2:], amp)             # [n * B, K, h, w]
        if logits.shape[1] != num_classes:
            raise ValueError(f"the model predicts {logits.shape[1]} classes, num_classes is {num_classes}")
        for (y1, y2, x1, x2), window_logits in zip(chunk, logits.split(b)):
            canvas[..., y1:y2, x1:x2] += window_logits
            count[..., y1:y2, x1:x2] += 1
    return canvas / count  # every pixel lies in at least one window (count >= 1)


@torch.no_grad()
def ms_flip_logits(model: torch.nn.Module, image: torch.Tensor, scales: tuple[float, ...] = MS_SCALES,
                   flip: bool = True, out_size: tuple[int, int] | None = None,
                   crop_size: int | tuple[int, int] | None = None, stride: int | tuple[int, int] | None = None,
                   num_classes: int | None = None, amp: bool = False,
                   min_short_side: int | None = None) -> torch.Tensor:
    """Multi-scale (+ horizontal flip) test-time augmentation (section 5.2, mmseg ``aug_test``).

    For each scale r the image is bilinearly resized to ``round(r * H) x round(r * W)`` (keeping the
    ratio, with the short side raised to ``min_short_side`` if it falls below: SETR's
    ``setr_multi_scale`` uses the crop size, so its 0.5 and 0.75 scales both become 512) and run whole
    (or by :func:`slide_logits` when ``crop_size`` and ``stride`` are given); with ``flip`` the mirrored
    image is run too and its logits mirrored back. Each pass's logits are resized to ``out_size``
    (default: the input size), turned into a softmax, and the passes are averaged.

    Returns the mean class probabilities ``[B, K, *out_size]`` (they sum to 1 over K).
    """
    if (crop_size is None) != (stride is None):
        raise ValueError("give both crop_size and stride for sliding-window passes, or neither")
    out_size = tuple(out_size or image.shape[-2:])
    height, width = image.shape[-2:]

    def one_pass(x: torch.Tensor) -> torch.Tensor:  # logits [B, K, *out_size]
        if crop_size is None:
            logits = predict_logits(model, x, amp=amp)
        else:
            if num_classes is None:
                raise ValueError("sliding-window passes need num_classes")
            logits = slide_logits(model, x, crop_size, stride, num_classes, amp)
        return _resize(logits, out_size)

    total, passes = None, 0
    for r in scales:
        r = max(r, (min_short_side or 0) / min(height, width))
        scaled = _resize(image, (max(int(height * r + 0.5), 1), max(int(width * r + 0.5), 1)))
        probs = one_pass(scaled).softmax(1)
        if flip:
            probs = probs + one_pass(scaled.flip(-1)).flip(-1).softmax(1)
        total = probs if total is None else total + probs
        passes += 2 if flip else 1
    if total is None:
        raise ValueError("scales must hold at least one scale")
    return total / passes


def infer(model: torch.nn.Module, image: torch.Tensor, num_classes: int, out_size: tuple[int, int] | None = None,
          mode: str = "whole", crop_size=None, stride=None, scales: tuple[float, ...] = MS_SCALES,
          amp: bool = False, min_short_side: int | None = None) -> torch.Tensor:
    """Class scores ``[B, K, *out_size]`` of one test mode: logits for ``whole`` / ``slide``,
    mean probabilities for ``ms-flip`` (sliding-window passes when ``crop_size`` is given)."""
    if mode == "whole":
        return predict_logits(model, image, out_size or image.shape[-2:], amp)
    if mode == "slide":
        if crop_size is None or stride is None:
            raise ValueError("mode 'slide' needs crop_size and stride (the recipe's slide_crop / slide_stride)")
        return _resize(slide_logits(model, image, crop_size, stride, num_classes, amp), out_size or image.shape[-2:])
    if mode == "ms-flip":
        return ms_flip_logits(model, image, scales, flip=True, out_size=out_size, crop_size=crop_size,
                              stride=stride, num_classes=num_classes, amp=amp, min_short_side=min_short_side)
    raise ValueError(f"unknown test mode {mode!r}; expected one of {MODES}")


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, num_classes: int, device: torch.device | str = "cpu",
             amp: bool = False, progress: bool = True, mode: str = "whole", crop_size=None, stride=None,
             scales: tuple[float, ...] = MS_SCALES, ignore_index: int = 255, num_workers: int = 0,
             min_short_side: int | None = None) -> dict:
    """Dataset-level mIoU / mAcc / aAcc and per-class IoU / Acc (section 5.4) of ``model`` on ``dataset``.

    ``dataset`` yields ``(image, mask)``: a normalised image (test-resized) and the mask at its
    original size. Images go through one at a time (their sizes differ); the scores of ``mode``
    (see :func:`infer`) are resized to the mask, so the metric is computed at the annotation's
    resolution (``min_short_side``: see :func:`ms_flip_logits`). ``num_workers`` DataLoader processes
    decode and resize the next images meanwhile.
    The confusion matrix lives on ``device``; under ``torchrun`` each process takes every
    world_size-th image and :meth:`SegMetrics.all_reduce` sums the matrices.
    """
    if mode not in MODES:
        raise ValueError(f"unknown test mode {mode!r}; expected one of {MODES}")
    device = torch.device(device)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    shard = Subset(dataset, range(rank, len(dataset), world))
    loader = DataLoader(shard, batch_size=None, num_workers=num_workers, pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    metrics = SegMetrics(num_classes, ignore_index=ignore_index, device=device)
    batches = iter(loader)
    try:
        for image, mask in tqdm(batches, total=len(shard), desc=f"eval ({mode})", leave=False, disable=not progress):
            image, mask = image.to(device)[None], mask.to(device)[None]  # [1, 3, h, w], [1, H, W]
            scores = infer(model, image, num_classes, mask.shape[-2:], mode, crop_size, stride, scales, amp,
                           min_short_side)
            metrics.update(scores.argmax(1), mask)
    finally:
        stop_workers(batches)
    metrics.all_reduce()
    model.train(was_training)
    return metrics.compute()
