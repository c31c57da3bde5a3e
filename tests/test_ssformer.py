"""SSformer / Swin: faithful to the counted parameters, and equal to mmseg, timm, torchvision and HF.

Parity tests use a small Swin (embed 32, depths 2,2,2,2, heads 1,2,4,8, window 7) with random weights
(LayerNorm affines, bias tables and BN statistics randomised too, so that a mis-mapped key shows).
Input sizes per library (each reference only matches segedu where it follows the segmentation rules):

- mmseg and HF ``SwinBackbone`` / ``SwinModel(always_partition=True)`` follow them exactly (pad, then
  shift at every resolution): any size, odd ones included (97x131: every stage needs window padding,
  stage 4 is 4x5, smaller than one window).
- torchvision pads maps to whole windows like mmseg, but floors the 4x4 patch embedding and turns the
  shift off when a map is no larger than one window: sizes divisible by 4 whose every stage is larger
  than 7 (260x292 -> 65x73, 33x37, 17x19, 9x10: odd, padded).
- timm rolls *before* padding and (by default) turns the shift off at small maps: sizes whose every
  stage is a whole number of windows, i.e. divisible by 7 * 32 = 224.
"""
import re
import tempfile
import warnings

import pytest
import torch
from einops import rearrange

import segedu
from segedu.models.ssformer import (PatchMerging, SwinBlock, WindowAttention, relative_position_index,
                                    shift_window_mask, window_partition, window_reverse)
from segedu.weights import CheckpointMismatchError, convert, load_checkpoint
from segedu.zoo import count_macs, count_params, model_row

SMALL = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), drop_path_rate=0.0)
DIMS = (32, 64, 128, 256)

# docs/architectures.md section 6: backbone (segmentation form, ws 7), SSformer head, total; K = 150.
COUNTS_M = {"t": (27.5, 0.67, 28.2), "s": (48.8, 0.67, 49.5), "b": (86.7, 0.80, 87.5), "l": (195.0, 1.04, 196.0)}


def _small_model(num_classes: int = 150):
    return segedu.build_model("ssformer-swin-t", num_classes=num_classes, **SMALL).eval()


def _randomise(module: torch.nn.Module) -> None:
    """Non-trivial values where init is trivial: LN affines, bias tables, BN affines and statistics."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.2)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_()
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
            table = getattr(m, "relative_position_bias_table", None)
            if isinstance(table, torch.nn.Parameter):
                table.normal_()


def _normed(model, feats_nchw):
    """Apply our output LayerNorms (norm0..3) to a reference's pre-norm stage outputs."""
    return [getattr(model.encoder, f"norm{i}")(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            for i, f in enumerate(feats_nchw)]


def _assert_features_close(got, expected):
    assert [g.shape for g in got] == [e.shape for e in expected]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)


def _load_encoder(model, state_dict, source):
    """Encoder-only load from an ImageNet-style checkpoint: the output norms are named as not loaded."""
    fresh = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("encoder.norm")}
    left = load_checkpoint(model, state_dict, source, encoder_only=True)
    norms = [f"encoder.norm{i}.{p}" for i in range(4) for p in ("bias", "weight")]
    assert [k for k in left if k.startswith("encoder.")] == norms
    assert all(k.startswith(("decoder.", "encoder.norm")) for k in left)
    for k, v in fresh.items():  # they keep the model's own initialisation
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
    for i in range(4):  # then give the output norms non-trivial values of our own
        _randomise(getattr(model.encoder, f"norm{i}"))
    with pytest.raises(CheckpointMismatchError, match=r"missing keys"):
        load_checkpoint(model, state_dict, source)  # a full load never skips anything silently


# ---------------------------------------------------------------------------------------------------
# Published facts
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(COUNTS_M))
def test_parameter_counts_match_section_6(variant):
    row = model_row(f"ssformer-swin-{variant}")  # built on the meta device: counting costs no memory
    enc, dec, total = COUNTS_M[variant]
    assert abs(row["params"] / 1e6 - total) / total < 0.005
    assert abs(row["encoder_params"] / 1e6 - enc) / enc < 0.005
    assert abs(row["decoder_params"] / 1e6 - dec) < 0.01
    assert row["strides"] == (4, 8, 16, 32) and row["size"] == 512
    assert row["published_gmacs"] is None and row["gmacs"] > 0  # SSformer publishes no GMACs


def test_window_12_and_the_imagenet_flops():
    with torch.device("meta"):
        b12 = segedu.build_model("ssformer-swin-b", window_size=12)
        tiny = segedu.build_model("ssformer-swin-t")
    assert abs(count_params(b12) / 1e6 - 87.7) < 0.05  # section 6: Swin-B ws12 + head
    assert b12.encoder.stages[0].blocks[0].attn.relative_position_bias_table.shape == (23 * 23, 4)
    # Swin README: Swin-T 4.5 GFLOPs (multiply-accumulates) at 224; the classifier head adds ~0.001G.
    assert abs(count_macs(tiny.encoder, 224) / 1e9 - 4.5) < 0.05


# ---------------------------------------------------------------------------------------------------
# The pieces, against their definitions
# ---------------------------------------------------------------------------------------------------


def test_window_partition_and_reverse():
    x = torch.arange(2 * 14 * 21 * 3.0).reshape(2, 14, 21, 3)
    windows = window_partition(x, 7)
    assert windows.shape == (2 * 2 * 3, 7, 7, 3)
    torch.testing.assert_close(windows[7], x[1, 0:7, 7:14])  # image 1 (windows 6..11), window row 0, column 1
    torch.testing.assert_close(window_reverse(windows, 7, 14, 21), x)
    with pytest.raises(ValueError, match="pad it first"):
        window_partition(torch.zeros(1, 13, 14, 3), 7)


def test_relative_position_index():
    idx = relative_position_index(2)  # tokens (0,0), (0,1), (1,0), (1,1); offsets in [-1, 1]^2, 9 rows
    assert idx.tolist() == [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]
    idx = relative_position_index(7)
    assert idx.shape == (49, 49) and idx.min() == 0 and idx.max() == 13 * 13 - 1
    assert (idx.diagonal() == 6 * 13 + 6).all()  # zero offset: the centre of the 13 x 13 table
    torch.testing.assert_close(idx + idx.T, torch.full_like(idx, 2 * (6 * 13 + 6)))  # offset and its negative


def _mask_by_slices(H, W, ws, s):
    """The official construction: label 3 x 3 slices in a loop, window them, compare labels."""
    img = torch.zeros(H, W)
    cnt = 0
    for h in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
        for w in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
            img[h, w] = cnt
            cnt += 1
    win = rearrange(img, "(nh a) (nw b) -> (nh nw) (a b)", a=ws, b=ws)
    diff = win[:, None, :] - win[:, :, None]
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


@pytest.mark.parametrize("H,W,ws", [(14, 14, 7), (28, 21, 7), (7, 7, 7), (24, 36, 12)])
def test_shift_window_mask_matches_the_official_construction(H, W, ws):
    mask = shift_window_mask(H, W, ws, ws // 2)
    torch.testing.assert_close(mask, _mask_by_slices(H, W, ws, ws // 2))
    assert mask.shape == (H // ws * W // ws, ws * ws, ws * ws)
    if H > ws and W > ws:
        assert (mask[0] == 0).all()  # the top-left window does not wrap around
    assert (mask[-1] != 0).any()  # the bottom-right one always does


def test_window_attention_is_equation_4():
    torch.manual_seed(0)
    attn = WindowAttention(dim=16, num_heads=2, window_size=3).eval()
    _randomise(attn)
    x = torch.randn(2 * 4, 9, 16)  # 2 images x 4 windows
    mask = shift_window_mask(6, 6, 3, 1)
    q, k, v = rearrange(attn.qkv(x), "b n (three h d) -> three b h n d", three=3, h=2)
    table = attn.relative_position_bias_table
    B = torch.stack([torch.stack([table[relative_position_index(3)[i, j]] for j in range(9)]) for i in range(9)])
    logits = q @ k.transpose(-1, -2) / 8 ** 0.5 + B.permute(2, 0, 1)  # [b, heads, N, N] + [heads, N, N]
    masked = rearrange(logits, "(b nw) h i j -> b nw h i j", nw=4) + mask[None, :, None]
    out = rearrange(masked, "b nw h i j -> (b nw) h i j").softmax(-1) @ v
    expected = attn.proj(rearrange(out, "b h n d -> b n (h d)"))
    torch.testing.assert_close(attn(x, mask), expected, atol=1e-5, rtol=1e-5)


def test_shifted_windows_keep_wrapped_regions_apart():
    """Token (0, 0) is rolled next to token (13, 13); the mask must stop them seeing each other."""
    torch.manual_seed(0)
    block = SwinBlock(dim=8, num_heads=2, window_size=7, shift=3, mlp_ratio=4, drop_path=0.0).eval()
    x = torch.randn(1, 14, 14, 8)
    bumped = x.clone()
    bumped[0, 0, 0] += 10.0
    mask = shift_window_mask(14, 14, 7, 3)
    with torch.no_grad():
        torch.testing.assert_close(block.window_attention(x, mask)[0, 13, 13],
                                   block.window_attention(bumped, mask)[0, 13, 13], atol=1e-6, rtol=0)
        assert not torch.allclose(block.window_attention(x, None)[0, 13, 13],  # without the mask they would mix
                                  block.window_attention(bumped, None)[0, 13, 13])


def test_patch_merging_uses_the_official_order_and_pads_odd_maps():
    merge = PatchMerging(4)
    x = torch.randn(2, 6, 10, 4)
    x0, x1, x2, x3 = x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]
    expected = merge.reduction(merge.norm(torch.cat([x0, x1, x2, x3], dim=-1)))
    torch.testing.assert_close(merge(x), expected)
    assert merge(torch.randn(1, 7, 9, 4)).shape == (1, 4, 5, 8)


def test_encoder_shapes_schedule_and_init():
    small = _small_model()
    with torch.no_grad():
        feats = small.encoder(torch.randn(1, 3, 97, 131))
        assert [f.shape[1] for f in feats] == list(DIMS)
        assert [tuple(f.shape[-2:]) for f in feats] == [(25, 33), (13, 17), (7, 9), (4, 5)]  # ceil(H / stride)
        assert small.decoder(feats).shape == (1, 150, 25, 33)  # logits at stride 4
        assert small(torch.randn(1, 3, 97, 131)).shape == (1, 150, 97, 131)
    model = segedu.build_model("ssformer-swin-t")
    enc = model.encoder
    assert enc.out_channels == (96, 192, 384, 768) and enc.strides == (4, 8, 16, 32)
    blocks = [b for s in enc.stages for b in s.blocks]
    rates = [b.drop_path.p for b in blocks]
    assert len(rates) == 12 and rates[0] == 0.0 and rates[-1] == pytest.approx(0.3)
    assert [b.shift for b in enc.stages[2].blocks] == [0, 3, 0, 3, 0, 3]  # W-MSA, SW-MSA, ...
    assert enc.stages[3].downsample is None and enc.stages[0].downsample.reduction.bias is None
    table = blocks[0].attn.relative_position_bias_table
    assert table.shape == (169, 3) and table.std().item() == pytest.approx(0.02, rel=0.2)
    assert blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.2)
    assert (enc.norm3.weight == 1).all() and (enc.norm3.bias == 0).all()
    assert "relative_position_index" not in " ".join(model.state_dict())  # recomputed, not stored


# ---------------------------------------------------------------------------------------------------
# Parity with the reference implementations (random weights, no download)
# ---------------------------------------------------------------------------------------------------


def _mmseg_model():
    from mmseg_stub import import_mmseg
    MODELS = import_mmseg()
    backbone = MODELS.build(dict(type="SwinTransformer", embed_dims=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8),
                                 window_size=7, drop_path_rate=0.0, out_indices=(0, 1, 2, 3)))
    backbone.init_weights()
    head = MODELS.build(dict(type="SegformerHead", in_channels=list(DIMS), in_index=[0, 1, 2, 3], channels=256,
                             dropout_ratio=0.1, num_classes=150, norm_cfg=dict(type="BN", requires_grad=True),
                             align_corners=False, loss_decode=dict(type="CrossEntropyLoss", loss_weight=1.0)))
    _randomise(backbone)
    _randomise(head)
    backbone.eval()  # (mmseg's Swin overrides train() and returns None)
    head.eval()
    return backbone, head


def test_mmseg_swin_and_segformer_head_parity():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mmseg / mmengine deprecation chatter
        backbone, head = _mmseg_model()
    sd = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    sd |= {f"decode_head.{k}": v for k, v in head.state_dict().items()}
    model = _small_model()
    assert load_checkpoint(model, sd, "mmseg") == []  # full model: every key converted
    for batch, size in [(2, (97, 131)), (1, (64, 64)), (1, (224, 160))]:
        x = torch.randn(batch, 3, *size)
        with torch.no_grad():
            ref_feats = backbone(x)
            _assert_features_close(model.encoder(x), ref_feats)
            torch.testing.assert_close(model.forward_logits(x), head(ref_feats), atol=1e-4, rtol=1e-4)
    # The nn.Unfold channel reorder matters: loading the merging weights as they are breaks parity.
    raw = convert(sd, "mmseg", "ssformer-swin-t")
    for k in [k for k in raw if ".downsample." in k]:
        raw[k] = sd["backbone." + k[len("encoder."):]]  # mmseg's own (nn.Unfold) channel order
    model.load_state_dict(raw)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (model.encoder(x)[1] - backbone(x)[1]).abs().max() > 1e-2


def test_timm_parity():
    pytest.importorskip("timm")
    from timm.models.swin_transformer import SwinTransformer
    torch.manual_seed(0)
    # 224x448: stage 4 is 7x14, one window high. timm's default switches the shift off there, the
    # segmentation form keeps it; always_partition=True makes timm keep it too.
    ref = SwinTransformer(img_size=(224, 448), window_size=7, embed_dim=32, depths=(2, 2, 2, 2),
                          num_heads=(1, 2, 4, 8), num_classes=0, always_partition=True, strict_img_size=False).eval()
    _randomise(ref)
    model = _small_model()
    _load_encoder(model, ref.state_dict(), "timm")
    x = torch.randn(1, 3, 224, 448)
    with torch.no_grad():
        expected = _normed(model, ref.forward_intermediates(x, intermediates_only=True))
        _assert_features_close(model.encoder(x), expected)


def test_torchvision_parity():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    ref = torchvision.models.SwinTransformer([4, 4], 32, [2, 2, 2, 2], [1, 2, 4, 8], [7, 7],
                                             stochastic_depth_prob=0.0, num_classes=10).eval()
    _randomise(ref)
    model = _small_model()
    _load_encoder(model, ref.state_dict(), "torchvision")
    x = torch.randn(1, 3, 260, 292)
    stage_outputs = []
    with torch.no_grad():
        h = x
        for i, layer in enumerate(ref.features):  # 0 embed, 1/3/5/7 stages, 2/4/6 merging
            h = layer(h)
            if i % 2 == 1:
                stage_outputs.append(h.permute(0, 3, 1, 2))
        _assert_features_close(model.encoder(x), _normed(model, stage_outputs))


def _hf_config(**kw):
    transformers = pytest.importorskip("transformers")
    return transformers, transformers.SwinConfig(embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8],
                                                 window_size=7, **kw)


def test_transformers_backbone_parity_including_output_norms():
    transformers, config = _hf_config(out_features=["stage1", "stage2", "stage3", "stage4"])
    torch.manual_seed(0)
    ref = transformers.SwinBackbone(config).eval()
    _randomise(ref)
    model = _small_model()
    left = load_checkpoint(model, ref.state_dict(), "transformers", encoder_only=True)
    assert not [k for k in left if k.startswith("encoder.")]  # SwinBackbone has the output norms
    for batch, size in [(2, (97, 131)), (1, (64, 64))]:
        x = torch.randn(batch, 3, *size)
        with torch.no_grad():
            _assert_features_close(model.encoder(x), list(ref(x).feature_maps))


def test_transformers_swin_model_parity_hub_layout():
    transformers, config = _hf_config()
    torch.manual_seed(1)
    ref = transformers.SwinForImageClassification(config).eval()
    _randomise(ref)
    from safetensors.torch import load_file
    with tempfile.TemporaryDirectory() as tmp:  # the on-disk names: attention.self.query, intermediate.dense ...
        ref.save_pretrained(tmp)
        hub = load_file(f"{tmp}/model.safetensors")
    assert any(".attention.self.query." in k for k in hub)
    model = _small_model()
    _load_encoder(model, hub, "transformers")
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        out = ref.swin(x, output_hidden_states=True, output_hidden_states_before_downsampling=True,
                       always_partition=True)
        _assert_features_close(model.encoder(x), _normed(model, out.reshaped_hidden_states[1:]))


def _official_from_timm(timm_state: dict) -> dict:
    """An official (microsoft/Swin-Transformer) file from timm weights: merging at the end of the stage."""
    out = {}
    for k, v in timm_state.items():
        k = re.sub(r"layers\.(\d)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", k)
        out[k.replace("head.fc.", "head.")] = v
    for k in [k for k in out if k.endswith("relative_position_bias_table")]:  # the buffers official files carry
        out[k.replace("_bias_table", "_index")] = relative_position_index(7).flatten()
    out["layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)
    out["head.weight"], out["head.bias"] = torch.zeros(1000, 256), torch.zeros(1000)
    return {"model": out}


def test_official_checkpoint_conversion():
    pytest.importorskip("timm")
    from timm.models.swin_transformer import SwinTransformer
    torch.manual_seed(2)
    ref = SwinTransformer(img_size=(224, 224), window_size=7, embed_dim=32, depths=(2, 2, 2, 2),
                          num_heads=(1, 2, 4, 8), num_classes=0, always_partition=True, strict_img_size=False).eval()
    _randomise(ref)
    official = _official_from_timm(ref.state_dict())
    assert "layers.0.downsample.reduction.weight" in official["model"] and "norm.weight" in official["model"]
    model = _small_model()
    _load_encoder(model, official, "official")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = _normed(model, ref.forward_intermediates(x, intermediates_only=True))
        _assert_features_close(model.encoder(x), expected)


def test_checkpoint_mismatches_are_reported():
    with torch.device("meta"):
        b12 = segedu.build_model("ssformer-swin-b", window_size=12).state_dict()
        b7 = segedu.build_model("ssformer-swin-b")
    window_12_table = r"relative_position_bias_table: checkpoint \(529, 4\) vs model \(169, 4\)"
    with pytest.raises(CheckpointMismatchError, match=window_12_table):
        load_checkpoint(b7, b12)
    with pytest.raises(ValueError, match="known sources: .*mmseg.*official.*timm.*torchvision.*transformers"):
        convert({}, "mmdet", "ssformer-swin-t")
