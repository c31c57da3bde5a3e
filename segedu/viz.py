"""Pictures: colour masks with the ADE20K palette, overlays, training curves, per-class IoU bars,
image / label / prediction rows."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from .data.ade20k import ADE20K_PALETTE
from .data.io import MARKER


def colorize(mask: torch.Tensor, palette, ignore_index: int = 255) -> torch.Tensor:
    """``[H, W]`` class indices -> ``[H, W, 3]`` uint8 colours; ignored pixels are black."""
    pal = torch.as_tensor(palette, dtype=torch.uint8)
    pal = torch.cat([pal, torch.zeros(256 - len(pal), 3, dtype=torch.uint8)])  # 255 and friends -> black
    mask = mask.long().clone()
    mask[mask == ignore_index] = 255
    return pal[mask.clamp(0, 255)]


def palette_for(num_classes: int, base=ADE20K_PALETTE) -> list[tuple[int, int, int]]:
    """``num_classes`` RGB colours: the ADE20K palette (or ``base``) first, then fixed pseudo-random colours."""
    colours = [tuple(c) for c in base[:num_classes]]
    g = torch.Generator().manual_seed(0)
    extra = torch.randint(0, 256, (max(num_classes - len(colours), 0), 3), generator=g)
    return colours + [tuple(c) for c in extra.tolist()]


def overlay(image: torch.Tensor, mask: torch.Tensor, palette, alpha: float = 0.5,
            ignore_index: int = 255) -> torch.Tensor:
    """Blend the colour mask into the image: uint8 ``[3, H, W]`` and ``[H, W]`` -> uint8 ``[3, H, W]``.

    Each labelled pixel becomes ``(1 - alpha) * image + alpha * colour``; ignored pixels keep the image.
    """
    if image.shape[1:] != mask.shape:
        raise ValueError(f"image {tuple(image.shape[1:])} and mask {tuple(mask.shape)} differ in size")
    colour = colorize(mask, palette, ignore_index).permute(2, 0, 1).float()  # [3, H, W]
    blended = (1 - alpha) * image.float() + alpha * colour
    keep = (mask == ignore_index)[None]  # [1, H, W]
    return torch.where(keep, image.float(), blended).round().clamp(0, 255).to(torch.uint8)


def plot_class_iou(metrics: dict, classes, out_path: str | Path, title: str = "") -> Path:
    """Horizontal bars of the per-class IoU, best first; classes with an undefined IoU (absent from
    labels and predictions) are left out. A dashed line marks the mIoU."""
    rows = sorted(((iou, name) for iou, name in zip(metrics["IoU"], classes) if not math.isnan(iou)), reverse=True)
    fig, ax = plt.subplots(figsize=(6, 1 + 0.18 * max(len(rows), 1)))
    ax.barh([name for _, name in rows], [iou for iou, _ in rows], color="tab:blue")
    ax.axvline(metrics["mIoU"], color="black", linestyle="--", label=f"mIoU {metrics['mIoU']:.3f}")
    ax.invert_yaxis()  # best class on top
    ax.set(xlim=(0, 1), xlabel="IoU", title=title or "per-class IoU")
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out_path, dpi=80, metadata={MARKER: "plot_class_iou"})  # segedu may replace it later
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
