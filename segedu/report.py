"""After training or for a public checkpoint: the per-class IoU table and bar chart, curves, and a
picture of predictions; ``evaluate_checkpoint`` is ``segedu eval``."""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.distributed as dist

from . import checkpoint as ckpt
from .data import ADE20K_CLASSES, open_dataset, test_transforms
from .data.io import MARKER, check_output_folder, check_replaceable
from .evaluate import evaluate
from .predict import TestSettings, load_model, predict_mask
from .recipes import Recipe
from .viz import palette_for, plot_class_iou, prediction_grid


def iou_table(metrics: dict, classes=ADE20K_CLASSES) -> str:
    """Per-class IoU / Acc of the classes that occur (NaN rows are skipped), then the means."""
    width = max(16, max(len(c) for c in classes) + 2)
    lines = [f"{'class':<{width}}{'IoU':>8}{'Acc':>8}"]
    for c, (iou, acc) in enumerate(zip(metrics["IoU"], metrics["Acc"])):
        if not math.isnan(iou):  # the class occurs in the labels or in the predictions
            lines.append(f"{classes[c]:<{width}}{iou:>8.4f}{acc:>8.4f}")
    lines.append(f"{'mIoU':<{width}}{metrics['mIoU']:>8.4f}")
    lines.append(f"{'mAcc':<{width}}{metrics['mAcc']:>8.4f}")
    lines.append(f"{'aAcc':<{width}}{metrics['aAcc']:>8.4f}")
    return "\n".join(lines)


def load_trained(checkpoint_path: str | Path, device=None) -> tuple[torch.nn.Module, Recipe]:
    """The model (eval mode) and recipe stored in a segedu training checkpoint."""
    model, _, _ = load_model(checkpoint_path, device=device)
    return model, Recipe.from_dict(ckpt.load(checkpoint_path)["recipe"])


def _is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def write_report(out_dir: str | Path, data, recipe: Recipe, result, device=None, rows: int = 4,
                 classes=None) -> None:
    """Print the IoU table; write curves.png, class_iou.png and predictions.png (first ``rows``
    validation images in the recipe's test mode) next to the run's checkpoint.pt."""
    out_dir = Path(out_dir)
    raw = open_dataset(data, "validation", num_classes=recipe.num_classes,
                       reduce_zero_label=recipe.reduce_zero_label, classes=classes)
    print(iou_table(result.metrics, raw.classes))
    print(f"trained {recipe.model} for {recipe.iters} iterations in {result.seconds:.0f} s; "
          f"validation mIoU {result.metrics['mIoU']:.4f}")
    plot_class_iou(result.metrics, raw.classes, out_dir / "class_iou.png",
                   title=f"{recipe.model}: per-class validation IoU")
    model, settings, _ = load_model(out_dir / "checkpoint.pt", device=device)
    images, labels, preds = [], [], []
    for i in range(min(rows, len(raw))):
        image, mask = raw[i]
        images.append(image)
        labels.append(mask)
        preds.append(predict_mask(model, image, settings, recipe.num_classes))
    prediction_grid(images, labels, preds, palette_for(recipe.num_classes), out_dir / "predictions.png",
                    title=f"{recipe.model}: validation mIoU {result.metrics['mIoU']:.3f}")
    print(f"wrote {out_dir / 'checkpoint.pt'}, metrics.jsonl, curves.png, class_iou.png, predictions.png")


def evaluate_checkpoint(checkpoint=None, data=None, device=None, *, mode: str | None = None,
                        crop: int | None = None, stride: int | None = None, classes=None,
                        reduce_zero_label: bool | None = None, out_dir: str | Path | None = None,
                        name: str | None = None, weights=None, source: str = "transformers",
                        amp: bool | None = None, progress: bool = True, num_workers: int = 0,
                        image_column: str | None = None, label_column: str | None = None) -> dict:
    """Evaluate a training ``checkpoint`` (or public ``weights`` of model ``name``) on the validation
    split of ``data`` (anything :func:`segedu.data.open_dataset` accepts).

    ``mode`` / ``crop`` / ``stride`` override the recipe's (or the paper's) test setting; ``classes``
    names a custom dataset's classes (their number must match the model; default: the checkpoint's
    ``config.json`` names, if any). Prints the IoU table; with ``out_dir`` also writes ``eval_<mode>.json``
    and ``class_iou_<mode>.png``, which may replace only files segedu wrote (checked before evaluating).
    Returns the metrics.
    """
    if out_dir is not None:
        check_output_folder(out_dir, "--out")
    model, settings, facts = load_model(checkpoint, name, weights, source, device)
    settings = settings.with_mode(mode, crop, stride)
    num_classes = facts["num_classes"]
    classes = facts["classes"] if classes is None else classes
    if out_dir is not None:
        check_replaceable([Path(out_dir) / f"eval_{settings.mode}.json", Path(out_dir) / f"class_iou_{settings.mode}.png"])
    if classes is not None and len(classes) != num_classes:
        raise ValueError(f"{len(classes)} class names given but the model predicts {num_classes} classes")
    rzl = facts["reduce_zero_label"] if reduce_zero_label is None else reduce_zero_label
    val = open_dataset(data, "validation", num_classes=num_classes, reduce_zero_label=rzl, classes=classes,
                       transforms=test_transforms(settings.short_side, settings.size_divisor),
                       image_column=image_column, label_column=label_column)
    device = next(model.parameters()).device
    amp = device.type == "cuda" if amp is None else amp
    metrics = evaluate(model, val, num_classes, device, amp=amp, progress=progress, mode=settings.mode,
                       crop_size=settings.crop, stride=settings.stride, num_workers=num_workers,
                       min_short_side=settings.ms_min_short_side)
    if _is_main_process():
        model_name = getattr(model, "name", type(model).__name__)
        print(f"{model_name} on {data} (validation, {len(val)} images), mode {settings.mode}")
        print(iou_table(metrics, val.classes))
        if out_dir is not None:
            out_dir = Path(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            strict = {k: [None if math.isnan(x) else x for x in v] if isinstance(v, list) else v
                      for k, v in metrics.items()}  # JSON has no NaN: undefined IoU / Acc -> null
            record = {MARKER: "eval", "model": model_name, "data": str(data), "settings": vars(settings), "amp": amp,
                      "classes": list(val.classes), **strict}
            (out_dir / f"eval_{settings.mode}.json").write_text(json.dumps(record, indent=1))
            plot_class_iou(metrics, val.classes, out_dir / f"class_iou_{settings.mode}.png",
                           title=f"{model_name}, {settings.mode}: mIoU {metrics['mIoU']:.3f}")
            print(f"wrote {out_dir / f'eval_{settings.mode}.json'} and class_iou_{settings.mode}.png")
    return metrics


__all__ = ["TestSettings", "evaluate_checkpoint", "iou_table", "load_trained", "write_report"]
