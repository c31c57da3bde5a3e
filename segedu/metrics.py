"""Dataset-level segmentation metrics from a confusion matrix (mmseg's IoUMetric definitions).

For each class c, summed over the whole dataset (not averaged per image):
``I_c = #(pred=c & gt=c)``, ``P_c = #(pred=c)``, ``L_c = #(gt=c)``, ``U_c = P_c + L_c - I_c``.
IoU_c = I_c / U_c, Acc_c = I_c / L_c, aAcc = sum I / sum L. The means skip classes whose
denominator is 0 (absent from both prediction and label for IoU, absent from the label for Acc).
Pixels labelled ``ignore_index`` are dropped.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


class SegMetrics:
    """Accumulate a ``[K, K]`` confusion matrix (rows: label, columns: prediction)."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.confusion.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """``pred``: class indices ``[B, H, W]`` or logits ``[B, K, H, W]``; ``target``: ``[B, H, W]``."""
        if pred.ndim == target.ndim + 1:
            if pred.shape[1] != self.num_classes:
                raise ValueError(f"logits have {pred.shape[1]} classes, metric expects {self.num_classes}")
            pred = pred.argmax(1)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} does not match label shape {tuple(target.shape)}")
        keep = target != self.ignore_index
        pred, target = pred[keep].long(), target[keep].long()
        bad = (target < 0) | (target >= self.num_classes)
        if bad.any():
            raise ValueError(f"label values {sorted(target[bad].unique().tolist())[:10]} are outside "
                             f"[0, {self.num_classes}) and are not the ignore index {self.ignore_index}")
        if ((pred < 0) | (pred >= self.num_classes)).any():
            raise ValueError(f"predicted class indices must lie in [0, {self.num_classes})")
        k = self.num_classes
        self.confusion += torch.bincount(target * k + pred, minlength=k * k).reshape(k, k).to(self.confusion)

    def all_reduce(self) -> None:
        """Sum the confusion matrices of all processes (call before ``compute`` under torchrun)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.confusion)

    def compute(self) -> dict:
        """``mIoU``, ``mAcc``, ``aAcc`` (fractions in [0, 1]) and per-class ``IoU`` / ``Acc`` (NaN if undefined)."""
        cm = self.confusion.double()
        inter = cm.diag()
        label = cm.sum(1)
        union = label + cm.sum(0) - inter
        iou = inter / union  # 0/0 -> NaN: class absent from both prediction and label
        acc = inter / label
        return {
            "mIoU": float(iou.nanmean()),
            "mAcc": float(acc.nanmean()),
            "aAcc": float(inter.sum() / label.sum().clamp(min=1)),
            "IoU": iou.tolist(),
            "Acc": acc.tolist(),
        }
