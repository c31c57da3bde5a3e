"""Checks for notebook 09: effective receptive fields and counting the FLOPs of window attention."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from ._core import teaches, _diagnose, _expect_tensor, _fail, _passed, _randomize_, _seeded

__all__ = ["check_erf_map", "check_window_attention_flops"]


# ----------------------------------------------------------------------------------------------
# Effective receptive field (Luo et al. 2016; SegFormer Fig. 3)
# ----------------------------------------------------------------------------------------------
def _small_conv_net() -> nn.Module:
    """Three 3x3 convs, two of them stride 2: a stride-4 feature map with a 15x15 theoretical receptive field."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 4, 3, stride=2, padding=1))


def _erf_reference(model: nn.Module, images: torch.Tensor, *, centre: str = "floor", relu: bool = True,
                   reduce: str = "abs_sum", images_used: str = "all", normalise: bool = True) -> torch.Tensor:
    """|d (ReLU'd centre feature, summed over channels) / d input|, summed over RGB, averaged over images, max 1.

    The switches reproduce the classic mistakes.
    """
    x = images.clone().requires_grad_(True)
    out = model(x)  # [B, C, h, w]
    h, w = out.shape[-2:]
    if centre == "floor":
        target = out[:, :, h // 2, w // 2]
    elif centre == "ceil":
        target = out[:, :, (h - 1) // 2, (w - 1) // 2]
    else:  # "all": every output position
        target = out
    if relu:
        target = target.relu()
    (grad,) = torch.autograd.grad(target.sum(), x)  # [B, 3, H, W]
    if images_used == "first":
        grad = grad[:1]
    if reduce == "abs_sum":
        erf = grad.abs().sum(dim=1).mean(dim=0)
    elif reduce == "signed":
        erf = grad.sum(dim=1).mean(dim=0)
    else:  # "sum_then_abs"
        erf = grad.sum(dim=1).abs().mean(dim=0)
    return erf / erf.abs().max() if normalise else erf


@teaches("Luo et al. 2016 (effective receptive field: the gradient of the centre output w.r.t. the input) and "
         "SegFormer Sec. 3.3 / Fig. 3")
def check_erf_map(fn: Callable) -> None:
    """``fn(model, images [B, 3, H, W]) -> erf [H, W]``.

    ``model(images)`` is a feature map ``[B, C, h, w]``. The ERF map is the gradient of the centre feature
    ``out[:, :, h // 2, w // 2]`` (ReLU, then summed over its channels) with respect to the input, in absolute value,
    summed over the colour channels, averaged over the images and divided by its maximum. Checked on a small
    conv net with seeded random weights.
    """
    where = "check_erf_map"
    gen = torch.Generator().manual_seed(130)
    cases = [(3, 20, 24), (2, 17, 30)]
    for i, (B, H, W) in enumerate(cases):
        with _seeded(130 + i):
            model = _randomize_(_small_conv_net(), 130 + i).eval()
        images = torch.randn(B, 3, H, W, generator=gen)
        images_in = images.clone()
        try:
            out = fn(model, images_in)
        except NotImplementedError:
            raise
        except Exception as err:
            _fail(where, f"calling it with a conv net and images {tuple(images.shape)} raised "
                         f"{type(err).__name__}: {err}")
        if images_in.requires_grad or not torch.equal(images_in, images):
            _fail(where, "the caller's images were changed (requires_grad set or values modified)",
                  "take the gradient with respect to a copy: x = images.clone().requires_grad_(True).")
        if isinstance(out, torch.Tensor):
            out = out.detach()
            if tuple(out.shape) == (B, H, W):
                _fail(where, f"the map has shape {list(out.shape)}: one map per image; average over the images "
                             f"to get one [H, W] = {[H, W]} map")
            if tuple(out.shape) == (B, 3, H, W) or tuple(out.shape) == (3, H, W):
                _fail(where, f"the map has shape {list(out.shape)}: sum |gradient| over the colour channels "
                             f"(and average over the images) to get [H, W] = {[H, W]}")
        out = _expect_tensor(where, out, (H, W))
        expected = _erf_reference(model, images)
        f = lambda **bug: _erf_reference(model, images, **bug).detach()  # noqa: E731
        candidates = [
            ("the gradients keep their sign, so positive and negative contributions cancel; the ERF measures how "
             "much each pixel matters: take the absolute value (then sum over the colour channels).",
             lambda: f(reduce="signed")),
            ("the absolute value is taken after summing the colour channels; take |gradient| per channel first, "
             "then sum: grad.abs().sum(dim=1).", lambda: f(reduce="sum_then_abs")),
            ("only the first image is used; average the maps of all the images.", lambda: f(images_used="first")),
            ("the gradient is of the whole output (every position summed); the ERF is the gradient of the one "
             "centre feature out[:, :, h // 2, w // 2].", lambda: f(centre="all")),
            ("the centre is taken at ((h - 1) // 2, (w - 1) // 2); use (h // 2, w // 2).",
             lambda: f(centre="ceil")),
            ("the channels of the centre feature are summed without the ReLU. After a LayerNorm (the last layer of "
             "most stages) the channels sum to a constant, so that gradient is zero: apply .relu() before .sum().",
             lambda: f(relu=False)),
            ("the map is not divided by its maximum (so that maps of different models compare, the largest value "
             "is 1).", lambda: f(normalise=False)),
        ]
        _diagnose(f"{where} (images {tuple(images.shape)})", out, expected.detach(), candidates,
                  "Expected (|d relu(out[:, :, h//2, w//2]).sum() / d x|).sum(colour).mean(images) / max.")
    _passed(where, len(cases), "the gradient-based ERF of a small conv net")


# ----------------------------------------------------------------------------------------------
# FLOPs of one (shifted) window attention layer (Swin Eq. 2), counted like FlopCounterMode
# ----------------------------------------------------------------------------------------------
def _measured_window_attention_flops(h: int, w: int, dim: int, window_size: int) -> int:
    """FlopCounterMode on segedu's SwinBlock.window_attention (meta tensors: shapes only, no arithmetic)."""
    from ..models.ssformer import SwinBlock

    with torch.device("meta"):
        block = SwinBlock(dim, 1, window_size, 0, 4.0, 0.0).eval()
        x = torch.zeros(1, h, w, dim)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        block.window_attention(x, None)
    return counter.get_total_flops()


@teaches('Swin Sec. 3.2, Eq. 1-2 (the cost of global and window attention)')
def check_window_attention_flops(fn: Callable) -> None:
    """``fn(h, w, dim, window_size) -> int``: the FLOPs of one window attention layer on an ``h x w`` map.

    Counted as ``torch.utils.flop_counter.FlopCounterMode`` counts them: 2 per multiply-accumulate, only the
    matrix products (qkv, q k^T, attention x v, proj), on the map padded to whole windows.
    """
    where = "check_window_attention_flops"
    cases = [(14, 14, 32, 7), (10, 15, 24, 7), (8, 12, 16, 4), (5, 6, 8, 7)]
    for h, w, dim, ws in cases:
        try:
            out = fn(h, w, dim, ws)
        except NotImplementedError:
            raise
        except Exception as err:
            _fail(where, f"fn({h}, {w}, {dim}, {ws}) raised {type(err).__name__}: {err}")
        if isinstance(out, torch.Tensor) and out.numel() == 1:
            out = out.item()
        if not isinstance(out, (int, float)):
            _fail(where, f"fn({h}, {w}, {dim}, {ws}) returned {type(out).__name__}; return a number")
        expected = _measured_window_attention_flops(h, w, dim, ws)
        hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
        n, m2, c = hp * wp, ws * ws, dim
        candidates = [
            ("this is the number of multiply-accumulates (Swin Eq. 2 counts those); FlopCounterMode counts 2 FLOPs "
             "per multiply-accumulate.", 4 * n * c * c + 2 * m2 * n * c),
            ("this is global attention, 4hwC^2 + 2(hw)^2 C (Swin Eq. 1); within windows every token meets only "
             "M^2 keys: 4hwC^2 + 2M^2 hwC (Eq. 2).", 2 * (4 * h * w * c * c + 2 * (h * w) ** 2 * c)),
            (f"the map is not padded: segedu pads {h}x{w} to whole {ws}x{ws} windows, {hp}x{wp}, and the padded "
             f"tokens are computed too.", 2 * (4 * h * w * c * c + 2 * m2 * h * w * c)),
            ("the output projection is missing: qkv is 3hwC^2 and proj another hwC^2, 4hwC^2 in all.",
             2 * (3 * n * c * c + 2 * m2 * n * c)),
            ("only one of the two attention products is counted: q k^T and (attention) v cost M^2 hwC each.",
             2 * (4 * n * c * c + m2 * n * c)),
            ("the window holds M^2 tokens, not M: each query meets M^2 keys.", 2 * (4 * n * c * c + 2 * ws * n * c)),
        ]
        as_tensor = lambda v: torch.tensor(float(v), dtype=torch.float64)  # noqa: E731
        _diagnose(f"{where} (h={h}, w={w}, dim={dim}, window={ws})", as_tensor(out), as_tensor(expected),
                  [(msg, lambda v=v: as_tensor(v)) for msg, v in candidates],
                  f"FlopCounterMode counts {expected:,} FLOPs, you returned {out:,}.", rtol=0.0, atol=0.5)
    _passed(where, len(cases), "FlopCounterMode on segedu.models.ssformer.SwinBlock.window_attention")
