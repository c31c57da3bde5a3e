"""Optimiser and learning-rate schedule of the papers' recipes (mmseg ``paramwise_cfg`` + ``PolyLR``).

* AdamW (SegFormer, SegNeXt, Swin/SSformer) or SGD with momentum 0.9 (SETR); parameters of the decode
  head get ``head_lr_mult`` x the base learning rate (SegFormer, SegNeXt, SETR: 10);
  parameters whose names contain a ``no_decay`` keyword get weight decay 0.
* Poly decay ``lr = (base - min) * (1 - t / T) ** power + min`` per iteration, after a linear warm-up
  from ``warmup_ratio * lr`` over ``warmup_iters`` iterations (mmseg: 1500 iterations, ratio 1e-6).
"""
from __future__ import annotations

import torch
from torch import nn


def param_groups(model: nn.Module, lr: float, weight_decay: float, head_lr_mult: float = 1.0,
                 no_decay_keywords: tuple[str, ...] = ("norm",)) -> list[dict]:
    """Split parameters into (encoder | head) x (decay | no decay) groups, as mmseg's ``paramwise_cfg``.

    A parameter whose name contains one of ``no_decay_keywords`` gets weight decay 0 (mmseg
    ``custom_keys`` with ``decay_mult=0``: ``'norm'`` for SegFormer, plus e.g.
    ``'relative_position_bias_table'`` for Swin); everything outside ``model.encoder`` is head and
    gets ``head_lr_mult`` x the learning rate (``'head': lr_mult 10``).
    """
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_head = not name.startswith("encoder.")
        no_decay = any(k in name for k in no_decay_keywords)
        groups.setdefault((is_head, no_decay), []).append(p)
    return [
        {"params": params, "lr": lr * (head_lr_mult if is_head else 1.0),
         "weight_decay": 0.0 if no_decay else weight_decay,
         "name": f"{'head' if is_head else 'encoder'}{'_no_decay' if no_decay else ''}"}
        for (is_head, no_decay), params in sorted(groups.items())
    ]


def poly_warmup_factor(step: int, total: int, warmup_iters: int = 1500, warmup_ratio: float = 1e-6,
                       power: float = 1.0, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate at iteration ``step`` (0-based), as mmseg computes it."""
    poly = (1 - min(step, total) / total) ** power * (1 - min_lr_ratio) + min_lr_ratio
    if step < warmup_iters:
        k = (1 - step / warmup_iters) * (1 - warmup_ratio)  # mmcv linear warm-up
        return poly * (1 - k)
    return poly


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, head_lr_mult: float,
                    no_decay_keywords: tuple[str, ...] = ("norm",), betas=(0.9, 0.999),
                    fused: bool | None = None, optimizer: str = "adamw",
                    momentum: float = 0.9) -> torch.optim.Optimizer:
    """AdamW or SGD over :func:`param_groups`; ``fused`` (default: on when every parameter is on the GPU)
    runs the whole update as one kernel per step instead of a loop of small ones."""
    groups = param_groups(model, lr, weight_decay, head_lr_mult, no_decay_keywords)
    if fused is None:
        fused = all(p.is_cuda for g in groups for p in g["params"])
    if optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)
    if optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, fused=fused)
    raise ValueError(f"unknown optimizer {optimizer!r}; use 'adamw' or 'sgd'")


def build_scheduler(optimizer: torch.optim.Optimizer, total: int, warmup_iters: int, warmup_ratio: float = 1e-6,
                    power: float = 1.0, min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: poly_warmup_factor(step, total, warmup_iters, warmup_ratio, power, min_lr_ratio))
