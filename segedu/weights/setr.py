"""Key maps for SETR checkpoints and for the ImageNet ViTs it starts from.

segedu layout::

    encoder.{patch_embed, cls_token, pos_embed}
    encoder.blocks.{i}.{norm1, attn.{qkv,proj}, norm2, mlp.{fc1,fc2}}
    Naive / PUP:  decoder.{norm, convs.{j}.{conv, norm}, linear_pred}
                  aux_heads.{k}.{norm, convs.{j}.{conv, norm}, linear_pred}
    MLA:          decoder.neck.{norms.{s}, proj.{s}.{conv, norm}, fuse.{s}.{conv, norm}}
                  decoder.head.{streams.{s}.{0, 1}.{conv, norm}, linear_pred}
                  aux_heads.{s}.linear_pred
    (s = MLA stream in tap order Z6, Z12, Z18, Z24)

Full-model sources (Naive / PUP / MLA are told apart by their keys):

* ``"official"``: fudan-zvg/SETR checkpoints (mmseg-0.x): timm-style ``backbone.*`` ViT keys (the
  MLA backbone also holds the per-tap LNs ``norm_{0..3}`` and the neck ``mla.mla_p{2..5}[_1x1]``),
  ``decode_head.*`` (``conv_{j}`` + ``syncbn_fc_{j}``, the last ``conv_{j}`` being the classifier; MLA:
  ``mlahead.head{2..5}`` and ``cls``) and ``auxiliary_head.{k}.*``. The unused ``conv_seg`` layers are dropped.
* ``"mmseg"``: mmsegmentation 1.x (``backbone.layers.{i}.{ln1, attn.attn.in_proj_*, ffn.layers.*}``,
  ``neck.*``, ``decode_head.*``, ``auxiliary_head.{k}.*``). Load into ``build_model(name,
  **segedu.models.setr.mmseg_layout(name))``. mmseg's MLA neck returns its streams deepest first
  (Z24, Z18, Z12, Z6) and its head concatenates them in that order: the converter reverses the stream
  indices and the classifier's input-channel blocks. mmseg's patch embedding has no bias: it becomes 0.

Auxiliary heads only exist in a model built with ``aux_heads=True``, so the registered converters
drop ``auxiliary_head.*``; call ``from_official(sd, keep_aux=True)`` / ``from_mmseg(sd, keep_aux=True)``
to keep them (then ``load_checkpoint(model, converted, "segedu")``).

Encoder-only sources (load with ``load_checkpoint(model, sd, source, encoder_only=True)``):
``"timm"`` (``vit_large_patch16_384``, ``vit_base_patch16_224``, ...), ``"torchvision"`` (``vit_b_16``,
``vit_l_16``) and ``"transformers"`` (``ViTModel`` / ``ViTForImageClassification``, hub files and
transformers-5 module names). Their positional embedding is resized to the 32x32 grid of the 512
crop, as the official code does when it loads ImageNet weights (bilinear, align_corners=False, cls
position kept); for a model built with another ``img_size`` call e.g. ``from_timm(sd, grid=(48, 48))``.
Their final LayerNorm, pooler and classifier are dropped (SETR's heads carry their own norms).
"""
from __future__ import annotations

import math
import re
from typing import Mapping

import torch

from ..models.setr import resize_pos_embed
from . import register_converter, rename_keys

DEFAULT_GRID = (32, 32)  # 512 crop / 16


def _fit_pos_embed(sd: dict, grid: tuple[int, int]) -> dict:
    """Resize ``encoder.pos_embed`` from the checkpoint's square grid to ``grid`` (kept if the counts agree)."""
    key = "encoder.pos_embed"
    if key in sd and sd[key].shape[1] - 1 != grid[0] * grid[1]:
        n = sd[key].shape[1] - 1
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"cannot resize a positional embedding of {n} patch positions (not a square "
                             f"grid) to {grid[0]}x{grid[1]}")
        sd[key] = resize_pos_embed(sd[key], (side, side), tuple(grid))
    return sd


# ---- timm-style ViT keys (timm itself and the official SETR backbone) -------------------------

_TIMM_RULES = [
    (r"patch_embed\.proj\.(weight|bias)", r"encoder.patch_embed.\1"),
    (r"(cls_token|pos_embed)", r"encoder.\1"),
    (r"blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)", r"encoder.blocks.\1.\2.\3"),
]


@register_converter("setr", "timm")
def from_timm(state_dict: Mapping[str, torch.Tensor], grid: tuple[int, int] = DEFAULT_GRID):
    """timm ``VisionTransformer`` (e.g. ``vit_large_patch16_384``) -> ``encoder.*``."""
    sd = rename_keys(state_dict, _TIMM_RULES,
                 drop=(r"(norm|fc_norm|head|pre_logits)\..*",))
    return _fit_pos_embed(sd, grid)


# ---- official SETR ---------------------------------------------------------------------------

_CONV_NORM = ("conv", "norm")  # positions 0, 1 of an official nn.Sequential(conv, BN, ReLU)

_OFFICIAL_RULES = [(rf"backbone\.{p}", r) for p, r in _TIMM_RULES] + [
    # MLA: the per-tap LNs and the neck live in the official backbone; mla_p2..mla_p5 = streams 0..3.
    (r"backbone\.norm_(\d)\.(\w+)", r"decoder.neck.norms.\1.\2"),
    # nn.Sequential(conv, BN, ReLU) per tap: index 0 is our .conv, 1 our .norm.
    (r"backbone\.mla\.mla_p(\d)_1x1\.([01])\.(\w+)",
     lambda m: f"decoder.neck.proj.{int(m[1]) - 2}.{_CONV_NORM[int(m[2])]}.{m[3]}"),
    (r"backbone\.mla\.mla_p(\d)\.([01])\.(\w+)",
     lambda m: f"decoder.neck.fuse.{int(m[1]) - 2}.{_CONV_NORM[int(m[2])]}.{m[3]}"),
    # head{n} = Sequential(conv, BN, ReLU, conv, BN, ReLU): 0, 1 -> block 0; 3, 4 -> block 1.
    (r"decode_head\.mlahead\.head(\d)\.([0134])\.(\w+)",
     lambda m: f"decoder.head.streams.{int(m[1]) - 2}.{int(m[2]) // 3}.{_CONV_NORM[int(m[2]) % 3]}.{m[3]}"),
    (r"decode_head\.cls\.(\w+)", r"decoder.head.linear_pred.\1"),
    (r"auxiliary_head\.(\d+)\.aux\.(\w+)", r"aux_heads.\1.linear_pred.\2"),
    # Naive / PUP (VisionTransformerUpHead): conv_{j} + syncbn_fc_{j}; the classifier was renamed below.
    (r"decode_head\.norm\.(\w+)", r"decoder.norm.\1"),
    (r"decode_head\.conv_(\d)\.(\w+)", r"decoder.convs.\1.conv.\2"),
    (r"decode_head\.syncbn_fc_(\d)\.(\w+)", r"decoder.convs.\1.norm.\2"),
    (r"decode_head\.linear_pred\.(\w+)", r"decoder.linear_pred.\1"),
    (r"auxiliary_head\.(\d+)\.norm\.(\w+)", r"aux_heads.\1.norm.\2"),
    (r"auxiliary_head\.(\d+)\.conv_(\d)\.(\w+)", r"aux_heads.\1.convs.\2.conv.\3"),
    (r"auxiliary_head\.(\d+)\.syncbn_fc_(\d)\.(\w+)", r"aux_heads.\1.convs.\2.norm.\3"),
    (r"auxiliary_head\.(\d+)\.linear_pred\.(\w+)", r"aux_heads.\1.linear_pred.\2"),
]


def _name_up_head_classifiers(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """In a ``VisionTransformerUpHead`` the highest-numbered ``conv_{j}`` is the classifier: call it ``linear_pred``."""
    last: dict[str, int] = {}
    for key in state_dict:
        m = re.fullmatch(r"(decode_head|auxiliary_head\.\d+)\.conv_(\d)\.weight", key)
        if m:
            last[m[1]] = max(last.get(m[1], -1), int(m[2]))
    out = {}
    for key, value in state_dict.items():
        m = re.fullmatch(r"(decode_head|auxiliary_head\.\d+)\.conv_(\d)\.(\w+)", key)
        if m and int(m[2]) == last[m[1]]:
            key = f"{m[1]}.linear_pred.{m[3]}"
        out[key] = value
    return out


@register_converter("setr", "official")
def from_official(state_dict: Mapping[str, torch.Tensor], keep_aux: bool = False):
    """fudan-zvg/SETR checkpoint (Naive, PUP or MLA) -> segedu keys."""
    drop = [r"(decode_head|auxiliary_head\.\d+)\.conv_seg\..*"]  # built by every mmseg-0.x head, never used
    if not keep_aux:
        drop.append(r"auxiliary_head\..*")
    return rename_keys(_name_up_head_classifiers(state_dict), _OFFICIAL_RULES, drop=tuple(drop))


# ---- mmsegmentation 1.x ----------------------------------------------------------------------

_MMSEG_VIT_RULES = [
    (r"backbone\.patch_embed\.projection\.(weight|bias)", r"encoder.patch_embed.\1"),
    (r"backbone\.(cls_token|pos_embed)", r"encoder.\1"),
    (r"backbone\.layers\.(\d+)\.ln([12])\.(\w+)", r"encoder.blocks.\1.norm\2.\3"),
    (r"backbone\.layers\.(\d+)\.attn\.attn\.in_proj_(weight|bias)", r"encoder.blocks.\1.attn.qkv.\2"),
    (r"backbone\.layers\.(\d+)\.attn\.attn\.out_proj\.(\w+)", r"encoder.blocks.\1.attn.proj.\2"),
    (r"backbone\.layers\.(\d+)\.ffn\.layers\.0\.0\.(\w+)", r"encoder.blocks.\1.mlp.fc1.\2"),
    (r"backbone\.layers\.(\d+)\.ffn\.layers\.1\.(\w+)", r"encoder.blocks.\1.mlp.fc2.\2"),
]

_MMSEG_UP_RULES = [  # SETRUPHead: norm, up_convs.{j} = [ConvModule(conv, bn), Upsample], conv_seg
    (r"decode_head\.norm\.(\w+)", r"decoder.norm.\1"),
    (r"decode_head\.up_convs\.(\d+)\.0\.conv\.(\w+)", r"decoder.convs.\1.conv.\2"),
    (r"decode_head\.up_convs\.(\d+)\.0\.bn\.(\w+)", r"decoder.convs.\1.norm.\2"),
    (r"decode_head\.conv_seg\.(\w+)", r"decoder.linear_pred.\1"),
    (r"auxiliary_head\.(\d+)\.norm\.(\w+)", r"aux_heads.\1.norm.\2"),
    (r"auxiliary_head\.(\d+)\.up_convs\.(\d+)\.0\.conv\.(\w+)", r"aux_heads.\1.convs.\2.conv.\3"),
    (r"auxiliary_head\.(\d+)\.up_convs\.(\d+)\.0\.bn\.(\w+)", r"aux_heads.\1.convs.\2.norm.\3"),
    (r"auxiliary_head\.(\d+)\.conv_seg\.(\w+)", r"aux_heads.\1.linear_pred.\2"),
]


def _mmseg_mla_rules(n: int) -> list:
    """MLANeck + SETRMLAHead: ``feat_extract``, the head's ``up_convs`` and the aux heads count streams deepest first."""
    flip = lambda j: n - 1 - int(j)  # noqa: E731
    return [
        (r"neck\.norm\.(\d+)\.(\w+)", r"decoder.neck.norms.\1.\2"),
        (r"neck\.mla\.channel_proj\.(\d+)\.conv\.(\w+)", r"decoder.neck.proj.\1.conv.\2"),
        (r"neck\.mla\.channel_proj\.(\d+)\.bn\.(\w+)", r"decoder.neck.proj.\1.norm.\2"),
        (r"neck\.mla\.feat_extract\.(\d+)\.conv\.(\w+)", lambda m: f"decoder.neck.fuse.{flip(m[1])}.conv.{m[2]}"),
        (r"neck\.mla\.feat_extract\.(\d+)\.bn\.(\w+)", lambda m: f"decoder.neck.fuse.{flip(m[1])}.norm.{m[2]}"),
        (r"decode_head\.up_convs\.(\d+)\.([01])\.conv\.(\w+)",
         lambda m: f"decoder.head.streams.{flip(m[1])}.{m[2]}.conv.{m[3]}"),
        (r"decode_head\.up_convs\.(\d+)\.([01])\.bn\.(\w+)",
         lambda m: f"decoder.head.streams.{flip(m[1])}.{m[2]}.norm.{m[3]}"),
        (r"decode_head\.conv_seg\.(\w+)", r"decoder.head.linear_pred.\1"),
        (r"auxiliary_head\.(\d+)\.conv_seg\.(\w+)", lambda m: f"aux_heads.{flip(m[1])}.linear_pred.{m[2]}"),
    ]


@register_converter("setr", "mmseg")
def from_mmseg(state_dict: Mapping[str, torch.Tensor], keep_aux: bool = False):
    """mmsegmentation 1.x SETR checkpoint -> segedu keys (for the ``mmseg_layout`` overrides)."""
    neck = sorted({int(m[1]) for k in state_dict if (m := re.fullmatch(r"neck\.norm\.(\d+)\.weight", k))})
    rules = _MMSEG_VIT_RULES + (_mmseg_mla_rules(len(neck)) if neck else _MMSEG_UP_RULES)
    drop = [r"data_preprocessor\..*"] + ([] if keep_aux else [r"auxiliary_head\..*"])
    sd = rename_keys(state_dict, rules, drop=tuple(drop))
    if neck:  # mmseg concatenates [Z24, Z18, Z12, Z6]; segedu [Z6, Z12, Z18, Z24]
        w = sd["decoder.head.linear_pred.weight"]
        sd["decoder.head.linear_pred.weight"] = torch.cat(w.chunk(len(neck), dim=1)[::-1], dim=1)
    if "encoder.patch_embed.weight" in sd and "encoder.patch_embed.bias" not in sd:
        weight = sd["encoder.patch_embed.weight"]  # mmseg ViT: patch_bias=False
        sd["encoder.patch_embed.bias"] = weight.new_zeros(weight.shape[0])
    return sd


# ---- torchvision -----------------------------------------------------------------------------

_TV_RULES = [
    (r"conv_proj\.(weight|bias)", r"encoder.patch_embed.\1"),
    (r"class_token", r"encoder.cls_token"),
    (r"encoder\.pos_embedding", r"encoder.pos_embed"),
    (r"encoder\.layers\.encoder_layer_(\d+)\.ln_([12])\.(\w+)", r"encoder.blocks.\1.norm\2.\3"),
    (r"encoder\.layers\.encoder_layer_(\d+)\.self_attention\.in_proj_(weight|bias)", r"encoder.blocks.\1.attn.qkv.\2"),
    (r"encoder\.layers\.encoder_layer_(\d+)\.self_attention\.out_proj\.(\w+)", r"encoder.blocks.\1.attn.proj.\2"),
    (r"encoder\.layers\.encoder_layer_(\d+)\.mlp\.(?:0|linear_1)\.(\w+)", r"encoder.blocks.\1.mlp.fc1.\2"),
    (r"encoder\.layers\.encoder_layer_(\d+)\.mlp\.(?:3|linear_2)\.(\w+)", r"encoder.blocks.\1.mlp.fc2.\2"),
]


@register_converter("setr", "torchvision")
def from_torchvision(state_dict: Mapping[str, torch.Tensor], grid: tuple[int, int] = DEFAULT_GRID):
    """torchvision ``vit_b_16`` / ``vit_l_16`` -> ``encoder.*`` (final ``encoder.ln`` and ``heads`` dropped)."""
    sd = rename_keys(state_dict, _TV_RULES, drop=(r"encoder\.ln\..*", r"heads\..*"))
    return _fit_pos_embed(sd, grid)


# ---- Hugging Face transformers ---------------------------------------------------------------

_HF_RULES = [
    (r"embeddings\.cls_token", r"encoder.cls_token"),
    (r"embeddings\.position_embeddings", r"encoder.pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.(\w+)", r"encoder.patch_embed.\1"),
    # hub files (and transformers 4.x modules)
    (r"encoder\.layer\.(\d+)\.layernorm_before\.(\w+)", r"encoder.blocks.\1.norm1.\2"),
    (r"encoder\.layer\.(\d+)\.layernorm_after\.(\w+)", r"encoder.blocks.\1.norm2.\2"),
    (r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(\w+)", r"encoder.blocks.\1.attn.\2.\3"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(\w+)", r"encoder.blocks.\1.attn.proj.\2"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.(\w+)", r"encoder.blocks.\1.mlp.fc1.\2"),
    (r"encoder\.layer\.(\d+)\.output\.dense\.(\w+)", r"encoder.blocks.\1.mlp.fc2.\2"),
    # transformers 5 module names (model.state_dict() in memory)
    (r"layers\.(\d+)\.layernorm_before\.(\w+)", r"encoder.blocks.\1.norm1.\2"),
    (r"layers\.(\d+)\.layernorm_after\.(\w+)", r"encoder.blocks.\1.norm2.\2"),
    (r"layers\.(\d+)\.attention\.([qkv])_proj\.(\w+)",
     lambda m: f"encoder.blocks.{m[1]}.attn.{dict(q='query', k='key', v='value')[m[2]]}.{m[3]}"),
    (r"layers\.(\d+)\.attention\.o_proj\.(\w+)", r"encoder.blocks.\1.attn.proj.\2"),
    (r"layers\.(\d+)\.mlp\.(fc1|fc2)\.(\w+)", r"encoder.blocks.\1.mlp.\2.\3"),
]


@register_converter("setr", "transformers")
def from_transformers(state_dict: Mapping[str, torch.Tensor], grid: tuple[int, int] = DEFAULT_GRID):
    """HF ``ViTModel`` / ``ViTForImageClassification`` -> ``encoder.*``; separate q, k, v fused into ``qkv``."""
    sd = {k.removeprefix("vit."): v for k, v in state_dict.items()}
    sd = rename_keys(sd, _HF_RULES, drop=(r"layernorm\..*", r"pooler\..*", r"classifier\..*", r"embeddings\.mask_token"))
    for key in [k for k in sd if ".attn.query." in k]:  # timm/official order: [q; k; v] rows
        parts = [sd.pop(key.replace(".query.", f".{p}.")) for p in ("query", "key", "value")]
        sd[key.replace(".query.", ".qkv.")] = torch.cat(parts, dim=0)
    return _fit_pos_embed(sd, grid)
