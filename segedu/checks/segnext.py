"""Checks for notebook 06: SegNeXt's multi-scale convolutional attention and the NMF of its decoder."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._core import _reference_and_yours, _close, _diagnose, _expect_tensor, _fail, _passed, _run, _seeded

__all__ = ["check_msca", "check_nmf"]


# ----------------------------------------------------------------------------------------------
# MSCA (SegNeXt Sec. 3.1, Eq. 1-2)
# ----------------------------------------------------------------------------------------------
def _msca_reference(ref: nn.Module, x: torch.Tensor, *, include_conv0: bool = True, combine: str = "mul",
                    source: str = "conv0", chained: bool = False, mix: bool = True) -> torch.Tensor:
    """MSCA written out from the reference's modules, with switches that reproduce the classic mistakes."""
    a = ref.conv0(x)
    total = a if include_conv0 else torch.zeros_like(a)
    inp = a if source == "conv0" else x
    for branch in ref.branches:
        y = branch(inp)
        total = total + y
        if chained:
            inp = y
    att = ref.mix(total) if mix else total
    if combine == "mul":
        return att * x
    if combine == "add":
        return att + x
    return att  # "none": the attention map itself


def check_msca(cls: type) -> None:
    """``cls(dim)``; ``forward(x [B, C, H, W]) -> [B, C, H, W]``.

    ``conv0`` depth-wise 5x5 (padding 2); ``branches`` a ModuleList of three nn.Sequential, each a
    depth-wise 1xk conv (padding (0, k//2)) then a depth-wise kx1 conv (padding (k//2, 0)), k = 7, 11, 21,
    all reading conv0's output; ``mix`` a 1x1 conv of (conv0 output + the three branches); the result
    multiplies the input.
    """
    from ..models.segnext import MSCA

    where = "check_msca"
    hints = {"conv0": "`conv0` is the depth-wise 5x5 conv: nn.Conv2d(dim, dim, 5, padding=2, groups=dim), "
                      "weight [dim, 1, 5, 5].",
             "branches": "`branches` is an nn.ModuleList of three nn.Sequential(1xk conv, kx1 conv) for k = 7, 11, "
                         "21: index 0 is the horizontal strip nn.Conv2d(dim, dim, (1, k), padding=(0, k // 2), "
                         "groups=dim) with weight [dim, 1, 1, k], index 1 the vertical strip with kernel (k, 1), "
                         "weight [dim, 1, k, 1]. A kernel [dim, dim, ...] means groups=dim is missing.",
             "mix": "`mix` is the 1x1 conv that mixes the channels: nn.Conv2d(dim, dim, 1)."}
    cases = [((8,), (2, 8, 13, 24)), ((12,), (1, 12, 23, 9)), ((4,), (2, 4, 6, 6))]
    for i, (args, xshape) in enumerate(cases):
        with _seeded(110 + i):
            ref, mine = _reference_and_yours(MSCA, cls, args, 110 + i, where, hints)
            x = torch.randn(xshape)
        H, W = xshape[-2:]
        # Shape problems first, piece by piece: a wrong padding shows up as a wrong size of one conv's output.
        for name in ("conv0", "branches"):
            if not hasattr(mine, name):
                _fail(where, f"the module has no attribute `{name}`")
        pieces = [("conv0 (the 5x5)", mine.conv0)]
        for b, branch in enumerate(mine.branches):
            for j, conv in enumerate(branch):
                pieces.append((f"branches[{b}][{j}] (kernel {tuple(conv.weight.shape[-2:])})", conv))
        for label, conv in pieces:
            y = _run(where, conv, x)
            if isinstance(y, torch.Tensor) and tuple(y.shape[-2:]) != (H, W):
                _fail(where, f"{label} turns a {H}x{W} map into {tuple(y.shape[-2:])}: every conv of MSCA keeps the "
                             f"size. Pad a 1xk conv with (0, k // 2), a kx1 conv with (k // 2, 0), the 5x5 with 2.")
        out = _run(where, mine, x)
        expected = _run(where, ref, x)
        out = _expect_tensor(where, out, tuple(expected.shape))
        f = lambda **bug: _msca_reference(ref, x, **bug)  # noqa: E731
        candidates = [
            ("only the three strip branches are summed: Eq. 1 sums Scale_0 = the identity too, so the 5x5 output "
             "itself is part of the sum (total = a + branch_7(a) + branch_11(a) + branch_21(a)).",
             lambda: f(include_conv0=False)),
            ("the attention is added to the input; Eq. 2 multiplies it: Out = Att * F (element-wise).",
             lambda: f(combine="add")),
            ("the module returns the attention map itself; Eq. 2 multiplies it with the input: return att * x.",
             lambda: f(combine="none")),
            ("the strip branches read the input x; each reads the 5x5 conv's output a = conv0(x).",
             lambda: f(source="x")),
            ("the branches are chained (each reads the previous branch's output); they run in parallel on "
             "conv0's output and are summed.", lambda: f(chained=True)),
            ("the 1x1 channel-mixing conv `mix` is not applied to the sum.", lambda: f(mix=False)),
        ]
        _diagnose(f"{where} (dim={args[0]}, {H}x{W} map)", out, expected, candidates,
                  "Expected mix(a + sum_k strip_k(a)) * x with a = conv0(x), strip_k = kx1(1xk(.)).")
    _passed(where, len(cases), "segedu.models.segnext.MSCA")


# ----------------------------------------------------------------------------------------------
# NMF by multiplicative updates (the Hamburger's "ham"; Lee & Seung 2001)
# ----------------------------------------------------------------------------------------------
def _nmf_reference(x: torch.Tensor, bases: torch.Tensor, steps: int, eps: float, *, normalize: str = "d",
                   softmax_dim: int = -1, order: str = "coef_first", final: bool = True) -> tuple:
    """The factorisation written out, with switches that reproduce the classic mistakes."""
    if normalize == "d":
        bases = F.normalize(bases, dim=1)
    elif normalize == "r":
        bases = F.normalize(bases, dim=2)
    xt = x.transpose(1, 2)  # [n, N, D]

    def new_coef(b, c):
        return c * (xt @ b) / (c @ (b.transpose(1, 2) @ b) + eps)

    def new_bases(b, c):
        return b * (x @ c) / (b @ (c.transpose(1, 2) @ c) + eps)

    coef = (xt @ bases).softmax(dim=softmax_dim)
    for _ in range(steps):
        if order == "coef_first":
            coef = new_coef(bases, coef)
            bases = new_bases(bases, coef)
        elif order == "bases_first":
            bases = new_bases(bases, coef)
            coef = new_coef(bases, coef)
        else:  # "simultaneous": the bases update uses the coefficients from before this step
            coef, bases = new_coef(bases, coef), new_bases(bases, coef)
    if final:
        coef = new_coef(bases, coef)
    return bases, coef


def check_nmf(fn: Callable) -> None:
    """``fn(x [n, D, N], bases [n, D, R], steps, eps) -> (bases [n, D, R], coef [n, N, R])``.

    ``bases`` arrive as raw uniform draws: L2-normalise them over D, start from
    ``coef = softmax(x^T bases)`` over R, run ``steps`` multiplicative updates (coef first, then the
    bases with the new coef), then update coef once more. Compared with segedu's ``NMF2D.factorize``.
    """
    from ..models.segnext import NMF2D

    where = "check_nmf"
    gen = torch.Generator().manual_seed(120)
    # (n, D, N, R, steps): the second case has whole columns of zeros (positions the ReLU switched off).
    cases = [(2, 16, 30, 4, 3), (1, 12, 20, 3, 2), (3, 8, 12, 2, 1)]
    for n, D, N, R, steps in cases:
        x = F.relu(torch.randn(n, D, N, generator=gen))
        x[:, :, ::4] = 0.0  # every 4th position is all zeros: 0 / 0 there unless eps is added
        raw = torch.rand(n, D, R, generator=gen)
        eps = 1e-6
        x_in, raw_in = x.clone(), raw.clone()
        out = _run(where, fn, x_in, raw_in, steps, eps)
        if not torch.equal(x_in, x) or not torch.equal(raw_in, raw):
            _fail(where, "the inputs were modified in place; compute new tensors (bases = bases * ..., not bases *= ...)")
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            _fail(where, "return a pair (bases, coef)")
        bases, coef = out
        nmf = NMF2D(rank=R, eps=eps, eval_steps=steps).eval()
        ref_bases, ref_coef = nmf.factorize(x, F.normalize(raw, dim=1), steps)
        label = f"{where} (n={n}, D={D}, N={N}, R={R}, steps={steps})"
        bases = _expect_tensor(f"{label}, bases", bases, (n, D, R))
        coef = _expect_tensor(f"{label}, coef", coef, (n, N, R),
                              "coef holds one row of R weights per position: [n, N, R].")
        if _close(bases, ref_bases) and _close(coef, ref_coef):
            continue
        f = lambda **bug: _nmf_reference(x, raw, steps, eps, **bug)  # noqa: E731
        both = lambda **bug: torch.cat([t.flatten() for t in f(**bug)])  # noqa: E731
        candidates = [
            ("eps is missing from the denominators: where a position is all zeros (ReLU), its coefficients become "
             "0 and the next update computes 0 / 0 = NaN, which then spreads. Add eps to every denominator.",
             lambda: torch.cat([t.flatten() for t in _nmf_reference(x, raw, steps, 0.0)])),
            ("the bases are updated before the coefficients; each step updates coef first, then the bases "
             "with the new coef.", lambda: both(order="bases_first")),
            ("the bases update uses the coefficients from before this step; update coef first and use the new "
             "coef for the bases.", lambda: both(order="simultaneous")),
            ("the initial bases are not L2-normalised over D (dim=1), as the official code does right after "
             "drawing them.", lambda: both(normalize="none")),
            ("the bases are normalised over R (dim=2); normalise each basis vector over D (dim=1).",
             lambda: both(normalize="r")),
            ("the initial softmax runs over the positions N (dim=1); it runs over the R bases (dim=-1).",
             lambda: both(softmax_dim=1)),
            ("the final coef update after the loop is missing (the official compute_coef).",
             lambda: both(final=False)),
        ]
        got = torch.cat([bases.detach().flatten(), coef.detach().flatten()])
        expected = torch.cat([ref_bases.flatten(), ref_coef.flatten()])
        _diagnose(label, got, expected, candidates,
                  "Expected: normalise the bases, softmax init, `steps` x (coef update, bases update), one more "
                  "coef update.")
    _passed(where, len(cases), "segedu.models.segnext.NMF2D.factorize")
