"""SegNeXt: faithful to the published counts, equal to mmsegmentation's MSCAN + LightHamHead, and an
NMF that does what the equations say."""
import pytest
import torch
import torch.nn.functional as F

import segedu
from segedu.models.segnext import MSCA, NMF2D
from segedu.registry import get_spec
from segedu.weights import CheckpointMismatchError, convert, from_pretrained, load_checkpoint
from segedu.zoo import model_row

# docs/architectures.md section 6 (official layout, 150 classes): encoder, decoder, total.
EXACT = {
    "t": (3_903_584, 359_830, 4_263_414),
    "s": (13_450_176, 482_710, 13_932_886),
    "b": (26_277_824, 1_358_486, 27_636_310),
    "l": (44_636_864, 4_289_686, 48_926_550),
}
# Multiply-accumulates at 512x512 measured by segedu.zoo (convolutions + matmuls, the NMF loop
# included). The README's torchprofile figures (7 / 16 / 35 / 70 G) are rounded to whole G;
# torchprofile also counts element-wise products and LayerNorms, +0.01-0.05 G here.
MEASURED_GMACS = {"t": 6.404, "s": 15.646, "b": 34.663, "l": 69.686}


@pytest.mark.parametrize("variant", list(EXACT))
def test_parameter_counts_and_macs(variant):
    row = model_row(f"segnext-{variant}")
    enc, dec, total = EXACT[variant]
    assert abs(row["params"] - total) / total < 0.005
    assert abs(row["encoder_params"] - enc) / enc < 0.005
    assert abs(row["decoder_params"] - dec) / dec < 0.005
    assert row["strides"] == (4, 8, 16, 32)
    assert row["gmacs"] == pytest.approx(MEASURED_GMACS[variant], rel=0.01)
    assert abs(row["gmacs"] - row["published_gmacs"]) < 0.6  # README rounding (T: 6.4 vs "7")


# ---------------------------------------------------------------- parity with mmsegmentation 1.2.2

def _randomise(*modules, seed=0):
    """Move norms, biases and LayerScales away from their init so that every weight is really checked."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in modules:
            for name, p in module.named_parameters():
                if p.ndim == 1 and (name.endswith("weight") or "layer_scale" in name):
                    p.copy_(torch.rand(p.shape, generator=g) + 0.5)
                elif p.ndim == 1:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            for name, b in module.named_buffers():
                if name.endswith("running_mean"):
                    b.copy_(torch.randn(b.shape, generator=g) * 0.1)
                elif name.endswith("running_var"):
                    b.copy_(torch.rand(b.shape, generator=g) + 0.5)


def _mmseg_segnext(dims, depths, channels, rank, dropout=0.1, drop_path=0.0):
    """mmseg's MSCAN + LightHamHead as its SegNeXt configs build them (random weights), and the
    full-model state dict (``backbone.*`` + ``decode_head.*``) an mmseg checkpoint would hold."""
    from mmseg_stub import import_mmseg  # tests/mmseg_stub.py: mmseg on mmcv-lite
    MODELS = import_mmseg()
    backbone = MODELS.build(dict(type="MSCAN", embed_dims=list(dims), mlp_ratios=[8, 8, 4, 4], depths=list(depths),
                                 drop_path_rate=drop_path, norm_cfg=dict(type="BN", requires_grad=True)))
    head = MODELS.build(dict(
        type="LightHamHead", in_channels=list(dims[1:]), in_index=[1, 2, 3], channels=channels,
        ham_channels=channels, dropout_ratio=dropout, num_classes=150, align_corners=False,
        norm_cfg=dict(type="GN", num_groups=32, requires_grad=True),
        ham_kwargs=dict(MD_S=1, MD_R=rank, train_steps=6, eval_steps=7, inv_t=100, rand_init=True)))
    _randomise(backbone, head)
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state.update({f"decode_head.{k}": v for k, v in head.state_dict().items()})
    return backbone, head, state


PARITY = [
    # name, depths (None: the variant's own), NMF rank, [(batch, H, W)]
    ("segnext-t", None, 16, [(1, 97, 131), (2, 128, 160)]),  # the mmseg T config, full depth
    ("segnext-b", (1, 1, 2, 1), 16, [(1, 75, 90)]),            # mmseg's B config (rank 16), shallower
    ("segnext-b", (1, 1, 2, 1), 64, [(1, 128, 160)]),          # the official B rank
]


@pytest.mark.parametrize("name,depths,rank,inputs", PARITY)
def test_mmseg_parity_eval(name, depths, rank, inputs):
    """Same logits as mmseg. mmseg draws the NMF bases with the global RNG (``torch.rand`` on the CPU);
    ``NMF2D(seed=s)`` in eval draws them from a generator seeded with ``s``: the same numbers as
    ``torch.manual_seed(s)`` followed by ``torch.rand``."""
    cfg = get_spec(name).config
    depths = depths or cfg["depths"]
    backbone, head, state = _mmseg_segnext(cfg["embed_dims"], depths, cfg["ham_channels"], rank)
    backbone.eval()
    head.eval()
    model = segedu.build_model(name, depths=depths, nmf_rank=rank).eval()
    load_checkpoint(model, state, source="mmseg")
    for seed, (batch, h, w) in enumerate(inputs):
        x = torch.randn(batch, 3, h, w)
        with torch.no_grad():
            torch.manual_seed(seed)
            expected = head(backbone(x))
            model.decoder.hamburger.nmf.seed = seed
            got = model.forward_logits(x)
            assert got.shape == (batch, 150, -(-h // 8), -(-w // 8))
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
            model.decoder.hamburger.nmf.seed = seed + 1  # other bases, other output: the draw matters
            assert (model.forward_logits(x) - expected).abs().max() > 1e-3


def test_mmseg_parity_train_mode():
    """Training mode: batch statistics in the BNs, 6 NMF steps, bases from the global RNG (both sides)."""
    cfg = get_spec("segnext-t").config
    backbone, head, state = _mmseg_segnext(cfg["embed_dims"], cfg["depths"], 256, 16, dropout=0.0)
    model = segedu.build_model("segnext-t", drop_path_rate=0.0, decoder_dropout=0.0).train()
    load_checkpoint(model, state, source="mmseg")
    backbone.train()
    head.train()
    x = torch.randn(2, 3, 96, 128)
    torch.manual_seed(7)
    expected = head(backbone(x))
    torch.manual_seed(7)
    got = model.forward_logits(x)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    got.square().mean().backward()  # gradients reach the layer before the NMF through all its updates
    assert model.decoder.hamburger.ham_in.weight.grad.abs().sum() > 0


def _official_from_mmseg(state: dict) -> dict:
    """The official layout differs from mmseg's only by the wrapper around the MLP's depth-wise conv."""
    return {k.replace(".mlp.dwconv.", ".mlp.dwconv.dwconv."): v for k, v in state.items()}


def test_official_checkpoints_full_and_imagenet(tmp_path):
    cfg = get_spec("segnext-t").config
    backbone, head, state = _mmseg_segnext(cfg["embed_dims"], cfg["depths"], 256, 16)
    backbone.eval()
    head.eval()
    x = torch.randn(1, 3, 64, 96)
    # A released ADE20K checkpoint file: {"state_dict": {"backbone.*", "decode_head.*"}}.
    torch.save({"state_dict": _official_from_mmseg(state)}, tmp_path / "segnext_tiny_512x512_ade_160k.pth")
    model = from_pretrained("segnext-t", tmp_path / "segnext_tiny_512x512_ade_160k.pth", source="official").eval()
    assert model.num_classes == 150  # read from the classifier
    with torch.no_grad():
        torch.manual_seed(3)
        expected = head(backbone(x))
        model.decoder.hamburger.nmf.seed = 3
        torch.testing.assert_close(model.forward_logits(x), expected, atol=1e-4, rtol=1e-4)
    # An ImageNet mscan_t.pth: backbone keys without prefix, plus the 1000-way classifier.
    imagenet = {k[len("backbone."):]: v for k, v in _official_from_mmseg(state).items() if k.startswith("backbone.")}
    imagenet["head.weight"], imagenet["head.bias"] = torch.zeros(1000, 256), torch.zeros(1000)
    fresh = segedu.build_model("segnext-t").eval()
    left = load_checkpoint(fresh, {"state_dict": imagenet}, source="official", encoder_only=True)
    assert "decoder.linear_pred.weight" in left and all(k.startswith("decoder.") for k in left)
    with torch.no_grad():
        for ours, theirs in zip(fresh.encoder(x), backbone(x)):
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    # The official wrapper name is not an mmseg key: the mmseg converter reports it.
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys .*mlp\.dwconv\.dwconv"):
        load_checkpoint(segedu.build_model("segnext-t"), _official_from_mmseg(state), source="mmseg")


def test_key_map_examples_and_unknown_source():
    """A sample of the map, spelled out (the parity tests load every key strictly)."""
    model = segedu.build_model("segnext-s")
    ours = set(model.state_dict())
    assert "encoder.stages.2.blocks.3.attn.msca.branches.2.1.weight" in ours
    mmseg_keys = {
        "backbone.patch_embed1.proj.0.weight": "encoder.stages.0.downsample.conv1.weight",
        "backbone.patch_embed1.proj.4.running_var": "encoder.stages.0.downsample.norm2.running_var",
        "backbone.patch_embed3.norm.bias": "encoder.stages.2.downsample.norm.bias",
        "backbone.block3.1.attn.spatial_gating_unit.conv2_1.weight":
            "encoder.stages.2.blocks.1.attn.msca.branches.2.0.weight",
        "backbone.block3.1.attn.spatial_gating_unit.conv3.bias": "encoder.stages.2.blocks.1.attn.msca.mix.bias",
        "backbone.block4.0.layer_scale_2": "encoder.stages.3.blocks.0.layer_scale_2",
        "backbone.block1.1.mlp.dwconv.weight": "encoder.stages.0.blocks.1.mlp.dwconv.weight",
        "backbone.norm4.weight": "encoder.stages.3.norm.weight",
        "decode_head.squeeze.gn.weight": "decoder.squeeze.norm.weight",
        "decode_head.hamburger.ham_in.conv.bias": "decoder.hamburger.ham_in.bias",
        "decode_head.hamburger.ham_out.gn.bias": "decoder.hamburger.ham_out.norm.bias",
        "decode_head.conv_seg.weight": "decoder.linear_pred.weight",
    }
    converted = convert({k: torch.zeros(1) for k in mmseg_keys}, "mmseg", "segnext-s")
    assert converted.keys() == set(mmseg_keys.values()) and converted.keys() <= ours
    with pytest.raises(ValueError, match="known sources: \\['mmseg', 'official'\\]"):
        convert({}, "transformers", "segnext-t")


# ---------------------------------------------------------------- the pieces, against their equations

def test_strip_convolutions_are_a_rank_one_kernel():
    """Eq. 1: a depth-wise 1xk conv followed by a kx1 conv is one kxk depth-wise conv whose kernel is
    the outer product of the two strips (exact when the first strip has no bias: with zero padding a
    bias would not reach the border). So MSCA sees 7x7, 11x11 and 21x21 windows for 2k weights each."""
    torch.manual_seed(0)
    dim = 6
    msca = MSCA(dim).eval()
    x = torch.randn(2, dim, 23, 29)
    with torch.no_grad():
        for horizontal, _ in msca.branches:
            horizontal.bias.zero_()
        a = msca.conv0(x)
        total = a
        for horizontal, vertical in msca.branches:
            k = horizontal.kernel_size[1]
            kernel = vertical.weight[:, :, :, :1] * horizontal.weight[:, :, :1, :]  # [C,1,k,1] * [C,1,1,k]
            total = total + F.conv2d(a, kernel, vertical.bias, padding=k // 2, groups=dim)
        expected = msca.mix(total) * x  # Eq. 2: attention times input
        torch.testing.assert_close(msca(x), expected, atol=1e-5, rtol=1e-5)


def _low_rank_nonneg(n=2, d=32, num=60, r=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    low_rank = torch.rand(n, d, r, generator=g) @ torch.rand(n, r, num, generator=g)
    return low_rank + 0.01 * torch.rand(n, d, num, generator=g)


def test_nmf_updates_decrease_the_error_and_stay_non_negative():
    nmf = NMF2D(rank=4)
    x = _low_rank_nonneg()
    bases = F.normalize(torch.rand(2, 32, 4, generator=torch.Generator().manual_seed(1)), dim=1)
    coef = F.softmax(x.transpose(1, 2) @ bases, dim=-1)
    errors = [torch.linalg.norm(x - bases @ coef.transpose(1, 2)).item()]
    for _ in range(20):  # Lee & Seung: each half-step is non-increasing in ||X - B C^T||_F
        coef = nmf.update_coef(x, bases, coef)
        errors.append(torch.linalg.norm(x - bases @ coef.transpose(1, 2)).item())
        bases = nmf.update_bases(x, bases, coef)
        errors.append(torch.linalg.norm(x - bases @ coef.transpose(1, 2)).item())
        assert (coef >= 0).all() and (bases >= 0).all()
    assert all(b <= a * (1 + 1e-5) for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.2 * errors[0]


def test_nmf_forward_is_the_written_out_algorithm():
    """Softmax init, 7 (eval) / 6 (train) full updates, one more coef update, reconstruction."""
    torch.manual_seed(0)
    nmf = NMF2D(rank=8)
    x = torch.relu(torch.randn(2, 16, 5, 7))
    bases0 = F.normalize(torch.rand(2, 16, 8), dim=1)
    for training, steps in [(False, 7), (True, 6)]:
        nmf.train(training)
        X = x.reshape(2, 16, 35)
        B, C = bases0, F.softmax(torch.einsum("bdn,bdr->bnr", X, bases0), dim=-1)  # inv_t = 1
        for _ in range(steps):
            C = C * torch.einsum("bdn,bdr->bnr", X, B) / (C @ (B.transpose(1, 2) @ B) + 1e-6)
            B = B * (X @ C) / (B @ (C.transpose(1, 2) @ C) + 1e-6)
        C = C * torch.einsum("bdn,bdr->bnr", X, B) / (C @ (B.transpose(1, 2) @ B) + 1e-6)
        expected = (B @ C.transpose(1, 2)).reshape(2, 16, 5, 7)
        torch.testing.assert_close(nmf(x, bases=bases0), expected, atol=1e-5, rtol=1e-5)


def test_nmf_randomness():
    x = torch.relu(torch.randn(2, 16, 4, 6))
    nmf = NMF2D(rank=8, seed=5).eval()
    # Evaluation: the same output every call, and the global RNG is left alone.
    state = torch.get_rng_state()
    first = nmf(x)
    torch.testing.assert_close(nmf(x), first, rtol=0, atol=0)
    assert torch.equal(torch.get_rng_state(), state)
    # ... and it is the draw torch.manual_seed(5); torch.rand(...) gives (what the official code sees).
    torch.manual_seed(5)
    official_bases = F.normalize(torch.rand(2, 16, 8), dim=1)
    torch.testing.assert_close(nmf(x, bases=official_bases), first, rtol=0, atol=0)
    # seed=None: the official behaviour, fresh bases from the global RNG at every call.
    nmf.seed = None
    assert not torch.allclose(nmf(x), nmf(x))
    # Training: global RNG, so torch.manual_seed reproduces a step and successive steps differ.
    nmf.train()
    torch.manual_seed(1)
    a, b = nmf(x), nmf(x)
    torch.manual_seed(1)
    torch.testing.assert_close(nmf(x), a, rtol=0, atol=0)
    assert not torch.allclose(a, b)


def test_nmf_runs_in_float32_under_autocast():
    nmf = NMF2D(rank=8).eval()
    x = torch.relu(torch.randn(1, 32, 6, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = nmf(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), nmf(x.bfloat16().float()), atol=2e-2, rtol=2e-2)


def test_meta_device_and_odd_sizes():
    with torch.device("meta"):
        model = segedu.build_model("segnext-b").eval()
    assert model(torch.zeros(1, 3, 96, 160, device="meta")).shape == (1, 150, 96, 160)
    model = segedu.build_model("segnext-t").eval()
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        feats = model.encoder(x)
        assert [f.shape[1] for f in feats] == [32, 64, 160, 256]
        assert [tuple(f.shape[-2:]) for f in feats] == [(25, 33), (13, 17), (7, 9), (4, 5)]  # ceil(H / stride)
        assert model.decoder(feats).shape == (1, 150, 13, 17)  # stride 8
        assert model(x).shape == (1, 150, 97, 131)


def test_variants_init_and_schedule():
    specs = {v: get_spec(f"segnext-{v}").config for v in "tsbl"}
    assert [specs[v]["nmf_rank"] for v in "tsbl"] == [16, 16, 64, 64]  # official configs
    assert [specs[v]["ham_channels"] for v in "tsbl"] == [256, 256, 512, 1024]
    assert segedu.list_models("segnext-*") == ["segnext-b", "segnext-l", "segnext-s", "segnext-t"]
    model = segedu.build_model("segnext-l")
    rates = [b.drop_path.p for s in model.encoder.stages for b in s.blocks]
    assert len(rates) == 38 and rates[0] == 0.0 and rates[-1] == pytest.approx(0.3)
    block = model.encoder.stages[2].blocks[5]
    assert torch.all(block.layer_scale_1 == 1e-2) and torch.all(block.layer_scale_2 == 1e-2)
    assert isinstance(block.norm1, torch.nn.BatchNorm2d) and model.encoder.stages[2].norm.eps == 1e-5
    assert block.mlp.fc1.out_channels == 4 * 320 and model.encoder.stages[0].blocks[0].mlp.fc1.out_channels == 8 * 64
    fc1 = block.mlp.fc1  # official init: normal(0, sqrt(2 / fan_out))
    assert fc1.weight.std().item() == pytest.approx((2 / 1280) ** 0.5, rel=0.05)
    head = model.decoder
    assert head.linear_pred.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert head.squeeze.conv.bias is None and head.hamburger.ham_in.bias is not None
    assert head.squeeze.norm.num_groups == 32 and head.squeeze.conv.in_channels == 128 + 320 + 512
    nmf = head.hamburger.nmf
    assert (nmf.rank, nmf.train_steps, nmf.eval_steps, nmf.inv_t, nmf.eps) == (64, 6, 7, 1.0, 1e-6)


def test_training_bases_are_drawn_on_the_inputs_device_without_a_graph_break(monkeypatch):
    nmf = NMF2D(rank=8).train()
    x = torch.rand(2, 32, 6, 7)
    explained = torch._dynamo.explain(nmf)(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    draws, on_meta = [], torch.rand(1, 32, 6, 7, device="meta")
    real_rand = torch.rand
    monkeypatch.setattr(torch, "rand", lambda *a, **kw: draws.append(str(kw.get("device"))) or real_rand(*a, **kw))
    nmf(on_meta)
    assert draws == ["meta"]  # drawn where the input is, not on the host and copied
    nmf.eval()(on_meta)
    assert draws == ["meta", "cpu"]  # evaluation: the seeded CPU generator, the same bases on every device
