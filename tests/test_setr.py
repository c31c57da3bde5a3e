"""SETR: the published parameter counts, and equal outputs to timm, torchvision, Hugging Face and mmseg.

Every comparison uses random weights (no download) and small ViTs built through ``build_model``
overrides; the full-size key maps are checked on the "meta" device (shapes only, no memory).
"""
import math
import re
import tempfile

import pytest
import torch
import torch.nn.functional as F

import segedu
from segedu.models.setr import mmseg_layout, resize_pos_embed
from segedu.weights import CheckpointMismatchError, convert, load_checkpoint, read_state_dict, sources
from segedu.weights.setr import from_mmseg, from_official, from_transformers
from segedu.zoo import count_params

TOL = dict(atol=1e-4, rtol=1e-4)
D, DEPTH, HEADS = 64, 4, 4  # the small ViT of the parity tests


def small(name: str, num_classes: int = 5, **overrides):
    """A registered SETR variant with a 4-layer, 64-wide ViT and 64-channel heads (taps rescaled)."""
    taps = dict(mla_layers=(1, 2, 3, 4), mla_channels=64, mla_head_channels=32) if "mla" in name else \
        dict(in_layer=4, aux_layers=(1, 2, 3), channels=64)
    cfg = dict(embed_dim=D, depth=DEPTH, num_heads=HEADS, img_size=64, **taps)
    return segedu.build_model(name, num_classes=num_classes, **{**cfg, **overrides}).eval()


@torch.no_grad()
def randomize(module: torch.nn.Module) -> torch.nn.Module:
    """Perturb every weight and give the BNs non-trivial statistics, so no layer is an identity."""
    for name, t in module.state_dict().items():
        if name.endswith("running_var"):
            t.uniform_(0.5, 2.0)
        elif t.is_floating_point():
            t.add_(0.05 * torch.randn_like(t))
    return module


# ---- parameter counts (docs/architectures.md section 6) -----------------------------------------------

# main (encoder + decoder), + aux heads as trained; mmseg layout main / + aux (all K=150, 512 crop)
SECTION_6 = {
    "setr-naive": (304.5, 305.4, 304.5, 305.6),
    "setr-pup": (308.3, 317.9, 308.3, 317.3),
    "setr-mla": (310.0, 310.2, 309.4, 309.6),
}


@pytest.mark.parametrize("name", list(SECTION_6))
def test_parameter_counts_match_section_6(name):
    main, with_aux, mm_main, mm_aux = SECTION_6[name]
    with torch.device("meta"):
        model = segedu.build_model(name)
        trained = segedu.build_model(name, aux_heads=True)
        mm = segedu.build_model(name, aux_heads=True, **mmseg_layout(name))
    ours = count_params(model.encoder) + count_params(model.decoder)
    assert count_params(model) == ours  # aux heads are off by default: the model is the main model
    assert abs(ours / 1e6 - main) / main < 0.005
    assert abs(count_params(model.encoder) / 1e6 - 304.1) < 0.05
    assert abs(count_params(trained) / 1e6 - with_aux) / with_aux < 0.005
    assert abs((count_params(mm) - count_params(mm.aux_heads)) / 1e6 - mm_main) / mm_main < 0.005
    assert abs(count_params(mm) / 1e6 - mm_aux) / mm_aux < 0.005
    assert segedu.registry.get_spec(name).published["params_m"] == main
    if name == "setr-pup":  # + the five unused 1x1 conv_seg (512 -> 150) of the checkpoint: SegFormer's 318.3M
        assert count_params(trained) + 5 * (512 * 150 + 150) == 318_307_292


# ViT-B main models: our counts (nothing published; the ViT-B/16 encoder is 86.4M as in section 6).
BASE_MAIN_M = {"setr-naive-base": 86.7, "setr-pup-base": 90.0, "setr-mla-base": 92.1}


def test_variants_and_taps():
    assert segedu.list_models("setr-*") == ["setr-mla", "setr-mla-base", "setr-naive", "setr-naive-base",
                                            "setr-pup", "setr-pup-base"]
    expected = {  # encoder taps (1-based) of the models with aux heads, number of aux heads
        "setr-naive": ((10, 15, 20, 24), 3), "setr-pup": ((10, 15, 20, 24), 4), "setr-mla": ((6, 12, 18, 24), 4),
        "setr-naive-base": ((3, 6, 9, 12), 3), "setr-pup-base": ((3, 6, 9, 12), 4), "setr-mla-base": ((3, 6, 9, 12), 4),
    }
    for name, (taps, n_aux) in expected.items():
        with torch.device("meta"):
            model = segedu.build_model(name, aux_heads=True)
            default = segedu.build_model(name)
        enc = model.encoder
        assert enc.out_layers == taps and len(model.aux_heads) == n_aux and model.aux_weights == (0.4,) * n_aux
        assert len(default.aux_heads) == 0 and default.aux_weights == ()
        assert default.encoder.out_layers == ((taps[-1],) if "mla" not in name else taps)
        assert enc.pos_embed.shape == (1, 32 * 32 + 1, 1024 if "base" not in name else 768)
        assert enc.keep_cls_token == ("mla" not in name)  # official VIT_MLA drops the cls token before the blocks
        assert all(b.norm1.eps == 1e-6 and b.drop_path.p == 0.0 for b in enc.blocks)
        assert not hasattr(enc, "norm") and enc.patch_embed.kernel_size == (16, 16)
        expected_m = BASE_MAIN_M.get(name) or segedu.registry.get_spec(name).published["params_m"]
        assert abs(count_params(default) / 1e6 - expected_m) < 0.05
    assert all(not segedu.registry.get_spec(n).published for n in BASE_MAIN_M)  # nothing published for ViT-B


# ---- positions, padding, auxiliary heads ---------------------------------------------------------

def test_pos_embed_is_resized_on_the_fly_for_another_grid():
    torch.manual_seed(0)
    model = randomize(small("setr-naive-base"))  # positions for a 4x4 grid (64 px)
    pos = model.encoder.pos_embed
    assert resize_pos_embed(pos, (4, 4), (4, 4)) is pos  # same grid: used as it is
    resized = resize_pos_embed(pos, (4, 4), (7, 9))
    torch.testing.assert_close(resized[:, 0], pos[:, 0])  # the cls position is kept
    grid = F.interpolate(pos[:, 1:].reshape(1, 4, 4, D).permute(0, 3, 1, 2), size=(7, 9), mode="bilinear",
                         align_corners=False)
    torch.testing.assert_close(resized[:, 1:], grid.flatten(2).transpose(1, 2))
    # A 112x144 input (7x9 tokens) equals a model built for 112x144 that holds the resized positions.
    other = small("setr-naive-base", img_size=(112, 144))
    sd = model.state_dict()
    sd["encoder.pos_embed"] = resized
    other.load_state_dict(sd)
    x = torch.randn(1, 3, 112, 144)
    with torch.no_grad():
        for a, b in zip(model.encoder(x), other.encoder(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["setr-naive-base", "setr-pup-base", "setr-mla-base"])
def test_inputs_are_zero_padded_to_a_multiple_of_16_and_cropped_back(name):
    torch.manual_seed(0)
    model = randomize(small(name))
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        padded = F.pad(x, (0, 144 - 131, 0, 112 - 97))
        logits = model.decoder(model.encoder(padded))  # stride 16 (Naive), 1 (PUP), 4 (MLA) of 112x144
        expected = F.interpolate(logits, size=(112, 144), mode="bilinear", align_corners=False)[..., :97, :131]
        torch.testing.assert_close(model.forward_logits(x), expected, rtol=0, atol=0)
        assert model(x).shape == (2, 5, 97, 131)
        x = torch.randn(1, 3, 64, 80)  # multiples of 16: logits at the decoder's stride, nothing cut
        torch.testing.assert_close(model.forward_logits(x), model.decoder(model.encoder(x)), rtol=0, atol=0)
        assert model(torch.randn(1, 3, 16, 16)).shape == (1, 5, 16, 16)  # one patch is the smallest input
    with pytest.raises(ValueError, match="smaller than the minimum 16x16"):
        model(torch.randn(1, 3, 15, 64))


@pytest.mark.parametrize("name", ["setr-naive-base", "setr-pup-base", "setr-mla-base"])
def test_forward_train_gives_main_and_aux_logits_and_trains_every_head(name):
    torch.manual_seed(0)
    model = small(name, aux_heads=True).train()
    x, masks = torch.randn(2, 3, 64, 80), torch.randint(0, 5, (2, 64, 80))
    out = model.forward_train(x)
    assert set(out) == {"main", "aux"} and len(out["aux"]) == len(model.aux_heads) == len(model.aux_weights)
    from segedu.losses import seg_loss
    loss = seg_loss(out["main"], masks) + sum(w * seg_loss(a, masks) for w, a in zip(model.aux_weights, out["aux"]))
    loss.backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]
    # official MLA drops the cls token before the blocks: it only ever gets a zero gradient
    assert (model.encoder.cls_token.grad.abs().sum() == 0) == ("mla" in name)
    assert all(p.grad.abs().sum() > 0 for n, p in model.aux_heads.named_parameters())
    model.eval()
    with torch.no_grad():  # eval: forward_train's main logits are forward_logits'
        torch.testing.assert_close(model.forward_train(x)["main"], model.forward_logits(x), rtol=0, atol=0)


# ---- encoder parity: timm, torchvision, Hugging Face ---------------------------------------------

def _taps(model):
    return model.encoder.out_layers


def test_timm_parity():
    timm = pytest.importorskip("timm")
    from timm.models.vision_transformer import VisionTransformer as TimmViT
    torch.manual_seed(0)
    ref = TimmViT(img_size=512, patch_size=16, embed_dim=D, depth=DEPTH, num_heads=HEADS, num_classes=0,
                  dynamic_img_size=True, dynamic_img_pad=True).eval()
    model = small("setr-pup-base", img_size=512, aux_heads=True)
    left = load_checkpoint(model, ref.state_dict(), "timm", encoder_only=True)
    assert left and not any(k.startswith("encoder.") for k in left)
    for shape in [(2, 3, 500, 509)]:  # timm pads at the bottom/right like us (to the 32x32 grid)
        x = torch.randn(shape)
        with torch.no_grad():
            expected = ref.forward_intermediates(x, indices=[i - 1 for i in _taps(model)], norm=False,
                                                 output_fmt="NCHW", intermediates_only=True)
            for got, exp in zip(model.encoder(x), expected, strict=True):
                torch.testing.assert_close(got, exp, **TOL)
    # ImageNet ViT-L/16-384 keys -> the 512 model: positions resized 24x24 -> 32x32 (meta: shapes only)
    with torch.device("meta"):
        vit_l = timm.create_model("vit_large_patch16_384", pretrained=False)
        setr = segedu.build_model("setr-pup")
    sd = convert(vit_l.state_dict(), "timm", "setr-pup")
    assert {k: v.shape for k, v in sd.items()} == {f"encoder.{k}": v.shape for k, v in setr.encoder.state_dict().items()}


def test_timm_positions_are_interpolated_like_the_official_loader():
    pytest.importorskip("timm")
    from timm.models.vision_transformer import VisionTransformer as TimmViT
    ref = TimmViT(img_size=224, patch_size=16, embed_dim=D, depth=1, num_heads=HEADS, num_classes=10)
    sd = convert(ref.state_dict(), "timm", "setr-naive-base")  # 14x14 -> 32x32, bilinear, cls kept
    pos = ref.pos_embed.detach()
    grid = F.interpolate(pos[:, 1:].reshape(1, 14, 14, D).permute(0, 3, 1, 2), size=(32, 32), mode="bilinear",
                         align_corners=False)
    torch.testing.assert_close(sd["encoder.pos_embed"], torch.cat([pos[:, :1], grid.flatten(2).transpose(1, 2)], 1))
    assert not any(k.startswith(("head", "norm", "encoder.norm.")) for k in sd)


def test_torchvision_parity():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    ref = torchvision.models.VisionTransformer(image_size=512, patch_size=16, num_layers=DEPTH, num_heads=HEADS,
                                               hidden_dim=D, mlp_dim=4 * D).eval()
    with torch.no_grad():  # torchvision starts from zero positions and zero MLP biases
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model = small("setr-pup-base", img_size=512, aux_heads=True)
    load_checkpoint(model, ref.state_dict(), "torchvision", encoder_only=True)
    outs = []
    for layer in ref.encoder.layers:
        layer.register_forward_hook(lambda mod, inp, out: outs.append(out))
    for shape in [(1, 3, 512, 512), (1, 3, 500, 509)]:  # torchvision needs 512x512: pad it ourselves
        x = torch.randn(shape)
        outs.clear()
        with torch.no_grad():
            ref(F.pad(x, (0, 512 - shape[3], 0, 512 - shape[2])))
            expected = [o[:, 1:].transpose(1, 2).reshape(shape[0], D, 32, 32) for o in outs]
            for got, exp in zip(model.encoder(x), expected, strict=True):
                torch.testing.assert_close(got, exp, **TOL)
    with torch.device("meta"):  # vit_l_16 (224): 14x14 positions -> 32x32
        sd = convert(torchvision.models.vit_l_16().state_dict(), "torchvision", "setr-pup")
        setr = segedu.build_model("setr-pup")
    assert {k: v.shape for k, v in sd.items()} == {f"encoder.{k}": v.shape for k, v in setr.encoder.state_dict().items()}


def test_transformers_parity():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    # HF ViT's LayerNorm eps defaults to 1e-12; SETR/timm weights need 1e-6.
    config = transformers.ViTConfig(hidden_size=D, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                                    intermediate_size=4 * D, image_size=(112, 144), layer_norm_eps=1e-6)
    ref = randomize(transformers.ViTForImageClassification(config)).eval()
    model = small("setr-pup-base", img_size=(112, 144), aux_heads=True)
    with tempfile.TemporaryDirectory() as tmp:  # the hub file layout (query/key/value), whatever the HF version
        ref.save_pretrained(tmp)
        on_disk = read_state_dict(tmp)
    for sd in (on_disk, ref.state_dict()):
        load_checkpoint(model, from_transformers(sd, grid=(7, 9)), "segedu", encoder_only=True)
        for shape in [(1, 3, 112, 144), (2, 3, 97, 131)]:  # HF needs 112x144: pad it ourselves
            x = torch.randn(shape)
            with torch.no_grad():
                hidden = ref.vit(pixel_values=F.pad(x, (0, 144 - shape[3], 0, 112 - shape[2])),
                                 output_hidden_states=True).hidden_states
                expected = [hidden[i][:, 1:].transpose(1, 2).reshape(shape[0], D, 7, 9) for i in _taps(model)]
                for got, exp in zip(model.encoder(x), expected, strict=True):
                    torch.testing.assert_close(got, exp, **TOL)
    with torch.device("meta"):  # ViT-B/16-224 -> setr-naive-base at 512
        big = transformers.ViTModel(transformers.ViTConfig(layer_norm_eps=1e-6))
        setr = segedu.build_model("setr-naive-base")
    sd = convert(big.state_dict(), "transformers", "setr-naive-base")
    assert {k: v.shape for k, v in sd.items()} == {f"encoder.{k}": v.shape for k, v in setr.encoder.state_dict().items()}


# ---- full models: mmsegmentation 1.x -------------------------------------------------------------

@pytest.fixture(scope="module")
def mmseg_models():
    from mmseg_stub import import_mmseg
    return import_mmseg()


def _mmseg_config(decoder: str, k: int) -> dict:
    bn = dict(type="BN", requires_grad=True)
    ce = dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4)
    vit = dict(type="VisionTransformer", img_size=(64, 64), patch_size=16, embed_dims=D, num_layers=DEPTH,
               num_heads=HEADS, out_indices=(0, 1, 2, 3), drop_rate=0.0, with_cls_token=decoder != "mla",
               norm_cfg=dict(type="LN", eps=1e-6, requires_grad=True), interpolate_mode="bilinear")

    def up(index, num_convs, kernel, scale):  # mmseg's configs/_base_/models/setr_{naive,pup}.py, scaled down
        return dict(type="SETRUPHead", in_channels=D, channels=64, in_index=index, num_classes=k, dropout_ratio=0,
                    norm_cfg=bn, num_convs=num_convs, up_scale=scale, kernel_size=kernel, align_corners=False,
                    loss_decode=ce)
    if decoder == "naive":
        return dict(type="EncoderDecoder", backbone=vit, decode_head=up(3, 1, 1, 4),
                    auxiliary_head=[up(i, 2, 1, 4) for i in range(3)])
    if decoder == "pup":
        return dict(type="EncoderDecoder", backbone=vit, decode_head=up(3, 4, 3, 2),
                    auxiliary_head=[up(i, 2, 3, 4) for i in range(3)])
    return dict(  # configs/_base_/models/setr_mla.py, scaled down
        type="EncoderDecoder", backbone=vit,
        neck=dict(type="MLANeck", in_channels=[D] * 4, out_channels=64, norm_cfg=bn, act_cfg=dict(type="ReLU")),
        decode_head=dict(type="SETRMLAHead", in_channels=(64,) * 4, channels=4 * 32, in_index=(0, 1, 2, 3),
                         dropout_ratio=0, mla_channels=32, num_classes=k, norm_cfg=bn, align_corners=False,
                         loss_decode=ce),
        auxiliary_head=[dict(type="FCNHead", in_channels=64, channels=64, in_index=i, dropout_ratio=0, num_convs=0,
                             kernel_size=1, concat_input=False, num_classes=k, align_corners=False, loss_decode=ce)
                        for i in range(4)])


@pytest.mark.parametrize("decoder", ["naive", "pup", "mla"])
def test_mmseg_parity(mmseg_models, decoder):
    torch.manual_seed(0)
    ref = randomize(mmseg_models.build(_mmseg_config(decoder, k=5))).eval()
    name = f"setr-{decoder}-base"
    layout = mmseg_layout(name)
    layout.pop("aux_layers", None)  # the small model's taps come from small()
    model = small(name, aux_heads=True, **layout)
    load_checkpoint(model, from_mmseg(ref.state_dict(), keep_aux=True), "segedu")
    # mmseg counts MLA streams deepest first; the registered converter leaves the aux heads out
    aux_order = [3, 2, 1, 0] if decoder == "mla" else [0, 1, 2]
    assert not any(k.startswith("aux_heads.") for k in convert(ref.state_dict(), "mmseg", name))
    for shape in [(1, 3, 64, 64), (1, 3, 64, 80), (2, 3, 97, 131)]:  # same grid as pos_embed, other grids
        x = torch.randn(shape)
        with torch.no_grad():
            feats = ref.extract_feat(x)
            expected = ref.decode_head(feats)
            torch.testing.assert_close(model.decoder(model.encoder(x)), expected, **TOL)
            out = model.forward_train(x)
            if shape[-1] % 16 == 0 and shape[-2] % 16 == 0:
                for i, aux in zip(aux_order, ref.auxiliary_head, strict=True):
                    torch.testing.assert_close(out["aux"][i], aux(feats), **TOL)
            else:  # mmseg predicts the padded image; we cut the padding away
                hp, wp = math.ceil(shape[2] / 16) * 16, math.ceil(shape[3] / 16) * 16
                cropped = F.interpolate(expected, size=(hp, wp), mode="bilinear", align_corners=False)
                cropped = cropped[..., :shape[2], :shape[3]]
                torch.testing.assert_close(out["main"], cropped, **TOL)


# ---- official SETR checkpoints -------------------------------------------------------------------

def _official_state_dict(model, decoder: str) -> dict:
    """Our weights under the key names of fudan-zvg/SETR's modules (vit.py, vit_mla.py, vit_up_head.py,
    vit_mla_head.py, vit_mla_auxi_head.py), with the unused mmseg-0.x ``conv_seg`` layers."""
    out = {}
    for key, value in model.state_dict().items():
        k = key.replace("encoder.patch_embed.", "backbone.patch_embed.proj.").replace("encoder.", "backbone.")
        if decoder == "mla":
            k = re.sub(r"^decoder\.neck\.norms\.(\d)", r"backbone.norm_\1", k)
            k = re.sub(r"^decoder\.neck\.proj\.(\d)", lambda m: f"backbone.mla.mla_p{int(m[1]) + 2}_1x1", k)
            k = re.sub(r"^decoder\.neck\.fuse\.(\d)", lambda m: f"backbone.mla.mla_p{int(m[1]) + 2}", k)
            k = re.sub(r"^decoder\.head\.streams\.(\d)\.(\d)\.(conv|norm)",
                       lambda m: f"decode_head.mlahead.head{int(m[1]) + 2}.{3 * int(m[2]) + (m[3] == 'norm')}", k)
            k = re.sub(r"(_1x1|mla_p\d)\.conv\.", r"\1.0.", k).replace(".norm.", ".1.") if "mla." in k else k
            k = k.replace("decoder.head.linear_pred.", "decode_head.cls.")
            k = re.sub(r"^aux_heads\.(\d)\.linear_pred", r"auxiliary_head.\1.aux", k)
        else:
            k = re.sub(r"^decoder\.", "decode_head.", k)
            k = re.sub(r"^aux_heads\.(\d)\.", r"auxiliary_head.\1.", k)
            k = re.sub(r"\.convs\.(\d)\.conv\.", r".conv_\1.", k)
            k = re.sub(r"\.convs\.(\d)\.norm\.", r".syncbn_fc_\1.", k)
            head = model.decoder if k.startswith("decode_head.") else None
            if ".linear_pred." in k:  # the classifier is conv_{num_conv - 1}
                head = head or model.aux_heads[int(k.split(".")[1])]
                k = k.replace(".linear_pred.", f".conv_{len(head.convs)}.")
        out[k] = value
    for prefix in ["decode_head"] + [f"auxiliary_head.{i}" for i in range(len(model.aux_heads))]:
        out[f"{prefix}.conv_seg.weight"] = torch.zeros(model.num_classes, 512, 1, 1)
        out[f"{prefix}.conv_seg.bias"] = torch.zeros(model.num_classes)
    return out


def _official_heads(sd: dict, maps: list, decoder: str, size: int):
    """The official heads' eval-mode forward, op by op, on the official keys: [main, aux...] at ``size``."""
    conv = lambda p, x, pad=0: F.conv2d(x, sd[f"{p}.weight"], sd.get(f"{p}.bias"), padding=pad)  # noqa: E731
    bn = lambda p, x: F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"],  # noqa: E731
                                   sd[f"{p}.bias"], False, 0.0, 1e-5)
    ln = lambda p, x: F.layer_norm(x.permute(0, 2, 3, 1), (D,), sd[f"{p}.weight"], sd[f"{p}.bias"],  # noqa: E731
                                   1e-6).permute(0, 3, 1, 2)
    up = lambda x, s, ac=False: F.interpolate(x, size=s, mode="bilinear", align_corners=ac)  # noqa: E731
    if decoder == "mla":  # VIT_MLA norms + Conv_MLA, VIT_MLAHead, VIT_MLA_AUXIHead
        mla = "backbone.mla.mla_p"
        c = [F.relu(bn(f"{mla}{i + 2}_1x1.1", conv(f"{mla}{i + 2}_1x1.0", ln(f"backbone.norm_{i}", m))))
             for i, m in enumerate(maps)]
        p = [c[0] + c[1] + c[2] + c[3], c[1] + c[2] + c[3], c[2] + c[3], c[3]]
        p = [F.relu(bn(f"{mla}{i + 2}.1", conv(f"{mla}{i + 2}.0", x, 1))) for i, x in enumerate(p)]
        heads = []
        for i, x in enumerate(p):
            h = f"decode_head.mlahead.head{i + 2}"
            x = F.relu(bn(f"{h}.4", conv(f"{h}.3", F.relu(bn(f"{h}.1", conv(f"{h}.0", x, 1))), 1)))
            heads.append(up(x, 4 * x.shape[-1], ac=True))
        main = up(conv("decode_head.cls", torch.cat(heads, 1), 1), size)
        return [main] + [up(conv(f"auxiliary_head.{i}.aux", x), size) for i, x in enumerate(p)]

    def up_head(prefix, x, num_conv, up_layers, pad):  # VisionTransformerUpHead.forward
        x = ln(f"{prefix}.norm", x)
        if num_conv == 2:
            x = F.relu(bn(f"{prefix}.syncbn_fc_0", conv(f"{prefix}.conv_0", x, pad)))
            if up_layers == 2:
                x = up(x, 4 * x.shape[-1])
            return up(conv(f"{prefix}.conv_1", x), size)
        for j in range(4):
            x = F.relu(bn(f"{prefix}.syncbn_fc_{j}", conv(f"{prefix}.conv_{j}", x, 1)))
            if j < 3:
                x = up(x, 2 * x.shape[-1])
        return up(conv(f"{prefix}.conv_4", x), 2 * x.shape[-1])
    if decoder == "naive":  # num_conv=2, conv3x3_conv1x1=False, num_upsampe_layer=1 (main and aux)
        return [up_head("decode_head", maps[-1], 2, 1, 0)] + [up_head(f"auxiliary_head.{i}", m, 2, 1, 0)
                                                              for i, m in enumerate(maps[:-1])]
    # PUP: num_conv=4, num_upsampe_layer=4; aux: num_conv=2, 3x3, num_upsampe_layer=2 on Z_aux (incl. the last)
    return [up_head("decode_head", maps[-1], 4, 4, 1)] + [up_head(f"auxiliary_head.{i}", m, 2, 2, 1)
                                                          for i, m in enumerate(maps)]


@pytest.mark.parametrize("decoder", ["naive", "pup", "mla"])
def test_official_checkpoint_conversion_and_forward(decoder):
    torch.manual_seed(0)
    name = f"setr-{decoder}-base"
    overrides = dict(aux_layers=(1, 2, 3, 4)) if decoder == "pup" else {}  # PUP: aux on the last layer too
    model = randomize(small(name, aux_heads=True, **overrides))
    official = _official_state_dict(model, decoder)
    assert "decode_head.conv_seg.weight" in official and "backbone.pos_embed" in official
    converted = from_official(official, keep_aux=True)
    assert converted.keys() == model.state_dict().keys()
    fresh = small(name, aux_heads=True, **overrides)
    load_checkpoint(fresh, converted, "segedu")
    # The registered converter drops the aux heads: it loads into the default model (no aux heads) ...
    inference = small(name)
    load_checkpoint(inference, official, "official")
    # ... and the full checkpoint into that model is refused with a readable report.
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys \(\d+\): aux_heads\.0\."):
        load_checkpoint(inference, converted, "segedu")
    x = torch.randn(2, 3, 64, 64)  # the official code only runs at its crop size
    with torch.no_grad():
        maps = fresh.encoder(x)
        expected = _official_heads(official, maps, decoder, size=64)
        out = fresh.forward_train(x)
        torch.testing.assert_close(fresh(x), expected[0], **TOL)
        torch.testing.assert_close(inference(x), expected[0], **TOL)
        for got, exp in zip(out["aux"], expected[1:], strict=True):
            got = F.interpolate(got, size=(64, 64), mode="bilinear", align_corners=False)  # the official resize
            torch.testing.assert_close(got, exp, **TOL)


def test_converter_sources_and_errors():
    assert sources("setr-pup") == ["mmseg", "official", "timm", "torchvision", "transformers"]
    with pytest.raises(ValueError, match="known sources"):
        convert({}, "detectron2", "setr-pup")
    with pytest.raises(ValueError, match="not a square grid"):
        from_transformers({"embeddings.position_embeddings": torch.zeros(1, 1 + 7 * 9, 8)})
    with pytest.raises(TypeError, match="unknown override"):
        segedu.build_model("setr-naive", mla_layers=(6, 12, 18, 24))
