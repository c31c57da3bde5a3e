"""Key maps for Swin / SSformer checkpoints.

segedu layout (``segedu/models/ssformer.py``)::

    encoder.patch_embed.{proj,norm}
    encoder.stages.{i}.blocks.{j}.{norm1, attn.{qkv, proj, relative_position_bias_table}, norm2, mlp.{fc1,fc2}}
    encoder.stages.{i}.downsample.{norm,reduction}          (i = 0, 1, 2: merging at the END of stage i)
    encoder.norm{i}                                         (the per-output LayerNorms, i = 0..3)
    decoder.linear_c.{i}.{conv,norm}, decoder.linear_fuse.{conv,norm}, decoder.linear_pred

Sources (all drop the ``relative_position_index`` / ``attn_mask`` buffers, which segedu recomputes):

- ``"official"``: microsoft/Swin-Transformer ImageNet checkpoints (``{"model": ...}``; ``layers.{i}``,
  ``head`` and the final ``norm`` dropped). Encoder only.
- ``"mmseg"``: mmsegmentation Swin backbone (``backbone.stages.{i}.blocks.{j}.attn.w_msa.qkv``,
  ``ffn.layers.0.0`` / ``ffn.layers.1``, ``backbone.norm{i}``) with its ``SegformerHead``
  (``decode_head.convs.{i}``, ``fusion_conv``, ``conv_seg``): the SSformer checkpoints. Full model.
- ``"timm"``: ``timm`` ``swin_*_patch4_window*`` models. timm merges at the START of a stage, so its
  ``layers.{i}.downsample`` is our ``stages.{i-1}.downsample``. Encoder only.
- ``"torchvision"``: ``torchvision.models.swin_t/s/b`` (v1): ``features.0`` = patch embedding,
  ``features.{1,3,5,7}`` = stages, ``features.{2,4,6}`` = merging. Encoder only.
- ``"transformers"``: Hugging Face ``SwinModel`` / ``SwinForImageClassification`` / ``SwinBackbone``, on-disk
  (hub) names and the renamed in-memory names of transformers >= 5; q, k, v are fused back into ``qkv``.
  Encoder only (``SwinBackbone`` also carries the output norms, as ``hidden_states_norms.stage{i+1}``).

Patch-merging channel order: official, timm, torchvision and HF all concatenate x0 (row 0, col 0),
x1 (1, 0), x2 (0, 1), x3 (1, 1), like segedu, so their ``reduction`` / ``norm`` load unchanged. mmseg
gathers the 2x2 group with ``nn.Unfold``: channel-major (index c * 4 + k) over the kernel positions
(0,0), (0,1), (1,0), (1,1), i.e. x0, x2, x1, x3; ``_from_unfold_order`` undoes that (section 2.2 of
the facts sheet: reshape to (out, C, 4), index [0, 2, 1, 3], transpose).

The output LayerNorms (``encoder.norm0..3``) belong to the segmentation form only: ImageNet checkpoints
(official, timm, torchvision, HF ``SwinModel``) do not have them. mmseg leaves them at their
initialisation when it loads such a checkpoint, and so do we: these converters declare the norms
``may_be_missing``, so ``load_checkpoint(..., encoder_only=True)`` accepts such a checkpoint, keeps the
norms at their initialisation and returns their keys among those not loaded.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

from . import register_converter, rename_keys

_BUFFERS = (r".*relative_position_index", r".*attn_mask")  # recomputed from the window size


def _unwrap(state_dict: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """Official Swin files are ``{"model": state_dict, ...}`` (mmcv files' ``state_dict`` is unwrapped by convert)."""
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        return state_dict["model"]
    return state_dict


def _renumber(sd: dict[str, torch.Tensor], offset: int) -> dict[str, torch.Tensor]:
    """Turn the ``<n>`` markers the rules leave into ``n + offset``."""
    return {re.sub(r"<(\d+)>", lambda m: str(int(m.group(1)) + offset), k): v for k, v in sd.items()}


_OUTPUT_NORMS = (r"encoder\.norm\d\.(weight|bias)",)  # segmentation-only: see the module docstring

_OFFICIAL_RULES = [
    (r"(?:backbone\.)?patch_embed\.(proj|norm)\.(\w+)", r"encoder.patch_embed.\1.\2"),
    (r"(?:backbone\.)?layers\.(\d+)\.blocks\.(\d+)\.(.+)", r"encoder.stages.\1.blocks.\2.\3"),
    (r"(?:backbone\.)?layers\.(\d+)\.downsample\.(reduction|norm)\.(\w+)", r"encoder.stages.\1.downsample.\2.\3"),
    (r"backbone\.norm(\d)\.(\w+)", r"encoder.norm\1.\2"),  # Swin-Transformer-Semantic-Segmentation backbones
]


@register_converter("ssformer", "official", may_be_missing=_OUTPUT_NORMS)
def from_official(state_dict):
    # norm.* / head.*: the ImageNet classifier's final LayerNorm and linear head.
    sd = rename_keys(_unwrap(state_dict), _OFFICIAL_RULES, drop=_BUFFERS + (r"norm\.\w+", r"head\..*"))
    return sd


def _from_unfold_order(t: torch.Tensor) -> torch.Tensor:
    """mmseg ``nn.Unfold`` channel order (c * 4 + k over (0,0),(0,1),(1,0),(1,1)) -> official [x0, x1, x2, x3]."""
    lead = t.shape[:-1]  # (out,) for the reduction weight, () for the norm
    t = t.reshape(*lead, -1, 4)[..., [0, 2, 1, 3]]  # [..., C, 4]: kernel positions as x0, x1, x2, x3
    return t.transpose(-1, -2).reshape(*lead, -1)  # block-major: [x0 | x1 | x2 | x3]


_MMSEG_BLOCK = r"(?:backbone\.)?stages\.(\d+)\.blocks\.(\d+)"
_OURS_BLOCK = r"encoder.stages.\1.blocks.\2"
_MMSEG_RULES = [
    (r"(?:backbone\.)?patch_embed\.projection\.(\w+)", r"encoder.patch_embed.proj.\1"),
    (r"(?:backbone\.)?patch_embed\.norm\.(\w+)", r"encoder.patch_embed.norm.\1"),
    (_MMSEG_BLOCK + r"\.(norm1|norm2)\.(\w+)", _OURS_BLOCK + r".\3.\4"),
    (_MMSEG_BLOCK + r"\.attn\.w_msa\.(qkv\.\w+|proj\.\w+|relative_position_bias_table)", _OURS_BLOCK + r".attn.\3"),
    (_MMSEG_BLOCK + r"\.ffn\.layers\.0\.0\.(\w+)", _OURS_BLOCK + r".mlp.fc1.\3"),
    (_MMSEG_BLOCK + r"\.ffn\.layers\.1\.(\w+)", _OURS_BLOCK + r".mlp.fc2.\3"),
    (r"(?:backbone\.)?stages\.(\d+)\.downsample\.(reduction|norm)\.(\w+)", r"encoder.stages.\1.downsample.\2.\3"),
    (r"(?:backbone\.)?norm(\d)\.(\w+)", r"encoder.norm\1.\2"),
    (r"decode_head\.convs\.(\d)\.conv\.(\w+)", r"decoder.linear_c.\1.conv.\2"),
    (r"decode_head\.convs\.(\d)\.bn\.(\w+)", r"decoder.linear_c.\1.norm.\2"),
    (r"decode_head\.fusion_conv\.conv\.(\w+)", r"decoder.linear_fuse.conv.\1"),
    (r"decode_head\.fusion_conv\.bn\.(\w+)", r"decoder.linear_fuse.norm.\1"),
    (r"decode_head\.conv_seg\.(\w+)", r"decoder.linear_pred.\1"),
]


@register_converter("ssformer", "mmseg")
def from_mmseg(state_dict):
    # auxiliary_head.*: an FCN head some mmseg Swin configs train on stage 3 and throw away.
    sd = rename_keys(state_dict, _MMSEG_RULES, drop=_BUFFERS + (r"auxiliary_head\..*",))
    for key in [k for k in sd if re.fullmatch(r"encoder\.stages\.\d+\.downsample\.(reduction\.weight|norm\.\w+)", k)]:
        sd[key] = _from_unfold_order(sd[key])
    return sd


_TIMM_RULES = [
    (r"patch_embed\.(proj|norm)\.(\w+)", r"encoder.patch_embed.\1.\2"),
    (r"layers\.(\d+)\.blocks\.(\d+)\.(.+)", r"encoder.stages.\1.blocks.\2.\3"),
    (r"layers\.(\d+)\.downsample\.(reduction|norm)\.(\w+)", r"encoder.stages.<\1>.downsample.\2.\3"),
]


@register_converter("ssformer", "timm", may_be_missing=_OUTPUT_NORMS)
def from_timm(state_dict):
    sd = rename_keys(state_dict, _TIMM_RULES, drop=_BUFFERS + (r"norm\.\w+", r"head\..*"))
    return _renumber(sd, -1)  # timm merges at the start of the next stage


_TV_RULES = [
    (r"features\.0\.0\.(\w+)", r"encoder.patch_embed.proj.\1"),
    (r"features\.0\.2\.(\w+)", r"encoder.patch_embed.norm.\1"),
    # norm1, norm2, attn.{qkv, proj, relative_position_bias_table}: the same names as segedu's
    (r"features\.([1357])\.(\d+)\.((?:norm1|norm2|attn)\..+)", r"encoder.stages.<\1>.blocks.\2.\3"),
    # torchvision's MLP is Sequential(Linear, GELU, Dropout, Linear, Dropout)
    (r"features\.([1357])\.(\d+)\.mlp\.0\.(\w+)", r"encoder.stages.<\1>.blocks.\2.mlp.fc1.\3"),
    (r"features\.([1357])\.(\d+)\.mlp\.3\.(\w+)", r"encoder.stages.<\1>.blocks.\2.mlp.fc2.\3"),
    (r"features\.([246])\.(reduction|norm)\.(\w+)", r"encoder.stages.[\1].downsample.\2.\3"),
]


@register_converter("ssformer", "torchvision", may_be_missing=_OUTPUT_NORMS)
def from_torchvision(state_dict):
    sd = rename_keys(state_dict, _TV_RULES, drop=_BUFFERS + (r"norm\.\w+", r"head\..*"))
    sd = {re.sub(r"<(\d)>", lambda m: str((int(m.group(1)) - 1) // 2), k): v for k, v in sd.items()}  # 1,3,5,7 -> 0..3
    sd = {re.sub(r"\[(\d)\]", lambda m: str(int(m.group(1)) // 2 - 1), k): v for k, v in sd.items()}  # 2,4,6 -> 0..2
    return sd


_HF_LAYER = r"swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)"
_HF_RULES = [
    (r"swin\.embeddings\.patch_embeddings\.projection\.(\w+)", r"encoder.patch_embed.proj.\1"),
    (r"swin\.embeddings\.norm\.(\w+)", r"encoder.patch_embed.norm.\1"),
    (_HF_LAYER + r"\.layernorm_before\.(\w+)", _OURS_BLOCK + r".norm1.\3"),
    (_HF_LAYER + r"\.layernorm_after\.(\w+)", _OURS_BLOCK + r".norm2.\3"),
    # on-disk (hub) names
    (_HF_LAYER + r"\.attention\.self\.(query|key|value)\.(\w+)", _OURS_BLOCK + r".attn.\3.\4"),  # fused below
    (_HF_LAYER + r"\.attention\.self\.(relative_position_bias_table)", _OURS_BLOCK + r".attn.\3"),
    (_HF_LAYER + r"\.attention\.output\.dense\.(\w+)", _OURS_BLOCK + r".attn.proj.\3"),
    (_HF_LAYER + r"\.intermediate\.dense\.(\w+)", _OURS_BLOCK + r".mlp.fc1.\3"),
    (_HF_LAYER + r"\.output\.dense\.(\w+)", _OURS_BLOCK + r".mlp.fc2.\3"),
    # transformers >= 5 in-memory names
    (_HF_LAYER + r"\.attention\.q_proj\.(\w+)", _OURS_BLOCK + r".attn.query.\3"),
    (_HF_LAYER + r"\.attention\.k_proj\.(\w+)", _OURS_BLOCK + r".attn.key.\3"),
    (_HF_LAYER + r"\.attention\.v_proj\.(\w+)", _OURS_BLOCK + r".attn.value.\3"),
    (_HF_LAYER + r"\.attention\.o_proj\.(\w+)", _OURS_BLOCK + r".attn.proj.\3"),
    (_HF_LAYER + r"\.attention\.relative_position_bias\.(relative_position_bias_table)", _OURS_BLOCK + r".attn.\3"),
    (_HF_LAYER + r"\.mlp\.(fc1|fc2)\.(\w+)", _OURS_BLOCK + r".mlp.\3.\4"),
    (r"swin\.encoder\.layers\.(\d+)\.downsample\.(reduction|norm)\.(\w+)", r"encoder.stages.\1.downsample.\2.\3"),
    (r"hidden_states_norms\.stage(\d)\.(\w+)", r"encoder.norm<\1>.\2"),  # SwinBackbone: stage1..4 -> norm0..3
]


@register_converter("ssformer", "transformers", may_be_missing=_OUTPUT_NORMS)
def from_transformers(state_dict):
    # SwinModel / SwinBackbone-internal checkpoints have no "swin." prefix.
    sd = {(f"swin.{k}" if k.startswith(("embeddings.", "encoder.layers.", "layernorm.", "pooler.")) else k): v
          for k, v in state_dict.items()}
    # swin.layernorm / classifier: the ImageNet classifier's final LayerNorm and head.
    sd = _renumber(rename_keys(sd, _HF_RULES, drop=_BUFFERS + (r"swin\.layernorm\.\w+", r"classifier\..*")), -1)
    # HF splits the official fused qkv Linear into query, key and value: fuse them back, in that order.
    for key in [k for k in sd if ".attn.query." in k]:
        parts = [sd.pop(key.replace(".query.", f".{p}.")) for p in ("query", "key", "value")]
        sd[key.replace(".query.", ".qkv.")] = torch.cat(parts, dim=0)
    return sd
