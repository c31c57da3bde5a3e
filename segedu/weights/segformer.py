"""Key maps for SegFormer checkpoints.

segedu layout (one stage = patch embedding, blocks, norm)::

    encoder.stages.{i}.patch_embed.{proj,norm}
    encoder.stages.{i}.blocks.{j}.{norm1, attn.{q,kv,sr,norm,proj}, norm2, mlp.{fc1,dwconv,fc2}}
    encoder.stages.{i}.norm
    decoder.{linear_c.{i}, linear_fuse, bn, linear_pred}

Sources: ``"official"`` (NVlabs/SegFormer, mmseg-0.x keys; also the ImageNet ``mit_b*.pth`` files,
encoder only), ``"transformers"`` (Hugging Face ``SegformerForSemanticSegmentation`` and, encoder
only, ``SegformerForImageClassification`` / ``SegformerModel``) and ``"mmseg"`` (mmsegmentation 1.x
``MixVisionTransformer``: the MiT encoder of its model-zoo checkpoints; load with ``encoder_only=True``). Stage and block indices: official
counts stages from 1 (``patch_embed1``), HF and segedu from 0.
"""
from __future__ import annotations

import re

import torch

from . import register_converter, rename_keys


_OFFICIAL_RULES = [
    (r"(?:backbone\.)?patch_embed(\d)\.(proj|norm)\.(\w+)", r"encoder.stages.<\1>.patch_embed.\2.\3"),
    (r"(?:backbone\.)?block(\d)\.(\d+)\.mlp\.dwconv\.dwconv\.(\w+)", r"encoder.stages.<\1>.blocks.\2.mlp.dwconv.\3"),
    (r"(?:backbone\.)?block(\d)\.(\d+)\.(.+)", r"encoder.stages.<\1>.blocks.\2.\3"),
    (r"(?:backbone\.)?norm(\d)\.(\w+)", r"encoder.stages.<\1>.norm.\2"),
    (r"decode_head\.linear_c(\d)\.proj\.(\w+)", r"decoder.linear_c.<\1>.\2"),
    (r"decode_head\.linear_fuse\.conv\.(\w+)", r"decoder.linear_fuse.\1"),
    (r"decode_head\.linear_fuse\.bn\.(\w+)", r"decoder.bn.\1"),
    (r"decode_head\.linear_pred\.(\w+)", r"decoder.linear_pred.\1"),
]


@register_converter("segformer", "official")
def from_official(state_dict):
    # conv_seg: an unused layer every mmseg-0.x head builds; head.*: the ImageNet classifier.
    sd = rename_keys(state_dict, _OFFICIAL_RULES, drop=(r"decode_head\.conv_seg\..*", r"head\..*"))
    # Official stages count from 1: turn the "<n>" markers into n - 1.
    return {re.sub(r"<(\d)>", lambda m: str(int(m.group(1)) - 1), k): v for k, v in sd.items()}


_HF_RULES = [
    (r"segformer\.encoder\.patch_embeddings\.(\d)\.proj\.(\w+)", r"encoder.stages.\1.patch_embed.proj.\2"),
    (r"segformer\.encoder\.patch_embeddings\.(\d)\.layer_norm\.(\w+)", r"encoder.stages.\1.patch_embed.norm.\2"),
    (r"segformer\.encoder\.block\.(\d)\.(\d+)\.layer_norm_(\d)\.(\w+)", r"encoder.stages.\1.blocks.\2.norm\3.\4"),
    (r"segformer\.encoder\.block\.(\d)\.(\d+)\.attention\.self\.query\.(\w+)", r"encoder.stages.\1.blocks.\2.attn.q.\3"),
    (r"segformer\.encoder\.block\.(\d)\.(\d+)\.attention\.self\.(key|value)\.(\w+)",
     r"encoder.stages.\1.blocks.\2.attn.\3.\4"),  # fused into kv below
    (r"segformer\.encoder\.block\.(\d)\.(\d+)\.attention\.self\.sr\.(\w+)", r"encoder.stages.\1.blocks.\2.attn.sr.\3"),
    (r"segformer\.encoder\.block\.(\d)\.(\d+)\.attention\.self\.layer_norm\.(\w+)",
     r"encoder.stages.\1.blocks.\2.attn.norm.\3"),
    (r"segformer\.encoder\.block\.(\d)\.(\d+)\.attention\.output\.dense\.(\w+)",
     r"encoder.stages.\1.blocks.\2.attn.proj.\3"),
    (r"segformer\.encoder\.block\.(\d)\.(\d+)\.mlp\.dense1\.(\w+)", r"encoder.stages.\1.blocks.\2.mlp.fc1.\3"),
    (r"segformer\.encoder\.block\.(\d)\.(\d+)\.mlp\.dwconv\.dwconv\.(\w+)", r"encoder.stages.\1.blocks.\2.mlp.dwconv.\3"),
    (r"segformer\.encoder\.block\.(\d)\.(\d+)\.mlp\.dense2\.(\w+)", r"encoder.stages.\1.blocks.\2.mlp.fc2.\3"),
    (r"segformer\.encoder\.layer_norm\.(\d)\.(\w+)", r"encoder.stages.\1.norm.\2"),
    (r"decode_head\.linear_c\.(\d)\.proj\.(\w+)", r"decoder.linear_c.\1.\2"),
    (r"decode_head\.linear_fuse\.(\w+)", r"decoder.linear_fuse.\1"),
    (r"decode_head\.batch_norm\.(\w+)", r"decoder.bn.\1"),
    (r"decode_head\.classifier\.(\w+)", r"decoder.linear_pred.\1"),
]


# transformers >= 5 keeps the same checkpoint files (the layout above, which save_pretrained still
# writes) but renames the modules in memory; these rules read ``model.state_dict()`` of that version.
_HF_V5_RULES = [
    (r"segformer\.stages\.(\d)\.patch_embeddings\.layer_norm\.(\w+)", r"encoder.stages.\1.patch_embed.norm.\2"),
    (r"segformer\.stages\.(\d)\.patch_embeddings\.proj\.(\w+)", r"encoder.stages.\1.patch_embed.proj.\2"),
    (r"segformer\.stages\.(\d)\.blocks\.(\d+)\.layernorm_before\.(\w+)", r"encoder.stages.\1.blocks.\2.norm1.\3"),
    (r"segformer\.stages\.(\d)\.blocks\.(\d+)\.layernorm_after\.(\w+)", r"encoder.stages.\1.blocks.\2.norm2.\3"),
    (r"segformer\.stages\.(\d)\.blocks\.(\d+)\.attention\.q_proj\.(\w+)", r"encoder.stages.\1.blocks.\2.attn.q.\3"),
    (r"segformer\.stages\.(\d)\.blocks\.(\d+)\.attention\.k_proj\.(\w+)", r"encoder.stages.\1.blocks.\2.attn.key.\3"),
    (r"segformer\.stages\.(\d)\.blocks\.(\d+)\.attention\.v_proj\.(\w+)", r"encoder.stages.\1.blocks.\2.attn.value.\3"),
    (r"segformer\.stages\.(\d)\.blocks\.(\d+)\.attention\.o_proj\.(\w+)", r"encoder.stages.\1.blocks.\2.attn.proj.\3"),
    (r"segformer\.stages\.(\d)\.blocks\.(\d+)\.attention\.sequence_reduction\.sequence_reduction\.(\w+)",
     r"encoder.stages.\1.blocks.\2.attn.sr.\3"),
    (r"segformer\.stages\.(\d)\.blocks\.(\d+)\.attention\.sequence_reduction\.layer_norm\.(\w+)",
     r"encoder.stages.\1.blocks.\2.attn.norm.\3"),
    (r"segformer\.stages\.(\d)\.blocks\.(\d+)\.mlp\.dwconv\.dwconv\.(\w+)", r"encoder.stages.\1.blocks.\2.mlp.dwconv.\3"),
    (r"segformer\.stages\.(\d)\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.(\w+)", r"encoder.stages.\1.blocks.\2.mlp.\3.\4"),
    (r"segformer\.stages\.(\d)\.layer_norm\.(\w+)", r"encoder.stages.\1.norm.\2"),
    (r"decode_head\.linear_projections\.(\d)\.proj\.(\w+)", r"decoder.linear_c.\1.\2"),
]


@register_converter("segformer", "transformers")
def from_transformers(state_dict):
    # SegformerModel checkpoints have no "segformer." prefix; the ImageNet classifier head is dropped.
    sd = {(k if k.startswith(("segformer.", "decode_head.", "classifier.")) else f"segformer.{k}"): v
          for k, v in state_dict.items()}
    sd = rename_keys(sd, _HF_RULES + _HF_V5_RULES, drop=(r"classifier\..*",))
    # HF splits the official fused kv Linear into key and value: fuse them back (keys first).
    for key in [k for k in sd if ".attn.key." in k]:
        value_key = key.replace(".attn.key.", ".attn.value.")
        sd[key.replace(".attn.key.", ".attn.kv.")] = torch.cat([sd.pop(key), sd.pop(value_key)], dim=0)
    return sd


# mmsegmentation 1.x MixVisionTransformer (its tools/model_converters/mit2mmseg.py, read backwards):
# layers.{i}.0 = patch embedding, layers.{i}.1.{j} = blocks, layers.{i}.2 = the stage norm; attention is an
# nn.MultiheadAttention (fused q, k, v rows); the Mix-FFN is three convs (1x1, depth-wise 3x3, 1x1).
_MMSEG_RULES = [
    (r"backbone\.layers\.(\d)\.0\.projection\.(\w+)", r"encoder.stages.\1.patch_embed.proj.\2"),
    (r"backbone\.layers\.(\d)\.0\.norm\.(\w+)", r"encoder.stages.\1.patch_embed.norm.\2"),
    (r"backbone\.layers\.(\d)\.1\.(\d+)\.(norm1|norm2|attn\.sr|attn\.norm)\.(\w+)", r"encoder.stages.\1.blocks.\2.\3.\4"),
    (r"backbone\.layers\.(\d)\.1\.(\d+)\.attn\.attn\.in_proj_(weight|bias)", r"encoder.stages.\1.blocks.\2.attn.in_proj.\3"),
    (r"backbone\.layers\.(\d)\.1\.(\d+)\.attn\.attn\.out_proj\.(\w+)", r"encoder.stages.\1.blocks.\2.attn.proj.\3"),
    (r"backbone\.layers\.(\d)\.1\.(\d+)\.ffn\.layers\.0\.(\w+)", r"encoder.stages.\1.blocks.\2.mlp.fc1.\3"),
    (r"backbone\.layers\.(\d)\.1\.(\d+)\.ffn\.layers\.1\.(\w+)", r"encoder.stages.\1.blocks.\2.mlp.dwconv.\3"),
    (r"backbone\.layers\.(\d)\.1\.(\d+)\.ffn\.layers\.4\.(\w+)", r"encoder.stages.\1.blocks.\2.mlp.fc2.\3"),
    (r"backbone\.layers\.(\d)\.2\.(\w+)", r"encoder.stages.\1.norm.\2"),
]


@register_converter("segformer", "mmseg")
def from_mmseg(state_dict):
    """The MiT encoder of an mmseg checkpoint (keys with or without the ``backbone.`` prefix).

    mmseg's ``SegformerHead`` is not the official decoder (a 1x1 conv + BN + ReLU per stage instead of a
    Linear, ascending concat, 256 channels for B2-B5: docs/architectures.md section 3.3), so its
    ``decode_head.*`` keys stay as they are and a full load names them as unexpected; load the encoder
    with ``load_checkpoint(model, sd, "mmseg", encoder_only=True)``. mmseg's LayerNorms use eps 1e-6
    everywhere, the official code 1e-5 in the patch embedding and the reduction norm (section 7).
    """
    sd = {(k if k.startswith(("backbone.", "decode_head.", "auxiliary_head.")) else f"backbone.{k}"): v
          for k, v in state_dict.items()}
    sd = rename_keys(sd, _MMSEG_RULES)
    for key in [k for k in sd if ".attn.in_proj." in k]:  # rows [q; k; v] -> q and the fused kv = [k; v]
        in_proj = sd.pop(key)
        dim = in_proj.shape[0] // 3
        sd[key.replace(".in_proj.", ".q.")] = in_proj[:dim]
        sd[key.replace(".in_proj.", ".kv.")] = in_proj[dim:]
    for key in [k for k in sd if ".mlp.fc" in k and k.endswith("weight")]:  # 1x1 conv -> Linear
        sd[key] = sd[key].flatten(1)
    return sd

