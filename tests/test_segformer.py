"""SegFormer: faithful to the published counts, and equal to Hugging Face transformers' model."""
import re

import pytest
import torch
from einops import rearrange

import segedu
from segedu.models.segformer import EfficientSelfAttention, MixFFN, OverlapPatchEmbed
from segedu.weights import CheckpointMismatchError, convert, from_pretrained, load_checkpoint
from segedu.zoo import count_params, model_row

# docs/architectures.md section 6: encoder, decoder, total with 150 classes (official/HF layout).
EXACT = {
    "b0": (3_319_392, 433_302, 3_752_694),
    "b1": (13_151_424, 564_374, 13_715_798),
    "b2": (24_196_288, 3_265_686, 27_461_974),
    "b3": (44_072_128, 3_265_686, 47_337_814),
    "b4": (60_842_688, 3_265_686, 64_108_374),
    "b5": (81_443_008, 3_265_686, 84_708_694),
}
# SegFormer paper Table 1: GFLOPs (= multiply-accumulates) at 512x512, B5 at 640x640.
PAPER_GMACS = {"b0": 8.4, "b1": 15.9, "b2": 62.4, "b3": 79.0, "b4": 95.7, "b5": 183.3}


@pytest.mark.parametrize("variant", list(EXACT))
def test_parameter_counts_and_macs_match_the_paper(variant):
    row = model_row(f"segformer-{variant}")
    enc, dec, total = EXACT[variant]
    assert abs(row["params"] - total) / total < 0.005
    assert abs(row["encoder_params"] - enc) / enc < 0.005
    assert abs(row["decoder_params"] - dec) / dec < 0.005
    assert row["size"] == (640 if variant == "b5" else 512)
    assert abs(row["gmacs"] - PAPER_GMACS[variant]) / PAPER_GMACS[variant] < 0.05


def _hf_model(variant: str, num_labels: int = 150):
    transformers = pytest.importorskip("transformers")
    wide = dict(hidden_sizes=[64, 128, 320, 512], decoder_hidden_size=256)
    cfgs = {
        "b0": {},
        "b1": wide,
        "b2": dict(wide, depths=[3, 4, 6, 3], decoder_hidden_size=768),
    }
    config = transformers.SegformerConfig(num_labels=num_labels, **cfgs[variant])
    return transformers.SegformerForSemanticSegmentation(config).eval()


@pytest.mark.parametrize("variant,batch,size", [("b0", 1, (97, 131)), ("b0", 3, (64, 80)),
                                                ("b1", 2, (75, 90)), ("b2", 1, (130, 97))])
def test_transformers_parity(variant, batch, size):
    torch.manual_seed(0)
    hf = _hf_model(variant)
    with torch.no_grad():  # randomise BN statistics so the fuse BN is really checked
        hf.decode_head.batch_norm.running_mean.normal_()
        hf.decode_head.batch_norm.running_var.uniform_(0.5, 2.0)
    model = segedu.build_model(f"segformer-{variant}").eval()
    model.load_state_dict(convert(hf.state_dict(), "transformers", f"segformer-{variant}"), strict=True)
    x = torch.randn(batch, 3, *size)
    with torch.no_grad():
        expected = hf(pixel_values=x).logits
        got = model.forward_logits(x)
    # HF uses LayerNorm eps 1e-5 where the official code uses 1e-6: differences stay far below 1e-4.
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert model(x).shape == (batch, 150, *size)


def _official_from_hf(hf_state: dict) -> dict:
    """Write an NVlabs-layout checkpoint from HF weights with the documented official -> HF key map."""
    out = {}
    for k, v in hf_state.items():
        k = re.sub(r"^segformer\.encoder\.patch_embeddings\.(\d)\.layer_norm", lambda m: f"backbone.patch_embed{int(m[1]) + 1}.norm", k)
        k = re.sub(r"^segformer\.encoder\.patch_embeddings\.(\d)", lambda m: f"backbone.patch_embed{int(m[1]) + 1}", k)
        k = re.sub(r"^segformer\.encoder\.block\.(\d)", lambda m: f"backbone.block{int(m[1]) + 1}", k)
        k = re.sub(r"^segformer\.encoder\.layer_norm\.(\d)", lambda m: f"backbone.norm{int(m[1]) + 1}", k)
        k = re.sub(r"^decode_head\.linear_c\.(\d)", lambda m: f"decode_head.linear_c{int(m[1]) + 1}", k)
        for a, b in [("layer_norm_1", "norm1"), ("layer_norm_2", "norm2"), ("attention.self.query", "attn.q"),
                     ("attention.self.sr", "attn.sr"), ("attention.self.layer_norm", "attn.norm"),
                     ("attention.output.dense", "attn.proj"), ("mlp.dense1", "mlp.fc1"), ("mlp.dense2", "mlp.fc2"),
                     ("decode_head.linear_fuse", "decode_head.linear_fuse.conv"),
                     ("decode_head.batch_norm", "decode_head.linear_fuse.bn"),
                     ("decode_head.classifier", "decode_head.linear_pred")]:
            k = k.replace(a, b)
        out[k] = v
    for k in [k for k in out if ".attention.self.key." in k]:  # official: one fused kv Linear
        v_key = k.replace(".key.", ".value.")
        out[k.replace("attention.self.key", "attn.kv")] = torch.cat([out.pop(k), out.pop(v_key)])
    out["decode_head.conv_seg.weight"] = torch.zeros(150, 128, 1, 1)  # the unused mmseg-0.x layer
    out["decode_head.conv_seg.bias"] = torch.zeros(150)
    return out


def test_official_checkpoint_conversion():
    torch.manual_seed(1)
    hf = _hf_model("b0")
    from safetensors.torch import load_file
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:  # the on-disk (hub) key layout, whatever the HF version
        hf.save_pretrained(tmp)
        official = _official_from_hf(load_file(f"{tmp}/model.safetensors"))
    model = segedu.build_model("segformer-b0").eval()
    load_checkpoint(model, official, source="official")
    x = torch.randn(2, 3, 77, 101)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_logits(x), hf(pixel_values=x).logits, atol=1e-4, rtol=1e-4)


def test_from_pretrained_reads_a_save_pretrained_folder(tmp_path):
    torch.manual_seed(2)
    hf = _hf_model("b0", num_labels=19)
    hf.save_pretrained(tmp_path)
    model = from_pretrained("segformer-b0", tmp_path).eval()
    assert model.num_classes == 19  # read from the checkpoint
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_logits(x), hf(pixel_values=x).logits, atol=1e-4, rtol=1e-4)


def test_checkpoint_of_another_model_is_rejected_with_a_report():
    b1 = segedu.build_model("segformer-b1").state_dict()
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatches \(180\): decoder\.linear_c\.0\.weight: checkpoint \(256, 64\) vs model \(256, 32\)"):
        load_checkpoint(segedu.build_model("segformer-b0"), b1)
    b2 = segedu.build_model("segformer-b2").state_dict()  # deeper: extra blocks
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys \(\d+\): .*blocks\.2\."):
        load_checkpoint(segedu.build_model("segformer-b1"), b2)
    with pytest.raises(CheckpointMismatchError, match="missing keys"):
        load_checkpoint(segedu.build_model("segformer-b0"), {})
    with pytest.raises(ValueError, match="known sources"):
        convert({}, "mmdet", "segformer-b0")


def test_encoder_only_loading_names_the_decoder_layers():
    hf = _hf_model("b0")
    # An ImageNet-style encoder checkpoint: encoder keys plus a 1000-way classifier.
    enc = {k: v for k, v in hf.state_dict().items() if k.startswith("segformer.")}
    enc["classifier.weight"], enc["classifier.bias"] = torch.zeros(1000, 256), torch.zeros(1000)
    model = segedu.build_model("segformer-b0")
    left = load_checkpoint(model, enc, source="transformers", encoder_only=True)
    assert left and all(k.startswith("decoder.") for k in left)
    assert "decoder.linear_pred.weight" in left


def test_efficient_attention_matches_the_equations():
    """Eq. 2 written out with an explicit softmax: K, V from the reduced sequence."""
    torch.manual_seed(0)
    dim, heads, sr, (h, w) = 32, 2, 4, (9, 14)
    attn = EfficientSelfAttention(dim, heads, sr).eval()
    x = torch.randn(2, h * w, dim)
    q = attn.q(x)
    reduced = attn.norm(attn.sr(x.transpose(1, 2).reshape(2, dim, h, w)).flatten(2).transpose(1, 2))
    assert reduced.shape == (2, (h // sr) * (w // sr), dim)  # N / R tokens
    k, v = attn.kv(reduced).chunk(2, dim=-1)
    split = lambda t: rearrange(t, "b n (h d) -> b h n d", h=heads)  # noqa: E731
    scores = split(q) @ split(k).transpose(-1, -2) / (dim // heads) ** 0.5
    expected = attn.proj(rearrange(scores.softmax(-1) @ split(v), "b h n d -> b n (h d)"))
    torch.testing.assert_close(attn(x, (h, w)), expected, atol=1e-5, rtol=1e-5)


def test_mix_ffn_sees_the_border():
    """The 3x3 depth-wise conv with zero padding makes identical tokens differ by position."""
    ffn = MixFFN(8, 32)
    x = torch.ones(1, 5 * 5, 8)
    out = ffn(x, (5, 5)).reshape(5, 5, 8)
    assert not torch.allclose(out[0, 0], out[2, 2])  # corner vs centre
    torch.testing.assert_close(out[1, 1], out[2, 2])  # interior tokens see the same neighbourhood


def test_overlap_patch_embed_shapes():
    emb = OverlapPatchEmbed(3, 16, patch_size=7, stride=4)
    tokens, (h, w) = emb(torch.randn(2, 3, 97, 131))
    assert (h, w) == (25, 33) and tokens.shape == (2, 25 * 33, 16)


def test_stage_outputs_and_any_input_size():
    model = segedu.build_model("segformer-b0").eval()
    x = torch.randn(1, 3, 97, 131)
    feats = model.encoder(x)
    assert [f.shape[1] for f in feats] == [32, 64, 160, 256]
    assert [f.shape[-2:] for f in feats] == [(25, 33), (13, 17), (7, 9), (4, 5)]  # ceil(H / stride)
    assert model.decoder(feats).shape == (1, 150, 25, 33)
    with torch.no_grad():
        assert model(x).shape == (1, 150, 97, 131)
        assert model(torch.randn(2, 3, 375, 500)).shape == (2, 150, 375, 500)


def test_drop_path_schedule_and_init():
    model = segedu.build_model("segformer-b2")
    rates = [b.drop_path.p for s in model.encoder.stages for b in s.blocks]
    assert len(rates) == 16 and rates[0] == 0.0 and rates[-1] == pytest.approx(0.1)
    assert all(b > a for a, b in zip(rates, rates[1:]))
    conv = model.encoder.stages[0].patch_embed.proj  # official init: normal(0, sqrt(2 / fan_out))
    assert conv.weight.std().item() == pytest.approx((2 / (7 * 7 * 64)) ** 0.5, rel=0.1)
    assert model.encoder.stages[0].blocks[0].norm1.eps == 1e-6
    assert model.encoder.stages[0].patch_embed.norm.eps == 1e-5
    assert count_params(model.decoder.linear_fuse) == 4 * 768 * 768  # no bias


def test_mmseg_mit_encoder_parity():
    """mmsegmentation 1.2.2's MixVisionTransformer (B0 settings) with random weights, converted with
    ``"mmseg"`` and loaded encoder-only, gives the same four feature maps at several sizes, odd ones included."""
    import warnings

    from mmseg_stub import import_mmseg
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mmseg / mmengine deprecation chatter
        MODELS = import_mmseg()
        ref = MODELS.build(dict(type="MixVisionTransformer", in_channels=3, embed_dims=32, num_stages=4,
                                num_layers=[2, 2, 2, 2], num_heads=[1, 2, 5, 8], patch_sizes=[7, 3, 3, 3],
                                sr_ratios=[8, 4, 2, 1], out_indices=(0, 1, 2, 3), mlp_ratio=4, qkv_bias=True,
                                drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0)).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-trivial norms and biases, so that a mis-mapped key shows
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.2 if p.ndim == 1 else 1 / p[0].numel() ** 0.5))
    checkpoint = {f"backbone.{k}": v for k, v in ref.state_dict().items()}
    checkpoint["decode_head.conv_seg.weight"] = torch.zeros(150, 256, 1, 1)  # mmseg's head: not ours
    model = segedu.build_model("segformer-b0").eval()
    left = load_checkpoint(model, checkpoint, "mmseg", encoder_only=True)
    assert left and all(k.startswith("decoder.") for k in left)
    for m in model.encoder.modules():  # mmseg uses LayerNorm eps 1e-6 everywhere (docs/architectures.md section 7)
        if isinstance(m, torch.nn.LayerNorm):
            m.eps = 1e-6
    for batch, size in [(1, (64, 64)), (2, (97, 131))]:
        x = torch.randn(batch, 3, *size, generator=gen)
        with torch.no_grad():
            expected, got = ref(x), model.encoder(x)
        assert [g.shape for g in got] == [e.shape for e in expected]
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys \(1\): decode_head\.conv_seg\.weight"):
        load_checkpoint(model, checkpoint, "mmseg")  # the full model: mmseg's head does not fit
