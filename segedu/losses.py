"""The segmentation loss: cross-entropy on logits upsampled to the label size, ignoring 255.

Two ways to compute the same number (docs/architectures.md 5.5):

* :func:`seg_loss` upsamples the decoder's logits ``[B, K, H/4, W/4]`` to the label's ``[B, K, H, W]``
  and applies cross-entropy, as the official code does. At 150 classes, 512x512 and batch 2 the
  full-resolution fp32 logits alone take 2*150*512*512*4 bytes = 315 MB, and autograd keeps more of
  that size (the log-softmax) for the backward pass.
* :func:`chunked_seg_loss` upsamples and scores a band of label rows at a time, under activation
  checkpointing, so only one band of full-resolution logits exists at once (forward and backward).

``normalizer``: cross-entropy is averaged over the labelled pixels. With gradient accumulation and
several processes a step's batch is split into pieces; dividing each piece's *summed* loss by the
labelled-pixel count of the whole step (``normalizer``) makes the pieces add up to exactly the loss
of the undivided batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def check_labels(target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> None:
    """Raise a clear error for label values outside ``[0, num_classes)`` that are not ``ignore_index``."""
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if bad.any():
        values = sorted(target[bad].unique().tolist())[:10]
        raise ValueError(f"label values {values} are outside [0, {num_classes}) and are not the ignore index "
                         f"{ignore_index} (was reduce_zero_label applied, or applied twice?)")


def seg_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255,
             normalizer: float | torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy over the labelled pixels (PyTorch / HF averaging).

    ``logits``: ``[B, K, h, w]`` at the decoder's stride; they are bilinearly resized
    (align_corners=False) to the label's ``[H, W]`` first, as the official code does, in float32 (under bf16
    autocast the resize would otherwise round the logits a second time).
    ``normalizer``: divide the summed loss by this count instead of this batch's labelled pixels. A batch
    without a labelled pixel gives 0 (PyTorch's mean over no pixels would be NaN).
    """
    logits = logits.float()
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    if normalizer is None:
        normalizer = labelled_pixels(target, ignore_index)
    return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum") / normalizer


def labelled_pixels(target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """The number of pixels that count in the loss, at least 1 (so an all-ignored batch has loss 0, not NaN)."""
    return (target != ignore_index).sum().clamp(min=1)


def _source_rows(in_size: int, out_size: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each output row of a bilinear resize (align_corners=False): the two source rows and the weight
    of the second. Output row ``y`` samples source position ``(y + 0.5) * in/out - 0.5``, clamped at 0."""
    src = ((torch.arange(out_size, device=device, dtype=torch.float32) + 0.5) * (in_size / out_size) - 0.5)
    src = src.clamp(min=0)
    lo = src.floor().long().clamp(max=in_size - 1)
    hi = (lo + 1).clamp(max=in_size - 1)
    return lo, hi, src - lo


def _band_loss(logits: torch.Tensor, target_band: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
               w_hi: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Summed cross-entropy of one band of label rows ``[B, rows, W]``: resize along the height by hand
    (only the band's rows), then along the width with ``F.interpolate`` (the height is already right)."""
    w_hi = w_hi[:, None]                                              # [rows, 1]
    rows = logits.index_select(2, lo) * (1 - w_hi) + logits.index_select(2, hi) * w_hi  # [B, K, rows, w]
    band = F.interpolate(rows, size=target_band.shape[-2:], mode="bilinear", align_corners=False)  # [B, K, rows, W]
    return F.cross_entropy(band, target_band, ignore_index=ignore_index, reduction="sum")


def chunked_seg_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255,
                     normalizer: float | torch.Tensor | None = None, chunk_rows: int = 64) -> torch.Tensor:
    """:func:`seg_loss` computed ``chunk_rows`` label rows at a time, never holding full-resolution logits.

    Each band is wrapped in ``torch.utils.checkpoint``: the forward pass keeps only the band's summed
    loss, and the backward pass recomputes one band at a time, adding its gradient into the
    low-resolution ``logits``. Equal to :func:`seg_loss` up to float rounding.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive number of rows, got {chunk_rows}")
    logits = logits.float()                                           # [B, K, h, w], 1/16 of the pixels
    H = target.shape[-2]
    lo, hi, w_hi = _source_rows(logits.shape[-2], H, logits.device)
    total = logits.new_zeros(())
    for r0 in range(0, H, chunk_rows):
        r1 = min(r0 + chunk_rows, H)
        total = total + checkpoint(_band_loss, logits, target[:, r0:r1], lo[r0:r1], hi[r0:r1], w_hi[r0:r1],
                                   ignore_index, use_reentrant=False)
    if normalizer is None:
        normalizer = labelled_pixels(target, ignore_index)
    return total / normalizer


def total_loss(outputs: dict, target: torch.Tensor, aux_weights=(), ignore_index: int = 255,
               normalizer: float | torch.Tensor | None = None, chunk_rows: int | None = None) -> torch.Tensor:
    """Main loss plus the weighted auxiliary losses of ``model.forward_train`` (SETR: weight 0.4 each).

    ``chunk_rows``: use :func:`chunked_seg_loss` with bands of that many rows (memory-saving), else
    :func:`seg_loss`.
    """
    def loss(logits):
        if chunk_rows is None:
            return seg_loss(logits, target, ignore_index, normalizer)
        return chunked_seg_loss(logits, target, ignore_index, normalizer, chunk_rows)

    total = loss(outputs["main"])
    for weight, aux in zip(aux_weights, outputs["aux"], strict=True):
        total = total + weight * loss(aux)
    return total
