"""Checks for notebook 08: evaluation and inference (the confusion matrix, sliding-window inference)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._core import teaches, _diagnose, _expect_tensor, _fail, _passed, _randomize_, _run, _seeded

__all__ = ["check_confusion_iou", "check_slide_logits", "check_ms_flip"]


# ----------------------------------------------------------------------------------------------
# Confusion matrix and per-class IoU (mmseg IoUMetric, docs/architectures.md section 5.4)
# ----------------------------------------------------------------------------------------------
@teaches("mmsegmentation's IoUMetric (docs/architectures.md §5.4); segedu.metrics.SegMetrics")
def check_confusion_iou(confusion_fn: Callable[..., torch.Tensor], iou_fn: Callable[..., torch.Tensor]) -> None:
    """``confusion_fn(pred [B, H, W], target [B, H, W], num_classes, ignore_index=255) -> int64 [K, K]``
    (rows: label, columns: prediction) and ``iou_fn(confusion [K, K]) -> float [K]`` (NaN where a
    class is absent from both label and prediction). Compared with ``segedu.metrics.SegMetrics``.
    """
    from ..metrics import SegMetrics

    where = "check_confusion_iou"
    gen = torch.Generator().manual_seed(80)
    n = 0
    for k, shape in ((5, (3, 7, 6)), (4, (2, 5, 9))):
        # The last class is never labelled; with k = 5 it is predicted on 3 pixels (IoU 0),
        # with k = 4 it is absent from both (IoU NaN). Class 0 is predicted where the label is ignored.
        target = torch.randint(0, k - 1, shape, generator=gen)
        pred = torch.where(torch.rand(shape, generator=gen) < 0.6, target, torch.randint(0, k - 1, shape, generator=gen))
        ignored = torch.rand(shape, generator=gen) < 0.25
        target[ignored] = 255
        pred[ignored & (torch.rand(shape, generator=gen) < 0.5)] = 0
        if k == 5:
            pred[0, 0, :3] = k - 1
            target[0, 0, :3] = 1
        metric = SegMetrics(k)
        metric.update(pred, target)
        expected_cm = metric.confusion.clone()

        try:
            cm = confusion_fn(pred.clone(), target.clone(), k, 255)
        except NotImplementedError:
            raise
        except (RuntimeError, IndexError) as err:
            _fail(where, f"confusion_fn raised {type(err).__name__}: {err}. If this comes from label 255: drop the "
                         f"pixels whose label is ignore_index before counting (they belong to no class)")
        except Exception as err:
            _fail(where, f"confusion_fn raised {type(err).__name__}: {err}")
        cm = _expect_tensor(where, cm, (k, k), "The confusion matrix is [num_classes, num_classes].")
        if cm.dtype.is_floating_point and not torch.equal(cm.round(), cm):
            _fail(where, "confusion_fn returned fractions: return the integer counts (normalise only for plotting)")
        keep = target != 255
        clamped = target.clamp(max=k - 1)
        _diagnose(where + " (confusion matrix)", cm.double(), expected_cm.double(), [
            ("rows and columns are swapped: row = label (ground truth), column = prediction.",
             lambda: expected_cm.T.double()),
            ("the ignored pixels (label 255) were counted (here as the last class): drop them before counting.",
             lambda: torch.bincount(clamped.flatten() * k + pred.flatten(), minlength=k * k).reshape(k, k).double()),
            ("the ignored pixels (label 255) were counted as class 0: drop them before counting.",
             lambda: torch.bincount(torch.where(keep, target, 0).flatten() * k + pred.flatten(),
                                    minlength=k * k).reshape(k, k).double()),
            ("the rows were normalised; return the counts.",
             lambda: expected_cm.double() / expected_cm.sum(1, keepdim=True).double()),
        ], "Expected confusion[l, p] = number of labelled pixels with label l predicted as p.", rtol=0, atol=0)

        iou = _run(where, iou_fn, expected_cm.clone())
        iou = _expect_tensor(where, iou, (k,), "One IoU per class.")
        exp_iou = torch.tensor(metric.compute()["IoU"], dtype=torch.float64)
        c = expected_cm.double()
        inter, label, pcount = c.diag(), c.sum(1), c.sum(0)
        _diagnose(where + " (IoU)", iou.double(), exp_iou, [
            ("a class absent from both label and prediction must be NaN (0 / 0: undefined), not 0, so that "
             "nanmean leaves it out of the mIoU.", lambda: torch.nan_to_num(exp_iou, nan=0.0)),
            (("the intersection was not subtracted from (row sum) + (column sum), so the diagonal counts twice in "
              "the union.", "the union is (row sum) + (column sum) - diagonal."),
             lambda: inter / (pcount + label)),
            ("that is the class accuracy diag / row sum (recall), not the IoU.", lambda: inter / label),
            ("that is diag / column sum (precision), not the IoU.", lambda: inter / pcount),
            ("that is the Dice score 2 diag / (row + column), not the IoU.", lambda: 2 * inter / (pcount + label)),
        ], "Expected IoU_c = C[c, c] / (sum_p C[c, p] + sum_l C[l, c] - C[c, c]).", rtol=1e-6, atol=1e-9)
        n += 1
    _passed(where, n, "segedu.metrics.SegMetrics")


# ----------------------------------------------------------------------------------------------
# Sliding-window inference (mmseg slide_inference, docs/architectures.md section 5.3)
# ----------------------------------------------------------------------------------------------
class _PositionSensitiveNet(nn.Module):
    """A tiny segmenter whose logits depend on where a pixel sits in its window (zero padding, a
    stride-2 stage, a global-context term), so every window layout gives a different canvas."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv1(x))                      # [B, 8, H/2, W/2]
        h = h + h.mean(dim=(2, 3), keepdim=True)           # depends on the whole window
        return self.conv2(h)                               # [B, K, H/2, W/2]: at half resolution


def _windows(height, width, crop, stride, *, align_last=True, grid="mmseg"):
    if grid == "mmseg":
        rows = max(height - crop + stride - 1, 0) // stride + 1
        cols = max(width - crop + stride - 1, 0) // stride + 1
    else:  # the windows that fit entirely: the border may stay uncovered
        rows, cols = max(height - crop, 0) // stride + 1, max(width - crop, 0) // stride + 1
    out = []
    for i in range(rows):
        for j in range(cols):
            y1, x1 = i * stride, j * stride
            y2, x2 = min(y1 + crop, height), min(x1 + crop, width)
            if align_last:
                y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            out.append((y1, y2, x1, x2))
    return out


def _slide(model, image, crop, stride, k, *, align_last=True, grid="mmseg", divide=True, resize=True,
           probs=False):
    b, _, height, width = image.shape
    canvas = image.new_zeros(b, k, height, width)
    count = image.new_zeros(1, 1, height, width)
    for y1, y2, x1, x2 in _windows(height, width, crop, stride, align_last=align_last, grid=grid):
        logits = model(image[..., y1:y2, x1:x2])
        if resize:
            logits = F.interpolate(logits, size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False)
        else:  # pasted at the model's own resolution (only its top-left corner of the window is filled)
            logits = F.pad(logits, (0, x2 - x1 - logits.shape[-1], 0, y2 - y1 - logits.shape[-2]))
        canvas[..., y1:y2, x1:x2] += logits.softmax(1) if probs else logits
        count[..., y1:y2, x1:x2] += 1
    return canvas / count if divide else canvas


@teaches("mmsegmentation's slide_inference (docs/architectures.md §5.3); segedu.evaluate.slide_logits")
def check_slide_logits(fn: Callable[..., torch.Tensor]) -> None:
    """``fn(model, image [B, 3, H, W], crop_size, stride, num_classes) -> logits [B, K, H, W]``.

    Windows as mmseg: ``max(H - crop + stride - 1, 0) // stride + 1`` rows (likewise columns), the last
    window shifted back to end at the border; each window's logits resized (bilinear,
    align_corners=False) to the window, summed on a canvas and divided by the count of windows
    covering each pixel. Compared with ``segedu.evaluate.slide_logits`` on a small model whose output
    at half resolution depends on the window.
    """
    from ..evaluate import slide_logits

    where = "check_slide_logits"
    n = 0
    # (B, K, H, W, crop, stride): overlaps whose last window must be shifted, an exact fit,
    # and an image narrower than the crop.
    for i, (b, k, height, width, crop, stride) in enumerate(
            [(1, 4, 26, 35, 16, 10), (2, 3, 24, 40, 16, 8), (1, 5, 12, 29, 16, 12)]):
        with _seeded(90 + i):
            model = _randomize_(_PositionSensitiveNet(k), 90 + i).eval()
            image = torch.randn(b, 3, height, width)
        image_in = image.clone()
        out = _run(where, fn, model, image_in, crop, stride, k)
        if not torch.equal(image_in, image):
            _fail(where, "the input image was modified in place")
        out = _expect_tensor(where, out, (b, k, height, width),
                             "The logits cover the whole image at its input size: [B, K, H, W].")
        with torch.no_grad():
            expected = slide_logits(model, image, crop, stride, k)
            candidates = [
                ("the overlapping logits were summed but not divided by the count map: pixels covered by "
                 "several windows get several times the logits. Keep a count of windows per pixel and divide.",
                 lambda: _slide(model, image, crop, stride, k, divide=False)),
                ("the last window is not aligned to the border: it starts at i * stride and is cut short at the "
                 "edge. Shift it back so that it ends at the border and has the full crop size "
                 "(y1 = max(y2 - crop, 0)).", lambda: _slide(model, image, crop, stride, k, align_last=False)),
                ("the windows stop before the border (grids = (H - crop) // stride + 1 leaves the last pixels "
                 "uncovered): use grids = max(H - crop + stride - 1, 0) // stride + 1 and shift the last window.",
                 lambda: _slide(model, image, crop, stride, k, grid="fit")),
                ("the softmax probabilities were averaged; slide inference averages the logits.",
                 lambda: _slide(model, image, crop, stride, k, probs=True)),
                ("each window's logits were not resized to the window (the model predicts at a lower "
                 "resolution): interpolate them to the window's size (bilinear, align_corners=False) first.",
                 lambda: _slide(model, image, crop, stride, k, resize=False)),
            ]
        _diagnose(where, out.detach(), expected, candidates,
                  "Expected the mean of the logits of every window covering each pixel.")
        n += 1
    _passed(where, n, "segedu.evaluate.slide_logits")


# ----------------------------------------------------------------------------------------------
# Multi-scale + flip (mmseg aug_test, docs/architectures.md section 5.2)
# ----------------------------------------------------------------------------------------------
def _ms_flip(model: nn.Module, image: torch.Tensor, scales, flip: bool, *, average: str = "probs",
             resize_probs: bool = False, unflip: bool = True, vertical: bool = False, rounding: str = "half_up",
             image_mode: str = "bilinear", align_corners: bool = False, divide: str = "passes") -> torch.Tensor:
    """Multi-scale + flip written out, with switches that reproduce the classic mistakes."""
    H, W = image.shape[-2:]
    dim = -2 if vertical else -1

    def resize(t, size, mode="bilinear"):
        if tuple(t.shape[-2:]) == tuple(size):
            return t
        kw = {"align_corners": align_corners} if mode == "bilinear" else {}
        return F.interpolate(t, size=tuple(size), mode=mode, **kw)

    def one(x):
        logits = model(x)
        if average == "logits":
            return resize(logits, (H, W))
        if resize_probs:
            return resize(logits.softmax(1), (H, W))
        return resize(logits, (H, W)).softmax(1)

    total, passes = 0, 0
    for r in scales:
        size = (int(H * r + 0.5), int(W * r + 0.5)) if rounding == "half_up" else (int(H * r), int(W * r))
        x = resize(image, size, image_mode)
        total = total + one(x)
        passes += 1
        if flip:
            y = one(x.flip(dim))
            total = total + (y.flip(dim) if unflip else y)
            passes += 1
    mean = total / (passes if divide == "passes" else len(scales))
    return mean.softmax(1) if average == "logits" else mean


@teaches("mmsegmentation's aug_test (docs/architectures.md §5.2: every scale and its mirror, each pass's softmax "
         "at the label size, averaged) and the papers' 'MS' results; segedu.evaluate.ms_flip_logits")
def check_ms_flip(fn: Callable[..., torch.Tensor]) -> None:
    """``fn(model, image [B, 3, H, W], scales, flip=True) -> mean class probabilities [B, K, H, W]``.

    For each ratio r: the image resized bilinearly (align_corners=False) to (int(H * r + 0.5), int(W * r + 0.5)),
    run whole; with ``flip`` its horizontal mirror too, the logits mirrored back. Each pass's logits resized
    bilinearly to H x W, then softmax over the classes; the mean over all passes. Compared with
    segedu.evaluate.ms_flip_logits on a small model that predicts at half resolution and is not mirror-symmetric.
    """
    from ..evaluate import ms_flip_logits

    where = "check_ms_flip"
    # (B, K, H, W, scales, flip): fractional scaled sizes (x.25 and x.75), exact ones, no flip
    cases = [(1, 4, 13, 17, (0.75, 1.0, 1.25), True), (2, 3, 10, 14, (0.5, 1.5), True),
             (1, 5, 12, 9, (1.0, 0.75), False)]
    for i, (b, k, height, width, scales, flip) in enumerate(cases):
        with _seeded(95 + i):
            model = _randomize_(_PositionSensitiveNet(k), 95 + i).eval()
            image = torch.randn(b, 3, height, width)
        image_in = image.clone()
        out = _run(where, fn, model, image_in, scales, flip)
        if not torch.equal(image_in, image):
            _fail(where, "the input image was modified in place",
                  "x.flip(-1) and F.interpolate return new tensors: use their results.")
        label = f"{where} (scales {scales}, flip={flip}, {height}x{width})"
        out = _expect_tensor(label, out, (b, k, height, width),
                             "One probability map per class at the input size: [B, K, H, W].")
        with torch.no_grad():
            expected = ms_flip_logits(model, image, scales, flip=flip)
            f = lambda **bug: _ms_flip(model, image, scales, flip, **bug)  # noqa: E731
            candidates = [
                (("the logits were averaged over the passes; ms+flip averages the softmax probabilities, so that "
                  "a pass with large logits does not outvote the others.",
                  "Take softmax(1) of each pass (after resizing its logits to H x W) and average those."),
                 lambda: f(average="logits")),
                (("each pass's softmax was taken at the model's output size and then resized; mmseg resizes the "
                  "logits to the label size first, then takes the softmax.",
                  "softmax(F.interpolate(logits, size=(H, W), mode='bilinear', align_corners=False), dim=1)."),
                 lambda: f(resize_probs=True)),
                (("the mirrored pass is not mirrored back: its probabilities sit at mirrored positions.",
                  "Flip the mirrored pass's output back along the width (dim -1) before adding it."),
                 lambda: f(unflip=False)),
                (("the flip is vertical; ms+flip mirrors left-right, as the training pipeline's RandomFlip does.",
                  "x.flip(-1) (the width axis) for the image and for the output."), lambda: f(vertical=True)),
                (("the scaled sizes are truncated (int(H * r)); mmcv rounds them: int(H * r + 0.5).",
                  "size = (int(H * r + 0.5), int(W * r + 0.5))."), lambda: f(rounding="floor")),
                ("the image is resized by nearest neighbour; ms+flip resizes it bilinearly (align_corners=False).",
                 lambda: f(image_mode="nearest")),
                ("the resizing uses align_corners=True; mmseg resizes with align_corners=False.",
                 lambda: f(align_corners=True)),
                (("the sum of the probabilities is divided by the number of scales, not by the number of passes "
                  "(two per scale with flip): the result no longer sums to 1 over the classes.",
                  "Divide by len(scales) * (2 if flip else 1)."), lambda: f(divide="scales")),
            ]
            _diagnose(label, out, expected, candidates,
                      "Expected the mean over scales (and mirrors) of softmax(resize(logits of the resized image, "
                      "(H, W)), dim=1).")
    _passed(where, len(cases), "segedu.evaluate.ms_flip_logits")
