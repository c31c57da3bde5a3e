"""Notebook 06's checks: they pass on segedu's reference and name each planted classic mistake."""
import pytest
import torch.nn as nn
import torch.nn.functional as F

from segedu import checks
from segedu.models import segnext as nx

from check_contract import Stub, assert_passes_quietly, assert_stub_passes_through, fails, stub


def _nmf(x, bases, steps, eps):
    nmf = nx.NMF2D(rank=bases.shape[-1], eps=eps, eval_steps=steps).eval()
    return nmf.factorize(x, F.normalize(bases, dim=1), steps)


@pytest.mark.parametrize("check,reference,name", [
    (checks.check_msca, nx.MSCA, "check_msca"),
    (checks.check_nmf, _nmf, "check_nmf"),
])
def test_reference_passes_quietly_and_leaves_the_global_rng_alone(check, reference, name, capsys):
    assert_passes_quietly(capsys, name, check, reference)


@pytest.mark.parametrize("check,unsolved", [(checks.check_msca, Stub), (checks.check_nmf, stub)])
def test_unsolved_exercises_raise_not_implemented(check, unsolved):
    assert_stub_passes_through(check, unsolved)


# ---------------------------------------------------------------------------- MSCA
def _msca_variant(body):
    class Variant(nx.MSCA):
        def forward(self, x):
            return body(self, x)
    return Variant


@pytest.mark.parametrize("body,match", [
    (lambda m, x: m.mix(sum(b(m.conv0(x)) for b in m.branches)) * x, "only the three strip branches"),
    (lambda m, x: m.mix(m.conv0(x) + sum(b(m.conv0(x)) for b in m.branches)) + x, "added to the input"),
    (lambda m, x: m.mix(m.conv0(x) + sum(b(m.conv0(x)) for b in m.branches)), "returns the attention map"),
    (lambda m, x: m.mix(m.conv0(x) + sum(b(x) for b in m.branches)) * x, "read the input x"),
    (lambda m, x: (m.conv0(x) + sum(b(m.conv0(x)) for b in m.branches)) * x, "`mix` is not applied"),
])
def test_msca_mistakes(body, match):
    fails(checks.check_msca, _msca_variant(body), match)


class StripsSwapped(nx.MSCA):
    """kx1 first, then 1xk: the weights no longer fit by name."""

    def __init__(self, dim):
        super().__init__(dim)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, dim, (k, 1), padding=(k // 2, 0), groups=dim),
                          nn.Conv2d(dim, dim, (1, k), padding=(0, k // 2), groups=dim))
            for k in (7, 11, 21))


class PaddingSquare(nx.MSCA):
    """Strips padded with k // 2 on both sides: the map grows by k - 1 across the strip."""

    def __init__(self, dim):
        super().__init__(dim)
        for branch in self.branches:
            for conv in branch:
                conv.padding = (conv.kernel_size[0] // 2 + conv.kernel_size[1] // 2,) * 2


class NotDepthwise(nx.MSCA):
    def __init__(self, dim):
        super().__init__(dim)
        self.conv0 = nn.Conv2d(dim, dim, 5, padding=2)


def test_msca_structure_mistakes():
    fails(checks.check_msca, StripsSwapped, r"branches\.0\.0\.weight has shape \[8, 1, 7, 1\](.|\n)*horizontal strip",
          hint=True)
    fails(checks.check_msca, PaddingSquare, r"branches\[0\]\[0\] \(kernel \(1, 7\)\) turns a 13x24 map into")
    fails(checks.check_msca, NotDepthwise, r"conv0\.weight has shape \[8, 8, 5, 5\](.|\n)*depth-wise 5x5", hint=True)


# ---------------------------------------------------------------------------- NMF
def _nmf_variant(*, eps_used=True, order="coef_first", normalize=True, softmax_dim=-1, final=True):
    def fn(x, bases, steps, eps):
        e = eps if eps_used else 0.0
        if normalize:
            bases = F.normalize(bases, dim=1)
        coef = (x.transpose(1, 2) @ bases).softmax(dim=softmax_dim)

        def upd_coef(b, c):
            return c * (x.transpose(1, 2) @ b) / (c @ (b.transpose(1, 2) @ b) + e)

        def upd_bases(b, c):
            return b * (x @ c) / (b @ (c.transpose(1, 2) @ c) + e)

        for _ in range(steps):
            if order == "coef_first":
                coef = upd_coef(bases, coef)
                bases = upd_bases(bases, coef)
            else:
                bases = upd_bases(bases, coef)
                coef = upd_coef(bases, coef)
        if final:
            coef = upd_coef(bases, coef)
        return bases, coef
    return fn


def test_nmf_written_out_passes(capsys):
    checks.check_nmf(_nmf_variant())
    assert capsys.readouterr().out.startswith("check_nmf passed: 3 cases")


@pytest.mark.parametrize("kwargs,match", [
    (dict(eps_used=False), "eps is missing"),
    (dict(order="bases_first"), "bases are updated before the coefficients"),
    (dict(normalize=False), "not L2-normalised over D"),
    (dict(softmax_dim=1), "softmax runs over the positions"),
    (dict(final=False), "final coef update"),
])
def test_nmf_mistakes(kwargs, match):
    fails(checks.check_nmf, _nmf_variant(**kwargs), match)


def test_nmf_shape_and_in_place_mistakes():
    fails(checks.check_nmf, lambda x, b, s, e: _nmf(x, b, s, e)[0], "return a pair")
    fails(checks.check_nmf, lambda x, b, s, e: (_nmf(x, b, s, e)[0], _nmf(x, b, s, e)[1].transpose(1, 2)),
          r"coef: output shape \[2, 4, 30\], expected \[2, 30, 4\]")

    def in_place(x, bases, steps, eps):
        out = _nmf(x, bases, steps, eps)
        bases.mul_(2)
        return out

    fails(checks.check_nmf, in_place, "modified in place")


# ---------------------------------------------------------------------------- LightHam (design exercise)
from collections import OrderedDict  # noqa: E402

import torch  # noqa: E402

from check_contract import assert_pending_cells_fit, exec_exercise  # noqa: E402
from segedu.checks.segnext import _lightham_reference  # noqa: E402


class LightHamOtherWay(nn.Module):
    """A correct head written another way: its own Sequential conv + GroupNorm + ReLU (same keys as ConvNormAct),
    every stage resized (stage 2 to its own size, an exact no-op) through a loop, nn.Upsample-free."""

    def __init__(self, in_channels, num_classes, ham_channels=512, channels=512, nmf_rank=64):
        super().__init__()

        def conv_gn_relu(cin, cout):
            return nn.Sequential(OrderedDict(conv=nn.Conv2d(cin, cout, 1, bias=False),
                                             norm=nn.GroupNorm(32, cout), act=nn.ReLU()))

        self.squeeze = conv_gn_relu(in_channels[1] + in_channels[2] + in_channels[3], ham_channels)
        self.hamburger = nx.Hamburger(ham_channels, nx.NMF2D(nmf_rank))
        self.align = conv_gn_relu(ham_channels, channels)
        self.dropout = nn.Dropout2d(0.1)
        self.linear_pred = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats):
        size = feats[1].shape[-2:]
        x = torch.cat([F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats[1:]], 1)
        return self.linear_pred(self.dropout(self.align(self.hamburger(self.squeeze(x)))))


def lightham_with(**bug):
    class Variant(nx.LightHamHead):
        def forward(self, feats):
            return _lightham_reference(self, feats, **bug)
    return lambda a, k, h, c, r: Variant(a, k, h, c, r)


def test_lightham_solution_and_an_alternative_pass(capsys):
    ns = exec_exercise("06_segnext", "ex06-lightham-head", nx=nx)
    for cls in (ns["LightHamHead"], LightHamOtherWay):
        assert_passes_quietly(capsys, "check_lightham_head", checks.check_lightham_head, cls)


def test_lightham_cells_fit_the_notebook():
    assert_pending_cells_fit("06_segnext")


def test_lightham_unsolved_raises_not_implemented():
    assert_stub_passes_through(checks.check_lightham_head, Stub)


@pytest.mark.parametrize("bug,match", [
    (dict(order="down"), "deepest first"),
    (dict(align_corners=True), "align_corners=True"),
    (dict(mode="nearest"), "nearest-neighbour"),
    (dict(ham=False), "Hamburger is left out"),
    (dict(ham_after_align=True), "Hamburger comes after `align`"),
])
def test_lightham_mistakes(bug, match):
    fails(checks.check_lightham_head, lightham_with(**bug), match)


class LightHamAllStages(LightHamOtherWay):
    """Reads stage 1 too, on its stride-4 grid."""

    def __init__(self, in_channels, num_classes, ham_channels=512, channels=512, nmf_rank=64):
        super().__init__(in_channels, num_classes, ham_channels, channels, nmf_rank)
        self.squeeze.conv = nn.Conv2d(sum(in_channels), ham_channels, 1, bias=False)

    def forward(self, feats):
        size = feats[0].shape[-2:]
        x = torch.cat([F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats], 1)
        return self.linear_pred(self.dropout(self.align(self.hamburger(self.squeeze(x)))))


class LightHamStride4(LightHamOtherWay):
    """Stages 2-4, but resized to stage 1's grid."""

    def forward(self, feats):
        size = feats[0].shape[-2:]
        x = torch.cat([F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats[1:]], 1)
        return self.linear_pred(self.dropout(self.align(self.hamburger(self.squeeze(x)))))


def test_lightham_stage_mistakes():
    fails(checks.check_lightham_head, LightHamAllStages, r"squeeze\.conv\.weight has shape \[32, 80, 1, 1\]")
    fails(checks.check_lightham_head, LightHamAllStages, "Hint: `squeeze` reads the concatenation of stages 2, 3 and 4",
          hint=True)
    fails(checks.check_lightham_head, LightHamStride4, "logits are at stride 4")


# ---------------------------------------------------------------------------- NMF gradients (hole closed)
def _no_grad_nmf(x, bases, steps, eps):
    with torch.no_grad():
        return _nmf_variant()(x, bases, steps, eps)


def _detached_bases_nmf(x, bases, steps, eps):
    """Gradients flow, but the bases are detached after every update."""
    bases = F.normalize(bases, dim=1)
    xt = x.transpose(1, 2)
    coef = (xt @ bases).softmax(dim=-1)
    for _ in range(steps):
        coef = coef * (xt @ bases) / (coef @ (bases.transpose(1, 2) @ bases) + eps)
        bases = (bases * (x @ coef) / (bases @ (coef.transpose(1, 2) @ coef) + eps)).detach()
    return bases, coef * (xt @ bases) / (coef @ (bases.transpose(1, 2) @ bases) + eps)


def test_nmf_gradient_mistakes():
    fails(checks.check_nmf, _no_grad_nmf, r"no gradient reaches x(.|\n)*flows through every multiplicative update")
    fails(checks.check_nmf, lambda x, b, s, e: [t.detach() for t in _nmf(x, b, s, e)], "no gradient reaches x")
    fails(checks.check_nmf, lambda x, b, s, e: _core_one_step(x, b, s, e), "only through the last coef update")
    fails(checks.check_nmf, _detached_bases_nmf, "does not flow through every update")


def _core_one_step(x, bases, steps, eps):
    from segedu.checks.segnext import _one_step_nmf
    return _one_step_nmf(x, bases, steps, eps)
