"""Checks for notebook 04: Swin's windows, shifted-window attention and patch merging."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from einops import rearrange

from ._core import teaches, _reference_and_yours, _diagnose, _expect_tensor, _fail, _passed, _randomize_, _run, _seeded

__all__ = ["check_window_partition", "check_shifted_window_attention", "check_patch_merging",
           "check_window_attention_any_size"]


# ----------------------------------------------------------------------------------------------
# Windows (Swin Sec. 3.2): partition and reverse
# ----------------------------------------------------------------------------------------------
_PARTITIONS = {  # einops patterns: the right one, then classic mistakes
    "ok": "b (nh wh) (nw ww) c -> (b nh nw) wh ww c",
    "columns": "b (nh wh) (nw ww) c -> (b nw nh) wh ww c",
    "batch_inner": "b (nh wh) (nw ww) c -> (nh nw b) wh ww c",
    "transposed": "b (nh wh) (nw ww) c -> (b nh nw) ww wh c",
}


@teaches('Swin Sec. 3.2 (self-attention in non-overlapped windows); segedu.models.ssformer.window_partition')
def check_window_partition(partition: Callable, reverse: Callable) -> None:
    """``partition(x [B, H, W, C], ws) -> [B * nW, ws, ws, C]`` and ``reverse(windows, ws, H, W) -> [B, H, W, C]``.

    Windows are numbered image by image, then row by row (segedu.models.ssformer.window_partition);
    ``reverse`` undoes ``partition`` exactly. H and W are multiples of ws.
    """
    from ..models.ssformer import window_partition, window_reverse

    where = "check_window_partition"
    cases = [(2, 8, 12, 3, 4), (1, 6, 9, 2, 3), (3, 4, 4, 5, 2)]  # (B, H, W, C, ws)
    for i, (B, H, W, C, ws) in enumerate(cases):
        with _seeded(400 + i):
            x = torch.randn(B, H, W, C)
        nh, nw = H // ws, W // ws
        windows = _run(where, partition, x, ws)
        expected = window_partition(x, ws)
        if isinstance(windows, torch.Tensor) and tuple(windows.shape) == (B * nh * nw, ws * ws, C):
            _fail(where, f"partition returned {list(windows.shape)} = flattened windows; return them as "
                         f"[B * nW, ws, ws, C] = {list(expected.shape)} (the attention flattens them itself)")
        windows = _expect_tensor(f"{where}: partition", windows, tuple(expected.shape),
                                 f"A {H}x{W} map has ({H}/{ws}) x ({W}/{ws}) = {nh * nw} windows per image.")
        candidates = [
            ("partition: the windows are numbered column by column; number them row by row (window k of an "
             "image sits at window-row k // nW_w, window-column k % nW_w), as in 'b (nh wh) (nw ww) c -> "
             "(b nh nw) wh ww c'.", lambda: rearrange(x, _PARTITIONS["columns"], wh=ws, ww=ws)),
            ("partition: the windows of different images are interleaved ((nh nw b) order); keep each image's "
             "windows together: batch index first, '(b nh nw)'.",
             lambda: rearrange(x, _PARTITIONS["batch_inner"], wh=ws, ww=ws)),
            ("partition: rows and columns are swapped inside each window ('ww wh' instead of 'wh ww').",
             lambda: rearrange(x, _PARTITIONS["transposed"], wh=ws, ww=ws)),
            ("partition: the map was reshaped to [-1, ws, ws, C] directly. A reshape keeps memory order, so "
             "each 'window' is a strip of consecutive rows; split H and W into (n, ws) and permute the window "
             "axes together first (view(B, H/ws, ws, W/ws, ws, C).permute(0, 1, 3, 2, 4, 5)).",
             lambda: x.reshape(-1, ws, ws, C)),
        ]
        _diagnose(f"{where}: partition ({H}x{W}, ws={ws})", windows, expected, candidates,
                  "Expected window k of image b = x[b, r*ws:(r+1)*ws, s*ws:(s+1)*ws] with r, s = divmod(k, W/ws).")

        back = _run(where, reverse, expected, ws, H, W)
        back = _expect_tensor(f"{where}: reverse", back, (B, H, W, C))
        candidates = [
            ("reverse: the windows are pasted back column by column; undo partition's row-by-row order.",
             lambda: rearrange(expected, "(b nw nh) wh ww c -> b (nh wh) (nw ww) c", nh=nh, nw=nw)),
            ("reverse: the windows were reshaped straight to [B, H, W, C]; un-permute the window axes first "
             "(view(B, H/ws, W/ws, ws, ws, C).permute(0, 1, 3, 2, 4, 5)).", lambda: expected.reshape(B, H, W, C)),
            ("reverse: rows and columns are swapped inside each window.",
             lambda: rearrange(expected, "(b nh nw) ww wh c -> b (nh wh) (nw ww) c", nh=nh, nw=nw)),
        ]
        _diagnose(f"{where}: reverse ({H}x{W}, ws={ws})", back, window_reverse(expected, ws, H, W), candidates,
                  "Expected reverse(partition(x, ws), ws, H, W) == x.")
    _passed(where, len(cases), "segedu.models.ssformer.window_partition / window_reverse")


# ----------------------------------------------------------------------------------------------
# Shifted-window attention (Swin Sec. 3.2, Fig. 2 and 4)
# ----------------------------------------------------------------------------------------------
def _swin_attention(x: torch.Tensor, attn: nn.Module, ws: int, shift: int, *, roll: int = -1, mask: bool = True,
                    roll_back: bool = True) -> torch.Tensor:
    """(S)W-MSA on an [B, H, W, C] map (H, W multiples of ws), with switches for the classic mistakes."""
    from ..models.ssformer import shift_window_mask, window_partition, window_reverse

    H, W = x.shape[1:3]
    if shift:
        x = torch.roll(x, shifts=(roll * shift, roll * shift), dims=(1, 2))
    windows = rearrange(window_partition(x, ws), "n wh ww c -> n (wh ww) c")
    windows = attn(windows, shift_window_mask(H, W, ws, shift) if shift and mask else None)
    x = window_reverse(rearrange(windows, "n (wh ww) c -> n wh ww c", wh=ws), ws, H, W)
    if shift and roll_back:
        x = torch.roll(x, shifts=(-roll * shift, -roll * shift), dims=(1, 2))
    return x


@teaches("Swin Sec. 3.2, Fig. 2 and Fig. 4 (shifted windows, cyclic shift and its mask); "
         "segedu.models.ssformer.SwinBlock.window_attention")
def check_shifted_window_attention(fn: Callable) -> None:
    """``fn(x [B, H, W, C], attn, window_size, shift) -> [B, H, W, C]``, H and W multiples of window_size.

    ``attn`` is a segedu.models.ssformer.WindowAttention: ``attn(windows [B * nW, ws^2, C], mask) ->
    [B * nW, ws^2, C]``, where ``mask`` is the ``[nW, ws^2, ws^2]`` shift mask or None. With ``shift > 0``:
    roll by ``-shift`` on H and W, partition, attend with the mask, reverse, roll back by ``+shift``
    (segedu.models.ssformer.SwinBlock.window_attention). With ``shift == 0``: plain W-MSA, no mask.
    """
    from ..models.ssformer import WindowAttention

    where = "check_shifted_window_attention"
    # (dim, heads, ws, shift), (B, H, W): shifted and regular windows, non-square maps, odd window sizes
    cases = [((8, 2, 4, 2), (2, 8, 12)), ((12, 3, 3, 1), (1, 9, 6)), ((8, 1, 4, 0), (1, 8, 8)),
             ((6, 2, 2, 1), (2, 4, 6))]
    for i, ((dim, heads, ws, shift), (B, H, W)) in enumerate(cases):
        with _seeded(420 + i):
            attn = _randomize_(WindowAttention(dim, heads, ws), 420 + i).eval()
            x = torch.randn(B, H, W, dim)
        given = x.clone()
        out = _run(where, fn, given, attn, ws, shift)
        if not torch.equal(given, x):
            _fail(where, "the input map was modified in place; torch.roll returns a new tensor, use its result")
        expected = _run(where, _swin_attention, x, attn, ws, shift)
        if isinstance(out, torch.Tensor) and out.ndim == 3 and out.numel() == expected.numel():
            _fail(where, f"output shape {list(out.shape)}: paste the windows back into a map [B, H, W, C] = "
                         f"{list(expected.shape)} (window_reverse) and roll it back")
        out = _expect_tensor(where, out, tuple(expected.shape))
        f = lambda **bug: _swin_attention(x, attn, ws, shift, **bug)  # noqa: E731
        candidates = [
            (f"the map was rolled the wrong way: the cyclic shift moves it up and left, torch.roll(x, "
             f"shifts=(-{shift}, -{shift}), dims=(1, 2)), and the roll back is +{shift}.", lambda: f(roll=1)),
            ("the shifted windows attend without the mask: after the roll, the last row and column of windows "
             "hold pieces from opposite borders of the image; pass shift_window_mask(H, W, ws, shift) to attn.",
             lambda: f(mask=False)),
            (f"the result is not rolled back: after window_reverse, torch.roll(x, shifts=({shift}, {shift}), "
             f"dims=(1, 2)) puts every token back in its place.", lambda: f(roll_back=False)),
            ("the mask is passed but the map is never rolled: SW-MSA rolls by -shift before the windows and "
             "by +shift after them.", lambda: _unrolled_with_mask(x, attn, ws, shift)),
        ]
        if not shift:
            candidates.append(("with shift == 0 (W-MSA) no mask is used; the mask only separates the pieces the "
                               "roll brought together.", lambda: _shift0_with_mask(x, attn, ws)))
        _diagnose(f"{where} ({H}x{W}, ws={ws}, shift={shift}, heads={heads})", out, expected, candidates,
                  "Expected roll(-shift) -> window_partition -> attn(windows, mask) -> window_reverse -> "
                  "roll(+shift).")
    _passed(where, len(cases), "segedu.models.ssformer.SwinBlock.window_attention")


def _shift0_with_mask(x: torch.Tensor, attn: nn.Module, ws: int) -> torch.Tensor:
    """W-MSA given the mask of a ws // 2 shift by mistake."""
    from ..models.ssformer import shift_window_mask, window_partition, window_reverse

    H, W = x.shape[1:3]
    windows = rearrange(window_partition(x, ws), "n wh ww c -> n (wh ww) c")
    windows = attn(windows, shift_window_mask(H, W, ws, max(ws // 2, 1)))
    return window_reverse(rearrange(windows, "n (wh ww) c -> n wh ww c", wh=ws), ws, H, W)


def _unrolled_with_mask(x: torch.Tensor, attn: nn.Module, ws: int, shift: int) -> torch.Tensor:
    from ..models.ssformer import shift_window_mask, window_partition, window_reverse

    H, W = x.shape[1:3]
    windows = rearrange(window_partition(x, ws), "n wh ww c -> n (wh ww) c")
    windows = attn(windows, shift_window_mask(H, W, ws, shift) if shift else None)
    return window_reverse(rearrange(windows, "n (wh ww) c -> n wh ww c", wh=ws), ws, H, W)


# ----------------------------------------------------------------------------------------------
# Patch merging (Swin Sec. 3.1)
# ----------------------------------------------------------------------------------------------
_MERGES = {  # how the 2x2 neighbours go into the 4C channels
    "ok": "b (h dh) (w dw) c -> b h w (dw dh c)",  # x0, x1, x2, x3 = (0,0), (1,0), (0,1), (1,1)
    "row_major": "b (h dh) (w dw) c -> b h w (dh dw c)",  # x0, x2, x1, x3 (mmseg's Unfold order)
    "channel_major": "b (h dh) (w dw) c -> b h w (c dw dh)",
    "unfold": "b (h dh) (w dw) c -> b h w (c dh dw)",  # nn.Unfold(2, stride=2) exactly
}


@teaches('Swin Sec. 3.1 (patch merging) and the official swin_transformer.py; segedu.models.ssformer.PatchMerging')
def check_patch_merging(cls: type) -> None:
    """``cls(dim)``; ``forward(x [B, H, W, C]) -> [B, H/2, W/2, 2C]`` for even H, W.

    Concatenate x0 = x[:, 0::2, 0::2], x1 = x[:, 1::2, 0::2], x2 = x[:, 0::2, 1::2], x3 = x[:, 1::2, 1::2]
    along the channels, then ``norm`` LayerNorm(4C), then ``reduction`` Linear(4C, 2C, bias=False).
    """
    from ..models.ssformer import PatchMerging

    where = "check_patch_merging"
    hints = {"norm": "`norm` = nn.LayerNorm(4 * dim) acts on the concatenated 4C channels, before the Linear.",
             "reduction": "`reduction` = nn.Linear(4 * dim, 2 * dim, bias=False) (no bias in Swin)."}
    cases = [(6, (2, 8, 6)), (4, (1, 4, 10)), (8, (1, 2, 2))]  # dim, (B, H, W)
    for i, (dim, (B, H, W)) in enumerate(cases):
        with _seeded(440 + i):
            ref, mine = _reference_and_yours(PatchMerging, cls, (dim,), 440 + i, where, hints)
            x = torch.randn(B, H, W, dim)
        out = _run(where, mine, x)
        expected = _run(where, ref, x)
        if isinstance(out, torch.Tensor) and tuple(out.shape) == (B, 2 * dim, H // 2, W // 2):
            _fail(where, f"output shape {list(out.shape)} is channels-first; Swin keeps maps channels-last "
                         f"[B, H/2, W/2, 2C] = {list(expected.shape)}")
        out = _expect_tensor(where, out, tuple(expected.shape))
        merge = lambda order: rearrange(x, _MERGES[order], dh=2, dw=2)  # noqa: E731
        candidates = [
            ("the 2x2 neighbours are concatenated in the order x0, x2, x1, x3 = (0,0), (0,1), (1,0), (1,1) (row "
             "by row); the official order, which the released weights need, is x0 = (0,0), x1 = (1,0), "
             "x2 = (0,1), x3 = (1,1) as (row, column): torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], "
             "x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1).", lambda: ref.reduction(ref.norm(merge("row_major")))),
            ("the channels are interleaved (channel-major, as nn.Unfold lays them out); concatenate whole "
             "neighbours: [x0 | x1 | x2 | x3], each C channels.",
             lambda: ref.reduction(ref.norm(merge("channel_major")))),
            ("the channels are laid out as nn.Unfold(2, stride=2) does (channel-major, row by row); "
             "concatenate [x0 | x1 | x2 | x3] = (0,0), (1,0), (0,1), (1,1).",
             lambda: ref.reduction(ref.norm(merge("unfold")))),
            ("the LayerNorm is missing: norm(4C) comes before the reduction.", lambda: ref.reduction(merge("ok"))),
        ]
        _diagnose(f"{where} (dim={dim}, {H}x{W})", out, expected, candidates,
                  "Expected reduction(norm(cat[x0, x1, x2, x3])).")
    _passed(where, len(cases), "segedu.models.ssformer.PatchMerging")


# ----------------------------------------------------------------------------------------------
# Maps that are not a whole number of windows (the official segmentation backbone: pad, attend, crop)
# ----------------------------------------------------------------------------------------------
def _any_size(x: torch.Tensor, attn: nn.Module, ws: int, shift: int, *, pad: str = "bottom_right",
              crop: str = "top_left", mask: bool = True) -> torch.Tensor:
    """(S)W-MSA on any [B, H, W, C] map, with switches that reproduce the classic mistakes of the padding."""
    import torch.nn.functional as F

    B, h, w, C = x.shape
    if pad == "after_roll":  # roll the unpadded map, then pad: the pieces that wrap around are the wrong ones
        from ..models.ssformer import shift_window_mask, window_partition, window_reverse

        y = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2)) if shift else x
        y = F.pad(y, (0, 0, 0, (-w) % ws, 0, (-h) % ws))
        hp, wp = y.shape[1:3]
        windows = rearrange(window_partition(y, ws), "n wh ww c -> n (wh ww) c")
        windows = attn(windows, shift_window_mask(hp, wp, ws, shift) if shift else None)
        y = window_reverse(rearrange(windows, "n (wh ww) c -> n wh ww c", wh=ws), ws, hp, wp)[:, :h, :w]
        return torch.roll(y, shifts=(shift, shift), dims=(1, 2)) if shift else y
    ph, pw = (-h) % ws, (-w) % ws
    if pad == "extra_window":  # ws - h % ws: a whole window of padding when the side already fits
        ph, pw = ws - h % ws, ws - w % ws
    if pad == "top_left":
        y = F.pad(x, (0, 0, pw, 0, ph, 0))
    elif pad == "replicate":
        y = F.pad(x.permute(0, 3, 1, 2), (0, pw, 0, ph), mode="replicate").permute(0, 2, 3, 1)
    else:
        y = F.pad(x, (0, 0, 0, pw, 0, ph))
    y = _swin_attention(y, attn, ws, shift, mask=mask)
    if crop == "bottom_right" or (pad == "top_left" and crop == "matching"):
        return y[:, y.shape[1] - h:, y.shape[2] - w:]
    return y[:, :h, :w]


@teaches("Swin Sec. 3.2 (windows must tile the map) and the official segmentation backbone (Swin-Transformer-"
         "Semantic-Segmentation / mmseg swin.py, ShiftWindowMSA: pad bottom and right, attend, crop); "
         "segedu.models.ssformer.SwinBlock.window_attention")
def check_window_attention_any_size(fn: Callable) -> None:
    """``fn(x [B, H, W, C], attn, window_size, shift) -> [B, H, W, C]`` for any H, W (not only multiples).

    Zero-pad the bottom and the right to multiples of the window size, run (S)W-MSA on the padded map (the shift
    mask of the padded size; the padded tokens are not masked, as in the official code), crop back to H x W.
    Compared with segedu.models.ssformer.SwinBlock.window_attention.
    """
    from ..models.ssformer import WindowAttention, shift_window_mask, SwinBlock

    where = "check_window_attention_any_size"
    # (dim, heads, ws, shift), (B, H, W): both sides ragged, one side already whole, regular windows, tiny windows
    cases = [((8, 2, 4, 2), (2, 10, 13)), ((12, 3, 3, 1), (1, 7, 9)), ((8, 1, 4, 0), (1, 6, 11)),
             ((6, 2, 2, 1), (2, 5, 6))]
    for i, ((dim, heads, ws, shift), (B, H, W)) in enumerate(cases):
        with _seeded(460 + i):
            block = SwinBlock(dim, heads, ws, shift, 4.0, 0.0).eval()
            block.attn = _randomize_(WindowAttention(dim, heads, ws), 460 + i).eval()
            x = torch.randn(B, H, W, dim)
        attn = block.attn
        given = x.clone()
        out = _run(where, fn, given, attn, ws, shift)
        if not torch.equal(given, x):
            _fail(where, "the input map was modified in place",
                  "F.pad and torch.roll return new tensors: work on their results.")
        hp, wp = H + (-H) % ws, W + (-W) % ws
        expected = _run(where, block.window_attention, x, shift_window_mask(hp, wp, ws, shift) if shift else None)
        if isinstance(out, torch.Tensor) and out.ndim == 4 and tuple(out.shape[1:3]) != (H, W):
            _fail(where, f"a {H}x{W} map came back as {tuple(out.shape[1:3])}: the padding is scaffolding for the "
                         f"windows and must not reach the next layer",
                  f"Crop the result back to the input size, x[:, :{H}, :{W}] (the padding sits at the bottom and "
                  f"the right).")
        out = _expect_tensor(where, out, tuple(expected.shape))
        f = lambda **bug: _any_size(x, attn, ws, shift, **bug)  # noqa: E731
        candidates = [
            (("the map was padded at the top and the left; the official code pads at the bottom and the right, so "
              "the windows start at the top-left corner of the real map.",
              "F.pad(x, (0, 0, 0, (-W) % ws, 0, (-H) % ws)) pads channels-last maps at the bottom and the right; "
              "crop with x[:, :H, :W]."), lambda: f(pad="top_left", crop="matching")),
            (("the crop keeps the wrong corner: the padding sits at the bottom and the right.",
              "Crop with x[:, :H, :W]."), lambda: f(crop="bottom_right")),
            (("the map was rolled before it was padded: the cyclic shift must act on the padded map, whose sides "
              "are whole windows, or the pieces that wrap around (and the mask's regions) do not line up.",
              "Pad first, then roll by -shift, attend with shift_window_mask(Hp, Wp, ws, shift) of the padded size "
              "Hp x Wp, roll back, crop."), lambda: f(pad="after_roll")),
            (("the padding repeats the border tokens; Swin pads with zeros (the padded tokens are exact zeros, "
              "since the padding comes after the LayerNorm).",
              "F.pad with its default mode='constant' (value 0)."), lambda: f(pad="replicate")),
            (("a side that is already a whole number of windows got a whole window of padding (ws - H % ws "
              "instead of (-H) % ws): with a shift, that changes which tokens wrap around.",
              "Pad by (-H) % ws rows and (-W) % ws columns: 0 when the side already fits."),
             lambda: f(pad="extra_window")),
            ("the shifted windows attend without the mask: after the roll, the last row and column of windows hold "
             "pieces from opposite borders; pass shift_window_mask(Hp, Wp, ws, shift) of the padded size.",
             lambda: f(mask=False)),
        ]
        _diagnose(f"{where} ({H}x{W}, ws={ws}, shift={shift})", out, expected, candidates,
                  "Expected: zero-pad bottom/right to multiples of ws -> roll(-shift) -> windows -> attn(windows, "
                  "mask of the padded size) -> reverse -> roll(+shift) -> crop to H x W.")
    _passed(where, len(cases), "segedu.models.ssformer.SwinBlock.window_attention")
