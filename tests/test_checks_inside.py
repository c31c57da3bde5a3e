"""Notebook 09's checks: they pass on the references and name each planted classic mistake."""
import pytest
import torch

from segedu import checks
from segedu.checks.inside import _measured_window_attention_flops

from check_contract import assert_passes_quietly, assert_stub_passes_through, fails, stub


def erf_variant(*, centre="floor", relu=True, absolute="per_channel", images="all", normalise=True, in_place=False):
    def erf_map(model, imgs):
        x = imgs.requires_grad_(True) if in_place else imgs.clone().requires_grad_(True)
        out = model(x)
        h, w = out.shape[-2:]
        i, j = (h // 2, w // 2) if centre == "floor" else ((h - 1) // 2, (w - 1) // 2)
        target = out if centre == "all" else out[:, :, i, j]
        target = (target.relu() if relu else target).sum()
        (grad,) = torch.autograd.grad(target, x)
        if images == "first":
            grad = grad[:1]
        if absolute == "per_channel":
            erf = grad.abs().sum(1).mean(0)
        elif absolute == "none":
            erf = grad.sum(1).mean(0)
        elif absolute == "after_sum":
            erf = grad.sum(1).abs().mean(0)
        else:  # "per_image": one map per image
            return grad.abs().sum(1) / grad.abs().sum(1).max()
        return erf / erf.abs().max() if normalise else erf
    return erf_map


def window_flops(h, w, dim, ws, *, macs=False, pad=True, proj=True):
    if pad:
        h, w = -(-h // ws) * ws, -(-w // ws) * ws
    n = h * w
    count = (4 if proj else 3) * n * dim * dim + 2 * ws * ws * n * dim
    return count if macs else 2 * count


@pytest.mark.parametrize("check,reference,name", [
    (checks.check_erf_map, erf_variant(), "check_erf_map"),
    (checks.check_window_attention_flops, window_flops, "check_window_attention_flops"),
])
def test_reference_passes_quietly_and_leaves_the_global_rng_alone(check, reference, name, capsys):
    assert_passes_quietly(capsys, name, check, reference)


class ChannelLayerNorm(torch.nn.LayerNorm):
    """LayerNorm over the channels of a [B, C, H, W] map (how the encoders' stages end)."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def test_erf_without_relu_vanishes_after_a_layernorm():
    # Why the check wants the ReLU: the channels of a LayerNorm output (unit scale) sum to a constant.
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), ChannelLayerNorm(6))
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    (grad,) = torch.autograd.grad(net(x)[:, :, 4, 4].sum(), x)
    assert grad.abs().max() < 1e-5
    assert erf_variant()(net, x.detach()).isfinite().all()


def test_window_flops_formula_matches_the_counter():
    # The measured count is what the check compares against: Swin Eq. 2, doubled, on the padded map.
    for h, w, dim, ws in [(14, 14, 32, 7), (9, 20, 16, 7), (12, 8, 8, 4)]:
        assert _measured_window_attention_flops(h, w, dim, ws) == window_flops(h, w, dim, ws)


@pytest.mark.parametrize("check", [checks.check_erf_map, checks.check_window_attention_flops])
def test_unsolved_exercises_raise_not_implemented(check):
    assert_stub_passes_through(check, stub)


@pytest.mark.parametrize("kwargs,match", [
    (dict(absolute="none"), "keep their sign"),
    (dict(absolute="after_sum"), "after summing the colour channels"),
    (dict(images="first"), "only the first image"),
    (dict(centre="all"), "whole output"),
    (dict(centre="ceil"), r"\(\(h - 1\) // 2"),
    (dict(normalise=False), "not divided by its maximum"),
    (dict(relu=False), "without the ReLU"),
    (dict(absolute="per_image"), "one map per image"),
    (dict(in_place=True), "caller's images were changed"),
])
def test_erf_mistakes(kwargs, match):
    fails(checks.check_erf_map, erf_variant(**kwargs), match)


@pytest.mark.parametrize("fn,match", [
    (lambda h, w, d, ws: window_flops(h, w, d, ws, macs=True), "multiply-accumulates"),
    (lambda h, w, d, ws: window_flops(h, w, d, ws, pad=False), "not padded"),
    (lambda h, w, d, ws: window_flops(h, w, d, ws, proj=False), "output projection is missing"),
    (lambda h, w, d, ws: 2 * (4 * h * w * d * d + 2 * (h * w) ** 2 * d), "global attention"),
    (lambda h, w, d, ws: window_flops(h, w, d, ws) + 1000, "none of the classic mistakes"),
    (lambda h, w, d, ws: "many", "return a number"),
])
def test_window_attention_flops_mistakes(fn, match):
    fails(checks.check_window_attention_flops, fn, match)
