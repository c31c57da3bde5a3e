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
