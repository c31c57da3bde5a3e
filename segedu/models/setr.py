"""SETR (Zheng et al., CVPR 2021, arXiv 2012.15840): a plain ViT encoder and three decoders.

SETR treats segmentation as sequence-to-sequence prediction: the image becomes a sequence of
16x16 patches, a standard Transformer encodes it without any downsampling, and a decoder turns the
H/16 x W/16 token map back into a per-pixel prediction. Read top to bottom:

1. ``resize_pos_embed`` / ``Block`` / ``VisionTransformer`` -- the encoder (the paper's "image to
   sequence" and "Transformer" parts): conv patch embedding, cls token, learned 1-D positions,
   pre-norm blocks. It returns the token maps ``Z^l`` of the layers its heads read.
2. ``UpHead``     -- the paper's decoder designs "Naive" (1x1 conv + BN + ReLU + 1x1 conv, then
   bilinear upsampling) and "PUP" (progressive upsampling: four conv + x2 stages).
3. ``MLANeck`` / ``MLAHead`` / ``MLADecoder`` -- "MLA" (multi-level feature aggregation): four
   streams from Z6, Z12, Z18, Z24 with top-down sums, concatenated at 1/4 resolution.
4. ``MLAAuxHead`` and the auxiliary-head API of ``SETR`` (``aux_heads``, ``aux_weights``,
   ``forward_train``): the deep supervision every official SETR config trains with (weight 0.4).
5. The variants (ViT-L/16 and ViT-B/16 with each decoder), ``MMSEG_LAYOUT`` and registration.

We follow the official code (fudan-zvg/SETR): that is what the released checkpoints need. Where the
mmsegmentation 1.x re-implementation differs, a comment says so and a config field (official
value by default) switches to the mmseg behaviour; ``mmseg_layout(name)`` collects those overrides.

Two choices of ours, because the official code only accepts inputs of exactly the crop size:

* **Other input sizes.** The positional embedding is learned for the crop's grid (32x32 + cls at
  512). For another grid we resize its grid part bilinearly (align_corners=False) on the fly, keeping
  the cls position, as mmseg does at test time (the official code does the same resize once, when
  it loads ImageNet weights). The SegFormer paper (Sec. 3.1) names the cost: positions interpolated
  to an unseen resolution are not what the model was trained with, and accuracy drops; this is why
  SegFormer replaced positional embeddings with Mix-FFN. SETR's own remedy is sliding-window testing
  at the crop size (segedu.evaluate), where no resize happens.
* **Sizes that are not multiples of 16.** The encoder zero-pads the image at the bottom and right
  to a multiple of 16 (mmseg's "corner" padding, timm's ``dynamic_img_pad``); ``forward_logits``
  then upsamples the logits to the padded size and crops the padding away, so every output pixel
  keeps its place. Inputs smaller than one patch (16 px) are rejected.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ..layers import ConvNormAct, DropPath, Mlp, MultiHeadSelfAttention, drop_path_rates, init_vit_style
from ..registry import ModelSpec, get_spec, register_model
from .base import SegmentationModel


def _pair(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize_pos_embed(pos_embed: torch.Tensor, grid_from: tuple[int, int], grid_to: tuple[int, int]) -> torch.Tensor:
    """Resize a ``[1, 1 + h*w, D]`` positional embedding (cls position first) to another grid.

    The cls position is kept as it is; the ``h x w`` grid of patch positions is resized bilinearly
    with align_corners=False (the official SETR loader and mmseg's SETR configs).
    """
    if tuple(grid_from) == tuple(grid_to):
        return pos_embed
    cls_pos, grid = pos_embed[:, :1], pos_embed[:, 1:]
    grid = rearrange(grid, "b (h w) d -> b d h w", h=grid_from[0], w=grid_from[1])
    grid = F.interpolate(grid, size=tuple(grid_to), mode="bilinear", align_corners=False)
    return torch.cat([cls_pos, rearrange(grid, "b d h w -> b (h w) d")], dim=1)


def _layer_norm_2d(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the channels of a ``[B, D, H, W]`` map (= over D for every token)."""
    return rearrange(norm(rearrange(x, "b d h w -> b h w d")), "b h w d -> b d h w")


# ----------------------------------------------------------------------------------------------
# 1. Encoder: ViT
# ----------------------------------------------------------------------------------------------

class Block(nn.Module):
    """Pre-norm Transformer layer: ``x + DropPath(MSA(LN x))``, then ``x + DropPath(MLP(LN x))``.

    LayerNorm eps 1e-6 (official code and timm's ViT); head dim 64 in every SETR variant.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiHeadSelfAttention(dim, num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """ViT/16 returning token maps: image ``[B, 3, H, W]`` -> list of ``[B, D, ceil(H/16), ceil(W/16)]``.

    1. zero-pad H, W to multiples of ``patch_size`` (bottom/right), then a ``patch_size`` x
       ``patch_size`` conv with stride ``patch_size`` embeds each patch (no norm after it);
    2. prepend the cls token and add the learned positions ``pos_embed`` (``[1, 1 + N, D]`` with N the
       crop's grid, e.g. 32x32 at 512; resized on the fly for another grid, see module docstring);
    3. run the ``depth`` pre-norm blocks; there is no final LayerNorm (SETR's heads carry their own).

    ``out_layers`` (1-based, so 24 is the last layer of ViT-L, the paper's Z^24) are the layers whose
    outputs are returned, in increasing order, as maps without the cls token. Blocks after the last
    of them are not run. ``keep_cls_token=False`` drops the cls token right after the positions are
    added, before the blocks: the official MLA backbone (``VIT_MLA``) does that, so in SETR-MLA the
    cls token never reaches a block (the parameter stays, with a zero gradient, so checkpoints keep
    their keys).
    """

    def __init__(self, embed_dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0, patch_size: int = 16,
                 img_size: int | tuple[int, int] = 512, out_layers: tuple[int, ...] = (24,),
                 keep_cls_token: bool = True, drop_path_rate: float = 0.0, in_channels: int = 3):
        super().__init__()
        h, w = _pair(img_size)
        if h % patch_size or w % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of the patch size {patch_size}")
        out_layers = tuple(sorted(set(out_layers)))
        if not out_layers or out_layers[0] < 1 or out_layers[-1] > depth:
            raise ValueError(f"out_layers {out_layers} must lie in 1..{depth} (1-based layer numbers)")
        self.patch_size = patch_size
        self.grid = (h // patch_size, w // patch_size)  # the grid pos_embed was made for
        self.out_layers = out_layers
        self.keep_cls_token = keep_cls_token
        self.patch_embed = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], embed_dim))
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, p) for p in drop_path_rates(drop_path_rate, (depth,))[0]
        )
        self.out_channels = (embed_dim,) * len(out_layers)
        self.strides = (patch_size,) * len(out_layers)
        # Official init_weights: trunc-normal Linear, unit LayerNorm, trunc-normal positions and cls token.
        # (The patch conv gets segedu's fan-out normal; every SETR run loads ImageNet weights over it.)
        self.apply(init_vit_style)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % self.patch_size, -w % self.patch_size
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))  # zeros at the bottom and the right
        x = self.patch_embed(x)  # [B, D, H/16, W/16]
        gh, gw = x.shape[-2:]
        x = rearrange(x, "b d h w -> b (h w) d")
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + resize_pos_embed(self.pos_embed, self.grid, (gh, gw))
        if not self.keep_cls_token:
            x = x[:, 1:]
        skip = 1 if self.keep_cls_token else 0
        outs = []
        for layer, block in enumerate(self.blocks, start=1):
            x = block(x)
            if layer in self.out_layers:
                outs.append(rearrange(x[:, skip:], "b (h w) d -> b d h w", h=gh, w=gw))
            if layer == self.out_layers[-1]:
                break
        return outs


# ----------------------------------------------------------------------------------------------
# 2. Naive and PUP decoders
# ----------------------------------------------------------------------------------------------

class UpHead(nn.Module):
    """LN -> ``num_convs`` x [conv k x k + BN + ReLU] with x``up_scale`` between them -> 1x1 conv to K -> x``up_scale``.

    Reads the token map ``features[in_index]`` (one tapped layer). The official heads:

    * **Naive** (main and aux): ``num_convs=1, kernel_size=1, up_scale=1``: LN, 1x1 conv D->256, BN,
      ReLU, 1x1 conv 256->K. Logits at stride 16, resized to the input by ``model(x)``.
    * **PUP**: ``num_convs=4, kernel_size=3, up_scale=2``: four 3x3 convs with x2 after each, the last
      x2 applied to the logits (official order). Logits at stride 1.
    * **PUP aux**: ``num_convs=1, kernel_size=3, up_scale=4``: 3x3 conv D->256, BN, ReLU, x4, 1x1 conv.

    The last upsampling always comes after the classifier. A 1x1 conv commutes with bilinear
    resizing (whose weights sum to 1), so this equals mmseg's order (upsample, then classify) up to
    rounding and is cheaper when K < 256. ``conv_bias``: the official convs have a bias before the
    BN; mmseg's ConvModule drops it (BN's shift makes it redundant).
    """

    def __init__(self, in_dim: int, num_classes: int, in_index: int = 0, channels: int = 256, num_convs: int = 1,
                 kernel_size: int = 1, up_scale: int = 1, conv_bias: bool = True):
        super().__init__()
        if kernel_size not in (1, 3) or num_convs < 1 or up_scale < 1:
            raise ValueError(f"need kernel_size 1 or 3, num_convs >= 1, up_scale >= 1; got "
                             f"{kernel_size}, {num_convs}, {up_scale}")
        self.in_index = in_index
        self.up_scale = up_scale
        self.norm = nn.LayerNorm(in_dim, eps=1e-6)
        self.convs = nn.ModuleList(
            ConvNormAct(in_dim if i == 0 else channels, channels, kernel_size, bias=conv_bias) for i in range(num_convs)
        )
        self.linear_pred = nn.Conv2d(channels, num_classes, 1)

    def _up(self, x: torch.Tensor) -> torch.Tensor:
        if self.up_scale == 1:
            return x
        size = (x.shape[-2] * self.up_scale, x.shape[-1] * self.up_scale)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = _layer_norm_2d(self.norm, features[self.in_index])
        for i, conv in enumerate(self.convs):
            x = conv(self._up(x) if i else x)
        return self._up(self.linear_pred(x))

    def forward_with_aux_inputs(self, features: list[torch.Tensor]):
        """Main logits, and what the auxiliary heads read (the encoder's token maps)."""
        return self(features), features


# ----------------------------------------------------------------------------------------------
# 3. MLA decoder
# ----------------------------------------------------------------------------------------------

class MLANeck(nn.Module):
    """Per tap: LN (eps 1e-6) and 1x1 conv D->256 (no bias) + BN + ReLU; top-down sums; 3x3 conv + BN + ReLU.

    With taps c6, c12, c18, c24 (after the 1x1 convs): p24 = c24, p18 = p24 + c18, p12 = p18 + c12,
    p6 = p12 + c6; each sum goes through its own 3x3 conv (no bias) + BN + ReLU. Returns the four
    streams in tap order [Z6, Z12, Z18, Z24]. (The official code keeps the LNs and this neck inside
    its MLA backbone; mmseg has them in ``MLANeck``, whose output list is in the reverse order.)
    """

    def __init__(self, in_dim: int, channels: int = 256, num_levels: int = 4):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(in_dim, eps=1e-6) for _ in range(num_levels))
        self.proj = nn.ModuleList(ConvNormAct(in_dim, channels, 1) for _ in range(num_levels))
        self.fuse = nn.ModuleList(ConvNormAct(channels, channels, 3) for _ in range(num_levels))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        c = [proj(_layer_norm_2d(norm, f)) for f, norm, proj in zip(features, self.norms, self.proj)]
        p = list(c)
        for i in range(len(c) - 2, -1, -1):  # top-down: the deepest tap flows into every shallower one
            p[i] = p[i + 1] + c[i]
        return [fuse(x) for fuse, x in zip(self.fuse, p)]


class MLAHead(nn.Module):
    """Per stream: 3x3 conv 256->128 + BN + ReLU, 3x3 conv 128->128 + BN + ReLU (no biases), x4 bilinear;
    concatenate the streams [Z6, Z12, Z18, Z24] and predict K classes with a 3x3 conv. Logits at stride 4.

    Official: the x4 uses align_corners=True and the classifier is 3x3. mmseg: align_corners=False
    and a 1x1 classifier (``align_corners=False, classifier_kernel=1``).
    """

    def __init__(self, channels: int, head_channels: int, num_classes: int, num_levels: int = 4,
                 classifier_kernel: int = 3, align_corners: bool = True):
        super().__init__()
        self.align_corners = align_corners
        self.streams = nn.ModuleList(
            nn.Sequential(ConvNormAct(channels, head_channels, 3), ConvNormAct(head_channels, head_channels, 3))
            for _ in range(num_levels)
        )
        self.linear_pred = nn.Conv2d(num_levels * head_channels, num_classes, classifier_kernel,
                                     padding=classifier_kernel // 2)

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        outs = []
        for x, stream in zip(levels, self.streams):
            x = stream(x)
            outs.append(F.interpolate(x, size=(4 * x.shape[-2], 4 * x.shape[-1]), mode="bilinear",
                                      align_corners=self.align_corners))
        return self.linear_pred(torch.cat(outs, dim=1))


class MLADecoder(nn.Module):
    """``MLANeck`` then ``MLAHead``; the auxiliary heads read the neck's four streams."""

    def __init__(self, in_dim: int, num_classes: int, num_levels: int = 4, channels: int = 256,
                 head_channels: int = 128, classifier_kernel: int = 3, align_corners: bool = True):
        super().__init__()
        self.neck = MLANeck(in_dim, channels, num_levels)
        self.head = MLAHead(channels, head_channels, num_classes, num_levels, classifier_kernel, align_corners)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.head(self.neck(features))

    def forward_with_aux_inputs(self, features: list[torch.Tensor]):
        levels = self.neck(features)
        return self.head(levels), levels


class MLAAuxHead(nn.Module):
    """Auxiliary head on one MLA neck stream: a 1x1 conv 256->K (official: no bias; mmseg's FCNHead: bias)."""

    def __init__(self, channels: int, num_classes: int, in_index: int, bias: bool = False):
        super().__init__()
        self.in_index = in_index
        self.linear_pred = nn.Conv2d(channels, num_classes, 1, bias=bias)

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        return self.linear_pred(levels[self.in_index])


# ----------------------------------------------------------------------------------------------
# 4. The model, with its auxiliary heads
# ----------------------------------------------------------------------------------------------

class SETR(SegmentationModel):
    """ViT encoder + SETR decoder (+ auxiliary heads for training). ``model(x)``: logits at the input size.

    Auxiliary heads (``aux_heads=True`` in the config) only serve training, as in the official
    configs: each adds a cross-entropy term of weight ``aux_weights[i]`` (0.4). ``model(x)`` and
    ``forward_logits`` never run them, and the main model is ``encoder + decoder``. A training step::

        out = model.forward_train(images)   # {"main": logits, "aux": [logits, ...]}
        loss = seg_loss(out["main"], masks) + sum(
            w * seg_loss(a, masks) for w, a in zip(model.aux_weights, out["aux"]))

    (``segedu.losses.seg_loss`` resizes every logit map to the labels.) They are off by default:
    inference and fine-tuning without them need nothing, and a default model has no parameters that
    ``model(x)`` leaves without gradient.
    """

    def __init__(self, encoder: VisionTransformer, decoder: nn.Module, num_classes: int,
                 aux_heads: list[nn.Module] = (), aux_weight: float = 0.4):
        super().__init__(encoder, decoder, num_classes, min_size=encoder.patch_size)
        self.aux_heads = nn.ModuleList(aux_heads)
        self.aux_weights = tuple(aux_weight for _ in self.aux_heads)

    def _crop(self, logits: torch.Tensor, size) -> torch.Tensor:
        """Logits of a padded input -> logits of the input: upsample to the padded size, cut the padding."""
        h, w = size
        p = self.encoder.patch_size
        if h % p == 0 and w % p == 0:
            return logits  # no padding: keep the decoder's stride
        padded = (math.ceil(h / p) * p, math.ceil(w / p) * p)
        if logits.shape[-2:] != padded:
            logits = F.interpolate(logits, size=padded, mode="bilinear", align_corners=False)
        return logits[..., :h, :w]

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the decoder's stride; for sizes that are not multiples of 16, at full size (padding cut)."""
        self.check_input(x)
        return self._crop(self.decoder(self.encoder(x)), x.shape[-2:])

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """``{"main": logits, "aux": [logits of each auxiliary head]}``, each at its own stride (see forward_logits)."""
        self.check_input(x)
        main, aux_inputs = self.decoder.forward_with_aux_inputs(self.encoder(x))
        size = x.shape[-2:]
        return {"main": self._crop(main, size), "aux": [self._crop(head(aux_inputs), size) for head in self.aux_heads]}


def setr_up(num_classes: int, *, embed_dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0,
            patch_size: int = 16, img_size: int | tuple[int, int] = 512, drop_path_rate: float = 0.0,
            in_layer: int, channels: int = 256, num_convs: int = 1, kernel_size: int = 1, up_scale: int = 1,
            conv_bias: bool = True, aux_heads: bool = False, aux_layers: tuple[int, ...] = (),
            aux_num_convs: int = 1, aux_kernel_size: int = 1, aux_up_scale: int = 1, aux_weight: float = 0.4) -> SETR:
    """SETR-Naive / SETR-PUP: ``UpHead`` on layer ``in_layer``; auxiliary ``UpHead``s on ``aux_layers``."""
    aux_layers = tuple(aux_layers) if aux_heads else ()
    encoder = VisionTransformer(embed_dim, depth, num_heads, mlp_ratio, patch_size, img_size,
                                out_layers=(in_layer, *aux_layers), drop_path_rate=drop_path_rate)
    index = encoder.out_layers.index
    decoder = UpHead(embed_dim, num_classes, index(in_layer), channels, num_convs, kernel_size, up_scale, conv_bias)
    aux = [UpHead(embed_dim, num_classes, index(layer), channels, aux_num_convs, aux_kernel_size, aux_up_scale,
                  conv_bias) for layer in aux_layers]
    return SETR(encoder, decoder, num_classes, aux, aux_weight)


def setr_mla(num_classes: int, *, embed_dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0,
             patch_size: int = 16, img_size: int | tuple[int, int] = 512, drop_path_rate: float = 0.0,
             mla_layers: tuple[int, ...], mla_channels: int = 256, mla_head_channels: int = 128,
             mla_classifier_kernel: int = 3, mla_align_corners: bool = True, aux_heads: bool = False,
             mla_aux_bias: bool = False, aux_weight: float = 0.4) -> SETR:
    """SETR-MLA: taps ``mla_layers``, ``MLADecoder``; one auxiliary 1x1 conv per neck stream."""
    encoder = VisionTransformer(embed_dim, depth, num_heads, mlp_ratio, patch_size, img_size,
                                out_layers=mla_layers, keep_cls_token=False, drop_path_rate=drop_path_rate)
    n = len(encoder.out_layers)
    decoder = MLADecoder(embed_dim, num_classes, n, mla_channels, mla_head_channels, mla_classifier_kernel,
                         mla_align_corners)
    aux = [MLAAuxHead(mla_channels, num_classes, i, mla_aux_bias) for i in range(n)] if aux_heads else []
    return SETR(encoder, decoder, num_classes, aux, aux_weight)


# ----------------------------------------------------------------------------------------------
# 5. Variants
# ----------------------------------------------------------------------------------------------

# Encoders (official code, docs/architectures.md 1.1). Every SETR ADE20K / Cityscapes config sets the
# dropout to 0 (the backbone default is 0.1) and uses no stochastic depth.
_VIT = {
    "": dict(embed_dim=1024, depth=24, num_heads=16),    # ViT-L/16, every headline result
    "-base": dict(embed_dim=768, depth=12, num_heads=12),  # ViT-B/16 (the repo's "Naive-Base" configs)
}
_ENCODER = dict(mlp_ratio=4.0, patch_size=16, img_size=512, drop_path_rate=0.0)

# Taps, 1-based (layer l = the paper's Z^l). ViT-L values from the official ADE20K configs. ViT-B:
# the only official ViT-B config (Naive-Base, Cityscapes) puts its aux heads on Z3, Z6, Z9 and the head
# on Z12, i.e. the quarters of the depth; we use the quarters for every base variant: PUP-base adds
# Z12 to the aux taps as PUP-L adds Z24, and MLA-base taps Z3, Z6, Z9, Z12 (MLA-L: Z6, Z12, Z18, Z24).
_TAPS = {
    ("naive", ""): dict(in_layer=24, aux_layers=(10, 15, 20)),
    ("pup", ""): dict(in_layer=24, aux_layers=(10, 15, 20, 24)),
    ("mla", ""): dict(mla_layers=(6, 12, 18, 24)),
    ("naive", "-base"): dict(in_layer=12, aux_layers=(3, 6, 9)),
    ("pup", "-base"): dict(in_layer=12, aux_layers=(3, 6, 9, 12)),
    ("mla", "-base"): dict(mla_layers=(3, 6, 9, 12)),
}

# Decoders (official code, docs/architectures.md 1.2); aux heads off by default (see SETR).
_DECODER = {
    "naive": dict(channels=256, num_convs=1, kernel_size=1, up_scale=1, conv_bias=True,
                  aux_heads=False, aux_num_convs=1, aux_kernel_size=1, aux_up_scale=1, aux_weight=0.4),
    "pup": dict(channels=256, num_convs=4, kernel_size=3, up_scale=2, conv_bias=True,
                aux_heads=False, aux_num_convs=1, aux_kernel_size=3, aux_up_scale=4, aux_weight=0.4),
    "mla": dict(mla_channels=256, mla_head_channels=128, mla_classifier_kernel=3, mla_align_corners=True,
                aux_heads=False, mla_aux_bias=False, aux_weight=0.4),
}

# Main-model parameters (M) at 512 with K=150. ViT-L: docs/architectures.md section 6 (official layout;
# with the aux heads: Naive 305.4, PUP 317.9, MLA 310.2). ViT-B: no published count; these are our
# measured counts (encoder 86.4M as in section 6), held by tests/test_setr.py, not registered as published.
_PARAMS_M = {
    ("naive", ""): 304.5, ("pup", ""): 308.3, ("mla", ""): 310.0,
    ("naive", "-base"): 86.7, ("pup", "-base"): 90.0, ("mla", "-base"): 92.1,
}

# How mmsegmentation 1.x builds SETR (docs/architectures.md 1.2 and section 7), as overrides of the
# official configs above. Its checkpoints load with ``build_model(name, **mmseg_layout(name))`` and the
# "mmseg" converter. Not a config field: mmseg's patch embedding has no bias (the converter fills in 0).
MMSEG_LAYOUT = {
    # Naive: no conv bias; x4 before the classifier; aux heads with two 1x1 convs, each followed by x4.
    "naive": dict(conv_bias=False, up_scale=4, aux_num_convs=2, aux_kernel_size=1, aux_up_scale=4),
    # PUP: no conv bias; three aux heads (official: four), each two 3x3 convs, each followed by x4.
    "pup": dict(conv_bias=False, aux_num_convs=2, aux_kernel_size=3, aux_up_scale=4),
    # MLA: x4 with align_corners=False, 1x1 classifier, aux heads are 1x1 convs with bias.
    "mla": dict(mla_classifier_kernel=1, mla_align_corners=False, mla_aux_bias=True),
}


def mmseg_layout(name: str) -> dict:
    """The ``build_model`` overrides that give the mmsegmentation 1.x layout of SETR variant ``name``."""
    spec = get_spec(name)
    decoder = name.split("-")[1]
    overrides = dict(MMSEG_LAYOUT[decoder])
    if decoder == "pup":  # mmseg drops the aux head on the last layer
        overrides["aux_layers"] = spec.config["aux_layers"][:-1]
    return overrides


for (_dec, _size), _params in _PARAMS_M.items():
    register_model(ModelSpec(
        name=f"setr-{_dec}{_size}",
        family="setr",
        builder=setr_mla if _dec == "mla" else setr_up,
        config={**_VIT[_size], **_ENCODER, **_TAPS[(_dec, _size)], **_DECODER[_dec]},
        crop_size=512,
        published={"params_m": _params} if _size == "" else {},  # ViT-B: nothing published
    ))
