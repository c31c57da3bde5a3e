"""Checks for notebooks 05a-05c: SegFormer's pieces, its decoder and the loss."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._core import (teaches, _probe_stochastic_depth, _reference_and_yours, _diagnose, _expect_tensor, _fail, _passed,
                    _run, _seeded, _to_map, _to_tokens)

__all__ = ["check_overlap_patch_embed", "check_efficient_attention", "check_mix_ffn", "check_block",
           "check_mit_stage", "check_segformer_head", "check_seg_loss"]

# ----------------------------------------------------------------------------------------------
# 05a: overlapped patch embedding, efficient self-attention
# ----------------------------------------------------------------------------------------------
@teaches("SegFormer Sec. 3.1 (overlapped patch merging: K, S, P = 7, 4, 3 and 3, 2, 1); "
         "segedu.models.segformer.OverlapPatchEmbed")
def check_overlap_patch_embed(cls: type) -> None:
    """``cls(in_channels, dim, patch_size, stride)``; ``forward(x) -> (tokens [B, N, C], (h, w))``."""
    from ..models.segformer import OverlapPatchEmbed

    where = "check_overlap_patch_embed"
    hints = {"proj": "Name the convolution `proj` (nn.Conv2d(in_channels, dim, patch_size, stride, "
                     "padding=patch_size // 2)).",
             "norm": "Name the LayerNorm `norm` (nn.LayerNorm(dim)), applied to the tokens."}
    cases = [((3, 16, 7, 4), (2, 3, 37, 50)), ((16, 24, 3, 2), (1, 16, 13, 10)), ((8, 12, 3, 2), (2, 8, 8, 8))]
    for i, (args, xshape) in enumerate(cases):
        with _seeded(10 + i):
            ref, mine = _reference_and_yours(OverlapPatchEmbed, cls, args, 10 + i, where, hints)
            x = torch.randn(xshape)
        out = _run(where, mine, x)
        tokens, (h, w) = _run(where, ref, x)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            _fail(where, "forward must return a pair (tokens, (h, w)): the [B, N, C] tokens and the size of the "
                         "token grid, which the next layers need to fold the tokens back into a map")
        got, hw = out
        B, _, H, W = xshape
        k, s = args[2], args[3]
        if isinstance(got, torch.Tensor) and got.ndim == 4:
            _fail(where, f"tokens have shape {list(got.shape)}: flatten the conv output to [B, N, C] "
                         f"= {list(tokens.shape)}")
        if isinstance(got, torch.Tensor) and tuple(got.shape) == (B, tokens.shape[2], tokens.shape[1]):
            _fail(where, f"tokens have shape {list(got.shape)} = [B, C, N]; transpose to [B, N, C] = "
                         f"{list(tokens.shape)}")
        unpadded = ((H - k) // s + 1) * ((W - k) // s + 1)
        if isinstance(got, torch.Tensor) and got.ndim == 3 and got.shape[1] == unpadded and unpadded != tokens.shape[1]:
            _fail(where, f"{got.shape[1]} tokens for a {H}x{W} input, expected ceil({H}/{s}) x ceil({W}/{s}) = "
                         f"{h}x{w} = {h * w}: the overlapping patch embedding loses the border (the conv is not "
                         f"padded)",
                  f"pad the conv with patch_size // 2 = {k // 2}, which makes the token grid ceil(H / stride) x "
                  f"ceil(W / stride).")
        got = _expect_tensor(where, got, tuple(tokens.shape))
        try:
            hw_ok = tuple(int(v) for v in hw) == (h, w)
            hw_swapped = tuple(int(v) for v in hw) == (w, h)
        except Exception:
            _fail(where, f"the second output should be the grid size (h, w) = {(h, w)}, got {hw!r}")
        if not hw_ok:
            _fail(where, f"grid size {tuple(hw)}, expected (h, w) = {(h, w)}"
                  + (": height and width are swapped" if hw_swapped else ""))
        conv = ref.proj(x)
        candidates = [
            ("the tokens are flattened column by column ((w h) order); use row-major order "
             "rearrange(x, 'b c h w -> b (h w) c') so token n sits at row n // w, column n % w.",
             lambda: ref.norm(conv.permute(0, 3, 2, 1).flatten(1, 2))),
            ("the LayerNorm is missing (or not applied to the tokens).", lambda: _to_tokens(conv)),
            ("the conv output was reshaped to [B, N, C] without moving the channels last; transpose (or "
             "rearrange) instead of reshape.", lambda: ref.norm(conv.reshape(B, -1, conv.shape[1]))),
        ]
        _diagnose(where, got, tokens, candidates, "Expected conv -> flatten to [B, N, C] -> LayerNorm.")
    _passed(where, len(cases), "segedu.models.segformer.OverlapPatchEmbed")


def _esa_reference(p: dict, x: torch.Tensor, hw: tuple[int, int], heads: int, sr: int, *, scale: str = "head",
                   softmax_dim: int = -1, sr_input: str = "ok", kv_order: str = "kv", split: str = "hd",
                   eps: float = 1e-5) -> torch.Tensor:
    """Efficient self-attention written out, with switches that reproduce the classic mistakes."""
    B, N, C = x.shape
    h, w = hw
    d = C // heads
    q = F.linear(x, p["q.weight"], p["q.bias"])
    src = x
    if sr > 1:
        if sr_input == "ok":
            m = _to_map(x, (h, w))
        elif sr_input == "reshape":
            m = x.reshape(B, C, h, w)
        else:  # "swapped"
            m = _to_map(x, (w, h))
        src = _to_tokens(F.conv2d(m, p["sr.weight"], p["sr.bias"], stride=sr))
        src = F.layer_norm(src, (C,), p["norm.weight"], p["norm.bias"], eps)
    k, v = F.linear(src, p["kv.weight"], p["kv.bias"]).split(C, dim=-1)
    if kv_order == "vk":
        k, v = v, k

    def heads_of(t):
        if split == "hd":
            return t.reshape(B, t.shape[1], heads, d).transpose(1, 2)
        return t.reshape(B, t.shape[1], d, heads).permute(0, 3, 1, 2)

    q, k, v = heads_of(q), heads_of(k), heads_of(v)
    logits = q @ k.transpose(-2, -1)
    if scale == "head":
        logits = logits * d ** -0.5
    elif scale == "dim":
        logits = logits * C ** -0.5
    out = logits.softmax(softmax_dim) @ v  # [B, heads, N, d]
    if split == "hd":
        out = out.transpose(1, 2).reshape(B, N, C)
    else:
        out = out.permute(0, 2, 3, 1).reshape(B, N, C)
    return F.linear(out, p["proj.weight"], p["proj.bias"])


@teaches("SegFormer Sec. 3.1, Eq. 1-2 (efficient self-attention, sequence reduction R); "
         "segedu.models.segformer.EfficientSelfAttention")
def check_efficient_attention(cls: type) -> None:
    """``cls(dim, num_heads, sr_ratio)``; ``forward(x [B, N, C], (h, w)) -> [B, N, C]``.

    Parameters as in segedu: ``q`` Linear(C, C), ``kv`` Linear(C, 2C) (keys first), ``sr``
    Conv2d(C, C, sr, stride=sr) and ``norm`` LayerNorm(C) when sr > 1, ``proj`` Linear(C, C).
    """
    from ..models.segformer import EfficientSelfAttention

    where = "check_efficient_attention"
    hints = {"sr": "With sr_ratio > 1 the keys/values come from `sr` = nn.Conv2d(dim, dim, sr_ratio, "
                   "stride=sr_ratio) followed by `norm` = nn.LayerNorm(dim); with sr_ratio == 1 there is neither.",
             "kv": "Keys and values come from one fused `kv` = nn.Linear(dim, 2 * dim) (keys = first dim outputs).",
             "q.": "Queries come from `q` = nn.Linear(dim, dim).",
             "proj": "The heads are merged by `proj` = nn.Linear(dim, dim)."}
    # (dim, heads, sr), (B, h, w): non-square grids, one and several heads, sr 1, 2, 4 and a ragged 3.
    cases = [((16, 2, 2), (2, 6, 10)), ((16, 1, 1), (1, 5, 7)), ((24, 3, 4), (2, 8, 12)), ((16, 2, 3), (1, 7, 9))]
    for i, (args, (B, h, w)) in enumerate(cases):
        dim, heads, sr = args
        with _seeded(20 + i):
            ref, mine = _reference_and_yours(EfficientSelfAttention, cls, args, 20 + i, where, hints)
            x = torch.randn(B, h * w, dim)
        out = _run(where, mine, x, (h, w))
        expected = _run(where, ref, x, (h, w))
        out = _expect_tensor(where, out, tuple(expected.shape))
        p = {k: v for k, v in ref.state_dict().items()}
        f = lambda **bug: _esa_reference(p, x, (h, w), heads, sr, **bug)  # noqa: E731
        candidates = [
            ("the scores are not scaled: multiply q k^T by 1 / sqrt(head_dim) before the softmax.",
             lambda: f(scale="none")),
            (f"the scores are scaled by 1 / sqrt(dim) = 1 / sqrt({dim}); the scale uses the per-head dimension "
             f"head_dim = dim / num_heads = {dim // heads}.", lambda: f(scale="dim")),
            ("the softmax runs over the queries (dim=-2): each query's weights over the keys must sum to 1, so "
             "take the softmax over the last axis (the keys).", lambda: f(softmax_dim=-2)),
            ("the tokens were reshaped to [B, C, H, W] without transposing first: x.reshape(B, C, H, W) mixes "
             "channels and positions. Use x.transpose(1, 2).reshape(B, C, H, W) (or rearrange 'b (h w) c -> "
             "b c h w') before the sr conv.", lambda: f(sr_input="reshape")),
            ("height and width are swapped when the tokens are folded back into a map for the sr conv.",
             lambda: f(sr_input="swapped")),
            ("keys and values are swapped: the first `dim` outputs of `kv` are the keys, the last `dim` the "
             "values.", lambda: f(kv_order="vk")),
            ("the heads are split as (head_dim, heads); segedu (and the official code) splits the channels as "
             "(heads, head_dim): rearrange 'b n (heads d) -> b heads n d'.", lambda: f(split="dh")),
        ]
        _diagnose(f"{where} (dim={dim}, heads={heads}, sr={sr}, grid {h}x{w})", out, expected, candidates,
                  "Expected proj(softmax(q k^T / sqrt(head_dim)) v) with k, v from the sr-reduced tokens.")
    _passed(where, len(cases), "segedu.models.segformer.EfficientSelfAttention")


# ----------------------------------------------------------------------------------------------
# 05b: Mix-FFN, block, stage
# ----------------------------------------------------------------------------------------------
def _mix_ffn_reference(p: dict, x: torch.Tensor, hw: tuple[int, int], *, order: str = "conv_gelu",
                       fold: str = "ok", unfold: str = "ok", gelu: str = "none", residual: bool = False):
    B, N, _ = x.shape
    h, w = hw
    y = F.linear(x, p["fc1.weight"], p["fc1.bias"])
    hidden = y.shape[-1]
    act = lambda t: F.gelu(t, approximate=gelu)  # noqa: E731
    if order == "gelu_conv":
        y = act(y)
    m = {"ok": lambda t: _to_map(t, (h, w)), "reshape": lambda t: t.reshape(B, hidden, h, w),
         "swapped": lambda t: _to_map(t, (w, h))}[fold](y)
    m = F.conv2d(m, p["dwconv.weight"], p["dwconv.bias"], padding=1, groups=hidden)
    y = _to_tokens(m) if unfold == "ok" else m.reshape(B, N, hidden)
    if order == "conv_gelu":
        y = act(y)
    out = F.linear(y, p["fc2.weight"], p["fc2.bias"])
    return out + x if residual else out


@teaches('SegFormer Sec. 3.1, Eq. 3 (Mix-FFN); segedu.models.segformer.MixFFN')
def check_mix_ffn(cls: type) -> None:
    """``cls(dim, hidden_dim)``; ``forward(x [B, N, C], (h, w)) -> [B, N, C]``.

    ``fc1`` Linear(C, hidden) -> ``dwconv`` 3x3 depth-wise Conv2d(hidden, hidden, groups=hidden,
    padding 1) on the token map -> GELU -> ``fc2`` Linear(hidden, C). No residual inside.
    """
    from ..models.segformer import MixFFN

    where = "check_mix_ffn"
    hints = {"dwconv.weight has shape": "`dwconv` is a depth-wise 3x3 conv on the hidden width: "
                                        "nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim), "
                                        "whose weight is [hidden_dim, 1, 3, 3].",
             "missing dwconv": "The 3x3 depth-wise conv must be called `dwconv`.",
             "fc": "The two Linears are `fc1` (dim -> hidden_dim) and `fc2` (hidden_dim -> dim)."}
    cases = [((8, 32), (2, 5, 7)), ((12, 48), (1, 6, 6)), ((16, 16), (2, 3, 8))]
    for i, (args, (B, h, w)) in enumerate(cases):
        with _seeded(30 + i):
            ref, mine = _reference_and_yours(MixFFN, cls, args, 30 + i, where, hints)
            x = torch.randn(B, h * w, args[0])
        out = _run(where, mine, x, (h, w))
        expected = _run(where, ref, x, (h, w))
        out = _expect_tensor(where, out, tuple(expected.shape))
        p = dict(ref.state_dict())
        f = lambda **bug: _mix_ffn_reference(p, x, (h, w), **bug)  # noqa: E731
        candidates = [
            ("the GELU comes before the depth-wise conv; Eq. 3 (and the official code) apply fc1 -> 3x3 "
             "depth-wise conv -> GELU -> fc2.", lambda: f(order="gelu_conv")),
            ("the GELU is missing.", lambda: f(order="none")),
            ("GELU uses the tanh approximation; use the exact nn.GELU() (approximate='none').",
             lambda: f(gelu="tanh")),
            ("the residual x + ... belongs to the Block, not to the Mix-FFN: return fc2(...) only.",
             lambda: f(residual=True)),
            ("the tokens were reshaped to [B, C, H, W] without transposing first: x.reshape(B, C, H, W) mixes "
             "channels and positions. Use x.transpose(1, 2).reshape(B, C, H, W) (or rearrange 'b (h w) c -> "
             "b c h w').", lambda: f(fold="reshape")),
            ("height and width are swapped when the tokens are folded into a map.", lambda: f(fold="swapped")),
            ("the conv output was reshaped back to [B, N, C] without moving the channels last: use "
             "flatten(2).transpose(1, 2) (or rearrange 'b c h w -> b (h w) c').", lambda: f(unfold="reshape")),
        ]
        _diagnose(f"{where} (dim={args[0]}, hidden={args[1]}, grid {h}x{w})", out, expected, candidates,
                  "Expected fc2(GELU(dwconv3x3(fc1(x) as a map))).")
    _passed(where, len(cases), "segedu.models.segformer.MixFFN")


@teaches("SegFormer Sec. 3.1 (a pre-norm transformer block with efficient attention and Mix-FFN, stochastic depth "
         "in the official mix_transformer.py); segedu.models.segformer.Block")
def check_block(cls: type) -> None:
    """``cls(dim, num_heads, sr_ratio, mlp_ratio, drop_path)``; ``forward(x, (h, w)) -> x``.

    Pre-norm: ``x = x + attn(norm1(x), hw)``, then ``x = x + mlp(norm2(x), hw)`` with
    ``attn`` an EfficientSelfAttention and ``mlp`` a MixFFN(dim, dim * mlp_ratio), each branch wrapped in
    DropPath(drop_path) (stochastic depth, probed in training mode); ``norm1``/``norm2`` LayerNorm(dim, eps=1e-6).
    """
    from ..models.segformer import Block

    where = "check_block"
    hints = {"norm": "The block's LayerNorms are `norm1` (before attention) and `norm2` (before the Mix-FFN).",
             "attn": "The attention is `attn` = EfficientSelfAttention(dim, num_heads, sr_ratio).",
             "mlp": "The Mix-FFN is `mlp` = MixFFN(dim, dim * mlp_ratio)."}
    cases = [((16, 2, 2, 2, 0.0), (2, 6, 8)), ((8, 1, 1, 4, 0.0), (1, 5, 3)), ((24, 3, 4, 2, 0.1), (1, 8, 12))]
    for i, (args, (B, h, w)) in enumerate(cases):
        with _seeded(40 + i):
            ref, mine = _reference_and_yours(Block, cls, args, 40 + i, where, hints)
            x = torch.randn(B, h * w, args[0])
        out = _run(where, mine, x, (h, w))
        expected = _run(where, ref, x, (h, w))
        out = _expect_tensor(where, out, tuple(expected.shape))
        attn = lambda t: ref.attn(t, (h, w))  # noqa: E731
        mlp = lambda t: ref.mlp(t, (h, w))  # noqa: E731
        n1, n2 = ref.norm1, ref.norm2

        def post_norm():
            y = n1(x + attn(x))
            return n2(y + mlp(y))

        def normed_residual():
            y = n1(x)
            y = y + attn(y)
            z = n2(y)
            return z + mlp(z)

        def no_attn_residual():
            y = attn(n1(x))
            return y + mlp(n2(y))

        def no_mlp_residual():
            y = x + attn(n1(x))
            return mlp(n2(y))

        def swapped_norms():
            y = x + attn(n2(x))
            return y + mlp(n1(y))

        def parallel():
            return x + attn(n1(x)) + mlp(n2(x))

        candidates = [
            ("this is a post-norm block (norm after the residual sum); SegFormer is pre-norm: "
             "x = x + attn(norm1(x)), then x = x + mlp(norm2(x)).", post_norm),
            ("the residual carries the normalised tokens; add the branch to the un-normalised x: "
             "x = x + attn(norm1(x)).", normed_residual),
            ("the residual connection around the attention is missing.", no_attn_residual),
            ("the residual connection around the Mix-FFN is missing.", no_mlp_residual),
            ("norm1 and norm2 are swapped: norm1 goes before the attention, norm2 before the Mix-FFN.",
             swapped_norms),
            ("the attention and the Mix-FFN run in parallel on the same input; they are sequential: the "
             "Mix-FFN sees the output of the attention step.", parallel),
        ]
        _diagnose(f"{where} (dim={args[0]}, heads={args[1]}, sr={args[2]})", out, expected, candidates,
                  "Expected x = x + attn(norm1(x), hw); x = x + mlp(norm2(x), hw).")
    # Training mode: stochastic depth on both residual branches (eval mode above cannot see it).
    with _seeded(49):
        ref, mine = _reference_and_yours(Block, cls, (16, 2, 2, 2, 0.5), 49, where, hints)
        x = torch.randn(32, 4 * 6, 16)
    hw = (4, 6)
    _probe_stochastic_depth(where, lambda t: mine.train()(t, hw), x,
                            [lambda t: ref.attn(ref.norm1(t), hw), lambda t: ref.mlp(ref.norm2(t), hw)], 0.5, 48)
    _passed(where, len(cases), "segedu.models.segformer.Block")


@teaches("SegFormer Sec. 3.1 (hierarchical encoder; its stages in the official mix_transformer.py: patch "
         "embedding, blocks with linearly growing drop-path rates, LayerNorm eps 1e-6); "
         "segedu.models.segformer.MiTStage")
def check_mit_stage(cls: type) -> None:
    """``cls(in_channels, dim, depth, num_heads, sr_ratio, mlp_ratio, patch_size, stride, drop_paths)``.

    ``forward(x [B, C_in, H, W]) -> [B, dim, ceil(H / stride), ceil(W / stride)]``: ``patch_embed``,
    the ``blocks`` (a ModuleList, block i with drop-path rate drop_paths[i], probed in training mode), the stage-end
    LayerNorm ``norm`` (eps 1e-6, official code), back to a feature map.
    """
    from ..models.segformer import MiTStage

    where = "check_mit_stage"
    hints = {"patch_embed": "The stage starts with `patch_embed` = OverlapPatchEmbed(in_channels, dim, "
                            "patch_size, stride).",
             "blocks": "The blocks live in an nn.ModuleList called `blocks` (depth of them).",
             "missing norm.": "The stage ends with a LayerNorm called `norm` before the tokens become a map again."}
    cases = [((3, 16, 2, 2, 4, 2, 7, 4, [0.0, 0.0]), (2, 3, 64, 48)),
             ((16, 24, 1, 3, 2, 2, 3, 2, [0.0]), (1, 16, 10, 14))]
    for i, (args, xshape) in enumerate(cases):
        with _seeded(50 + i):
            ref, mine = _reference_and_yours(MiTStage, cls, args, 50 + i, where, hints)
            x = torch.randn(xshape)
        out = _run(where, mine, x)
        expected = _run(where, ref, x)
        B, C, h, w = expected.shape
        if isinstance(out, torch.Tensor) and tuple(out.shape) == (B, h * w, C):
            _fail(where, f"output shape {list(out.shape)} are tokens [B, N, C]; a stage returns a feature map "
                         f"[B, C, H, W] = {list(expected.shape)} for the next stage's conv and for the decoder")
        out = _expect_tensor(where, out, tuple(expected.shape))
        tokens, hw = ref.patch_embed(x)
        for blk in ref.blocks:
            tokens = blk(tokens, hw)
        candidates = [
            ("the stage-end LayerNorm (`norm`) is not applied.", lambda: _to_map(tokens, hw)),
            ("the tokens were reshaped to [B, C, H, W] without transposing first; use transpose(1, 2) then "
             "reshape (or rearrange 'b (h w) c -> b c h w').", lambda: ref.norm(tokens).reshape(B, C, h, w)),
        ]

        def blocks_swapped():
            t, _ = ref.patch_embed(x)
            for blk in ref.blocks:
                t = blk(t, (hw[1], hw[0]))
            return _to_map(ref.norm(t), hw)

        candidates.append(("the blocks were given (w, h) instead of (h, w).", blocks_swapped))
        _diagnose(where, out, expected, candidates,
                  "Expected patch_embed -> blocks(tokens, (h, w)) -> norm -> [B, C, h, w].")
    # Training mode: block i must drop its branches at drop_paths[i] (linearly growing rates, 0 for the first).
    rates = [0.0, 0.5, 0.8]
    with _seeded(58):
        ref, mine = _reference_and_yours(MiTStage, cls, (8, 16, 3, 2, 2, 2, 3, 2, rates), 58, where, hints)
        x = torch.randn(32, 4 * 6, 16)
    hw = (4, 6)
    blocks = getattr(mine, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) != len(rates):
        _fail(where, f"expected `blocks`, an nn.ModuleList of depth = {len(rates)} blocks, got {type(blocks).__name__}")
    for i, (rate, blk, ref_blk) in enumerate(zip(rates, blocks, ref.blocks)):
        _probe_stochastic_depth(where, lambda t, blk=blk: blk.train()(t, hw), x,
                                [lambda t, r=ref_blk: r.attn(r.norm1(t), hw),
                                 lambda t, r=ref_blk: r.mlp(r.norm2(t), hw)],
                                rate, 59 + i, f"block {i} of a stage with drop_paths={rates}", other_rates=rates)
    _passed(where, len(cases), "segedu.models.segformer.MiTStage")


# ----------------------------------------------------------------------------------------------
# 05c: decoder and loss
# ----------------------------------------------------------------------------------------------
def _head_reference(ref: nn.Module, feats: list[torch.Tensor], *, order: str = "c4c1", mode: str = "bilinear",
                    align_corners: bool = False, relu: bool = True, target: int = 0) -> torch.Tensor:
    size = feats[target].shape[-2:]
    outs = []
    for feat, linear in zip(feats, ref.linear_c):
        y = _to_map(linear(_to_tokens(feat)), feat.shape[-2:])
        if y.shape[-2:] != size:
            kw = {"align_corners": align_corners} if mode == "bilinear" else {}
            y = F.interpolate(y, size=size, mode=mode, **kw)
        outs.append(y)
    y = torch.cat(outs[::-1] if order == "c4c1" else outs, dim=1)
    y = ref.bn(ref.linear_fuse(y))
    return ref.linear_pred(F.relu(y) if relu else y)


@teaches("SegFormer Sec. 3.2, Eq. 4 (the all-MLP decoder) and the official segformer_head.py; "
         "segedu.models.segformer.SegFormerHead")
def check_segformer_head(cls: type) -> None:
    """``cls(in_channels, embed_dim, num_classes, dropout)``; ``forward([c1, c2, c3, c4]) -> logits``.

    ``linear_c`` (ModuleList of Linear(C_i, E)) -> bilinear resize to c1's size (align_corners=False)
    -> concat in the order [c4, c3, c2, c1] -> ``linear_fuse`` 1x1 conv (no bias) -> ``bn`` -> ReLU
    -> ``dropout`` -> ``linear_pred`` 1x1 conv: logits at stride 4. Checked in eval mode.
    """
    from ..models.segformer import SegFormerHead

    where = "check_segformer_head"
    hints = {"linear_c": "One Linear per stage in an nn.ModuleList `linear_c`: nn.Linear(C_i, embed_dim).",
             "linear_fuse": "`linear_fuse` = nn.Conv2d(4 * embed_dim, embed_dim, 1, bias=False) (the BN after it "
                            "makes a bias useless).",
             "bn": "`bn` = nn.BatchNorm2d(embed_dim) after the fuse conv.",
             "linear_pred": "`linear_pred` = nn.Conv2d(embed_dim, num_classes, 1)."}
    cases = [(((8, 16, 24, 32), 16, 5, 0.1), 2, [(13, 18), (7, 9), (4, 5), (2, 3)]),
             (((4, 8, 8, 12), 8, 3, 0.0), 1, [(8, 8), (4, 4), (2, 2), (1, 1)])]
    for i, (args, B, sizes) in enumerate(cases):
        with _seeded(60 + i):
            ref, mine = _reference_and_yours(SegFormerHead, cls, args, 60 + i, where, hints)
            feats = [torch.randn(B, c, *s) for c, s in zip(args[0], sizes)]
        out = _run(where, mine, feats)
        expected = _run(where, ref, feats)
        K, (h, w) = args[2], sizes[0]
        if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-2:] != expected.shape[-2:]:
            _fail(where, f"logits of spatial size {tuple(out.shape[-2:])}, expected {(h, w)} = the size of c1: "
                         f"the all-MLP head predicts at stride 4, and the model, not the head, upsamples the logits "
                         f"to the image", "resize c2..c4 to c1's size.")
        out = _expect_tensor(where, out, (B, K, h, w))
        f = lambda **bug: _head_reference(ref, feats, **bug)  # noqa: E731
        candidates = [
            ("the features are concatenated as [c1, c2, c3, c4]; the official code (and its weights) use "
             "[c4, c3, c2, c1] (mmseg's SegformerHead uses the other order, so its weights do not load here).",
             lambda: f(order="c1c4")),
            ("bilinear resizing with align_corners=True; SegFormer uses align_corners=False.",
             lambda: f(align_corners=True)),
            ("nearest-neighbour resizing; SegFormer resizes the features bilinearly (align_corners=False).",
             lambda: f(mode="nearest")),
            ("the ReLU after linear_fuse + bn is missing.", lambda: f(relu=False)),
        ]
        _diagnose(where, out, expected, candidates,
                  "Expected linear_pred(dropout(relu(bn(linear_fuse(cat[c4, c3, c2, c1])))))."
                  " (Is bn in eval mode using its running statistics?)")
    _passed(where, len(cases), "segedu.models.segformer.SegFormerHead")


@teaches("docs/architectures.md §5.5 (logits upsampled to the label size, cross-entropy ignoring 255); "
         "segedu.losses.seg_loss")
def check_seg_loss(fn: Callable[..., torch.Tensor]) -> None:
    """``fn(logits [B, K, h, w], target [B, H, W], ignore_index=255) -> scalar``.

    Logits at the decoder's stride are resized bilinearly (align_corners=False) to the label size,
    then cross-entropy averaged over the labelled pixels (label 255 ignored).
    """
    from ..losses import seg_loss

    where = "check_seg_loss"
    gen = torch.Generator().manual_seed(70)
    n = 0
    for B, K, (h, w), (H, W) in ((2, 5, (6, 8), (24, 32)), (1, 4, (5, 7), (19, 27))):
        logits = 2 * torch.randn(B, K, h, w, generator=gen)
        target = torch.randint(0, K, (B, H, W), generator=gen)
        target[torch.rand(B, H, W, generator=gen) < 0.2] = 255
        logits_in, target_in = logits.clone(), target.clone()
        try:
            out = fn(logits_in, target_in, 255)
        except NotImplementedError:
            raise
        except (IndexError, RuntimeError) as err:
            if "out of bounds" in str(err) or "Target" in str(err) or "index" in str(err).lower():
                _fail(where, f"the loss crashed on label 255 ({type(err).__name__}: {err}): the ignored pixels "
                             f"must be skipped, they are no class", "pass ignore_index=255 to F.cross_entropy.")
            _fail(where, f"raised {type(err).__name__}: {err}")
        except Exception as err:
            _fail(where, f"raised {type(err).__name__}: {err}")
        if not isinstance(out, torch.Tensor) or out.numel() != 1:
            _fail(where, f"expected a scalar tensor, got {out!r:.80}")
        expected = seg_loss(logits, target)
        up = F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)
        ce = lambda z, t=target: F.cross_entropy(z, t, ignore_index=255)  # noqa: E731
        candidates = [
            ("the labels were shrunk to the logits' size; resize the logits up to the label size instead "
             "(bilinear, align_corners=False), so every labelled pixel counts.",
             lambda: ce(logits, F.interpolate(target[:, None].float(), size=(h, w), mode="nearest")[:, 0].long())),
            ("align_corners=True; SegFormer resizes with align_corners=False.",
             lambda: ce(F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=True))),
            ("nearest-neighbour upsampling of the logits; use bilinear (align_corners=False).",
             lambda: ce(F.interpolate(logits, size=(H, W), mode="nearest"))),
            ("the mean runs over all pixels, ignored ones counting 0 (mmseg 0.x's default); average over the "
             "labelled pixels only (F.cross_entropy's mean with ignore_index does this).",
             lambda: F.cross_entropy(up, target, ignore_index=255, reduction="sum") / target.numel()),
            ("this is the sum over pixels; take the mean over labelled pixels.",
             lambda: F.cross_entropy(up, target, ignore_index=255, reduction="sum")),
        ]
        _diagnose(where, out.reshape(()).detach(), expected, candidates,
                  "Expected F.cross_entropy(upsampled logits, target, ignore_index=255).")
        n += 1
    _passed(where, n, "segedu.losses.seg_loss")
