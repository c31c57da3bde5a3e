"""SegNeXt (Guo et al., NeurIPS 2022, arXiv 2209.08575): the MSCAN encoder and the LightHam decoder.

Read top to bottom:

1. ``StemConv`` / ``DownsampleConv`` -- two stride-2 3x3 convs (stage 1), one (stages 2-4), each + BN.
2. ``MSCA``                -- multi-scale convolutional attention: a 5x5 depth-wise conv, three
   branches of depth-wise strip convs (1xk then kx1, k = 7, 11, 21), a 1x1 conv mixing channels,
   and the result *multiplies* the input (Sec. 3.1, Eq. 1-2, Fig. 2a).
3. ``SpatialAttention``    -- 1x1 conv -> GELU -> MSCA -> 1x1 conv, plus its own residual.
4. ``ConvMlp``             -- 1x1 conv -> 3x3 depth-wise conv -> GELU -> 1x1 conv.
5. ``MSCABlock`` / ``MSCANStage`` / ``MSCAN`` -- the hierarchical encoder (Fig. 2b; strides 4/8/16/32):
   BatchNorm pre-norms, LayerScale on both branches, a LayerNorm at the end of every stage.
6. ``NMF2D``               -- non-negative matrix factorisation solved by a few multiplicative
   updates inside the forward pass (the "ham" of the Hamburger, Geng et al., ICLR 2021).
7. ``Hamburger`` / ``LightHamHead`` -- the decoder (Sec. 3.2, Fig. 3c): stages 2-4 resized to 1/8,
   concatenated, squeezed, cleaned by the Hamburger's low-rank reconstruction, then classified.
8. The variants T/S/B/L and their registration.

Everything stays in ``[B, C, H, W]``: MSCAN is a conv net, only the stage-end LayerNorm needs the
channels last. Where the paper, the official code (Visual-Attention-Network/SegNeXt) and
mmsegmentation disagree we follow the official code and say so (comments marked "official code").
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ..layers import ConvNormAct, DropPath, drop_path_rates, init_vit_style
from ..registry import ModelSpec, register_model
from .base import SegmentationModel


class StemConv(nn.Module):
    """Stage-1 downsampling: Conv 3x3 s2 -> BN -> GELU -> Conv 3x3 s2 -> BN (stride 4 in total).

    There is no activation after the second BN (official code). ``[B, 3, H, W] -> [B, C, H/4, W/4]``
    (rounded up: every stride-2 conv with padding 1 maps a side ``n`` to ``ceil(n / 2)``).
    """

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, dim // 2, 3, stride=2, padding=1)
        self.norm1 = nn.BatchNorm2d(dim // 2)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1)
        self.norm2 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))


class DownsampleConv(nn.Module):
    """Stages 2-4: Conv 3x3 stride 2 (overlapping patches) -> BN, halving the resolution.

    The official class is called ``OverlapPatchEmbed`` after SegFormer's, but normalises with
    BatchNorm instead of LayerNorm and stays in ``[B, C, H, W]``.
    """

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class MSCA(nn.Module):
    """Multi-scale convolutional attention (Eq. 1-2).

    ``Att = Conv1x1(sum_{i=0..3} Scale_i(DWConv5x5(F)))`` with ``Scale_0`` the identity and
    ``Scale_{1,2,3}`` a depth-wise 1xk conv followed by a depth-wise kx1 conv, k = 7, 11, 21 (a pair
    of strip convs sees a k x k window for 2k instead of k^2 weights per channel).
    ``Out = Att * F``: the attention map is a plain element-wise product, no softmax.
    """

    def __init__(self, dim: int, strip_sizes: tuple[int, ...] = (7, 11, 21)):
        super().__init__()
        self.conv0 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)  # local context
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(dim, dim, (1, k), padding=(0, k // 2), groups=dim),  # horizontal strip
                nn.Conv2d(dim, dim, (k, 1), padding=(k // 2, 0), groups=dim),  # vertical strip
            )
            for k in strip_sizes
        )
        self.mix = nn.Conv2d(dim, dim, 1)  # channel mixing (official name: conv3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.conv0(x)
        total = attn
        for branch in self.branches:  # every branch reads conv0's output
            total = total + branch(attn)
        return self.mix(total) * x


class SpatialAttention(nn.Module):
    """1x1 conv -> GELU -> MSCA -> 1x1 conv, with an inner residual (on top of the block's own)."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj_1 = nn.Conv2d(dim, dim, 1)
        self.act = nn.GELU()
        self.msca = MSCA(dim)  # official name: spatial_gating_unit
        self.proj_2 = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj_2(self.msca(self.act(self.proj_1(x))))


class ConvMlp(nn.Module):
    """The feed-forward branch on a feature map: 1x1 conv -> 3x3 depth-wise conv -> GELU -> 1x1 conv.

    Like SegFormer's Mix-FFN, the depth-wise conv sits on the hidden width, before the activation.
    The official code has ``Dropout(0)`` after the GELU and after fc2; rate 0 in every config, so omitted.
    """

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x))))


class MSCABlock(nn.Module):
    """``x + DropPath(ls1 * Attn(BN(x)))``, then ``x + DropPath(ls2 * MLP(BN(x)))`` (Fig. 2b).

    LayerScale (Touvron et al. 2021): learnable per-channel factors ``ls1, ls2`` initialised to 1e-2,
    so every block starts close to the identity.
    """

    def __init__(self, dim: int, mlp_ratio: int, drop_path: float, layer_scale_init: float = 1e-2):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)  # official code: SyncBN; see SegNeXt's docstring
        self.attn = SpatialAttention(dim)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, dim * mlp_ratio)
        self.layer_scale_1 = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.layer_scale_2 = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ls1 = self.layer_scale_1[:, None, None]  # [C, 1, 1]: one factor per channel map
        ls2 = self.layer_scale_2[:, None, None]
        x = x + self.drop_path(ls1 * self.attn(self.norm1(x)))
        return x + self.drop_path(ls2 * self.mlp(self.norm2(x)))


class MSCANStage(nn.Module):
    """One encoder stage: downsampling, ``depth`` blocks, then a LayerNorm over the channels."""

    def __init__(self, downsample: nn.Module, dim: int, mlp_ratio: int, drop_paths: list[float]):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.ModuleList(MSCABlock(dim, mlp_ratio, dp) for dp in drop_paths)
        self.norm = nn.LayerNorm(dim)  # official code: plain nn.LayerNorm, eps 1e-5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        for block in self.blocks:
            x = block(x)
        x = self.norm(rearrange(x, "b c h w -> b h w c"))
        return rearrange(x, "b h w c -> b c h w")


class MSCAN(nn.Module):
    """MSCAN encoder: four stages at strides 4, 8, 16, 32; returns the four maps ``[B, C_i, H_i, W_i]``."""

    def __init__(self, embed_dims, depths, mlp_ratios=(8, 8, 4, 4), drop_path_rate: float = 0.1,
                 in_channels: int = 3):
        super().__init__()
        dprs = drop_path_rates(drop_path_rate, depths)
        downsamples = [StemConv(in_channels, embed_dims[0])] + [
            DownsampleConv(embed_dims[i - 1], embed_dims[i]) for i in range(1, 4)
        ]
        self.stages = nn.ModuleList(
            MSCANStage(downsamples[i], embed_dims[i], mlp_ratios[i], dprs[i]) for i in range(4)
        )
        self.out_channels = tuple(embed_dims)
        self.strides = (4, 8, 16, 32)
        # Official code (MSCAN.init_weights): trunc-normal Linear, LN 1/0, fan-out normal Conv2d,
        # BN left at PyTorch's default (weight 1, bias 0). LayerScale keeps its 1e-2.
        self.apply(init_vit_style)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class NMF2D(nn.Module):
    """Low-rank reconstruction of a feature map by non-negative matrix factorisation.

    The map ``[B, C, H, W]`` is viewed as S matrices ``X`` of shape ``D x N`` (D = C / S channels,
    N = H * W positions; X >= 0 because the Hamburger applies a ReLU first) and factorised as
    ``X ~ bases @ coef^T`` with ``bases: D x R`` and ``coef: N x R``, both non-negative, R << D:

    1. ``bases`` are drawn uniformly in [0, 1) and L2-normalised over D, *anew at every forward pass*;
    2. ``coef = softmax(inv_t * X^T bases)`` over R (NMF2D sets ``inv_t = 1``: the official base class
       default 100 is overwritten in ``NMF2D.__init__``);
    3. ``steps`` multiplicative updates (Lee & Seung 2001), which keep both factors non-negative::

           coef  <- coef  * (X^T bases) / (coef @ (bases^T bases) + eps)
           bases <- bases * (X coef)    / (bases @ (coef^T coef)  + eps)

    4. one more ``coef`` update, and the output is ``bases @ coef^T`` reshaped back to ``[B, C, H, W]``.

    6 steps in training, 7 in evaluation, eps 1e-6. Gradients flow through all the updates (the
    official code has ``@torch.no_grad()`` commented out; so does mmseg).

    Randomness. Training draws the bases from the global RNG, as the official code does, but on the
    input's device: the official ``torch.rand(...)`` on the CPU followed by ``.cuda()`` would copy from the host
    at every pass and break a ``torch.compile`` graph, so on a GPU the numbers are the CUDA generator's (a
    deliberate difference; on the CPU they are the official ones). ``torch.manual_seed`` makes a run
    reproducible. Evaluation draws them from a private ``torch.Generator`` seeded with ``seed`` at
    every call, so ``model.eval()`` gives the same output for the same input every time and does
    not consume the global RNG. The draw is on the CPU, so CPU and GPU see the same bases; image
    ``i`` of a batch gets the ``i``-th set, as in the official code. Because a fresh generator
    seeded with ``s`` yields the same numbers as ``torch.manual_seed(s)`` followed by ``torch.rand``,
    ``seed=s`` reproduces official/mmseg evaluation run right after ``torch.manual_seed(s)``.
    ``seed=None`` restores the official behaviour (global RNG in evaluation too).
    ``forward(x, bases=...)`` takes given initial bases ``[B * S, D, R]`` instead (tests, teaching).
    """

    def __init__(self, rank: int = 64, groups: int = 1, train_steps: int = 6, eval_steps: int = 7,
                 inv_t: float = 1.0, eps: float = 1e-6, seed: int | None = 0):
        super().__init__()
        self.rank = rank  # R (official: MD_R)
        self.groups = groups  # S (official: MD_S)
        self.train_steps = train_steps
        self.eval_steps = eval_steps
        self.inv_t = inv_t
        self.eps = eps
        self.seed = seed

    def draw_bases(self, n: int, dim: int, device: torch.device) -> torch.Tensor:
        """``n`` random non-negative bases ``[n, dim, R]``, unit L2 norm over ``dim``.

        Training: ``torch.rand`` on ``device`` itself, which torch.compile traces (no graph break, no copy from
        the host); on the CPU these are the official numbers. Evaluation with ``seed``: the private generator,
        on the CPU (the same bases on every device), run eagerly."""
        if self.training or self.seed is None:
            bases = torch.rand(n, dim, self.rank, device=device)
        else:
            bases = self._seeded_bases(n, dim, device)
        return F.normalize(bases, dim=1)

    @torch.compiler.disable  # a fresh torch.Generator cannot be traced: evaluation draws eagerly
    def _seeded_bases(self, n: int, dim: int, device: torch.device) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        return torch.rand(n, dim, self.rank, generator=generator, device="cpu").to(device)

    def update_coef(self, x: torch.Tensor, bases: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        numerator = x.transpose(1, 2) @ bases  # [n, N, R]
        denominator = coef @ (bases.transpose(1, 2) @ bases)  # [n, N, R] @ [n, R, R]
        return coef * numerator / (denominator + self.eps)

    def update_bases(self, x: torch.Tensor, bases: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        numerator = x @ coef  # [n, D, R]
        denominator = bases @ (coef.transpose(1, 2) @ coef)  # [n, D, R] @ [n, R, R]
        return bases * numerator / (denominator + self.eps)

    def factorize(self, x: torch.Tensor, bases: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 2-4 on ``x: [n, D, N]`` from initial ``bases: [n, D, R]``; returns ``(bases, coef)``."""
        coef = F.softmax(self.inv_t * (x.transpose(1, 2) @ bases), dim=-1)
        for _ in range(steps):
            coef = self.update_coef(x, bases, coef)
            bases = self.update_bases(x, bases, coef)
        return bases, self.update_coef(x, bases, coef)

    def forward(self, x: torch.Tensor, bases: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        dtype = x.dtype
        # Ratios of sums with eps = 1e-6 want float32: under bf16/fp16 autocast (segedu.train on a GPU)
        # the factorisation still runs in float32, as in the reference implementations' float32 runs.
        x = rearrange(x, "b (s d) h w -> (b s) d (h w)", s=self.groups).float()
        if bases is None:
            bases = self.draw_bases(x.shape[0], x.shape[1], x.device)
        steps = self.train_steps if self.training else self.eval_steps
        no_autocast = (torch.autocast(x.device.type, enabled=False)
                       if torch.amp.is_autocast_available(x.device.type) else nullcontext())  # e.g. "meta"
        with no_autocast:
            bases, coef = self.factorize(x, bases.float(), steps)
            x = bases @ coef.transpose(1, 2)  # [n, D, N], rank R
        return rearrange(x, "(b s) d (h w) -> b (s d) h w", b=b, h=h).to(dtype)

    def extra_repr(self) -> str:
        return (f"rank={self.rank}, groups={self.groups}, steps={self.train_steps}/{self.eval_steps} (train/eval), "
                f"inv_t={self.inv_t}, seed={self.seed}")


class Hamburger(nn.Module):
    """Two slices of "bread" around the "ham" (matrix decomposition).

    ``ham_in``: 1x1 conv with bias, no norm, then ReLU so that NMF sees a non-negative matrix;
    ``ham_out``: 1x1 conv (no bias) + GroupNorm, no activation; out = ReLU(x + ham_out(NMF(...))).
    """

    def __init__(self, channels: int, nmf: NMF2D):
        super().__init__()
        self.ham_in = nn.Conv2d(channels, channels, 1)
        self.nmf = nmf
        self.ham_out = ConvNormAct(channels, channels, norm="gn", act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.ham_out(self.nmf(F.relu(self.ham_in(x)))))


class LightHamHead(nn.Module):
    """The SegNeXt decoder (Sec. 3.2, Fig. 3c); logits at stride 8.

    1. stages 2-4 (strides 8, 16, 32) are bilinearly resized to the stride-8 grid and concatenated;
    2. ``squeeze``: 1x1 conv + GN + ReLU to ``ham_channels``;  3. the ``Hamburger``;
    4. ``align``: 1x1 conv + GN + ReLU to ``channels``;  5. Dropout2d(0.1) and a 1x1 classifier.
    Stage 1 is not used (Sec. 3.2: its features are too low-level, and stride 4 would be costly).
    """

    def __init__(self, in_channels: tuple[int, ...], num_classes: int, ham_channels: int = 512,
                 channels: int = 512, nmf_rank: int = 64, nmf_train_steps: int = 6, nmf_eval_steps: int = 7,
                 nmf_seed: int | None = 0, dropout: float = 0.1, in_index: tuple[int, ...] = (1, 2, 3)):
        super().__init__()
        self.in_index = tuple(in_index)
        self.squeeze = ConvNormAct(sum(in_channels[i] for i in self.in_index), ham_channels, norm="gn")
        nmf = NMF2D(nmf_rank, train_steps=nmf_train_steps, eval_steps=nmf_eval_steps, seed=nmf_seed)
        self.hamburger = Hamburger(ham_channels, nmf)
        self.align = ConvNormAct(ham_channels, channels, norm="gn")
        self.dropout = nn.Dropout2d(dropout)
        # Named like SegFormer's classifier (official/mmseg: conv_seg), so that segedu.weights finds
        # the number of classes of a checkpoint in the same place for every family.
        self.linear_pred = nn.Conv2d(channels, num_classes, 1)
        # mmcv ConvModule init: kaiming normal, fan_out, ReLU gain = normal(0, sqrt(2 / fan_out)) for
        # these 1x1 convs, bias 0; GroupNorm 1/0. The classifier: normal(0, 0.01), bias 0.
        self.apply(init_vit_style)
        nn.init.normal_(self.linear_pred.weight, std=0.01)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        features = [features[i] for i in self.in_index]
        size = features[0].shape[-2:]  # the stride-8 grid
        x = torch.cat([f if f.shape[-2:] == size else
                       F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in features], dim=1)
        x = self.align(self.hamburger(self.squeeze(x)))
        return self.linear_pred(self.dropout(x))


class SegNeXt(SegmentationModel):
    """MSCAN encoder + LightHam decoder. ``model(x)`` gives logits at the input resolution.

    Norms: the official code uses SyncBN in the encoder (mmseg: BN, trained on one GPU). Here it is
    plain ``BatchNorm2d``; convert with ``nn.SyncBatchNorm.convert_sync_batchnorm`` for multi-GPU
    training. The decoder uses GroupNorm(32), which does not depend on the batch.
    """

    def __init__(self, num_classes: int, embed_dims, depths, mlp_ratios=(8, 8, 4, 4), drop_path_rate: float = 0.1,
                 ham_channels: int = 512, decoder_channels: int = 512, nmf_rank: int = 64,
                 nmf_train_steps: int = 6, nmf_eval_steps: int = 7, nmf_seed: int | None = 0,
                 decoder_dropout: float = 0.1):
        encoder = MSCAN(embed_dims, depths, mlp_ratios, drop_path_rate)
        decoder = LightHamHead(encoder.out_channels, num_classes, ham_channels, decoder_channels, nmf_rank,
                               nmf_train_steps, nmf_eval_steps, nmf_seed, decoder_dropout)
        # Every conv pads, so any size encodes; below 32 px the stride-32 stage is a single pixel
        # made mostly of padding, which is no longer the model the weights were trained as.
        super().__init__(encoder, decoder, num_classes, min_size=32)


# Variants (official configs local_configs/segnext/*/segnext.*.512x512.ade.160k.py; docs/architectures.md
# section 4.1). NMF rank R: the T and S configs set MD_R=16; B and L keep the class default 64.
# mmsegmentation's configs inherit 16 for B and L as well: build with nmf_rank=16 for mmseg weights.
# Published: parameters (M, docs/architectures.md section 6; the README rounds them to 4/14/28/49) and the
# README's FLOPs at 512x512, counted by torchprofile, which counts MACs, rounded to whole G.
# segedu.zoo measures 6.40 / 15.65 / 34.66 / 69.69 GMACs (convs + matmuls, the NMF loop included).
# T is 8.5% under its "7": that is the rounding (the paper prints 6.6 G, unverified), plus what
# torchprofile counts on top (element-wise products and LayerNorms: +0.01 G for T). S/B/L: within 2.2%.
_WIDE = (64, 128, 320, 512)
SEGNEXT_VARIANTS = {
    #     embed_dims          depths          drop_path  ham = align channels  R   params (M)  GMACs
    "t": ((32, 64, 160, 256), (3, 3, 5, 2), 0.1, 256, 16, 4.3, 7.0),
    "s": (_WIDE, (2, 2, 4, 2), 0.1, 256, 16, 13.9, 16.0),
    "b": (_WIDE, (3, 3, 12, 3), 0.1, 512, 64, 27.6, 35.0),
    "l": (_WIDE, (3, 5, 27, 3), 0.3, 1024, 64, 48.9, 70.0),
}

for _v, (_dims, _depths, _dp, _c, _r, _params, _gmacs) in SEGNEXT_VARIANTS.items():
    register_model(ModelSpec(
        name=f"segnext-{_v}",
        family="segnext",
        builder=SegNeXt,
        config=dict(embed_dims=_dims, depths=_depths, mlp_ratios=(8, 8, 4, 4), drop_path_rate=_dp,
                    ham_channels=_c, decoder_channels=_c, nmf_rank=_r, nmf_train_steps=6, nmf_eval_steps=7,
                    nmf_seed=0, decoder_dropout=0.1),
        published={"params_m": _params, "gmacs": _gmacs},
    ))
