"""Training recipes: one entry per published recipe, plus the small synthetic one ``make train`` runs.

Values from the papers' official configs (see ../shared/reference/architectures.md sections 3.4, 5).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class Recipe:
    model: str
    iters: int
    batch_size: int                 # total batch (reached with grad accumulation on fewer GPUs)
    crop_size: int
    lr: float
    weight_decay: float
    head_lr_mult: float
    warmup_iters: int
    no_decay_keywords: tuple[str, ...] = ("norm",)  # mmseg paramwise_cfg custom_keys with decay_mult 0
    warmup_ratio: float = 1e-6
    poly_power: float = 1.0
    min_lr_ratio: float = 0.0
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

    def to_dict(self) -> dict:
        return asdict(self)

    def with_overrides(self, **kw) -> "Recipe":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


def _segformer_ade(variant: str) -> Recipe:
    crop = 640 if variant == "b5" else 512
    return Recipe(model=f"segformer-{variant}", iters=160_000, batch_size=16, crop_size=crop, lr=6e-5,
                  weight_decay=0.01, head_lr_mult=10.0, warmup_iters=1500, scale=(2048, crop),
                  test_short_side=crop, test_size_divisor=32)


RECIPES: dict[str, Recipe] = {f"segformer-{v}-ade20k": _segformer_ade(v) for v in ("b0", "b1", "b2", "b3", "b4", "b5")}

# The synthetic data set of data/ (192x144 street and landscape scenes): a from-scratch run that
# fits in a few minutes on 2 CPU cores. A higher learning rate than the fine-tuning recipes,
# because nothing is pretrained; the same AdamW, head multiplier, poly schedule and warm-up.
RECIPES["synthetic"] = Recipe(model="segformer-b0", iters=800, batch_size=8, crop_size=128, lr=1e-3,
                              weight_decay=0.01, head_lr_mult=1.0, warmup_iters=50, scale=(576, 144),
                              ratio_range=(0.75, 1.5), test_short_side=None, test_size_divisor=None,
                              eval_every=200)


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]
