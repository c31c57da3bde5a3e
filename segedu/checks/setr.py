"""Checks for notebook 03: the ViT block SETR's encoder is made of, and the MLA top-down aggregation."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ._core import _reference_and_yours, _diagnose, _expect_tensor, _fail, _passed, _run, _seeded

__all__ = ["check_vit_block", "check_mla_top_down"]


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


def check_vit_block(cls: type) -> None:
    """``cls(dim, num_heads, mlp_ratio, drop_path)``; ``forward(x [B, N, C]) -> [B, N, C]``.

    Pre-norm (SETR Eq. 1-2): ``x = x + attn(norm1(x))``, then ``x = x + mlp(norm2(x))``, with
    ``norm1``/``norm2`` LayerNorm(dim, eps=1e-6), ``attn`` = segedu.layers.MultiHeadSelfAttention-like
    (``qkv`` Linear(C, 3C), ``proj`` Linear(C, C)), ``mlp`` = ``fc1`` Linear(C, C * mlp_ratio), GELU, ``fc2``.
    Checked in eval mode (DropPath is the identity).
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
