"""Checks for notebook 03: the ViT block SETR's encoder is made of, and the MLA top-down aggregation."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ._core import (teaches, _probe_stochastic_depth, _reference_and_yours, _diagnose, _expect_tensor, _fail, _passed,
                    _run, _seeded)

__all__ = ["check_vit_block", "check_mla_top_down", "check_pup_head"]


# ----------------------------------------------------------------------------------------------
# The ViT block (SETR Sec. 3.1, Eq. 1-2: pre-norm MSA and MLP, each with a residual)
# ----------------------------------------------------------------------------------------------
def _msa_reference(p: dict, x: torch.Tensor, heads: int, *, scale: str = "head", softmax_dim: int = -1,
                   prefix: str = "attn.") -> torch.Tensor:
    """Multi-head self-attention written out, with switches that reproduce the classic mistakes."""
    C = x.shape[-1]
    d = C // heads
    qkv = F.linear(x, p[prefix + "qkv.weight"], p[prefix + "qkv.bias"])
    q, k, v = rearrange(qkv, "b n (qkv heads d) -> qkv b heads n d", qkv=3, heads=heads)
    logits = q @ k.transpose(-2, -1)  # [B, heads, N, N]
    if scale == "head":
        logits = logits * d ** -0.5
    elif scale == "dim":
        logits = logits * C ** -0.5
    out = rearrange(logits.softmax(softmax_dim) @ v, "b heads n d -> b n (heads d)")
    return F.linear(out, p[prefix + "proj.weight"], p[prefix + "proj.bias"])


@teaches("SETR Sec. 3.2 (the Transformer layers, pre-norm MSA and MLP blocks) and ViT Eq. 2-3; "
         "segedu.models.setr.Block")
def check_vit_block(cls: type) -> None:
    """``cls(dim, num_heads, mlp_ratio, drop_path)``; ``forward(x [B, N, C]) -> [B, N, C]``.

    Pre-norm (SETR Eq. 1-2): ``x = x + attn(norm1(x))``, then ``x = x + mlp(norm2(x))``, with
    ``norm1``/``norm2`` LayerNorm(dim, eps=1e-6), ``attn`` = segedu.layers.MultiHeadSelfAttention-like
    (``qkv`` Linear(C, 3C), ``proj`` Linear(C, C)), ``mlp`` = ``fc1`` Linear(C, C * mlp_ratio), GELU, ``fc2``.
    Checked in eval mode (DropPath is the identity), then in training mode for the stochastic depth: each residual
    branch wrapped in ``drop_path`` = DropPath(drop_path).
    """
    from ..models.setr import Block

    where = "check_vit_block"
    hints = {"norm": "The LayerNorms are `norm1` (before the attention) and `norm2` (before the MLP).",
             "attn": "The attention is `attn` with a fused `attn.qkv` = nn.Linear(dim, 3 * dim) (q, k, v in that "
                     "order, heads inside each) and `attn.proj` = nn.Linear(dim, dim).",
             "mlp": "The MLP is `mlp` with `mlp.fc1` = nn.Linear(dim, int(dim * mlp_ratio)), GELU, "
                    "`mlp.fc2` = nn.Linear(int(dim * mlp_ratio), dim)."}
    # (dim, heads, mlp_ratio, drop_path), (B, N): one and several heads, a cls token makes N odd.
    cases = [((16, 2, 4.0, 0.0), (2, 13)), ((24, 3, 2.0, 0.1), (1, 10)), ((8, 1, 4.0, 0.0), (2, 5))]
    for i, (args, (B, N)) in enumerate(cases):
        dim, heads = args[0], args[1]
        with _seeded(300 + i):
            ref, mine = _reference_and_yours(Block, cls, args, 300 + i, where, hints)
            x = torch.randn(B, N, dim)
        for name in ("norm1", "norm2"):
            norm = getattr(mine, name, None)
            if isinstance(norm, nn.LayerNorm) and norm.eps != 1e-6:
                _fail(where, f"{name} has eps={norm.eps}; ViT (timm, the official SETR code) uses "
                             f"nn.LayerNorm(dim, eps=1e-6), and the released weights expect it")
        out = _run(where, mine, x)
        expected = _run(where, ref, x)
        out = _expect_tensor(where, out, tuple(expected.shape))
        p = dict(ref.state_dict())
        n1, n2, mlp = ref.norm1, ref.norm2, ref.mlp

        def block(attn: Callable, *, post: bool = False, normed_res: bool = False, res_attn: bool = True,
                  res_mlp: bool = True, parallel: bool = False) -> torch.Tensor:
            if post:
                y = n1(x + attn(x))
                return n2(y + mlp(y))
            if parallel:
                return x + attn(n1(x)) + mlp(n2(x))
            a = n1(x)
            y = (a if normed_res else x) * res_attn + attn(a)
            m = n2(y)
            return (m if normed_res else y) * res_mlp + mlp(m)

        attn = lambda t, **bug: _msa_reference(p, t, heads, **bug)  # noqa: E731
        candidates = [
            ("the attention scores are not scaled: multiply q k^T by 1 / sqrt(head_dim) before the softmax.",
             lambda: block(lambda t: attn(t, scale="none"))),
            (f"the scores are scaled by 1 / sqrt(dim) = 1 / sqrt({dim}); the scale uses the per-head width "
             f"head_dim = dim / num_heads = {dim // heads}.", lambda: block(lambda t: attn(t, scale="dim"))),
            ("the softmax runs over the queries (dim=-2): each query's weights over the keys must sum to 1, so "
             "take the softmax over the last axis (the keys).", lambda: block(lambda t: attn(t, softmax_dim=-2))),
            ("this is a post-norm block (norm after the residual sum, as in the original Transformer); ViT and "
             "SETR are pre-norm: x = x + attn(norm1(x)), then x = x + mlp(norm2(x)).",
             lambda: block(ref.attn, post=True)),
            ("the residual carries the normalised tokens; add the branch to the un-normalised x: "
             "x = x + attn(norm1(x)).", lambda: block(ref.attn, normed_res=True)),
            ("the residual connection around the attention is missing.", lambda: block(ref.attn, res_attn=False)),
            ("the residual connection around the MLP is missing.", lambda: block(ref.attn, res_mlp=False)),
            ("the attention and the MLP run in parallel on the same input; they are sequential: the MLP sees "
             "the output of the attention step.", lambda: block(ref.attn, parallel=True)),
        ]
        _diagnose(f"{where} (dim={dim}, heads={heads}, N={N})", out, expected, candidates,
                  "Expected x = x + attn(norm1(x)); x = x + mlp(norm2(x)).")
    # Training mode: stochastic depth on both residual branches (eval mode above cannot see it).
    with _seeded(309):
        ref, mine = _reference_and_yours(Block, cls, (16, 2, 4.0, 0.5), 309, where, hints)
        x = torch.randn(32, 5, 16)
    _probe_stochastic_depth(where, mine.train(), x, [lambda t: ref.attn(ref.norm1(t)), lambda t: ref.mlp(ref.norm2(t))],
                            0.5, 310, "the block")
    _passed(where, len(cases), "segedu.models.setr.Block")


# ----------------------------------------------------------------------------------------------
# MLA (SETR Sec. 3.3, Fig. 1c): top-down aggregation of the projected taps
# ----------------------------------------------------------------------------------------------
def _top_down(c: list[torch.Tensor], *, direction: str = "down", chain: bool = True) -> list[torch.Tensor]:
    """The top-down sums (and two classic mistakes). ``c`` in tap order, shallowest first."""
    n = len(c)
    p = list(c)
    order = range(n - 2, -1, -1) if direction == "down" else range(1, n)
    for i in order:
        src = i + 1 if direction == "down" else i - 1
        p[i] = (p[src] if chain else c[src]) + c[i]
    return p


@teaches('SETR Sec. 3.3 and Fig. 1(c) (multi-level feature aggregation); segedu.models.setr.MLANeck')
def check_mla_top_down(fn: Callable) -> None:
    """``fn(c: list of [B, C, h, w] maps in tap order Z6, Z12, Z18, Z24) -> list p in the same order``.

    p24 = c24, p18 = p24 + c18, p12 = p18 + c12, p6 = p12 + c6 (the MLA neck of the official code /
    segedu.models.setr.MLANeck): the deepest tap flows into every shallower one.
    """
    where = "check_mla_top_down"
    cases = [(2, 8, 4, 6, 4), (1, 4, 3, 5, 3), (1, 6, 2, 2, 2)]  # (B, C, h, w, levels)
    for i, (B, C, h, w, levels) in enumerate(cases):
        with _seeded(320 + i):
            c = [torch.randn(B, C, h, w) for _ in range(levels)]
        given = [t.clone() for t in c]
        out = _run(where, fn, given)
        if any(not torch.equal(a, b) for a, b in zip(given, c)):
            _fail(where, "the input maps were modified in place (e.g. `c[i] += ...`); build new tensors "
                         "(p = list(c); p[i] = p[i + 1] + c[i]) so the caller's maps stay as they were")
        if not isinstance(out, (list, tuple)):
            _fail(where, f"expected a list of {levels} maps, got {type(out).__name__}"
                  + (": return every level p, not only the last sum" if isinstance(out, torch.Tensor) else ""))
        if len(out) != levels:
            _fail(where, f"returned {len(out)} maps for {levels} taps; return one map per tap, in tap order")
        expected = _top_down(c)
        for level, (got, want) in enumerate(zip(out, expected)):
            got = _expect_tensor(f"{where} (level {level})", got, tuple(want.shape),
                                 "The sums keep the shape of each tap.")
        got = torch.stack(list(out))
        candidates = [
            ("the sums run bottom-up (p6 = c6, p12 = p6 + c12, ...); MLA is top-down: the deepest tap Z24 is "
             "kept as it is and flows into every shallower one: p18 = p24 + c18, p12 = p18 + c12, p6 = p12 + c6.",
             lambda: torch.stack(_top_down(c, direction="up"))),
            ("each level adds only the next deeper tap (p_i = c_i + c_(i+1)); the sums accumulate: add the "
             "already summed deeper level, p_i = p_(i+1) + c_i.", lambda: torch.stack(_top_down(c, chain=False))),
            ("the levels come back in reverse order; return them in tap order [p6, p12, p18, p24] (shallowest "
             "first), as the taps came in.", lambda: torch.stack(_top_down(c)[::-1])),
        ]
        _diagnose(f"{where} ({levels} levels)", got, torch.stack(expected), candidates,
                  "Expected p_last = c_last and p_i = p_(i+1) + c_i, returned in tap order.")
    _passed(where, len(cases), "the top-down sums of segedu.models.setr.MLANeck")


# ----------------------------------------------------------------------------------------------
# PUP (SETR Sec. 3.3, Fig. 1(b)): progressive upsampling, designed from its behaviour
# ----------------------------------------------------------------------------------------------
def _pup_reference(ref: nn.Module, z: torch.Tensor, *, order: str = "conv_up", mode: str = "bilinear",
                   align_corners: bool = False, norm: bool = True, relu: bool = True) -> torch.Tensor:
    """PUP written out from UpHead's modules, with switches that reproduce the classic mistakes."""
    def up(t, factor=2):
        size = (t.shape[-2] * factor, t.shape[-1] * factor)
        kw = {"align_corners": align_corners} if mode == "bilinear" else {}
        return F.interpolate(t, size=size, mode=mode, **kw)

    def conv(block, t):
        t = block.norm(block.conv(t))
        return F.relu(t) if relu else t

    x = rearrange(ref.norm(rearrange(z, "b d h w -> b h w d")), "b h w d -> b d h w") if norm else z
    n = len(ref.convs)
    if order == "up_conv":  # upsample before every conv, classify at full resolution
        for block in ref.convs:
            x = conv(block, up(x))
        return ref.linear_pred(x)
    if order == "at_once":  # every conv at the token grid, then one jump back to the image
        for block in ref.convs:
            x = conv(block, x)
        return up(ref.linear_pred(x), 2 ** n)
    for i, block in enumerate(ref.convs):
        x = conv(block, up(x) if i else x)
    return up(ref.linear_pred(x))


def _pup_up_head(in_dim: int, num_classes: int, channels: int, patch_size: int) -> nn.Module:
    from ..models.setr import UpHead

    return UpHead(in_dim, num_classes, 0, channels, num_convs=int(math.log2(patch_size)), kernel_size=3,
                  up_scale=2, conv_bias=True)


@teaches("SETR Sec. 3.3 and Fig. 1(b) (progressive upsampling: x2 steps, never more, to keep noise down) and the "
         "official vit_up_head.py; segedu.models.setr.UpHead with num_convs=log2(patch), kernel_size=3, up_scale=2")
def check_pup_head(cls: type) -> None:
    """``cls(in_dim, num_classes, channels, patch_size)``; ``forward(z [B, D, h, w]) -> [B, K, h * p, w * p]``.

    ``norm`` LayerNorm(in_dim, eps=1e-6) over the channels of every position; ``convs`` an nn.ModuleList of
    log2(patch_size) segedu.layers.ConvNormAct(c_in, channels, 3, bias=True) (3x3 conv + BN + ReLU) with a x2
    bilinear upsampling (align_corners=False) between consecutive ones; ``linear_pred`` Conv2d(channels, K, 1);
    the last x2 after the classifier (or before it: a 1x1 conv commutes with bilinear resizing, both pass).
    A patch size that is not a power of two raises ValueError. Compared with segedu.models.setr.UpHead.
    """
    where = "check_pup_head"
    hints = {"convs": "`convs` is an nn.ModuleList of log2(patch_size) blocks ConvNormAct(c_in, channels, 3, "
                      "bias=True): c_in = in_dim for the first, channels for the others (keys convs.i.conv.*, "
                      "convs.i.norm.*). ViT/16 needs 4 doublings to get back to the image, ViT/8 needs 3.",
             "conv.bias": "The official PUP convs keep their bias before the BN: ConvNormAct(..., bias=True).",
             "norm.": "`norm` = nn.LayerNorm(in_dim, eps=1e-6): the official heads normalise the tokens first.",
             "linear_pred": "`linear_pred` = nn.Conv2d(channels, num_classes, 1), the classifier."}
    # (in_dim, K, channels, patch), (B, h, w): ViT/16, ViT/8 and ViT/4 token maps, non-square.
    cases = [((16, 5, 8, 16), (2, 3, 5)), ((12, 4, 8, 8), (1, 4, 3)), ((8, 3, 6, 4), (1, 5, 7))]
    for i, (args, (B, h, w)) in enumerate(cases):
        dim, K, _, p = args
        with _seeded(330 + i):
            ref, mine = _reference_and_yours(_pup_up_head, cls, args, 330 + i, where, hints)
            z = torch.randn(B, dim, h, w)
        out = _run(where, mine, z)
        expected = _run(where, ref, [z])
        if isinstance(out, torch.Tensor) and out.ndim == 4 and tuple(out.shape[-2:]) != (h * p, w * p):
            got = tuple(out.shape[-2:])
            _fail(where, f"a {h}x{w} token map of a ViT/{p} came back as {got}, expected the image size "
                         f"{(h * p, w * p)}: PUP undoes the patch stride {p} completely, by x2 steps",
                  f"log2({p}) = {int(math.log2(p))} doublings: one between each pair of convs and the last one after "
                  f"the classifier.")
        out = _expect_tensor(where, out, tuple(expected.shape))
        f = lambda **bug: _pup_reference(ref, z, **bug)  # noqa: E731
        candidates = [
            (("the map is upsampled before every conv, so the first 3x3 conv already runs at twice the token grid "
              "and the classifier at full resolution.",
              "Run the first conv on the token grid itself; upsample x2 after each conv (the last x2 after the "
              "classifier).")
             , lambda: f(order="up_conv")),
            (("the convs all run on the token grid and the upsampling happens in one jump at the end: that is the "
              "Naive decoder's x16, not progressive upsampling (SETR Fig. 1(b) alternates conv and x2).",
              "Upsample x2 between consecutive convs, and x2 once more after the classifier."),
             lambda: f(order="at_once")),
            ("the upsampling is nearest-neighbour; PUP upsamples bilinearly (align_corners=False).",
             lambda: f(mode="nearest")),
            ("the upsampling uses align_corners=True; segedu and the official PUP use align_corners=False.",
             lambda: f(align_corners=True)),
            (("the tokens are not normalised before the first conv.",
              "Apply `norm` (LayerNorm over D for every position: move D last, normalise, move it back)."),
             lambda: f(norm=False)),
            ("the ReLU after each conv + BN is missing; every PUP stage is conv + BN + ReLU (ConvNormAct).",
             lambda: f(relu=False)),
        ]
        _diagnose(f"{where} (ViT/{p}, D={dim}, {h}x{w} tokens)", out, expected, candidates,
                  "Expected: norm -> [conv, x2] * (n - 1) -> conv -> linear_pred -> x2, with n = log2(patch_size).")
    try:
        with _seeded(339):
            bad = cls(8, 3, 8, 12)
    except ValueError:
        pass
    except NotImplementedError:
        raise
    except Exception as err:
        _fail(where, f"cls(8, 3, 8, patch_size=12) raised {type(err).__name__}: {err}; a patch size that x2 steps "
                     f"cannot undo should raise ValueError",
              "Check `patch_size` is a power of two (2 ** round(log2(p)) == p) and raise ValueError otherwise.")
    else:
        _fail(where, f"cls(8, 3, 8, patch_size=12) built a head with {len(getattr(bad, 'convs', []))} convs; a "
                     f"stride of 12 cannot be undone by x2 steps, so the constructor should raise ValueError",
              "Check `patch_size` is a power of two (2 ** round(log2(p)) == p) and raise ValueError otherwise.")
    _passed(where, len(cases), "segedu.models.setr.UpHead (PUP)")
