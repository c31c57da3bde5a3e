"""Building blocks shared by several model families (written once, used everywhere)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drop a whole residual branch per sample.

    During training each sample's branch is zeroed with probability ``p`` and the survivors are
    scaled by ``1 / (1 - p)`` so the expected value is unchanged; at eval time it is the identity.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def drop_path_rates(drop_path_rate: float, depths: tuple[int, ...] | list[int]) -> list[list[float]]:
    """The usual rule: rates grow linearly from 0 to ``drop_path_rate`` over all blocks, split by stage."""
    n = sum(depths)
    rates = [drop_path_rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]  # linspace(0, rate, n)
    out, start = [], 0
    for d in depths:
        out.append(rates[start : start + d])
        start += d
    return out


def init_vit_style(module: nn.Module) -> None:
    """Init used by the official SegFormer/Swin/SegNeXt code (call with ``model.apply``).

    Linear: truncated normal, std 0.02, bias 0. LayerNorm: weight 1, bias 0.
    Conv2d: normal(0, sqrt(2 / fan_out)) with fan_out = k_h * k_w * out_channels / groups, bias 0.
    """
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class Mlp(nn.Module):
    """The transformer MLP: Linear(d, hidden) -> GELU -> Linear(hidden, d) (ViT, Swin)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MultiHeadSelfAttention(nn.Module):
    """softmax(q k^T / sqrt(d) + bias) v over all tokens, with a fused ``qkv`` Linear and ``proj``.

    ``bias`` (optional, broadcastable to ``[B, heads, N, N]``) is added to the logits before the
    softmax: Swin passes its relative position bias plus the shifted-window mask here.
    Uses ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels where available).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (qkv heads d) -> qkv b heads n d", qkv=3, heads=self.num_heads)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=None if bias is None else bias.to(q.dtype))
        return self.proj(rearrange(x, "b heads n d -> b n (heads d)"))


class ConvNormAct(nn.Module):
    """Conv (same padding) -> BatchNorm or GroupNorm -> ReLU: mmcv's ``ConvModule`` as the decoders use it.

    SETR's heads (BN, 1x1 or 3x3), the SSformer / SegFormer-style MLP layers (BN, 1x1) and SegNeXt's
    LightHam head (GroupNorm(32), 1x1, ReLU or none) all use this one block. Keys: ``conv.*``, ``norm.*``.
    ``bias=False`` by default: the norm's shift makes a conv bias redundant (SETR's official heads keep it).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, norm: str = "bn",
                 act: bool = True, bias: bool = False, gn_groups: int = 32):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
        if norm == "bn":
            self.norm = nn.BatchNorm2d(out_channels)
        elif norm == "gn":
            self.norm = nn.GroupNorm(gn_groups, out_channels)
        else:
            raise ValueError(f"norm must be 'bn' or 'gn', got {norm!r}")
        self.act = nn.ReLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))
