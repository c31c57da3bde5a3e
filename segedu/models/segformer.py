"""SegFormer (Xie et al., NeurIPS 2021, arXiv 2105.15203): the MiT encoder and the all-MLP decoder.

Read top to bottom:

1. ``OverlapPatchEmbed``   -- overlapping strided conv + LayerNorm (Sec. 3.1, "overlapped patch merging").
2. ``EfficientSelfAttention`` -- attention whose keys/values come from a sequence shrunk by the
   reduction ratio R = sr^2 (Sec. 3.1, Eq. 2).
3. ``MixFFN``               -- MLP with a 3x3 depth-wise conv that leaks position, so no positional
   embedding is needed (Sec. 3.1, Eq. 3).
4. ``Block`` / ``MiTStage`` / ``MixVisionTransformer`` -- the hierarchical encoder (strides 4/8/16/32).
5. ``SegFormerHead``        -- the all-MLP decoder (Sec. 3.2, Eq. 4).
6. The variants B0..B5 and their registration.

Where the paper and the official code (NVlabs/SegFormer) disagree we follow the code, because that
is what the released weights need (see the comments marked "official code").
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ..layers import DropPath, drop_path_rates, init_vit_style
from ..registry import ModelSpec, register_model
from .base import SegmentationModel


class OverlapPatchEmbed(nn.Module):
    """Conv(k, stride s, padding k // 2) + LayerNorm: patches overlap because k > s.

    Stage 1 uses k=7, s=4; stages 2-4 use k=3, s=2. ``[B, C_in, H, W] -> [B, N, C], (H', W')``.
    """

    def __init__(self, in_channels: int, dim: int, patch_size: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(dim)  # official code: plain nn.LayerNorm, eps 1e-5

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)  # [B, C, H', W'] with H' = ceil(H / s)
        h, w = x.shape[-2:]
        x = rearrange(x, "b c h w -> b (h w) c")
        return self.norm(x), (h, w)


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention with spatial reduction (Eq. 2).

    Queries come from all N = H*W tokens. Keys and values come from the token map shrunk by a
    ``sr x sr`` conv with stride ``sr`` (then LayerNorm), i.e. N / R tokens with R = sr^2, which
    cuts the cost from O(N^2) to O(N^2 / R).
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)  # official code: one fused Linear, keys first then values
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)  # official code: eps 1e-5
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        h, w = hw
        q = rearrange(self.q(x), "b n (heads d) -> b heads n d", heads=self.num_heads)
        if self.sr_ratio > 1:
            x = rearrange(x, "b (h w) c -> b c h w", h=h, w=w)
            x = rearrange(self.sr(x), "b c h w -> b (h w) c")  # [B, N/R, C]
            x = self.norm(x)
        k, v = rearrange(self.kv(x), "b m (kv heads d) -> kv b heads m d", kv=2, heads=self.num_heads)
        x = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        return self.proj(rearrange(x, "b heads n d -> b n (heads d)"))


class MixFFN(nn.Module):
    """x -> fc1 -> 3x3 depth-wise conv -> GELU -> fc2 (Eq. 3).

    The depth-wise conv works on the hidden width and comes before the GELU (official code). Its
    zero padding tells each token where the border is, which replaces a positional embedding.
    """

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        h, w = hw
        x = rearrange(self.fc1(x), "b (h w) c -> b c h w", h=h, w=w)
        x = rearrange(self.dwconv(x), "b c h w -> b (h w) c")
        return self.fc2(self.act(x))


class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(Attn(LN x)), then x + DropPath(MixFFN(LN x))."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, mlp_ratio: int, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)  # official code: block norms use eps 1e-6
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MixFFN(dim, dim * mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x), hw))


class MiTStage(nn.Module):
    """One encoder stage: overlapped patch embedding, ``depth`` blocks, LayerNorm, back to a map."""

    def __init__(self, in_channels: int, dim: int, depth: int, num_heads: int, sr_ratio: int,
                 mlp_ratio: int, patch_size: int, stride: int, drop_paths: list[float]):
        super().__init__()
        self.patch_embed = OverlapPatchEmbed(in_channels, dim, patch_size, stride)
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, sr_ratio, mlp_ratio, dp) for dp in drop_paths[:depth]
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)  # official code: stage-end norm, eps 1e-6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (h, w) = self.patch_embed(x)  # [B, N, C]
        for block in self.blocks:
            x = block(x, (h, w))
        return rearrange(self.norm(x), "b (h w) c -> b c h w", h=h, w=w)


class MixVisionTransformer(nn.Module):
    """MiT encoder: four stages at strides 4, 8, 16, 32; returns the four maps ``[B, C_i, H_i, W_i]``."""

    def __init__(self, embed_dims, depths, num_heads, sr_ratios, mlp_ratios, patch_sizes=(7, 3, 3, 3),
                 strides=(4, 2, 2, 2), drop_path_rate: float = 0.1, in_channels: int = 3):
        super().__init__()
        dprs = drop_path_rates(drop_path_rate, depths)
        in_dims = (in_channels, *embed_dims[:-1])
        self.stages = nn.ModuleList(
            MiTStage(in_dims[i], embed_dims[i], depths[i], num_heads[i], sr_ratios[i], mlp_ratios[i],
                     patch_sizes[i], strides[i], dprs[i])
            for i in range(4)
        )
        self.out_channels = tuple(embed_dims)
        self.strides = (4, 8, 16, 32)
        self.apply(init_vit_style)  # official code: trunc-normal Linear, fan-out normal Conv2d

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class SegFormerHead(nn.Module):
    """The all-MLP decoder (Eq. 4).

    1. a Linear maps every stage to the same width E;   2. upsample all to 1/4 and concatenate;
    3. a 1x1 conv (no bias) + BN + ReLU fuses the 4E channels to E;   4. a 1x1 conv predicts K classes.
    Output: logits at stride 4.
    """

    def __init__(self, in_channels: tuple[int, ...], embed_dim: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.linear_c = nn.ModuleList(nn.Linear(c, embed_dim) for c in in_channels)
        self.linear_fuse = nn.Conv2d(len(in_channels) * embed_dim, embed_dim, 1, bias=False)
        self.bn = nn.BatchNorm2d(embed_dim)
        self.dropout = nn.Dropout2d(dropout)  # official code: channel-wise Dropout2d (HF uses Dropout)
        self.linear_pred = nn.Conv2d(embed_dim, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]  # the stride-4 grid
        outs = []
        for feat, linear in zip(features, self.linear_c):
            h, w = feat.shape[-2:]
            x = rearrange(linear(rearrange(feat, "b c h w -> b (h w) c")), "b (h w) e -> b e h w", h=h, w=w)
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            outs.append(x)
        x = torch.cat(outs[::-1], dim=1)  # official code: order [c4, c3, c2, c1]
        x = F.relu(self.bn(self.linear_fuse(x)))
        return self.linear_pred(self.dropout(x))


class SegFormer(SegmentationModel):
    """MiT encoder + all-MLP decoder. ``model(x)`` gives logits at the input resolution."""

    def __init__(self, num_classes: int, embed_dims, depths, num_heads=(1, 2, 5, 8), sr_ratios=(8, 4, 2, 1),
                 mlp_ratios=(4, 4, 4, 4), decoder_dim: int = 256, drop_path_rate: float = 0.1,
                 decoder_dropout: float = 0.1):
        encoder = MixVisionTransformer(embed_dims, depths, num_heads, sr_ratios, mlp_ratios,
                                       drop_path_rate=drop_path_rate)
        decoder = SegFormerHead(encoder.out_channels, decoder_dim, num_classes, decoder_dropout)
        # The sr x sr reduction conv of stage 1 needs H/4 >= sr_1 (= 8): inputs of at least 32 px.
        super().__init__(encoder, decoder, num_classes, min_size=4 * sr_ratios[0])


# Variants (official code; Table 6 of the paper lists MLP ratios 8,8,4,4 for B0-B4, but the released
# code and weights use 4 everywhere, and the paper's own segmentation parameter counts match 4).
_WIDE = (64, 128, 320, 512)
SEGFORMER_VARIANTS = {
    #      embed_dims           depths          decoder E  published: params (M), GMACs @512 (B5 @640)
    "b0": ((32, 64, 160, 256), (2, 2, 2, 2), 256, 3.8, 8.4),
    "b1": (_WIDE, (2, 2, 2, 2), 256, 13.7, 15.9),
    "b2": (_WIDE, (3, 4, 6, 3), 768, 27.5, 62.4),
    "b3": (_WIDE, (3, 4, 18, 3), 768, 47.3, 79.0),
    "b4": (_WIDE, (3, 8, 27, 3), 768, 64.1, 95.7),
    "b5": (_WIDE, (3, 6, 40, 3), 768, 84.7, 183.3),
}

for _v, (_dims, _depths, _e, _params, _gmacs) in SEGFORMER_VARIANTS.items():
    register_model(ModelSpec(
        name=f"segformer-{_v}",
        family="segformer",
        builder=SegFormer,
        config=dict(embed_dims=_dims, depths=_depths, num_heads=(1, 2, 5, 8), sr_ratios=(8, 4, 2, 1),
                    mlp_ratios=(4, 4, 4, 4), decoder_dim=_e, drop_path_rate=0.1, decoder_dropout=0.1),
        crop_size=640 if _v == "b5" else 512,
        published={"params_m": _params, "gmacs": _gmacs},
    ))
