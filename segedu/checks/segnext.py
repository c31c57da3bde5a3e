"""Checks for notebook 06: SegNeXt's multi-scale convolutional attention and the NMF of its decoder."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._core import teaches, _reference_and_yours, _close, _diagnose, _expect_tensor, _fail, _passed, _run, _seeded

__all__ = ["check_msca", "check_nmf", "check_lightham_head"]


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


@teaches('SegNeXt Sec. 3.1, Eq. 1-2 and Fig. 2 (multi-scale convolutional attention); segedu.models.segnext.MSCA')
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
                             f"size.", "pad a 1xk conv with (0, k // 2), a kx1 conv with (k // 2, 0), the 5x5 with 2.")
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


@teaches("SegNeXt Sec. 3.2 (the Hamburger) and Hamburger (Geng et al., ICLR 2021; NMF by multiplicative "
         "updates, Lee & Seung 2001); segedu.models.segnext.NMF2D.factorize")
def check_nmf(fn: Callable) -> None:
    """``fn(x [n, D, N], bases [n, D, R], steps, eps) -> (bases [n, D, R], coef [n, N, R])``.

    ``bases`` arrive as raw uniform draws: L2-normalise them over D, start from
    ``coef = softmax(x^T bases)`` over R, run ``steps`` multiplicative updates (coef first, then the
    bases with the new coef), then update coef once more. Compared with segedu's ``NMF2D.factorize``: the values,
    and the gradient with respect to x (it flows through every update, as in segedu and the official code).
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
            _fail(where, "the inputs were modified in place, so the caller's matrices changed",
                  "compute new tensors (bases = bases * ..., not bases *= ...).")
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
    _check_nmf_gradient(fn, where, gen)
    _passed(where, len(cases), "segedu.models.segnext.NMF2D.factorize")


def _nmf_gradient(fn: Callable, x: torch.Tensor, raw: torch.Tensor, steps: int, weights: tuple) -> tuple:
    """d(sum(w_b * bases) + sum(w_c * coef)) / dx through ``fn``; (None, why) when no gradient reaches x."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        bases, coef = fn(x, raw.clone(), steps, 1e-6)
        if not (bases.requires_grad or coef.requires_grad):
            return None, "nothing"
        loss = (bases * weights[0]).sum() + (coef * weights[1]).sum()
        grad, = torch.autograd.grad(loss, x, allow_unused=True)
    return grad, "some"


def _one_step_nmf(x, bases, steps, eps):
    """The factorisation under no_grad, then only the final coef update with gradients (a one-step gradient)."""
    from ..models.segnext import NMF2D

    nmf = NMF2D(rank=bases.shape[-1], eps=eps, eval_steps=steps).eval()
    with torch.no_grad():
        b = F.normalize(bases, dim=1)
        c = F.softmax(x.transpose(1, 2) @ b, dim=-1)
        for _ in range(steps):
            c = nmf.update_coef(x, b, c)
            b = nmf.update_bases(x, b, c)
    return b, nmf.update_coef(x, b, c)


def _check_nmf_gradient(fn: Callable, where: str, gen: torch.Generator) -> None:
    """segedu lets gradients flow through every multiplicative update (the official code's @torch.no_grad() is
    commented out): the learner's factorisation must give the same gradient with respect to x."""
    from ..models.segnext import NMF2D

    x = F.relu(torch.randn(2, 12, 20, generator=gen)) + 0.05
    raw = torch.rand(2, 12, 3, generator=gen)
    weights = (torch.randn(2, 12, 3, generator=gen), torch.randn(2, 20, 3, generator=gen))
    steps = 3

    def reference(x_, bases, steps_, eps):
        return NMF2D(rank=3, eps=eps, eval_steps=steps_).eval().factorize(x_, F.normalize(bases, dim=1), steps_)

    expected, _ = _nmf_gradient(reference, x, raw, steps, weights)
    try:
        got, reached = _nmf_gradient(fn, x, raw, steps, weights)
    except (AssertionError, NotImplementedError):
        raise
    except Exception as err:
        _fail(where, f"with gradients enabled (x.requires_grad=True) it raised {type(err).__name__}: {err}",
              "In-place updates of tensors autograd needs (bases *= ...) break backward; write bases = bases * ....")
    label = f"{where} (gradients)"
    look = ("in segedu (and in the official SegNeXt code, whose @torch.no_grad() is commented out) the gradient "
            "flows through every multiplicative update back to x, so ham_in learns from the whole factorisation")
    if got is None or not got.abs().sum() > 0:
        _fail(label, f"no gradient reaches x through your factorisation (it ran under torch.no_grad(), or its "
                     f"results were detached). {look}",
              "Remove torch.no_grad() / .detach() / .data from the factorisation: the updates are ordinary tensor "
              "operations autograd can follow.")
    if _close(got, expected, 1e-3, 1e-6):
        return
    one_step, _ = _nmf_gradient(_one_step_nmf, x, raw, steps, weights)
    if one_step is not None and _close(got, one_step, 1e-3, 1e-6):
        _fail(label, f"the gradient flows only through the last coef update (a one-step gradient: the loop ran "
                     f"under torch.no_grad()). {look}",
              "Run the whole loop with gradients enabled.")
    _fail(label, f"the gradient with respect to x differs from segedu's: it does not flow through every update "
                 f"(a .detach() or .data inside the loop?). {look}",
          "Remove every .detach() / .data / torch.no_grad() from the factorisation.")


# ----------------------------------------------------------------------------------------------
# The LightHam head (SegNeXt Sec. 3.2, Fig. 3(c)), assembled from segedu's components
# ----------------------------------------------------------------------------------------------
def _lightham_reference(ref: nn.Module, feats: list[torch.Tensor], *, stages=(1, 2, 3), order: str = "up",
                        mode: str = "bilinear", align_corners: bool = False, ham: bool = True,
                        ham_after_align: bool = False) -> torch.Tensor:
    """The head written out from the reference's modules, with switches that reproduce the classic mistakes."""
    chosen = [feats[i] for i in stages]
    size = chosen[0].shape[-2:]
    kw = {"align_corners": align_corners} if mode == "bilinear" else {}
    maps = [f if f.shape[-2:] == size else F.interpolate(f, size=size, mode=mode, **kw) for f in chosen]
    x = ref.squeeze(torch.cat(maps if order == "up" else maps[::-1], dim=1))
    if ham_after_align:
        x = ref.hamburger(ref.align(x))
    else:
        x = ref.align(ref.hamburger(x) if ham else x)
    return ref.linear_pred(x)


@teaches("SegNeXt Sec. 3.2 and Fig. 3(c) (the decoder reads stages 2-4 only; Hamburger between two 1x1 convs) and "
         "the official ham_head.py (docs/architectures.md §4.3); segedu.models.segnext.LightHamHead")
def check_lightham_head(cls: type) -> None:
    """``cls(in_channels (4 stages), num_classes, ham_channels, channels, nmf_rank)``;
    ``forward([c1, c2, c3, c4]) -> logits [B, K, H/8, W/8]``.

    Stages 2-4 resized bilinearly (align_corners=False) to stage 2's grid and concatenated in stage order;
    ``squeeze`` ConvNormAct(sum of their channels, ham_channels, norm="gn"); ``hamburger`` =
    segedu.models.segnext.Hamburger(ham_channels, NMF2D(nmf_rank)); ``align`` ConvNormAct(ham_channels, channels,
    norm="gn"); ``dropout`` Dropout2d(0.1); ``linear_pred`` Conv2d(channels, K, 1). Checked in eval mode.
    """
    from ..models.segnext import LightHamHead

    where = "check_lightham_head"
    hints = {"squeeze.conv.weight has shape": "`squeeze` reads the concatenation of stages 2, 3 and 4 only: its "
                                              "input width is in_channels[1] + in_channels[2] + in_channels[3].",
             "squeeze": "`squeeze` = ConvNormAct(sum of the channels of stages 2-4, ham_channels, norm='gn').",
             "hamburger": "`hamburger` = nx.Hamburger(ham_channels, nx.NMF2D(nmf_rank)) (keys hamburger.ham_in.*, "
                          "hamburger.ham_out.*).",
             "align": "`align` = ConvNormAct(ham_channels, channels, norm='gn') after the Hamburger.",
             "linear_pred": "`linear_pred` = nn.Conv2d(channels, num_classes, 1), the classifier."}
    # (in_channels, K, ham_channels, channels, rank), B, image size: the grids of a 64x96 and a ragged 50x70 image
    cases = [(((8, 16, 24, 32), 5, 32, 32, 4), 2, (64, 96)), (((4, 8, 16, 24), 3, 32, 64, 3), 1, (50, 70))]
    for i, (args, B, (H, W)) in enumerate(cases):
        with _seeded(130 + i):
            ref, mine = _reference_and_yours(LightHamHead, cls, args, 130 + i, where, hints)
            sizes = [(-(-H // s), -(-W // s)) for s in (4, 8, 16, 32)]
            feats = [torch.randn(B, c, *hw) for c, hw in zip(args[0], sizes)]
        out = _run(where, mine, feats)
        expected = _run(where, ref, feats)
        if isinstance(out, torch.Tensor) and out.ndim == 4 and tuple(out.shape[-2:]) == sizes[0]:
            _fail(where, f"the logits are at stride 4 {sizes[0]}: LightHam predicts at stride 8, on the grid of "
                         f"stage 2 {sizes[1]}, the shallowest stage it reads (stage 1 is left out, Sec. 3.2)",
                  "Resize stages 3 and 4 to the size of stage 2 (features[1].shape[-2:]).")
        out = _expect_tensor(where, out, tuple(expected.shape),
                             f"Logits [B, K, h8, w8] on stage 2's grid {sizes[1]}.")
        f = lambda **bug: _lightham_reference(ref, feats, **bug)  # noqa: E731
        candidates = [
            (("the stages are concatenated deepest first ([c4, c3, c2]); the official head (and its weights) "
              "concatenate them in stage order.", "torch.cat([c2, c3 resized, c4 resized], dim=1)."),
             lambda: f(order="down")),
            ("the resizing uses align_corners=True; the official head resizes with align_corners=False.",
             lambda: f(align_corners=True)),
            ("the resizing is nearest-neighbour; the official head resizes bilinearly (align_corners=False).",
             lambda: f(mode="nearest")),
            (("the Hamburger is left out: the squeezed features go straight to `align`.",
              "x = align(hamburger(squeeze(cat)))."), lambda: f(ham=False)),
            (("the Hamburger comes after `align`; it works on the squeezed features (ham_channels), before align.",
              "x = align(hamburger(squeeze(cat)))."), lambda: f(ham_after_align=True)),
        ]
        _diagnose(f"{where} (in_channels={args[0]}, {H}x{W} image)", out, expected, candidates,
                  "Expected linear_pred(dropout(align(hamburger(squeeze(cat[c2, up(c3), up(c4)]))))).")
    _passed(where, len(cases), "segedu.models.segnext.LightHamHead")
