"""After training: the per-class IoU table, curves and a picture of predictions under the run folder."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .data import ADE20K_CLASSES, ADE20K_PALETTE, SegmentationFolder, test_transforms
from .evaluate import evaluate, predict_logits
from .recipes import Recipe
from .registry import build_model
from .utils import default_device
from .viz import plot_curves, prediction_grid


def iou_table(metrics: dict, classes=ADE20K_CLASSES) -> str:
    """Per-class IoU / Acc of the classes that occur (NaN rows are skipped), then the means."""
    lines = [f"{'class':<16}{'IoU':>8}{'Acc':>8}"]
    for c, (iou, acc) in enumerate(zip(metrics["IoU"], metrics["Acc"])):
        if not math.isnan(iou):  # the class occurs in the labels or in the predictions
            lines.append(f"{classes[c]:<16}{iou:>8.4f}{acc:>8.4f}")
    lines.append(f"{'mIoU':<16}{metrics['mIoU']:>8.4f}")
    lines.append(f"{'mAcc':<16}{metrics['mAcc']:>8.4f}")
    lines.append(f"{'aAcc':<16}{metrics['aAcc']:>8.4f}")
    return "\n".join(lines)


def load_trained(checkpoint_path: str | Path, device=None) -> tuple[torch.nn.Module, Recipe]:
    """The model and recipe stored in a segedu training checkpoint."""
    state = ckpt.load(checkpoint_path)
    recipe = Recipe(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["recipe"].items()})
    model = build_model(recipe.model, num_classes=recipe.num_classes)
    model.load_state_dict(state["model"])
    return model.to(device or default_device()).eval(), recipe


def _val_set(data_root, recipe: Recipe, transforms=None):
    return SegmentationFolder(data_root, "validation", reduce_zero_label=recipe.reduce_zero_label,
                              num_classes=recipe.num_classes, transforms=transforms)


def write_report(out_dir: str | Path, data_root, recipe: Recipe, result, device=None, rows: int = 4) -> None:
    out_dir = Path(out_dir)
    print(iou_table(result.metrics))
    print(f"trained {recipe.model} for {recipe.iters} iterations in {result.seconds:.0f} s; "
          f"validation mIoU {result.metrics['mIoU']:.4f}")
    plot_curves(out_dir / "metrics.jsonl", out_dir / "curves.png")
    model, _ = load_trained(out_dir / "checkpoint.pt", device)
    device = next(model.parameters()).device
    val = _val_set(data_root, recipe, test_transforms(recipe.test_short_side, recipe.test_size_divisor))
    raw = _val_set(data_root, recipe)
    images, labels, preds = [], [], []
    for i in range(min(rows, len(val))):
        image, mask = val[i]
        preds.append(predict_logits(model, image[None].to(device), mask.shape[-2:]).argmax(1)[0].cpu())
        images.append(raw[i][0])
        labels.append(mask)
    prediction_grid(images, labels, preds, ADE20K_PALETTE, out_dir / "predictions.png",
                    title=f"{recipe.model}: validation mIoU {result.metrics['mIoU']:.3f}")
    print(f"wrote {out_dir / 'checkpoint.pt'}, metrics.jsonl, curves.png, predictions.png")


def evaluate_checkpoint(checkpoint_path, data_root, device=None) -> dict:
    model, recipe = load_trained(checkpoint_path, device)
    val = _val_set(data_root, recipe, test_transforms(recipe.test_short_side, recipe.test_size_divisor))
    metrics = evaluate(model, val, recipe.num_classes, next(model.parameters()).device)
    print(iou_table(metrics))
    return metrics
