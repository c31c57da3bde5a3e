"""Key maps for SegNeXt checkpoints.

segedu layout (one stage = downsampling, blocks, norm)::

    encoder.stages.0.downsample.{conv1, norm1, conv2, norm2}          (the stem)
    encoder.stages.{1,2,3}.downsample.{proj, norm}
    encoder.stages.{i}.blocks.{j}.{norm1, norm2, layer_scale_1, layer_scale_2}
    encoder.stages.{i}.blocks.{j}.attn.{proj_1, proj_2, msca.{conv0, branches.{k}.{0,1}, mix}}
    encoder.stages.{i}.blocks.{j}.mlp.{fc1, dwconv, fc2}
    encoder.stages.{i}.norm
    decoder.{squeeze, align}.{conv, norm}
    decoder.hamburger.{ham_in, ham_out.{conv, norm}}
    decoder.linear_pred

Sources:

* ``"official"``: Visual-Attention-Network/SegNeXt (mmseg-0.x ``EncoderDecoder``: ``backbone.*`` +
  ``decode_head.*``), and the ImageNet ``mscan_{t,s,b,l}.pth`` files, which hold the backbone keys
  without the ``backbone.`` prefix plus a ``head.*`` classifier (dropped; load with
  ``encoder_only=True``). The MLP's depth-wise conv sits in a wrapper: ``mlp.dwconv.dwconv.*``.
* ``"mmseg"``: mmsegmentation 1.x ``MSCAN`` + ``LightHamHead``. Same names as the official code
  except ``mlp.dwconv.*`` (no wrapper). mmseg's B and L configs use NMF rank 16 where the official
  ones use 64; the rank has no weights, so the keys fit either way, but build the model the weights
  were trained with: ``build_model("segnext-b", nmf_rank=16)`` for mmseg's B and L.

In both, stages count from 1 (``patch_embed1``, ``block1``, ``norm1``); the stem is an
``nn.Sequential`` whose indices 0, 1, 3, 4 are conv, BN, (GELU), conv, BN; the MSCA strip convs are
``conv{k}_1`` (1 x k) and ``conv{k}_2`` (k x 1) for branch k = 0, 1, 2 and ``conv3`` is the 1x1 mixing
conv; the decoder's mmcv ``ConvModule`` keeps its GroupNorm under ``gn``; ``conv_seg`` is the
classifier (used, not a leftover as in SegFormer's official checkpoints).
"""
from __future__ import annotations

import re

from . import register_converter, rename_keys

_BB = r"(?:backbone\.)?"  # full-model checkpoints prefix the encoder; ImageNet ones do not
_BLOCK = _BB + r"block(\d)\.(\d+)\."
_STAGE_BLOCK = r"encoder.stages.<\1>.blocks.\2."

_COMMON_RULES = [
    # encoder: stem (stage 1) and downsampling convs (stages 2-4)
    (_BB + r"patch_embed1\.proj\.0\.(\w+)", r"encoder.stages.0.downsample.conv1.\1"),
    (_BB + r"patch_embed1\.proj\.1\.(\w+)", r"encoder.stages.0.downsample.norm1.\1"),
    (_BB + r"patch_embed1\.proj\.3\.(\w+)", r"encoder.stages.0.downsample.conv2.\1"),
    (_BB + r"patch_embed1\.proj\.4\.(\w+)", r"encoder.stages.0.downsample.norm2.\1"),
    (_BB + r"patch_embed(\d)\.(proj|norm)\.(\w+)", r"encoder.stages.<\1>.downsample.\2.\3"),
    # encoder blocks: MSCA renamed, everything else keeps its name
    (_BLOCK + r"attn\.spatial_gating_unit\.conv0\.(\w+)", _STAGE_BLOCK + r"attn.msca.conv0.\3"),
    (_BLOCK + r"attn\.spatial_gating_unit\.conv(\d)_1\.(\w+)", _STAGE_BLOCK + r"attn.msca.branches.\3.0.\4"),
    (_BLOCK + r"attn\.spatial_gating_unit\.conv(\d)_2\.(\w+)", _STAGE_BLOCK + r"attn.msca.branches.\3.1.\4"),
    (_BLOCK + r"attn\.spatial_gating_unit\.conv3\.(\w+)", _STAGE_BLOCK + r"attn.msca.mix.\3"),
    (_BLOCK + r"((?:norm[12]|layer_scale_[12]|attn\.proj_[12]|mlp\.fc[12]|mlp\.dwconv)(?:\.\w+)?)",
     _STAGE_BLOCK + r"\3"),
    (_BB + r"norm(\d)\.(\w+)", r"encoder.stages.<\1>.norm.\2"),
    # decoder (mmcv ConvModule: .conv and .gn)
    (r"decode_head\.(squeeze|align)\.conv\.(\w+)", r"decoder.\1.conv.\2"),
    (r"decode_head\.(squeeze|align)\.gn\.(\w+)", r"decoder.\1.norm.\2"),
    (r"decode_head\.hamburger\.ham_in\.conv\.(\w+)", r"decoder.hamburger.ham_in.\1"),
    (r"decode_head\.hamburger\.ham_out\.conv\.(\w+)", r"decoder.hamburger.ham_out.conv.\1"),
    (r"decode_head\.hamburger\.ham_out\.gn\.(\w+)", r"decoder.hamburger.ham_out.norm.\1"),
    (r"decode_head\.conv_seg\.(\w+)", r"decoder.linear_pred.\1"),
]

# The ImageNet classifier of the mscan_*.pth files; mmseg-1.x data-preprocessor buffers (if saved).
_DROP = (r"head\..*", r"data_preprocessor\..*")


def _shift_stages(state_dict):
    """Both sources count stages from 1: turn the ``<n>`` markers into ``n - 1``."""
    return {re.sub(r"<(\d)>", lambda m: str(int(m.group(1)) - 1), k): v for k, v in state_dict.items()}


@register_converter("segnext", "official")
def from_official(state_dict):
    # The official MLP wraps its depth-wise conv (DWConv.dwconv); keys no rule matches are kept
    # as they are, so that load_checkpoint reports them.
    rules = [(_BLOCK + r"mlp\.dwconv\.dwconv\.(\w+)", _STAGE_BLOCK + r"mlp.dwconv.\3")] + _COMMON_RULES
    return _shift_stages(rename_keys(state_dict, rules, drop=_DROP))


@register_converter("segnext", "mmseg")
def from_mmseg(state_dict):
    return _shift_stages(rename_keys(state_dict, _COMMON_RULES, drop=_DROP))
