"""The segmentation loss: cross-entropy on logits upsampled to the label size, ignoring 255."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def check_labels(target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> None:
    """Raise a clear error for label values outside ``[0, num_classes)`` that are not ``ignore_index``."""
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if bad.any():
        values = sorted(target[bad].unique().tolist())[:10]
        raise ValueError(f"label values {values} are outside [0, {num_classes}) and are not the ignore index "
                         f"{ignore_index} (was reduce_zero_label applied, or applied twice?)")


def seg_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Mean cross-entropy over the labelled pixels (PyTorch / HF averaging).

    ``logits``: ``[B, K, h, w]`` at the decoder's stride; they are bilinearly resized
    (align_corners=False) to the label's ``[H, W]`` first, as the official code does.
    """
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits.float(), target, ignore_index=ignore_index)


def total_loss(outputs: dict, target: torch.Tensor, aux_weights=(), ignore_index: int = 255) -> torch.Tensor:
    """Main loss plus the weighted auxiliary losses of ``model.forward_train`` (SETR: weight 0.4 each)."""
    loss = seg_loss(outputs["main"], target, ignore_index)
    for weight, aux in zip(aux_weights, outputs["aux"], strict=True):
        loss = loss + weight * seg_loss(aux, target, ignore_index)
    return loss
