"""Pictures: colour masks with the ADE20K palette, training curves, image / label / prediction rows."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import torch


def colorize(mask: torch.Tensor, palette, ignore_index: int = 255) -> torch.Tensor:
    """``[H, W]`` class indices -> ``[H, W, 3]`` uint8 colours; ignored pixels are black."""
    pal = torch.as_tensor(palette, dtype=torch.uint8)
    pal = torch.cat([pal, torch.zeros(256 - len(pal), 3, dtype=torch.uint8)])  # 255 and friends -> black
    mask = mask.long().clone()
    mask[mask == ignore_index] = 255
    return pal[mask.clamp(0, 255)]


def plot_curves(log_path: str | Path, out_path: str | Path) -> Path:
    """Loss, learning rate and validation mIoU against the iteration, from a metrics.jsonl log."""
    records = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train])
    axes[0].set(title="training loss", xlabel="iteration", ylabel="cross-entropy")
    axes[1].plot([r["step"] for r in train], [r["lr"] for r in train])
    axes[1].set(title="learning rate (encoder)", xlabel="iteration", ylabel="lr")
    axes[2].plot([r["step"] for r in val], [r["mIoU"] for r in val], marker="o")
    axes[2].set(title="validation mIoU", xlabel="iteration", ylabel="mIoU", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(out_path, dpi=80)
    plt.close(fig)
    return Path(out_path)


def prediction_grid(images, labels, preds, palette, out_path: str | Path, title: str = "") -> Path:
    """One row per sample: image (uint8 ``[3, H, W]``), ground truth, prediction."""
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.1 * n), squeeze=False)
    for row, (img, gt, pr) in enumerate(zip(images, labels, preds)):
        for ax, pic, name in zip(axes[row], (img.permute(1, 2, 0), colorize(gt, palette), colorize(pr, palette)),
                                 ("image", "ground truth", "prediction")):
            ax.imshow(pic.numpy())
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(name)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=80)
    plt.close(fig)
    return Path(out_path)
