"""Notebook 07's checks: each passes on segedu's reference and names the planted classic mistakes."""
import pytest
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from segedu import checks
from segedu.optim import poly_warmup_factor

from check_contract import assert_passes_quietly, assert_stub_passes_through, fails, stub


def poly_warmup_lr(step, base_lr, total, warmup_iters, warmup_ratio=1e-6, power=1.0):
    return base_lr * poly_warmup_factor(step, total, warmup_iters, warmup_ratio, power)


def random_resize_flip(image, mask, size, p=0.5):
    image, mask = v2.Resize(size)(tv_tensors.Image(image), tv_tensors.Mask(mask))
    if torch.rand(()) < p:
        image, mask = TF.horizontal_flip(image), TF.horizontal_flip(mask)
    return image.as_subclass(Tensor), mask.as_subclass(Tensor)


@pytest.mark.parametrize("check,reference,name", [
    (checks.check_poly_warmup_lr, poly_warmup_lr, "check_poly_warmup_lr"),
    (checks.check_random_resize_flip, random_resize_flip, "check_random_resize_flip"),
])
def test_reference_passes_quietly_and_leaves_the_global_rng_alone(check, reference, name, capsys):
    torch.manual_seed(5)
    assert_passes_quietly(capsys, name, check, reference)


@pytest.mark.parametrize("check", [checks.check_poly_warmup_lr, checks.check_random_resize_flip])
def test_unsolved_exercises_raise_not_implemented(check):
    assert_stub_passes_through(check, stub)


# ------------------------------------------------------------------------ the learning-rate schedule
def test_poly_warmup_lr_mistakes():
    check = checks.check_poly_warmup_lr
    fails(check, lambda s, lr, T, W, r=1e-6, p=1.0: lr * (1 - s / T) ** p, "no warm-up")
    fails(check, lambda s, lr, T, W, r=1e-6, p=1.0: lr * (1 - s / T) ** p * (min(s / W, 1.0)),
          "starts from 0")
    fails(check, lambda s, lr, T, W, r=1e-6, p=1.0: poly_warmup_lr(s, lr, T, W, r, 1.0), "power was ignored")
    fails(check, lambda s, lr, T, W, r=1e-6, p=1.0: poly_warmup_lr(s, lr, T, W, r, p) * (1 - (s + 1) / T) ** p
          / (1 - s / T) ** p, "poly decay uses step \\+ 1")
    fails(check, lambda s, lr, T, W, r=1e-6, p=1.0: poly_warmup_lr(s + 1, lr, T, W, r, p),
          "both the warm-up and the decay")
    fails(check, lambda s, lr, T, W, r=1e-6, p=1.0: lr * (1 - (1 - s / W) * (1 - r)) if s < W
          else poly_warmup_lr(s, lr, T, W, r, p), "ignores the poly decay")
    fails(check, lambda s, lr, T, W, r=1e-6, p=1.0: poly_warmup_lr(s, lr, T, W, r, p) * 1.01,
          "values differ from segedu")
    fails(check, lambda s, lr, T, W, r=1e-6, p=1.0: "0.001", "expected a float")


# ------------------------------------------------------------------------ the joint transform
def test_random_resize_flip_mistakes():
    check = checks.check_random_resize_flip

    def bilinear_mask(image, mask, size, p=0.5):
        image, _ = random_resize_flip(image, mask, size, p=0.0)
        mask = TF.resize(mask[None].float(), list(size), interpolation=InterpolationMode.BILINEAR)[0]
        return image, mask.round().long()

    def independent(image, mask, size, p=0.5):
        image, mask = v2.Resize(size)(tv_tensors.Image(image), tv_tensors.Mask(mask))
        flip = v2.RandomHorizontalFlip(p)
        return flip(image).as_subclass(Tensor), flip(mask).as_subclass(Tensor)

    def float_mask(image, mask, size, p=0.5):
        image = TF.resize(image, list(size))
        return image, TF.resize(mask[None].float(), list(size))[0]

    def long_bilinear(image, mask, size, p=0.5):
        return TF.resize(image, list(size)), TF.resize(mask[None], list(size))[0]

    def vertical(image, mask, size, p=0.5):
        image, mask = v2.Resize(size)(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return image.flip(-2).as_subclass(Tensor), mask.flip(-2).as_subclass(Tensor)


    fails(check, bilinear_mask, "mask was interpolated bilinearly")
    fails(check, independent, "flipped independently")
    fails(check, float_mask, "a float mask")
    fails(check, long_bilinear, "nearest")
    fails(check, vertical, "flipped vertically")
    fails(check, lambda i, m, s, p=0.5: random_resize_flip(i, m, s, p=1.0), "all 24 calls flipped")
    fails(check, lambda i, m, s, p=0.5: random_resize_flip(i, m, s, p=0.0), "none of 24 calls flipped")
    fails(check, lambda i, m, s, p=0.5: (TF.resize(i, list(s), interpolation=InterpolationMode.NEAREST),
                                         random_resize_flip(i, m, s, 0.0)[1]), "resized by nearest neighbour")
    fails(check, lambda i, m, s, p=0.5: random_resize_flip(i, m, s, p)[0], "return a pair")


# ---------------------------------------------------------------------------- parameter groups (design exercise)
from segedu.optim import official_name, param_groups  # noqa: E402

from check_contract import assert_pending_cells_fit, exec_exercise  # noqa: E402


def one_group_per_parameter(model, lr, weight_decay, head_lr_mult, no_decay_keywords=("norm",)):
    """Correct, grouped differently: one group per parameter, segedu's settings copied."""
    out = []
    for g in param_groups(model, lr, weight_decay, head_lr_mult, no_decay_keywords):
        out += [{"params": [p], "lr": g["lr"], "weight_decay": g["weight_decay"]} for p in g["params"]]
    return out


def groups_by(choose, include_frozen=False):
    """Groups from choose(official name, segedu name, parameter, keys, no_decay_keywords) -> (lr_mult, decay_mult)."""
    def fn(model, lr, weight_decay, head_lr_mult, no_decay_keywords=("norm",)):
        keys = {k: (1.0, 0.0) for k in no_decay_keywords}
        if head_lr_mult != 1.0:
            keys["head"] = (head_lr_mult, 1.0)
        out = []
        for n, p in model.named_parameters():
            if p.requires_grad or include_frozen:
                lr_mult, decay_mult = choose(official_name(n), n, p, keys)
                out.append({"params": [p], "lr": lr * lr_mult, "weight_decay": weight_decay * decay_mult})
        return out
    return fn


def _first(order, text, keys):
    return keys.get(next((k for k in order if k in text), None), (1.0, 1.0))


def _mmcv(keys):
    return sorted(sorted(keys), key=len, reverse=True)


def test_param_groups_solution_and_an_alternative_pass(capsys):
    ns = exec_exercise("07_training", "ex07-param-groups")
    for fn in (ns["param_groups"], one_group_per_parameter):
        assert_passes_quietly(capsys, "check_param_groups", checks.check_param_groups, fn)


def test_param_groups_cells_fit_the_notebook():
    assert_pending_cells_fit("07_training")


def test_param_groups_unsolved_raises_not_implemented():
    assert_stub_passes_through(checks.check_param_groups, stub)


@pytest.mark.parametrize("choose,match", [
    (lambda o, n, p, keys: (keys["head"][0] if "head" in keys and "head" in o else 1.0,
                            0.0 if any(k in o for k in keys if k != "head") else 1.0), "got both keys"),
    (lambda o, n, p, keys: _first(list(keys), o, keys), "in the order they were given"),
    (lambda o, n, p, keys: _first(_mmcv(keys), n, keys), "matched against segedu's names"),
    (lambda o, n, p, keys: _first([k for k in _mmcv(keys) if k != "head"], o, keys), "'head' key is missing"),
    (lambda o, n, p, keys: (_first(_mmcv(keys), o, keys)[0], 0.0 if p.ndim <= 1 else _first(_mmcv(keys), o, keys)[1]),
     "every 1-D parameter"),
    (lambda o, n, p, keys: (_first(["head"] if "head" in keys else [], o, keys)[0], 1.0), "keywords are ignored"),
])
def test_param_groups_mistakes(choose, match):
    fails(checks.check_param_groups, groups_by(choose), match)


def test_param_groups_membership_mistakes():
    correct = lambda o, n, p, keys: _first(_mmcv(keys), o, keys)  # noqa: E731
    fails(checks.check_param_groups, groups_by(correct, include_frozen=True), r"\['encoder.frozen'\] has requires_grad")
    fails(checks.check_param_groups, lambda m, *a: groups_by(correct)(m, *a)[1:], "are in no group")
    fails(checks.check_param_groups, lambda m, *a: groups_by(correct)(m, *a) + [{"params": [m.encoder.attn.weight]}],
          "refused the groups")
    fails(checks.check_param_groups, lambda m, *a: {"params": list(m.parameters())}, "return a list of dicts")
