"""Checks for notebook 07: training (the learning-rate schedule and the joint image/mask augmentation)."""
from __future__ import annotations

from typing import Callable

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ._core import teaches, _diagnose, _expect_tensor, _fail, _passed, _seeded

__all__ = ["check_poly_warmup_lr", "check_random_resize_flip", "check_param_groups"]


# ----------------------------------------------------------------------------------------------
# The poly schedule with linear warm-up (mmseg PolyLR + mmcv linear warm-up)
# ----------------------------------------------------------------------------------------------
@teaches("SegFormer Sec. 4.1 (poly schedule, factor 1.0) and mmcv's linear warm-up (docs/architectures.md §3.4); "
         "segedu.optim.poly_warmup_factor")
def check_poly_warmup_lr(fn: Callable[..., float]) -> None:
    """``fn(step, base_lr, total, warmup_iters, warmup_ratio=1e-6, power=1.0) -> float``.

    The learning rate at iteration ``step`` (0-based): ``base_lr * (1 - step / total) ** power``,
    multiplied during the first ``warmup_iters`` steps by ``1 - (1 - step / warmup_iters) * (1 - warmup_ratio)``,
    which rises linearly from ``warmup_ratio`` to 1 (``segedu.optim.poly_warmup_factor``).
    """
    from ..optim import poly_warmup_factor

    where = "check_poly_warmup_lr"
    # (base_lr, total, warmup_iters, warmup_ratio, power): the synthetic recipe, a large warm-up ratio
    # (so that a warm-up starting from 0 is visible) and a power other than 1.
    cases = [(1e-3, 800, 50, 1e-6, 1.0), (0.01, 200, 40, 0.1, 0.9), (6e-5, 1000, 150, 1e-6, 2.0)]
    n = 0
    for base, total, warm, ratio, power in cases:
        steps = sorted({0, 1, warm // 2, warm - 1, warm, warm + 1, total // 2, total - 1})
        got = []
        for s in steps:
            try:
                value = fn(s, base, total, warm, ratio, power)
            except NotImplementedError:
                raise
            except Exception as err:
                _fail(where, f"fn(step={s}, base_lr={base}, total={total}, warmup_iters={warm}, "
                             f"warmup_ratio={ratio}, power={power}) raised {type(err).__name__}: {err}")
            if isinstance(value, torch.Tensor):
                value = value.item() if value.numel() == 1 else value
            if not isinstance(value, (float, int)):
                _fail(where, f"expected a float learning rate, got {type(value).__name__}")
            got.append(float(value))
        out = torch.tensor(got, dtype=torch.float64)
        t = torch.tensor(steps, dtype=torch.float64)

        def lr(poly_t=t, warm_t=t, p=power, r=ratio, warmup=True, warm_poly=True):
            poly = (1 - poly_t / total) ** p
            if not warmup:
                return base * poly
            k = (1 - warm_t / warm) * (1 - r)
            ramp = torch.where(t < warm, 1 - k, torch.ones_like(t))
            return base * ramp * (poly if warm_poly else torch.where(t < warm, 1.0, poly))

        expected = base * torch.tensor([poly_warmup_factor(s, total, warm, ratio, power) for s in steps],
                                       dtype=torch.float64)
        candidates = [
            ("there is no warm-up: during the first warmup_iters steps the rate must rise linearly from "
             "warmup_ratio * lr to lr.", lambda: lr(warmup=False)),
            ("the warm-up starts from 0 instead of warmup_ratio * lr: the factor is "
             "1 - (1 - step / warmup_iters) * (1 - warmup_ratio).", lambda: lr(r=0.0)),
            ("the power was ignored (it is (1 - step / total) ** power).", lambda: lr(p=1.0)),
            ("the power multiplies instead of being an exponent: (1 - step / total) ** power.",
             lambda: base * torch.where(t < warm, 1 - (1 - t / warm) * (1 - ratio), torch.ones_like(t))
             * (1 - t / total) * power),
            ("off by one: the poly decay uses step + 1; step is 0-based and the first step has "
             "(1 - 0 / total) = 1.", lambda: lr(poly_t=t + 1)),
            ("off by one: the warm-up uses step + 1; at step 0 the rate is warmup_ratio * lr.",
             lambda: lr(warm_t=t + 1)),
            ("off by one in both the warm-up and the decay (step + 1 instead of step).",
             lambda: lr(poly_t=t + 1, warm_t=t + 1)),
            ("the warm-up ramps to the base rate and ignores the poly decay meanwhile; mmcv's warm-up "
             "multiplies the poly rate (warm-up factor x poly factor).", lambda: lr(warm_poly=False)),
        ]
        _diagnose(where, out, expected, candidates,
                  f"At steps {steps} expected {[f'{v:.4g}' for v in expected.tolist()]}.",
                  rtol=1e-6, atol=1e-12)
        n += 1
    _passed(where, n, "segedu.optim.poly_warmup_factor")


# ----------------------------------------------------------------------------------------------
# The joint transform: the same geometry for image and mask
# ----------------------------------------------------------------------------------------------
def _plain(x) -> torch.Tensor:
    return x.as_subclass(torch.Tensor) if isinstance(x, torch.Tensor) else x


def _resize_image(image: torch.Tensor, size, mode=InterpolationMode.BILINEAR, antialias=True) -> torch.Tensor:
    return TF.resize(image, list(size), interpolation=mode, antialias=antialias)


def _resize_mask(mask: torch.Tensor, size) -> torch.Tensor:
    return TF.resize(mask[None], list(size), interpolation=InterpolationMode.NEAREST)[0]


@teaches("the mmseg training pipeline (docs/architectures.md §5.2): one geometric transform for image and mask, the "
         "mask resized by nearest neighbour; segedu.data.train_transforms")
def check_random_resize_flip(fn: Callable[..., tuple]) -> None:
    """``fn(image uint8 [3, H, W], mask int64 [H, W], size (h, w), p=0.5) -> (image [3, h, w], mask [h, w])``.

    Resize the image bilinearly (with antialiasing, torchvision v2's default) and the mask by nearest
    neighbour to ``size``, then flip **both** horizontally with probability ``p`` (one coin per call,
    from torch's global RNG). The check runs it 24 times on fixed seeds and accepts either outcome of
    the coin, but only the same outcome for image and mask.
    """
    where = "check_random_resize_flip"
    gen = torch.Generator().manual_seed(71)
    H, W, K = 21, 30, 6
    image = torch.randint(0, 256, (3, H, W), dtype=torch.uint8, generator=gen)
    # A mask with regions (a coarse random map blown up), some ignored pixels and a left/right asymmetry.
    mask = _resize_mask(torch.randint(0, K, (5, 6), generator=gen), (H, W)).long()
    mask[:3, :7] = 255
    flips, n_cases = [], 0
    for trial, size in enumerate([(14, 20), (30, 45), (9, 13)] * 8):
        image_in, mask_in = image.clone(), mask.clone()
        with _seeded(500 + trial):
            try:
                out = fn(image_in, mask_in, size)
            except NotImplementedError:
                raise
            except RuntimeError as err:
                if "Long" in str(err) or "not implemented for" in str(err):
                    _fail(where, f"raised RuntimeError: {err}. Bilinear interpolation is not defined on an "
                                 f"integer mask: labels cannot be averaged",
                          "resize the mask with nearest neighbour (a tv_tensors.Mask gets nearest automatically in "
                          "torchvision v2).")
                _fail(where, f"raised RuntimeError: {err}")
            except Exception as err:
                _fail(where, f"raised {type(err).__name__}: {err}")
        if not torch.equal(image_in, image) or not torch.equal(mask_in, mask):
            _fail(where, "the input image or mask was modified in place; return new tensors")
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            _fail(where, "return a pair (image, mask)")
        img_out, mask_out = (_plain(o) for o in out)
        img_out = _expect_tensor(where, img_out, (3, *size), "The image keeps its 3 channels: [3, h, w].")
        mask_out = _expect_tensor(where, mask_out, tuple(size),
                                  "The mask stays [h, w] (add a channel for resizing if needed, then drop it).")
        if img_out.dtype != torch.uint8:
            _fail(where, f"the image came back as {img_out.dtype}; keep uint8 (normalisation comes later)")
        if mask_out.dtype.is_floating_point:
            _fail(where, f"the mask came back as {mask_out.dtype}: labels are integers (int64); a float mask "
                         "usually means it was interpolated bilinearly")

        img_ref, mask_ref = _resize_image(image, size), _resize_mask(mask, size)
        img_flipped = torch.equal(img_out, img_ref.flip(-1))
        mask_flipped = torch.equal(mask_out, mask_ref.flip(-1))
        if not (torch.equal(img_out, img_ref) or img_flipped):
            expected = img_ref.flip(-1) if torch.equal(mask_out, mask_ref.flip(-1)) else img_ref
            undo = [("the image was flipped vertically (flip(-2)); a horizontal flip mirrors the width (flip(-1)).",
                     lambda: _resize_image(image, size).flip(-2)),
                    ("the image was resized by nearest neighbour; use bilinear for images.",
                     lambda: _resize_image(image, size, InterpolationMode.NEAREST)),
                    ("the image was resized without antialiasing; torchvision v2 and segedu's RandomResize use "
                     "antialias=True.", lambda: _resize_image(image, size, antialias=False))]
            candidates = [(msg, make) for msg, make in undo]
            candidates += [(msg, lambda m=make: m().flip(-1)) for msg, make in undo]
            _diagnose(where, img_out.double(), expected.double(), candidates,
                      "The image should be the bilinear resize of the input, flipped or not.", rtol=0, atol=0)
        if not (torch.equal(mask_out, mask_ref) or mask_flipped):
            expected = mask_ref.flip(-1) if img_flipped else mask_ref
            bilinear = TF.resize(mask[None].float(), list(size), interpolation=InterpolationMode.BILINEAR,
                                 antialias=True)[0]
            bilinear_plain = TF.resize(mask[None].float(), list(size), interpolation=InterpolationMode.BILINEAR,
                                       antialias=False)[0]
            msg = ("the mask was interpolated bilinearly: labels were blended into values that are no class "
                   "(e.g. between a class and 255). Resize the mask with nearest neighbour.")
            candidates = []
            for base in (bilinear, bilinear_plain):
                for cast in (torch.round, torch.trunc):
                    candidates += [(msg, lambda b=base, c=cast: c(b)), (msg, lambda b=base, c=cast: c(b).flip(-1))]
            candidates += [("the mask was flipped vertically (flip(-2)); flip the width (flip(-1)).",
                            lambda: mask_ref.flip(-2))]
            _diagnose(where, mask_out.double(), expected.double(), candidates,
                      "The mask should be the nearest-neighbour resize of the input, flipped exactly when "
                      "the image is.", rtol=0, atol=0)
        if img_flipped != mask_flipped:
            which = "the image was flipped and the mask was not" if img_flipped else \
                "the mask was flipped and the image was not"
            _fail(where, f"call {trial + 1}: {which}. Image and mask were flipped independently (two coins, or "
                         f"two separate RandomHorizontalFlip calls), so the labels no longer sit on their pixels.",
                  "draw one coin per call and apply it to both, e.g. "
                  "v2.RandomHorizontalFlip()(tv_tensors.Image(image), tv_tensors.Mask(mask)).")
        flips.append(img_flipped)
        n_cases += 1
    if all(flips):
        _fail(where, f"all {len(flips)} calls flipped: flip with probability p = 0.5, not always")
    if not any(flips):
        _fail(where, f"none of {len(flips)} calls flipped: flip with probability p = 0.5")
    _passed(where, n_cases, "torchvision v2 resize (bilinear / nearest) + one shared flip")


# ----------------------------------------------------------------------------------------------
# The optimiser's parameter groups (the recipes' paramwise_cfg.custom_keys, as mmcv applies them)
# ----------------------------------------------------------------------------------------------
class _ToySegmenter(torch.nn.Module):
    """A miniature of segedu's model layout: ``encoder.*`` (norms, a conv with a bias, a position table, a frozen
    parameter), ``decoder.*`` (a BatchNorm called ``bn``, a LayerNorm called ``norm``) and ``aux_heads.*``."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.encoder = nn.Module()
        self.encoder.patch_embed = nn.Conv2d(3, 8, 3)
        self.encoder.norm1 = nn.LayerNorm(8)
        self.encoder.attn = nn.Linear(8, 8)
        self.encoder.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
        self.encoder.relative_position_bias_table = nn.Parameter(torch.zeros(9, 2))
        self.encoder.frozen = nn.Parameter(torch.zeros(3), requires_grad=False)
        self.encoder.norm = nn.LayerNorm(8)
        self.decoder = nn.Module()
        self.decoder.linear_fuse = nn.Conv2d(8, 8, 1, bias=False)
        self.decoder.bn = nn.BatchNorm2d(8)
        self.decoder.norm = nn.LayerNorm(8)
        self.decoder.linear_pred = nn.Conv2d(8, 5, 1)
        self.aux_heads = nn.ModuleList([nn.Sequential(nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4))])


def _settings(groups, lr: float, weight_decay: float, names: dict) -> dict:
    """{parameter name: (lr, weight_decay)} as AdamW(groups, lr=lr, weight_decay=weight_decay) would use them."""
    out = {}
    for g in groups:
        for p in g["params"]:
            out[names[id(p)]] = (float(g.get("lr", lr)), float(g.get("weight_decay", weight_decay)))
    return out


def _same(a: tuple, b: tuple) -> bool:
    return abs(a[0] - b[0]) <= 1e-9 * abs(b[0]) and abs(a[1] - b[1]) <= 1e-12


@teaches("the recipes' paramwise_cfg (docs/architectures.md §3.4: custom_keys 'head' lr_mult 10, 'norm' decay_mult 0) "
         "as mmcv's DefaultOptimizerConstructor applies it: the first key contained in the official parameter "
         "name, keys sorted by name then longest first; segedu.optim.param_groups")
def check_param_groups(fn: Callable[..., list]) -> None:
    """``fn(model, lr, weight_decay, head_lr_mult, no_decay_keywords=("norm",)) -> list of param-group dicts``.

    Custom keys: each no-decay keyword -> (lr_mult 1, decay_mult 0), and 'head' -> (head_lr_mult, 1) when
    head_lr_mult != 1. A parameter takes the first key contained in its official name (segedu.optim.official_name:
    'encoder.' -> 'backbone.', 'decoder.' -> 'decode_head.', 'aux_heads.' -> 'auxiliary_head.'), the keys sorted by
    name and then longest first; no key -> (1, 1). lr = lr * lr_mult, weight_decay = weight_decay * decay_mult.
    Frozen parameters in no group, every trainable one in exactly one. The grouping itself is free: the check reads
    each parameter's (lr, weight_decay) as ``torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)`` would.
    """
    from ..optim import official_name, param_groups

    where = "check_param_groups"
    cases = [(6e-5, 0.01, 10.0, ("norm",)), (1e-3, 0.05, 1.0, ("norm", "relative_position_bias_table")),
             (2e-4, 0.0001, 4.0, ("norm", "pos_embed"))]
    for lr, wd, mult, keywords in cases:
        with _seeded(75):
            model = _ToySegmenter()
        names = {id(p): n for n, p in model.named_parameters()}
        label = f"{where} (lr={lr:g}, weight_decay={wd:g}, head_lr_mult={mult:g}, no_decay_keywords={keywords})"
        try:
            groups = fn(model, lr, wd, mult, keywords)
        except NotImplementedError:
            raise
        except Exception as err:
            _fail(label, f"raised {type(err).__name__}: {err}")
        if isinstance(groups, dict) or not isinstance(groups, (list, tuple)) or not all(
                isinstance(g, dict) and "params" in g for g in groups):
            _fail(label, "return a list of dicts, each with a 'params' list (and the 'lr' / 'weight_decay' it "
                         "overrides), as torch.optim.AdamW(groups) takes them")
        groups = [dict(g, params=list(g["params"])) for g in groups]
        try:
            torch.optim.AdamW(groups, lr=lr, weight_decay=wd)
        except Exception as err:
            _fail(label, f"torch.optim.AdamW(groups) refused the groups: {type(err).__name__}: {err}",
                  "Put every trainable parameter in exactly one group.")
        seen = [names.get(id(p), "<not a parameter of the model>") for g in groups for p in g["params"]]
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        if any(n in frozen for n in seen):
            _fail(label, f"{[n for n in seen if n in frozen]} has requires_grad=False and is in a group: a frozen "
                         f"parameter is meant to stay as it is, so it has no place among the optimiser's groups "
                         f"(segedu.optim.param_groups leaves it out)", "Skip parameters with p.requires_grad False.")
        missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in seen]
        if missing:
            _fail(label, f"the trainable parameters {missing} are in no group, so the optimiser never updates them",
                  "Loop over model.named_parameters() and put every trainable one in a group.")
        got = _settings(groups, lr, wd, names)
        expected = _settings(param_groups(model, lr, wd, mult, keywords), lr, wd, names)
        if all(_same(got[n], e) for n, e in expected.items()):
            continue
        keys = {k: (1.0, 0.0) for k in keywords}
        if mult != 1.0:
            keys["head"] = (mult, 1.0)
        mmcv_order = sorted(sorted(keys), key=len, reverse=True)

        def rule(choose) -> dict:
            """choose(official name, segedu name, p) -> (lr_mult, decay_mult)."""
            table = {}
            for n, p in model.named_parameters():
                if p.requires_grad:
                    lm, dm = choose(official_name(n), n, p)
                    table[n] = (lr * lm, wd * dm)
            return table

        def first(order, text):
            key = next((k for k in order if k in text), None)
            return keys.get(key, (1.0, 1.0))

        def every_key(o, n, p):
            lm = mult if "head" in keys and "head" in o else 1.0
            dm = 0.0 if any(k in o for k in keywords) else 1.0
            return lm, dm

        candidates = [
            (("a decode-head norm got both keys (head_lr_mult and no decay); mmcv applies only ONE custom key per "
              "parameter, the first contained in its name, and 'head' comes first: the official runs decay the "
              "head's norms.",
              "Sort the keys by name, then longest first, and use only the first key found in the official name."),
             rule(every_key)),
            (("the keys were tried in the order they were given (the no-decay keywords before 'head'); mmcv sorts "
              "them by name and then by length, longest first, so 'head' is tried before 'norm'.",
              "order = sorted(sorted(keys), key=len, reverse=True)."),
             rule(lambda o, n, p: first(list(keys), o))),
            (("the keys were matched against segedu's names: 'decoder.' contains no 'head', so the decoder lost "
              "the head's rate while 'aux_heads.' kept it. The recipes' keys are written for the official names.",
              "Match on official_name(name) ('decoder.' -> 'decode_head.', 'aux_heads.' -> 'auxiliary_head.')."),
             rule(lambda o, n, p: first(mmcv_order, n))),
            (("the 'head' key is missing: the decode head does not get head_lr_mult x lr. It is trained from "
              "scratch on top of a pre-trained encoder, so the recipes let it learn faster.",
              "Add 'head': (head_lr_mult, 1.0) to the keys when head_lr_mult != 1."),
             rule(lambda o, n, p: first([k for k in mmcv_order if k != "head"], o))),
            (("every 1-D parameter (biases too) got weight decay 0, the timm convention; the recipes exempt names "
              "that contain a no-decay keyword, not shapes.", "Decide by the custom keys, not by p.ndim."),
             rule(lambda o, n, p: (first(mmcv_order, o)[0], 0.0 if p.ndim <= 1 else first(mmcv_order, o)[1]))),
            (("the no-decay keywords are ignored: every norm's scale and shift is decayed towards 0.",
              "Each no-decay keyword is a custom key with decay_mult 0."),
             rule(lambda o, n, p: (first(["head"] if "head" in keys else [], o)[0], 1.0))),
        ]
        for (concept, fix), table in candidates:
            if all(_same(got[n], table[n]) for n in table) and any(not _same(table[n], e) for n, e in expected.items()):
                _fail(label, concept, fix)
        wrong = sorted(n for n, e in expected.items() if not _same(got[n], e))
        shown = ", ".join(f"{n}: (lr, wd) = {got[n]}, expected {expected[n]}" for n in wrong[:3])
        _fail(label, f"{len(wrong)} parameters have the wrong settings ({shown}{', ...' if len(wrong) > 3 else ''})",
              "One custom key per parameter: the first, in mmcv's order, contained in official_name(name).")
    _passed(where, len(cases), "segedu.optim.param_groups")
