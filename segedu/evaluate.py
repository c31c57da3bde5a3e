"""Whole-image evaluation: logits at the input size, resized to the label, argmax, confusion matrix."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .metrics import SegMetrics


@torch.no_grad()
def predict_logits(model: torch.nn.Module, image: torch.Tensor, out_size: tuple[int, int] | None = None,
                   amp: bool = False) -> torch.Tensor:
    """Logits ``[B, K, H, W]`` for a normalised batch, bilinearly resized to ``out_size`` if given."""
    with torch.autocast(image.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(image)
    logits = logits.float()
    if out_size is not None and logits.shape[-2:] != tuple(out_size):
        logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
    return logits


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, num_classes: int, device: torch.device | str = "cpu",
             amp: bool = False, progress: bool = True) -> dict:
    """Dataset-level mIoU / mAcc / aAcc of ``model`` on ``dataset`` (samples of ``(image, mask)``).

    Images go through the model one at a time (they may differ in size); the prediction is
    resized to the mask's resolution, so the score is computed at the annotation's size.
    """
    was_training = model.training
    model.eval()
    metrics = SegMetrics(num_classes, device=device)
    for i in tqdm(range(len(dataset)), desc="eval", leave=False, disable=not progress):
        image, mask = dataset[i]
        image, mask = image.to(device)[None], mask.to(device)[None]
        metrics.update(predict_logits(model, image, mask.shape[-2:], amp).argmax(1), mask)
    metrics.all_reduce()
    model.train(was_training)
    return metrics.compute()
