"""Optimiser groups and schedule as the official configs build them (issue 11, section 2; docs/training.md)."""
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import segedu
from segedu.optim import build_optimizer, build_scheduler, match_key, official_name, param_groups
from segedu.recipes import RECIPES, group_table_rows, parameter_groups

DOCS = Path(__file__).resolve().parents[1] / "docs" / "training.md"


def groups_of(name: str) -> dict:
    return {g["group"]: g for g in parameter_groups(RECIPES[name])}


def test_mmcv_key_rule_first_match_longest_key_first():
    keys = {"norm": (1, 0), "head": (10, 1), "pos_block": (1, 0)}
    assert match_key("decode_head.squeeze.norm.weight", keys) == "head"   # same length: 'head' sorts first
    assert match_key("backbone.block1.0.norm1.weight", keys) == "norm"
    assert match_key("backbone.pos_block.0.proj.weight", keys) == "pos_block"  # longest first
    assert match_key("backbone.block1.0.attn.q.bias", keys) is None
    assert official_name("decoder.neck.proj.0.conv.weight") == "backbone.mla.proj.0.conv.weight"
    assert official_name("aux_heads.0.norm.weight") == "auxiliary_head.0.norm.weight"


def test_hand_derived_groups():
    # SegFormer-B0 (MiT dims 32/64/160/256, depth 2 each, sr 8/4/2/1): LayerNorms = per stage patch-embed norm
    # + per block norm1, norm2 (+ attn.norm where sr > 1) + stage norm, 2C scalars each.
    mit_norms = sum(2 * c * (2 + d * (2 + (sr > 1))) for c, d, sr in zip((32, 64, 160, 256), (2,) * 4, (8, 4, 2, 1)))
    # decoder: Linear(C_i, 256) x 4, fuse 1x1 1024 -> 256 without bias, BN(256), classifier 256 -> 150
    head = (32 + 64 + 160 + 256) * 256 + 4 * 256 + 1024 * 256 + 2 * 256 + 256 * 150 + 150
    g = groups_of("segformer-b0-ade20k")
    assert (mit_norms, head) == (7168, 433302)
    assert (g["norm"]["params"], g["norm"]["lr"], g["norm"]["weight_decay"]) == (mit_norms, 6e-5, 0.0)
    assert (g["head"]["params"], g["head"]["lr"], g["head"]["weight_decay"]) == (head, pytest.approx(6e-4), 0.01)
    assert set(g) == {"default", "head", "norm"} and g["default"]["weight_decay"] == 0.01

    # SegNeXt-T (MSCAN dims 32/64/160/256, depths 3/3/5/2): BN norm1 + norm2 per block, the BN of the
    # patch embeddings of stages 2-4, the LN after each stage; NOT the stem's two BNs (official proj.1 / proj.4).
    mscan_norms = sum(4 * c * d + 2 * c for c, d in zip((32, 64, 160, 256), (3, 3, 5, 2))) + 2 * (64 + 160 + 256)
    g = groups_of("segnext-t-ade20k")
    assert g["norm"]["params"] == mscan_norms == 8384
    model = segedu.build_model("segnext-t")
    by_name = {n: grp for grp in param_groups(model, 6e-5, 0.01, 10.0, ("pos_block", "norm"))
               for n in grp["param_names"]}
    assert by_name["encoder.stages.0.downsample.norm1.weight"]["weight_decay"] == 0.01  # stem BN keeps decay
    assert by_name["decoder.squeeze.norm.weight"]["name"] == "head"  # 'head' wins over 'norm': x10, decay kept
    assert by_name["decoder.squeeze.norm.weight"]["weight_decay"] == 0.01

    # SSformer Swin-T (C = 96, depths 2/2/6/2, heads 3/6/12/24, window 7): LayerNorms of the patch embedding,
    # blocks, patch merging (4C) and the four outputs; one (2*7-1)^2 x heads table per block. No head key: x1.
    dims, depths, heads = (96, 192, 384, 768), (2, 2, 6, 2), (3, 6, 12, 24)
    swin_norms = 2 * 96 + sum(4 * c * d for c, d in zip(dims, depths)) + sum(8 * c for c in dims[:3]) + 2 * sum(dims)
    tables = sum(169 * h * d for h, d in zip(heads, depths))
    g = groups_of("ssformer-swin-t-ade20k")
    assert (g["norm"]["params"], g["relative_position_bias_table"]["params"]) == (swin_norms, tables) == (26112, 23322)
    assert {x["lr"] for x in g.values()} == {6e-5}  # SSformer configs: no head multiplier
    assert g["default"]["weight_decay"] == 0.01  # the head's BNs (ConvModule 'bn') keep their decay

    # SETR-MLA: the neck is the official backbone.mla (mmseg: neck): x1; decode and auxiliary heads x10.
    g = groups_of("setr-mla-ade20k")
    assert set(g) == {"default", "head"} and (g["default"]["lr"], g["head"]["lr"]) == (1e-3, pytest.approx(1e-2))
    with torch.device("meta"):
        mla = RECIPES["setr-mla-ade20k"].build_model()
    neck = sum(p.numel() for n, p in mla.named_parameters() if n.startswith("decoder.neck."))
    heads = sum(p.numel() for n, p in mla.named_parameters() if n.startswith(("decoder.head.", "aux_heads.")))
    encoder = sum(p.numel() for p in mla.encoder.parameters())
    assert (g["default"]["params"], g["head"]["params"]) == (encoder + neck, heads) and neck > 0


def test_the_docs_hold_every_recipes_groups():
    text = DOCS.read_text()
    for name, recipe in RECIPES.items():
        section = text.split(f"#### `{name}`\n", 1)
        assert len(section) == 2, f"docs/training.md has no table for {name}"
        table = section[1].split("####", 1)[0].split("\n## ", 1)[0].split("\n### ", 1)[0]
        assert [line for line in table.splitlines() if line.startswith("| `")] == group_table_rows(recipe), name


def test_poly_floor_is_one_absolute_min_lr_for_every_group():
    recipe = RECIPES["setr-pup-ade20k"]
    model = nn.ModuleDict({"encoder": nn.Linear(2, 2), "decoder": nn.Linear(2, 2)})
    opt = build_optimizer(model, recipe.lr, recipe.weight_decay, recipe.head_lr_mult, recipe.no_decay_keywords,
                          optimizer="sgd")
    sched = build_scheduler(opt, 100, recipe.warmup_iters, recipe.warmup_ratio, recipe.poly_power, recipe.min_lr)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, pytest.approx(1e-2)]
    for _ in range(50):
        opt.step()
        sched.step()
    # mmcv: (base - min_lr) * (1 - t/T)^0.9 + min_lr for each group's base
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([(b - 1e-4) * 0.5 ** 0.9 + 1e-4 for b in (1e-3, 1e-2)])
    for _ in range(50):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-4, 1e-4])  # not 1e-3 for the x10 group


def _mmengine_lr_wd(model: nn.Module, lr: float, wd: float, custom_keys: dict) -> dict:
    """Per parameter (by id): the (lr, weight_decay) mmengine's DefaultOptimWrapperConstructor gives it."""
    from mmengine.optim import DefaultOptimWrapperConstructor
    cfg = dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=lr, weight_decay=wd))
    wrapper = DefaultOptimWrapperConstructor(cfg, paramwise_cfg=dict(custom_keys=custom_keys))(model)
    return {id(p): (g["lr"], g["weight_decay"]) for g in wrapper.optimizer.param_groups for p in g["params"]}


@pytest.mark.parametrize("name", ["segnext-t-ade20k", "ssformer-swin-t-ade20k"])
def test_groups_equal_mmengines_on_the_official_model(name):
    """mmseg's own modules (random weights, official parameter names) through mmengine's optimiser constructor
    with the config's custom_keys: every parameter gets the lr and weight decay segedu gives its converted name."""
    pytest.importorskip("mmengine")
    from mmseg_stub import import_mmseg
    from segedu.weights import convert
    MODELS = import_mmseg()
    recipe = RECIPES[name]
    if name.startswith("segnext"):
        backbone = MODELS.build(dict(type="MSCAN", embed_dims=[32, 64, 160, 256], mlp_ratios=[8, 8, 4, 4],
                                     depths=[3, 3, 5, 2], norm_cfg=dict(type="BN", requires_grad=True)))
        head = MODELS.build(dict(type="LightHamHead", in_channels=[64, 160, 256], in_index=[1, 2, 3], channels=256,
                                 ham_channels=256, num_classes=150, norm_cfg=dict(type="GN", num_groups=32),
                                 ham_kwargs=dict(MD_S=1, MD_R=16, train_steps=6, eval_steps=7, inv_t=100)))
        keys = {"pos_block": dict(decay_mult=0.0), "norm": dict(decay_mult=0.0), "head": dict(lr_mult=10.0)}
    else:
        backbone = MODELS.build(dict(type="SwinTransformer", embed_dims=96, depths=(2, 2, 6, 2),
                                     num_heads=(3, 6, 12, 24), window_size=7, out_indices=(0, 1, 2, 3)))
        head = MODELS.build(dict(type="SegformerHead", in_channels=[96, 192, 384, 768], in_index=[0, 1, 2, 3],
                                 channels=256, num_classes=150, norm_cfg=dict(type="BN", requires_grad=True)))
        keys = {k: dict(decay_mult=0.0) for k in ("absolute_pos_embed", "relative_position_bias_table", "norm")}
    official = nn.Module()
    official.backbone, official.decode_head = backbone, head
    theirs = _mmengine_lr_wd(official, recipe.lr, recipe.weight_decay, keys)
    named = {n: p for n, p in official.named_parameters()}
    converted = convert(named, "mmseg", recipe.model)  # official name -> segedu name, same Parameter objects
    ours = {n: (g["lr"], g["weight_decay"]) for g in param_groups(segedu.build_model(recipe.model), recipe.lr,
                                                                   recipe.weight_decay, recipe.head_lr_mult,
                                                                   recipe.no_decay_keywords)
            for n in g["param_names"]}
    compared = 0
    for segedu_name, p in converted.items():
        if segedu_name in ours and id(p) in theirs:
            assert ours[segedu_name] == pytest.approx(theirs[id(p)]), segedu_name
            compared += 1
    missing = sorted(set(ours) - {n for n, p in converted.items() if id(p) in theirs})
    assert compared >= len(ours) - 10, missing
    norms = [n for n in converted if re.search(r"norm", n)]
    assert norms and all(n in ours for n in norms)
