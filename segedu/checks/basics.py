"""Checks for notebook 00: labels and metrics."""
from __future__ import annotations

from typing import Callable

import torch

from ._core import (teaches, _diagnose, _expect_tensor, _fail, _passed,
                    _run)

__all__ = ["check_reduce_zero_label", "check_pixel_accuracy", "check_iou"]

# ----------------------------------------------------------------------------------------------
# 00: labels and metrics
# ----------------------------------------------------------------------------------------------
@teaches("mmsegmentation's LoadAnnotations(reduce_zero_label=True) for ADE20K (docs/architectures.md §5.1) and "
         "segedu.data.reduce_zero_label")
def check_reduce_zero_label(fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """``fn(mask) -> mask``: ADE20K PNG values to class indices (0 -> 255, v -> v - 1, 255 stays 255).

    Tried on uint8 and int64 masks; the input must not be modified in place.
    """
    from ..data import reduce_zero_label as ref

    where = "check_reduce_zero_label"
    gen = torch.Generator().manual_seed(0)
    base = torch.randint(0, 151, (2, 5, 7), generator=gen)
    base[0, 0, :6] = torch.tensor([0, 1, 2, 149, 150, 255])  # the values that matter, always present
    n = 0
    for dtype in (torch.uint8, torch.int64):
        mask = base.to(dtype)
        keep = mask.clone()
        out = _run(where, fn, mask)
        if not torch.equal(mask, keep):
            _fail(where, "your function changed its input in place; work on a copy (e.g. mask.clone()) so the "
                         "caller's mask keeps its raw values")
        out = _expect_tensor(where, out, tuple(mask.shape))
        expected = ref(mask).long()
        x = mask.long()
        candidates = [
            ("it looks like reduce_zero_label was applied twice: raw 1 (wall) became 255 and 2 became 0. "
             "Masks from SegmentationFolder(reduce_zero_label=True) are already reduced.",
             lambda: ref(ref(mask)).long()),
            (("0 (unlabeled) must become 255, the ignore index; here it became -1.",
              "shift first, then set the old zeros to 255."), lambda: x - 1),
            ("0 (unlabeled) must become 255, but the classes were not shifted: v must become v - 1 "
             "(1 = wall -> class 0).", lambda: torch.where(x == 0, 255, x)),
            ("the ignore value 255 must stay 255 (it becomes 254 after the shift: map it back).",
             lambda: torch.where(x == 0, 255, x - 1)),
            ("0 (unlabeled) must become the ignore index 255, not class 0 (wall).", lambda: (x - 1).clamp(min=0)),
            ("the shift goes the wrong way: v must become v - 1.", lambda: torch.where(x == 0, 255, x + 1)),
        ]
        _diagnose(f"{where} ({'uint8' if dtype == torch.uint8 else 'int64'} mask)", out.long(), expected,
                  candidates, "Expected 0 -> 255, v -> v - 1 for v in 1..150, 255 -> 255.", rtol=0, atol=0)
        n += 1
    _passed(where, n, "segedu.data.reduce_zero_label")


def _confusion(pred: torch.Tensor, target: torch.Tensor, k: int, ignore_index: int) -> torch.Tensor:
    keep = target != ignore_index
    return torch.bincount(target[keep] * k + pred[keep], minlength=k * k).reshape(k, k).double()


def _iou_from(inter, pred_count, label_count):
    return inter / (pred_count + label_count - inter)


@teaches("aAcc in mmsegmentation's IoUMetric (docs/architectures.md §5.4) and segedu.metrics.SegMetrics")
def check_pixel_accuracy(fn: Callable[..., float]) -> None:
    """``fn(pred, target, ignore_index=255) -> float``: correct / labelled pixels, ignoring 255."""
    where = "check_pixel_accuracy"
    gen = torch.Generator().manual_seed(1)
    n = 0
    for shape in ((2, 6, 9), (1, 5, 4)):
        target = torch.randint(0, 4, shape, generator=gen)
        pred = torch.where(torch.rand(shape, generator=gen) < 0.6, target, torch.randint(0, 4, shape, generator=gen))
        target[torch.rand(shape, generator=gen) < 0.3] = 255
        out = _run(where, fn, pred, target, 255)
        if isinstance(out, torch.Tensor):
            if out.numel() != 1:
                _fail(where, f"expected one number, got a tensor of shape {list(out.shape)}")
            out = out.item()
        if not isinstance(out, (float, int)):
            _fail(where, f"expected a float, got {type(out).__name__}")
        keep = target != 255
        expected = (pred[keep] == target[keep]).double().mean().item()
        got = torch.tensor(float(out))
        candidates = [
            ("the ignored pixels (255) were counted in the denominator: divide by the number of labelled "
             "pixels only.", lambda: torch.tensor(((pred == target) & keep).double().sum().item() / target.numel())),
            ("the ignored pixels (255) were counted: drop them before comparing.",
             lambda: torch.tensor((pred == target).double().mean().item())),
            ("this is a percentage; return a fraction in [0, 1].", lambda: torch.tensor(100 * expected)),
        ]
        _diagnose(where, got, torch.tensor(expected), candidates, "Expected (#correct labelled pixels) / "
                  "(#labelled pixels).", rtol=1e-6, atol=1e-6)
        n += 1
    _passed(where, n, "segedu.metrics.SegMetrics (aAcc)")


@teaches("IoU = TP / (TP + FP + FN) per class, summed over the dataset (mmsegmentation's IoUMetric, "
         "docs/architectures.md §5.4) and segedu.metrics.SegMetrics")
def check_iou(fn: Callable[..., torch.Tensor]) -> None:
    """``fn(pred, target, num_classes, ignore_index=255) -> Tensor[num_classes]``: per-class IoU.

    Dataset-level (sum over all images of the batch first), ignored pixels dropped, NaN for a class
    absent from both prediction and label.
    """
    from ..metrics import SegMetrics

    where = "check_iou"
    gen = torch.Generator().manual_seed(2)
    n = 0
    for k, shape in ((5, (3, 6, 7)), (4, (2, 5, 5))):
        # The last class never appears in the label: with k = 5 it is predicted on two pixels (IoU 0),
        # with k = 4 it is absent from both prediction and label (IoU undefined: NaN).
        target = torch.randint(0, k - 1, shape, generator=gen)
        pred = torch.where(torch.rand(shape, generator=gen) < 0.55, target,
                           torch.randint(0, k - 1, shape, generator=gen))
        target[torch.rand(shape, generator=gen) < 0.25] = 255
        if k == 5:
            pred[-1, -1, :2], target[-1, -1, :2] = k - 1, 0
        out = _run(where, fn, pred, target, k, 255)
        if isinstance(out, (float, int)) or (isinstance(out, torch.Tensor) and out.ndim == 0):
            _fail(where, f"expected one IoU per class (a tensor of shape [{k}]), got a single number: return the "
                         "per-class values; mIoU is their nanmean")
        out = _expect_tensor(where, out, (k,), "One IoU per class.")
        metric = SegMetrics(k)
        metric.update(pred, target)
        expected = torch.tensor(metric.compute()["IoU"], dtype=torch.float64)
        cm = _confusion(pred, target, k, 255)
        inter, label, pcount = cm.diag(), cm.sum(1), cm.sum(0)
        valid_pred = pred[(pred >= 0) & (pred < k)]
        all_pred = torch.bincount(valid_pred, minlength=k).double()

        def per_image():
            rows = []
            for b in range(shape[0]):
                c = _confusion(pred[b], target[b], k, 255)
                rows.append(_iou_from(c.diag(), c.sum(0), c.sum(1)))
            return torch.stack(rows).nanmean(0)

        candidates = [
            ("the ignored pixels (label 255) were counted: their predictions inflate the union. Drop every pixel "
             "whose label is ignore_index before counting.", lambda: _iou_from(inter, all_pred, label)),
            ("a class absent from both prediction and label must be NaN (undefined), not 0, so that nanmean "
             "skips it.", lambda: torch.nan_to_num(expected, nan=0.0)),
            (("the intersection was not subtracted from |P| + |L|, so the pixels in both count twice in the "
              "union.", "the union is |P| + |L| - |P and L|."),
             lambda: inter / (pcount + label)),
            ("that is the Dice / F1 score 2|P and L| / (|P| + |L|), not the IoU.",
             lambda: 2 * inter / (pcount + label)),
            ("that is the class accuracy |P and L| / |L| (recall), not the IoU: the union also counts the "
             "pixels wrongly predicted as the class.", lambda: inter / label),
            ("that is |P and L| / |P| (precision), not the IoU.", lambda: inter / pcount),
            ("the IoU was computed per image and then averaged; the benchmark sums intersections and unions "
             "over the whole set first (dataset-level IoU).", per_image),
        ]
        _diagnose(where, out.double(), expected, candidates,
                  "Expected IoU_c = |pred=c and label=c| / |pred=c or label=c| over labelled pixels.",
                  rtol=1e-6, atol=1e-6)
        n += 1
    _passed(where, n, "segedu.metrics.SegMetrics")


