"""SSformer (MMSP 2022, arXiv 2208.02034; code: shiwt03/SSformer): a Swin encoder + a light all-MLP decoder.

The encoder is the Swin Transformer (Liu et al., ICCV 2021, arXiv 2103.14030) in its segmentation
form; the decoder is SegFormer's all-MLP head as mmsegmentation writes it (the SSformer code base,
shiwt03/SSformer, uses mmseg's stock ``SegformerHead`` unchanged). Read top to bottom:

1. ``window_partition`` / ``window_reverse`` -- cut a ``[B, H, W, C]`` map into non-overlapping
   ``ws x ws`` windows and paste them back (Swin Sec. 3.2, "Self-attention in non-overlapped windows").
2. ``relative_position_index`` -- which entry of the learned bias table each (query, key) pair of a
   window reads: the bias ``B`` of Eq. 4 depends only on the relative offset of the two tokens.
3. ``shift_window_mask`` -- after the cyclic shift, some windows hold tokens from regions that are
   not neighbours in the image; the mask stops them attending to each other (Sec. 3.2, Fig. 4).
4. ``WindowAttention`` -- multi-head self-attention inside each window, plus ``B`` (Eq. 4).
5. ``SwinBlock`` -- pre-norm block; even blocks use regular windows (W-MSA), odd blocks windows shifted
   by ``ws // 2`` (SW-MSA), so information crosses window borders (Eq. 3).
6. ``PatchEmbed`` / ``PatchMerging`` -- 4x4 patches to tokens; then 2x2 neighbouring tokens
   concatenated and projected 4C -> 2C between stages (Sec. 3.1), giving strides 4, 8, 16, 32.
7. ``SwinStage`` / ``SwinTransformer`` -- the hierarchical encoder, returning four normalised maps.
8. ``SSformerHead`` -- 1x1 conv + BN + ReLU per stage, upsample to 1/4, concatenate, fuse, classify.
9. The variants Swin-T/S/B/L and their registration.

Segmentation form (mmsegmentation's Swin backbone, which SSformer uses) versus the classification code:
- any input size works: the image is zero-padded to a multiple of 4, every feature map is zero-padded
  bottom/right to a whole number of windows before (shifted) windowing and cropped back after, and
  odd maps are padded before patch merging;
- the shifted windows are used at every resolution (the classification code switches the shift off
  when a map is no larger than one window; mmseg does not, so neither do we);
- each stage's output is taken *before* patch merging and gets its own LayerNorm (``norm0..norm3``);
  there is no final norm and no classifier.
Weights and layer order follow the official code (microsoft/Swin-Transformer), so its checkpoints
load with a key rename only (``segedu/weights/swin.py``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ..layers import ConvNormAct, DropPath, Mlp, MultiHeadSelfAttention, drop_path_rates, init_vit_style
from ..registry import ModelSpec, register_model
from .base import SegmentationModel

# ----------------------------------------------------------------------------------------------------
# 1-3. Windows, relative positions and the shifted-window mask: plain functions you can call and plot.
# ----------------------------------------------------------------------------------------------------


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """``[B, H, W, C] -> [B * nW, ws, ws, C]``: non-overlapping windows, image by image, row by row.

    ``H`` and ``W`` must be multiples of ``ws`` (pad first); ``nW = (H / ws) * (W / ws)``.
    """
    h, w = x.shape[1:3]
    if h % window_size or w % window_size:
        raise ValueError(f"window_partition: a {h}x{w} map is not a whole number of {window_size}x{window_size} "
                         "windows; pad it first")
    return rearrange(x, "b (nh wh) (nw ww) c -> (b nh nw) wh ww c", wh=window_size, ww=window_size)


def window_reverse(windows: torch.Tensor, window_size: int, H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``[B * nW, ws, ws, C] -> [B, H, W, C]``."""
    return rearrange(windows, "(b nh nw) wh ww c -> b (nh wh) (nw ww) c", nh=H // window_size, nw=W // window_size)


def relative_position_index(window_size: int, device=None) -> torch.Tensor:
    """``[ws^2, ws^2]`` long tensor: row of the bias table used by query token i and key token j.

    Tokens are numbered row-major inside the window. Their offset (dy, dx) = pos_i - pos_j lies in
    [-(ws-1), ws-1]^2, i.e. (2ws-1)^2 possible offsets, numbered row-major after shifting both to
    start at 0: index = (dy + ws - 1) * (2ws - 1) + (dx + ws - 1). Pairs with the same offset share a bias.
    """
    ar = torch.arange(window_size, device=device)
    coords = torch.stack(torch.meshgrid(ar, ar, indexing="ij")).flatten(1)  # [2, N]: (row, col) of each token
    offset = coords[:, :, None] - coords[:, None, :]  # [2, N, N]: query minus key
    return (offset[0] + window_size - 1) * (2 * window_size - 1) + (offset[1] + window_size - 1)


def shift_window_mask(H: int, W: int, window_size: int, shift: int, device=None) -> torch.Tensor:
    """``[nW, ws^2, ws^2]`` additive mask (0 or -100) for windows of a ``H x W`` map rolled by ``-shift``.

    After ``torch.roll(x, (-shift, -shift))`` the last row/column of windows holds pieces from the
    opposite border. Label the map in 3 x 3 regions (rows ``[0, H-ws)``, ``[H-ws, H-shift)``,
    ``[H-shift, H)``, the same for columns): two tokens of a window may attend to each other only if
    they carry the same label. ``H`` and ``W`` are the padded sizes (multiples of ``ws``).
    """
    def region(n: int) -> torch.Tensor:  # 0, 1 or 2 along one axis
        idx = torch.arange(n, device=device)
        return (idx >= n - window_size).long() + (idx >= n - shift).long()

    labels = region(H)[:, None] * 3 + region(W)[None, :]  # [H, W], values 0..8
    labels = rearrange(labels, "(nh wh) (nw ww) -> (nh nw) (wh ww)", wh=window_size, ww=window_size)
    different = labels[:, :, None] != labels[:, None, :]  # [nW, N, N]
    # official code: -100 rather than -inf, so a softmax row never sees only -inf
    return torch.zeros(different.shape, device=device).masked_fill(different, -100.0)


# ----------------------------------------------------------------------------------------------------
# 4-7. The Swin encoder.
# ----------------------------------------------------------------------------------------------------


class WindowAttention(MultiHeadSelfAttention):
    """Attention(Q, K, V) = softmax(Q K^T / sqrt(d) + B) V inside each window (Eq. 4).

    ``B`` is gathered from a learned table of ``(2ws-1)^2 x heads`` biases (trunc-normal, std 0.02),
    one per relative offset. In shifted blocks the window mask is added to ``B`` too. The attention
    itself is the shared :class:`segedu.layers.MultiHeadSelfAttention` (fused ``qkv``, ``proj``, SDPA).
    """

    def __init__(self, dim: int, num_heads: int, window_size: int):
        super().__init__(dim, num_heads, qkv_bias=True)
        self.window_size = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # Recomputed from ws, so not saved in the state_dict (the official checkpoints carry it; the
        # converters drop it).
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)

    def relative_position_bias(self) -> torch.Tensor:
        """``B`` of Eq. 4 for every head: ``[heads, ws^2, ws^2]``."""
        n = self.window_size ** 2
        bias = self.relative_position_bias_table[self.relative_position_index.flatten()]  # [N*N, heads]
        return rearrange(bias, "(i j) heads -> heads i j", i=n, j=n)

    def forward(self, windows: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``windows``: ``[B * nW, ws^2, C]``; ``mask``: ``[nW, ws^2, ws^2]`` or None (W-MSA)."""
        bias = self.relative_position_bias()  # broadcasts over all windows of all images
        if mask is not None:
            num_windows = mask.shape[0]
            bias = bias + mask[:, None]  # [nW, heads, N, N]
            # windows are stacked image by image, so the per-window bias repeats once per image
            bias = bias.repeat(windows.shape[0] // num_windows, 1, 1, 1)
        return super().forward(windows, bias)


class SwinBlock(nn.Module):
    """x + DropPath((S)W-MSA(LN x)), then x + DropPath(MLP(LN x)) (Eq. 3), on ``[B, H, W, C]`` maps.

    ``shift = 0``: regular windows (W-MSA). ``shift = ws // 2``: the map is rolled by ``-shift``
    before windowing and rolled back after (SW-MSA); the mask keeps the wrapped-around pieces apart.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, shift: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.window_size = window_size
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)  # official code: eps 1e-5 everywhere
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.window_attention(self.norm1(x), mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def window_attention(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h, w = x.shape[1:3]
        ws, s = self.window_size, self.shift
        # Segmentation form: pad bottom/right with zeros to a whole number of windows (after the norm,
        # so padded tokens are exact zeros; they are not masked, as in mmseg), then crop back.
        x = F.pad(x, (0, 0, 0, (-w) % ws, 0, (-h) % ws))
        hp, wp = x.shape[1:3]
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        windows = rearrange(window_partition(x, ws), "nw wh ww c -> nw (wh ww) c")
        windows = self.attn(windows, mask if s else None)
        x = window_reverse(rearrange(windows, "nw (wh ww) c -> nw wh ww c", wh=ws), ws, hp, wp)
        if s:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        return x[:, :h, :w]


class PatchEmbed(nn.Module):
    """Split the image into ``p x p`` patches (a conv with kernel = stride = p) + LayerNorm.

    ``[B, 3, H, W] -> [B, ceil(H/p), ceil(W/p), C]``; the image is zero-padded bottom/right to a
    multiple of ``p`` first (mmseg's ``padding='corner'``).
    """

    def __init__(self, in_channels: int, dim: int, patch_size: int = 4):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        p = self.patch_size
        x = F.pad(x, (0, (-w) % p, 0, (-h) % p))
        return self.norm(rearrange(self.proj(x), "b c h w -> b h w c"))


class PatchMerging(nn.Module):
    """Concatenate each 2x2 group of tokens (4C channels), LayerNorm, Linear 4C -> 2C without bias.

    Official channel order: x0 = x[0::2, 0::2], x1 = x[1::2, 0::2], x2 = x[0::2, 1::2],
    x3 = x[1::2, 1::2] (row, column), i.e. the column offset varies slowest. (mmseg's ``nn.Unfold``
    orders them x0, x2, x1, x3 and channel-major; the mmseg converter reorders the weights.)
    Odd maps are zero-padded bottom/right first: ``[B, H, W, C] -> [B, ceil(H/2), ceil(W/2), 2C]``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1:3]
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = rearrange(x, "b (h dh) (w dw) c -> b h w (dw dh c)", dh=2, dw=2)  # [x0, x1, x2, x3]
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """``depth`` blocks alternating W-MSA / SW-MSA, then (except in the last stage) patch merging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 drop_paths: list[float], downsample: bool):
        super().__init__()
        self.window_size = window_size
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, shift=0 if j % 2 == 0 else window_size // 2,
                      mlp_ratio=mlp_ratio, drop_path=drop_paths[j])
            for j in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``[B, H, W, C]`` -> (this stage's output before merging, the next stage's input or None)."""
        h, w = x.shape[1:3]
        ws = self.window_size
        # One mask for all shifted blocks of the stage, built for the padded size (as in mmseg).
        mask = None
        if len(self.blocks) > 1:
            mask = shift_window_mask(-(-h // ws) * ws, -(-w // ws) * ws, ws, ws // 2, device=x.device)
        for block in self.blocks:
            x = block(x, mask)
        return x, (self.downsample(x) if self.downsample is not None else None)


def init_swin(module: nn.Module) -> None:
    """Official Swin init: Linear trunc-normal(0.02) with zero bias, LayerNorm 1 / 0.

    The patch-embedding conv keeps PyTorch's default init (the official code does not touch it).
    """
    if isinstance(module, (nn.Linear, nn.LayerNorm)):
        init_vit_style(module)


class SwinTransformer(nn.Module):
    """Swin encoder (segmentation form): ``[B, 3, H, W]`` -> four maps ``[B, C * 2^i, H / 2^(i+2), W / 2^(i+2)]``.

    Each output is the stage's tokens before patch merging, normalised by its own LayerNorm
    ``norm{i}`` (these do not exist in ImageNet checkpoints; see ``segedu/weights/swin.py``).
    """

    def __init__(self, embed_dim: int, depths, num_heads, window_size: int = 7, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.3, patch_size: int = 4, in_channels: int = 3):
        super().__init__()
        self.patch_embed = PatchEmbed(in_channels, embed_dim, patch_size)
        dims = [embed_dim * 2 ** i for i in range(len(depths))]
        dprs = drop_path_rates(drop_path_rate, depths)  # linspace(0, rate, sum(depths)), split by stage
        self.stages = nn.ModuleList(
            SwinStage(dims[i], depths[i], num_heads[i], window_size, mlp_ratio, dprs[i],
                      downsample=i < len(depths) - 1)
            for i in range(len(depths))
        )
        for i, dim in enumerate(dims):  # mmseg's names norm0..norm3, one LayerNorm per output
            self.add_module(f"norm{i}", nn.LayerNorm(dim))
        self.out_channels = tuple(dims)
        self.strides = tuple(patch_size * 2 ** i for i in range(len(depths)))
        self.apply(init_swin)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)  # [B, H/4, W/4, C], channels last through the whole encoder
        features = []
        for i, stage in enumerate(self.stages):
            out, x = stage(x)
            features.append(rearrange(getattr(self, f"norm{i}")(out), "b h w c -> b c h w"))
        return features


# ----------------------------------------------------------------------------------------------------
# 8. The SSformer decoder: mmseg's SegformerHead.
# ----------------------------------------------------------------------------------------------------


class SSformerHead(nn.Module):
    """The all-MLP decoder of SegFormer (its Eq. 4) as mmseg builds it; SSformer uses it unchanged.

    1. per stage, a 1x1 conv (no bias) + BN + ReLU maps C_i to ``channels`` (256) -- the paper's
       "MLP" layer, applied at the stage's own resolution;
    2. bilinear upsampling to the stride-4 grid (align_corners False);
    3. concatenation in ascending order [s1, s2, s3, s4] (mmseg; the official SegFormer code uses the
       reverse) and a 1x1 conv + BN + ReLU fusing 4 * 256 -> 256;
    4. Dropout2d(0.1) and a 1x1 conv to K classes. Output: logits at stride 4.
    """

    def __init__(self, in_channels: tuple[int, ...], channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.linear_c = nn.ModuleList(ConvNormAct(c, channels) for c in in_channels)
        self.linear_fuse = ConvNormAct(len(in_channels) * channels, channels)
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(channels, num_classes, 1)
        # mmseg init: convs kaiming-normal (fan_out, ReLU), BN 1 / 0, classifier normal(0, 0.01).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                init_vit_style(m)  # normal(0, sqrt(2 / fan_out)), bias 0
        nn.init.normal_(self.linear_pred.weight, std=0.01)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]  # the stride-4 grid
        outs = []
        for feat, proj in zip(features, self.linear_c):
            x = proj(feat)
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            outs.append(x)
        x = self.linear_fuse(torch.cat(outs, dim=1))
        return self.linear_pred(self.dropout(x))


class SSformer(SegmentationModel):
    """Swin encoder + all-MLP decoder. ``model(x)`` gives logits at the input resolution."""

    def __init__(self, num_classes: int, embed_dim: int, depths, num_heads, window_size: int = 7,
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.3, decoder_channels: int = 256,
                 decoder_dropout: float = 0.1):
        encoder = SwinTransformer(embed_dim, depths, num_heads, window_size, mlp_ratio, drop_path_rate)
        decoder = SSformerHead(encoder.out_channels, decoder_channels, num_classes, decoder_dropout)
        # Padding makes any size encodable; 32 px (one token at stride 32) is the sensible minimum.
        super().__init__(encoder, decoder, num_classes, min_size=32)


# ----------------------------------------------------------------------------------------------------
# 9. Variants (official configs/swin/*.yaml; SSformer's own configuration is Swin-B, window 7).
# ----------------------------------------------------------------------------------------------------
# drop_path 0.3 is the segmentation fine-tuning value of the mmseg UperNet and SSformer configs
# (T/S/B); no segmentation config for Swin-L gives one, so it keeps 0.3 too. ``window_size=12``
# matches the 384-pretrained checkpoints (the bias table then has 23^2 rows).
# Published params: docs/architectures.md section 6 (counted from the reference implementations, K = 150).
SWIN_VARIANTS = {
    #     C    depths          heads              params (M) with the SSformer head, ws 7
    "t": (96, (2, 2, 6, 2), (3, 6, 12, 24), 28.2),
    "s": (96, (2, 2, 18, 2), (3, 6, 12, 24), 49.5),
    "b": (128, (2, 2, 18, 2), (4, 8, 16, 32), 87.5),
    "l": (192, (2, 2, 18, 2), (6, 12, 24, 48), 196.0),
}

for _v, (_c, _depths, _heads, _params) in SWIN_VARIANTS.items():
    register_model(ModelSpec(
        name=f"ssformer-swin-{_v}",
        family="ssformer",
        builder=SSformer,
        config=dict(embed_dim=_c, depths=_depths, num_heads=_heads, window_size=7, mlp_ratio=4.0,
                    drop_path_rate=0.3, decoder_channels=256, decoder_dropout=0.1),
        crop_size=512,
        published={"params_m": _params},  # no published GMACs for SSformer
    ))
