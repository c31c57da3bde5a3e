"""Checks for notebook 02: scaled dot-product attention and multi-head self-attention."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange

from ._core import teaches, _reference_and_yours, _diagnose, _expect_tensor, _fail, _passed, _run, _seeded

__all__ = ["check_scaled_dot_product_attention", "check_multi_head_self_attention"]


def _attend(q, k, v, mask=None, *, scale: str = "sqrt", softmax_dim: int = -1, mask_at: str = "before"):
    """softmax(q k^T / sqrt(d)) v written out, with switches that reproduce the classic mistakes."""
    d = q.shape[-1]
    scores = q @ k.transpose(-2, -1)
    scores = scores * {"sqrt": d ** -0.5, "none": 1.0, "d": 1.0 / d, "times": d ** 0.5}[scale]
    if mask is not None and mask_at == "before":
        scores = scores.masked_fill(~mask, float("-inf"))
    if mask is not None and mask_at == "inverted":
        scores = scores.masked_fill(mask, float("-inf"))
    weights = scores.softmax(dim=softmax_dim)
    if mask is not None and mask_at == "after":
        weights = weights.masked_fill(~mask, 0.0)
    return weights @ v


@teaches('Attention Is All You Need (Vaswani et al. 2017) Sec. 3.2.1, Eq. 1')
def check_scaled_dot_product_attention(fn: Callable) -> None:
    """``fn(q [..., N, d], k [..., M, d], v [..., M, d_v], mask=None) -> [..., N, d_v]`` (Vaswani et al. Eq. 1).

    ``mask`` is boolean, broadcastable to ``[..., N, M]``: True where a query may attend to a key
    (the convention of ``F.scaled_dot_product_attention``). Masked scores become -inf before the softmax.
    """
    where = "check_scaled_dot_product_attention"
    # (batch dims, N queries, M keys, d, d_v, with a mask?): N != M != d so transposes cannot hide
    cases = [((2,), 5, 7, 16, 16, False), ((2, 3), 6, 6, 8, 5, False), ((1,), 4, 9, 32, 8, True),
             ((2, 2), 7, 5, 12, 12, True)]
    gen = torch.Generator().manual_seed(200)
    for batch, N, M, d, dv, masked in cases:
        q = torch.randn(*batch, N, d, generator=gen)
        k = torch.randn(*batch, M, d, generator=gen)
        v = torch.randn(*batch, M, dv, generator=gen)
        mask = None
        if masked:  # random keep pattern, every query keeps at least one key
            mask = torch.rand(N, M, generator=gen) < 0.6
            mask[torch.arange(N), torch.arange(N) % M] = True
        args = (q.clone(), k.clone(), v.clone()) + ((mask.clone(),) if masked else ())
        out = _run(where, fn, *args)
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        label = f"{where} (q {list(q.shape)}, k {list(k.shape)}, v {list(v.shape)}{', with mask' if masked else ''})"
        if isinstance(out, torch.Tensor) and tuple(out.shape) == tuple(batch) + (N, M):
            _fail(label, f"output shape {list(out.shape)} = [..., N, M] are the attention weights; return "
                         f"weights @ v, shape {list(expected.shape)}")
        out = _expect_tensor(label, out, tuple(expected.shape), "The output has one row per query and v's width.")
        if masked and not torch.isfinite(out).all():
            _fail(label, "the output has inf or NaN: the mask was applied after the softmax, where adding -inf "
                         "poisons the weighted sum.",
                  "the mask acts on the scores before the softmax: set the masked scores to -inf, and the softmax "
                  "gives them weight 0.")
        f = lambda **bug: _attend(q, k, v, mask, **bug)  # noqa: E731
        candidates = [
            ("the scores are not scaled: divide q k^T by sqrt(d) before the softmax (Eq. 1).", lambda: f(scale="none")),
            (f"the scores are divided by d = {d}; Eq. 1 divides by sqrt(d) = {math.sqrt(d):.3g}, which keeps their "
             f"variance near 1 for unit-variance q and k.", lambda: f(scale="d")),
            ("the scores are multiplied by sqrt(d); divide by it.", lambda: f(scale="times")),
            ("the softmax runs over the queries (dim=-2): each query's weights over the keys must sum to 1, so "
             "take the softmax over the last axis (the keys).", lambda: f(softmax_dim=-2)),
        ]
        if masked:
            candidates += [
                ("the mask is applied after the softmax (weights zeroed without renormalising), so the kept "
                 "weights no longer sum to 1; set the masked scores to -inf before the softmax.",
                 lambda: f(mask_at="after")),
                ("the mask is inverted: True means 'may attend' (as in F.scaled_dot_product_attention), so fill "
                 "the scores where the mask is False.", lambda: f(mask_at="inverted")),
                ("the mask is ignored: set the scores to -inf where the mask is False, before the softmax.",
                 lambda: f(mask_at="none")),
            ]
        _diagnose(label, out, expected, candidates, "Expected softmax(q k^T / sqrt(d)) v, softmax over the keys.")
    _passed(where, len(cases), "F.scaled_dot_product_attention")


def _mhsa(p: dict, x: torch.Tensor, heads: int, *, scale: str = "head", split: str = "qkv_heads_d",
          merge: str = "heads_d", proj: bool = True, softmax_dim: int = -1) -> torch.Tensor:
    """Multi-head self-attention written out, with switches that reproduce the classic mistakes."""
    C = x.shape[-1]
    d = C // heads
    qkv = F.linear(x, p["qkv.weight"], p.get("qkv.bias"))
    pattern = {"qkv_heads_d": "b n (qkv heads d) -> qkv b heads n d",
               "qkv_d_heads": "b n (qkv d heads) -> qkv b heads n d",
               "heads_qkv_d": "b n (heads qkv d) -> qkv b heads n d"}[split]
    q, k, v = rearrange(qkv, pattern, qkv=3, heads=heads)
    scores = q @ k.transpose(-2, -1) * {"head": d ** -0.5, "dim": C ** -0.5, "none": 1.0}[scale]
    out = scores.softmax(softmax_dim) @ v
    out = rearrange(out, "b heads n d -> b n (heads d)" if merge == "heads_d" else "b heads n d -> b n (d heads)")
    return F.linear(out, p["proj.weight"], p["proj.bias"]) if proj else out


@teaches('Vaswani et al. 2017 Sec. 3.2.2 (multi-head attention); segedu.layers.MultiHeadSelfAttention')
def check_multi_head_self_attention(cls: type) -> None:
    """``cls(dim, num_heads)``; ``forward(x [B, N, C]) -> [B, N, C]``.

    Parameters as in ``segedu.layers.MultiHeadSelfAttention``: ``qkv`` = Linear(C, 3C) whose outputs are
    laid out as (qkv, heads, head_dim) and ``proj`` = Linear(C, C). Scores scaled by 1 / sqrt(C / heads).
    """
    from ..layers import MultiHeadSelfAttention

    where = "check_multi_head_self_attention"
    hints = {"qkv": "Queries, keys and values come from one fused `qkv` = nn.Linear(dim, 3 * dim): the first dim "
                    "outputs are the queries, then the keys, then the values.",
             "proj": "The heads are merged by the output projection `proj` = nn.Linear(dim, dim)."}
    # (dim, heads), (B, N): one and several heads, N not equal to dim or head_dim
    cases = [((16, 2), (2, 7)), ((12, 1), (1, 5)), ((24, 4), (2, 10)), ((18, 3), (1, 9))]
    for i, (args, (B, N)) in enumerate(cases):
        dim, heads = args
        with _seeded(210 + i):
            ref, mine = _reference_and_yours(MultiHeadSelfAttention, cls, args, 210 + i, where, hints)
            x = 2 * torch.randn(B, N, dim)  # larger inputs: sharper attention, so a wrong scale shows
        out = _run(where, mine, x)
        expected = _run(where, ref, x)
        label = f"{where} (dim={dim}, heads={heads}, {N} tokens)"
        out = _expect_tensor(label, out, tuple(expected.shape))
        p = dict(ref.state_dict())
        f = lambda **bug: _mhsa(p, x, heads, **bug)  # noqa: E731
        candidates = [
            ("the scores are not scaled: multiply q k^T by 1 / sqrt(head_dim) before the softmax.",
             lambda: f(scale="none")),
            (f"the scores are scaled by 1 / sqrt(dim) = 1 / sqrt({dim}); the scale uses the per-head width "
             f"head_dim = dim / num_heads = {dim // heads}.", lambda: f(scale="dim")),
            ("the softmax runs over the queries (dim=-2); take it over the keys (the last axis).",
             lambda: f(softmax_dim=-2)),
            ("the channels are split as (head_dim, heads); segedu (like timm and the official ViT code) splits "
             "them as (heads, head_dim): rearrange 'b n (qkv heads d) -> qkv b heads n d'.",
             lambda: f(split="qkv_d_heads", merge="d_heads")),
            ("the heads are split correctly, but merged back as (head_dim, heads); merge with 'b heads n d -> "
             "b n (heads d)', the inverse of the split.", lambda: f(merge="d_heads")),
            ("the qkv outputs are read as (heads, qkv, head_dim); segedu lays them out as (qkv, heads, head_dim): "
             "all queries first, then all keys, then all values.", lambda: f(split="heads_qkv_d")),
            ("the output projection `proj` is not applied after merging the heads.", lambda: f(proj=False)),
        ]
        _diagnose(label, out, expected, candidates,
                  "Expected proj(merge_heads(softmax(q k^T / sqrt(head_dim)) v)) with q, k, v from qkv(x).")
    _passed(where, len(cases), "segedu.layers.MultiHeadSelfAttention")
