"""Optimiser and learning-rate schedule of the papers' recipes, built as the official configs build them.

Parameter groups follow mmcv's ``DefaultOptimizerConstructor`` (mmcv 1.x, which every official code base
here runs on; mmengine's is the same rule): ``paramwise_cfg.custom_keys`` maps a key to ``lr_mult`` and
``decay_mult``; the keys are sorted by name, then by length, longest first, and a parameter takes the
**first** key contained in its full name (``backbone.block1.0.norm1.weight``). So ``'head'`` (lr x10) is tried
before ``'norm'`` (decay 0) and the decode head's norms keep their weight decay, as in the official runs.
Names are matched in the official layout (:func:`official_name`), not segedu's.

* AdamW (SegFormer, SegNeXt, SSformer) or SGD with momentum 0.9 (SETR);
* poly decay ``lr = (base - min_lr) * (1 - t / T) ** power + min_lr`` per iteration with **one absolute**
  ``min_lr`` for every group (mmcv ``PolyLrUpdaterHook``, mmengine ``PolyLR(eta_min)``), after a linear
  warm-up that scales the poly rate from ``warmup_ratio`` to 1 over ``warmup_iters`` iterations (mmcv).
"""
from __future__ import annotations

import re

import torch
from torch import nn

# segedu module prefix -> the official one (mmseg 0.x names: backbone / neck / decode_head / auxiliary_head).
# SETR-MLA's neck lives in the official backbone (fudan-zvg/SETR vit_mla.py: ``backbone.mla``; mmseg: ``neck``).
_PREFIXES = (("encoder.", "backbone."), ("decoder.neck.", "backbone.mla."), ("decoder.", "decode_head."),
             ("aux_heads.", "auxiliary_head."))
# The places where segedu's own names differ from the official ones in a way a custom key can see:
# SegNeXt's stem BatchNorms are ``patch_embed1.proj.1`` / ``.4`` (Visual-Attention-Network/SegNeXt mscan.py),
# SSformer's head norms are ConvModule ``bn`` (mmseg 0.24 segformer_head.py: ``convs.i.bn``, ``fusion_conv.bn``).
_RENAMES = ((r"backbone\.stages\.0\.downsample\.norm[12]\.", "backbone.patch_embed1.proj.bn."),
            (r"decode_head\.linear_c\.(\d)\.norm\.", r"decode_head.convs.\1.bn."),
            (r"decode_head\.linear_fuse\.norm\.", "decode_head.fusion_conv.bn."))


def official_name(name: str) -> str:
    """The name a segedu parameter has in the official model, as far as ``custom_keys`` can tell them apart."""
    for ours, theirs in _PREFIXES:
        if name.startswith(ours):
            name = theirs + name[len(ours):]
            break
    for pattern, repl in _RENAMES:
        name = re.sub(pattern, repl, name)
    return name


def custom_keys(head_lr_mult: float = 1.0, no_decay_keywords: tuple[str, ...] = ("norm",)) -> dict:
    """A recipe's ``paramwise_cfg.custom_keys``: ``{key: (lr_mult, decay_mult)}``."""
    keys = {k: (1.0, 0.0) for k in no_decay_keywords}
    if head_lr_mult != 1.0:
        keys["head"] = (float(head_lr_mult), 1.0)
    return keys


def match_key(name: str, keys) -> str | None:
    """The custom key mmcv applies to ``name``: the first contained one, keys sorted by name then longest first."""
    for key in sorted(sorted(keys), key=len, reverse=True):
        if key in name:
            return key
    return None


def param_groups(model: nn.Module, lr: float, weight_decay: float, head_lr_mult: float = 1.0,
                 no_decay_keywords: tuple[str, ...] = ("norm",)) -> list[dict]:
    """One group per custom key that matched (plus ``"default"``): its ``lr = lr * lr_mult`` and
    ``weight_decay = weight_decay * decay_mult``; ``param_names`` are segedu's names, ``name`` the key."""
    keys = custom_keys(head_lr_mult, no_decay_keywords)
    groups: dict[str | None, list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault(match_key(official_name(name), keys), []).append((name, p))
    out = []
    for key in sorted(groups, key=lambda k: "" if k is None else k):
        lr_mult, decay_mult = keys.get(key, (1.0, 1.0))
        out.append({"params": [p for _, p in groups[key]], "param_names": [n for n, _ in groups[key]],
                    "lr": lr * lr_mult, "weight_decay": weight_decay * decay_mult, "name": key or "default"})
    return out


def poly_warmup_factor(step: int, total: int, warmup_iters: int = 1500, warmup_ratio: float = 1e-6,
                       power: float = 1.0, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of a group's base rate at iteration ``step`` (0-based), as mmcv computes it;
    ``min_lr_ratio`` is that group's ``min_lr / base lr``."""
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
                    power: float = 1.0, min_lr: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Poly decay with warm-up for every group, each down to the same absolute ``min_lr`` (mmcv)."""
    def factor(base_lr: float):
        ratio = min_lr / base_lr if base_lr else 0.0
        return lambda step: poly_warmup_factor(step, total, warmup_iters, warmup_ratio, power, ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor(g["lr"]) for g in optimizer.param_groups])


def describe_groups(model: nn.Module, lr: float, weight_decay: float, head_lr_mult: float = 1.0,
                    no_decay_keywords: tuple[str, ...] = ("norm",)) -> list[dict]:
    """One row per group of :func:`param_groups`: the rule (custom key) that put parameters there, how many
    tensors and scalars it holds, its lr and weight decay (the table docs/training.md prints per recipe)."""
    keys = custom_keys(head_lr_mult, no_decay_keywords)
    rows = []
    for g in param_groups(model, lr, weight_decay, head_lr_mult, no_decay_keywords):
        key = g["name"]
        if key == "default":
            rule = "no custom key matches"
        else:
            lr_mult, decay_mult = keys[key]
            rule = f"'{key}' in the name: " + ("lr_mult " + f"{lr_mult:g}" if lr_mult != 1 else f"decay_mult {decay_mult:g}")
        rows.append({"group": key, "tensors": len(g["params"]), "params": sum(p.numel() for p in g["params"]),
                     "lr": g["lr"], "weight_decay": g["weight_decay"], "rule": rule})
    return rows
