"""Training recipes: one entry per published recipe, plus the small synthetic one ``make train`` runs.

Values from the papers' official configs (docs/architectures.md sections 1.3, 2.4, 3.4, 4.4 and 5). A recipe
names the model, the ImageNet encoder checkpoint it starts from (:data:`PRETRAINED`), the optimiser and its
parameter groups, the schedule, the total batch, the data pipeline and the evaluation protocol;
``segedu train --config NAME`` runs it. docs/training.md lists every recipe's groups and sources.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

OPTIMIZERS = ("adamw", "sgd")
TEST_MODES = ("whole", "slide", "ms-flip")


@dataclass(frozen=True)
class Recipe:
    model: str
    iters: int
    batch_size: int                 # total batch per step (reached with grad accumulation on fewer GPUs)
    crop_size: int
    lr: float
    weight_decay: float
    head_lr_mult: float             # mmseg paramwise_cfg 'head': lr_mult
    warmup_iters: int
    optimizer: str = "adamw"        # adamw | sgd (SETR's official configs)
    momentum: float = 0.9           # SGD only
    no_decay_keywords: tuple[str, ...] = ("norm",)  # mmseg paramwise_cfg custom_keys with decay_mult 0
    warmup_ratio: float = 1e-6
    poly_power: float = 1.0
    min_lr: float = 0.0             # mmcv/mmengine poly floor: one absolute value for every group
    model_kwargs: dict = field(default_factory=dict)  # build_model overrides, e.g. SETR's aux_heads=True
    scale: tuple[int, int] = (2048, 512)        # RandomResize target (long, short) before the ratio
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    test_short_side: int | None = 512           # None: evaluate at the stored size
    test_size_divisor: int | None = 32
    test_mode: str = "whole"                    # whole | slide | ms-flip (segedu.evaluate)
    slide_crop: int | None = None               # sliding-window crop and stride (slide mode)
    slide_stride: int | None = None
    eval_every: int = 16000
    num_classes: int = 150
    reduce_zero_label: bool = True
    pretrained: str | None = None               # a key of PRETRAINED: the encoder checkpoint (None: scratch)

    def __post_init__(self):
        for f in fields(self):
            _check_field(f.name, getattr(self, f.name), f.type)
        for name in ("iters", "batch_size", "crop_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"recipe {name} must be at least 1, got {getattr(self, name)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"recipe optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.test_mode not in TEST_MODES:
            raise ValueError(f"recipe test_mode must be one of {TEST_MODES}, got {self.test_mode!r}")
        if self.test_mode == "slide" and not (self.slide_crop and self.slide_stride):
            raise ValueError("test_mode 'slide' needs slide_crop and slide_stride")
        if self.pretrained is not None and self.pretrained not in PRETRAINED:
            raise ValueError(f"recipe pretrained must be one of {sorted(PRETRAINED)} or null, got {self.pretrained!r}")

    @property
    def min_lr_ratio(self) -> float:
        """``min_lr / lr``: the floor as a factor of the base rate (of the groups at x1)."""
        return self.min_lr / self.lr

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        """Inverse of ``to_dict`` (JSON and checkpoints turn tuples into lists)."""
        if "min_lr_ratio" in d and "min_lr" not in d:  # checkpoints written before min_lr was absolute
            d = {**d, "min_lr": d["min_lr_ratio"] * d["lr"]}
            d.pop("min_lr_ratio")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown recipe field(s) {sorted(unknown)}; a recipe has {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def build_model(self):
        """The model this recipe trains: ``build_model(model, num_classes, **model_kwargs)``."""
        from .registry import build_model
        return build_model(self.model, num_classes=self.num_classes, **self.model_kwargs)

    def with_overrides(self, **kw) -> Recipe:
        """A copy with the given fields replaced; ``None`` sets a field to ``None`` (e.g. ``test_size_divisor``)."""
        return replace(self, **kw)


_SCALARS = {"int": int, "float": (int, float), "str": str, "bool": bool, "dict": dict}


def _check_field(name: str, value, annotation: str) -> None:
    """A recipe field holds its annotated type (a JSON recipe can hold anything): ``int`` is not ``bool`` or
    ``float``, an ``int`` is a valid ``float``, ``X | None`` accepts null, ``tuple[T, ...]`` checks each item."""
    if annotation.endswith(" | None"):
        if value is None:
            return
        annotation = annotation.removesuffix(" | None")
    if annotation.startswith("tuple["):
        items = [s.strip() for s in annotation[6:-1].split(",")]
        if items[-1] == "..." and isinstance(value, tuple):
            items = items[:1] * len(value)
        ok = isinstance(value, tuple) and len(value) == len(items) and all(map(_holds, value, items))
    else:
        ok = _holds(value, annotation)
    if not ok:
        raise ValueError(f"recipe field {name} must be {annotation}, got {value!r}")


def _holds(value, annotation: str) -> bool:
    return isinstance(value, _SCALARS[annotation]) and (annotation == "bool" or not isinstance(value, bool))


@dataclass(frozen=True)
class EncoderCheckpoint:
    """An ImageNet encoder checkpoint a recipe fine-tunes from (loaded with ``encoder_only=True``).

    ``file``: the official release file and ``origin`` where it is published; ``source``: the segedu.weights
    converter that reads that file; ``hub_id`` / ``hub_source``: the same weights on the Hugging Face hub
    (None where the hub has no copy), read by that converter. ``note``: what differs from the paper's file.
    """

    file: str
    origin: str
    source: str
    hub_id: str | None = None
    hub_source: str | None = None
    note: str = ""

    @property
    def default(self) -> tuple[str, str]:
        """What ``segedu train`` loads without ``--pretrained``: the hub copy where one exists, else the file."""
        return (self.hub_id, self.hub_source) if self.hub_id else (self.file, self.source)


_NV = "NVlabs/SegFormer README (ImageNet-1k MiT weights)"
_NX = "Visual-Attention-Network/SegNeXt README (ImageNet-1k MSCAN weights)"
_SW = "microsoft/Swin-Transformer releases v1.0.0"
PRETRAINED: dict[str, EncoderCheckpoint] = {
    **{f"mit-{v}": EncoderCheckpoint(f"mit_{v}.pth", _NV, "official", f"nvidia/mit-{v}", "transformers")
       for v in ("b0", "b1", "b2", "b3", "b4", "b5")},
    **{f"mscan-{v}": EncoderCheckpoint(f"mscan_{v}.pth", _NX, "official") for v in ("t", "s", "b", "l")},
    # SETR (fudan-zvg/SETR configs): timm's original ViT weights, ImageNet-21k pre-training + 1k fine-tuning at 384
    "vit-l16-384": EncoderCheckpoint(
        "jx_vit_large_p16_384-b3be5167.pth", "rwightman/pytorch-image-models releases v0.1-vitjx", "timm",
        note="the hub has only AugReg ViT-L weights (timm/vit_large_patch16_384.augreg_in21k_ft_in1k), "
             "a different pre-training; pass that id with --pretrained-source timm to use them"),
    "vit-b16-384": EncoderCheckpoint(
        "jx_vit_base_p16_384-83fb41ba.pth", "rwightman/pytorch-image-models releases v0.1-vitjx", "timm",
        "timm/vit_base_patch16_384.orig_in21k_ft_in1k", "timm"),
    # SSformer (shiwt03/SSformer configs): Swin-B on ImageNet-22k; T and S on ImageNet-1k as mmseg's Swin configs
    **{f"swin-{v}": EncoderCheckpoint(f"swin_{size}_patch4_window7_224{suffix}.pth", _SW, "official",
                                      f"timm/swin_{size}_patch4_window7_224.ms_{data}", "timm")
       for v, size, suffix, data in (("t", "tiny", "", "in1k"), ("s", "small", "", "in1k"),
                                     ("b", "base", "_22k", "in22k"), ("l", "large", "_22k", "in22k"))},
}


# --- SegFormer (Xie et al. 2021, section 4.1; NVlabs configs): AdamW 6e-5, wd 0.01, head x10, 'norm' no
# decay ('pos_block' too: a PVT key that matches no MiT parameter), 1500 warm-up iterations, poly power 1, 160k
# iterations of batch 16 (2/GPU x 8), crop 512 (B5: 640), whole-image test at short side 512 (640) rounded to
# a multiple of 32. Encoder: the ImageNet-1k mit_b*.pth.
def _segformer_ade(variant: str) -> Recipe:
    crop = 640 if variant == "b5" else 512
    return Recipe(model=f"segformer-{variant}", iters=160_000, batch_size=16, crop_size=crop, lr=6e-5,
                  weight_decay=0.01, head_lr_mult=10.0, warmup_iters=1500, scale=(2048, crop),
                  test_short_side=crop, test_size_divisor=32, no_decay_keywords=("pos_block", "norm"),
                  pretrained=f"mit-{variant}")


# --- SegNeXt (Guo et al. 2022; official configs): the SegFormer optimiser and schedule, crop 512, whole-image
# test after ResizeToMultiple(32). Total batch 16 as mmseg states; the official configs' samples_per_gpu
# 8 (T, S) / 4 (B, L) on "8 GPUs" would be 64 / 32 -- docs/architectures.md 4.4 marks the conflict.
def _segnext_ade(variant: str) -> Recipe:
    return Recipe(model=f"segnext-{variant}", iters=160_000, batch_size=16, crop_size=512, lr=6e-5,
                  weight_decay=0.01, head_lr_mult=10.0, warmup_iters=1500, no_decay_keywords=("pos_block", "norm"),
                  pretrained=f"mscan-{variant}")


# --- SETR (Zheng et al. 2021; official configs, docs/architectures.md 1.3): SGD momentum 0.9, lr 0.01 (Naive) /
# 0.001 (PUP, MLA), weight decay 0 (the base schedule's 5e-4 is overridden), 'head' x10 (decode and
# auxiliary heads; the MLA neck is in the official backbone, so x1), poly power 0.9 to the absolute min_lr 1e-4
# for every group (mmcv), no warm-up, 160k iterations of batch 16, crop 512, auxiliary heads of weight 0.4,
# test by sliding 512 windows with stride 341 after Resize(2048, 512) alone (the official test pipeline has no
# ResizeToMultiple). The ViT-B variants get the ViT-L recipe of their decoder (the paper publishes none of their own).
_SETR_LR = {"naive": 0.01, "pup": 0.001, "mla": 0.001}


def _setr_ade(decoder: str, size: str) -> Recipe:
    lr = _SETR_LR[decoder]
    return Recipe(model=f"setr-{decoder}{size}", iters=160_000, batch_size=16, crop_size=512, lr=lr,
                  weight_decay=0.0, head_lr_mult=10.0, warmup_iters=0, optimizer="sgd", momentum=0.9,
                  poly_power=0.9, min_lr=1e-4, model_kwargs={"aux_heads": True}, no_decay_keywords=(),
                  test_mode="slide", slide_crop=512, slide_stride=341, test_size_divisor=None,
                  pretrained="vit-b16-384" if size else "vit-l16-384")


# --- SSformer (shiwt03/SSformer configs, docs/architectures.md 2.4): AdamW 6e-5, wd 0.01, no decay for Swin's
# position tables and norms, no head multiplier, 1500 warm-up iterations, poly power 1, 160k iterations,
# crop 512, whole-image test after Resize(2048, 512) alone (no ResizeToMultiple). samples_per_gpu is 8 with an
# unstated GPU count: we use the total 16 of the mmseg Swin recipe (2/GPU x 8).
def _ssformer_ade(variant: str) -> Recipe:
    return Recipe(model=f"ssformer-swin-{variant}", iters=160_000, batch_size=16, crop_size=512, lr=6e-5,
                  weight_decay=0.01, head_lr_mult=1.0, warmup_iters=1500,
                  no_decay_keywords=("absolute_pos_embed", "relative_position_bias_table", "norm"),
                  test_size_divisor=None, pretrained=f"swin-{variant}")


RECIPES: dict[str, Recipe] = {}
for _v in ("b0", "b1", "b2", "b3", "b4", "b5"):
    RECIPES[f"segformer-{_v}-ade20k"] = _segformer_ade(_v)
for _v in ("t", "s", "b", "l"):
    RECIPES[f"segnext-{_v}-ade20k"] = _segnext_ade(_v)
for _d in ("naive", "pup", "mla"):
    for _size in ("", "-base"):
        RECIPES[f"setr-{_d}{_size}-ade20k"] = _setr_ade(_d, _size)
for _v in ("t", "s", "b", "l"):
    RECIPES[f"ssformer-swin-{_v}-ade20k"] = _ssformer_ade(_v)

# The synthetic data set of data/ (192x144 street and landscape scenes): a from-scratch run that
# fits in a few minutes on 2 CPU cores. A higher learning rate than the fine-tuning recipes,
# because nothing is pretrained; the same AdamW, head multiplier, poly schedule and warm-up.
RECIPES["synthetic"] = Recipe(model="segformer-b0", iters=800, batch_size=8, crop_size=128, lr=1e-3,
                              weight_decay=0.01, head_lr_mult=1.0, warmup_iters=50, scale=(576, 144),
                              ratio_range=(0.75, 1.5), test_short_side=None, test_size_divisor=None,
                              eval_every=200)


def get_recipe(name: str) -> Recipe:
    """A registered recipe by name, or a recipe read from a JSON file (the fields of ``Recipe``)."""
    if name.endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"recipe file {path} does not exist")
        return Recipe.from_dict(json.loads(path.read_text()))
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


def parameter_groups(recipe: Recipe) -> list[dict]:
    """The optimiser groups ``segedu train`` builds for ``recipe`` (segedu.optim.describe_groups; the model is
    built on the meta device, so this costs no memory even for ViT-L)."""
    import torch

    from .optim import describe_groups
    with torch.device("meta"):
        model = recipe.build_model()
    return describe_groups(model, recipe.lr, recipe.weight_decay, recipe.head_lr_mult, recipe.no_decay_keywords)


def group_table_rows(recipe: Recipe) -> list[str]:
    """:func:`parameter_groups` as markdown table rows (docs/training.md holds them; a test compares)."""
    return [f"| `{g['group']}` | {g['tensors']} | {g['params']:,} | {g['lr']:.3g} | {g['weight_decay']:g} | {g['rule']} |"
            for g in parameter_groups(recipe)]
