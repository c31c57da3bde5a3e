"""The notebook-03 checks pass on segedu's reference and name each planted classic mistake."""
import pytest
import torch.nn as nn
from einops import rearrange

from segedu import checks
from segedu.models import setr

from check_contract import Stub, assert_passes_quietly, assert_stub_passes_through, fails, stub


def top_down(c):
    p = list(c)
    for i in range(len(c) - 2, -1, -1):
        p[i] = p[i + 1] + c[i]
    return p


@pytest.mark.parametrize("check,reference,name", [
    (checks.check_vit_block, setr.Block, "check_vit_block"),
    (checks.check_mla_top_down, top_down, "check_mla_top_down"),
])
def test_reference_passes_quietly_and_leaves_the_global_rng_alone(check, reference, name, capsys):
    assert_passes_quietly(capsys, name, check, reference)


@pytest.mark.parametrize("check,unsolved", [(checks.check_vit_block, Stub), (checks.check_mla_top_down, stub)])
def test_unsolved_exercises_raise_not_implemented(check, unsolved):
    assert_stub_passes_through(check, unsolved)


# ---------------------------------------------------------------------------- the ViT block
class Unscaled(nn.Module):
    """The attention of segedu's block, written out without the 1/sqrt(d) scale."""

    def __init__(self, attn):
        super().__init__()
        self.inner = attn

    def forward(self, x):
        q, k, v = rearrange(self.inner.qkv(x), "b n (qkv h d) -> qkv b h n d", qkv=3, h=self.inner.num_heads)
        out = (q @ k.transpose(-2, -1)).softmax(-1) @ v
        return self.inner.proj(rearrange(out, "b h n d -> b n (h d)"))


class BlockNoScale(setr.Block):
    def forward(self, x):
        attn = Unscaled(self.attn)
        x = x + attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class BlockPostNorm(setr.Block):
    def forward(self, x):
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.mlp(x))


class BlockNoMlpResidual(setr.Block):
    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return self.mlp(self.norm2(x))


class BlockEps(setr.Block):
    def __init__(self, *args):
        super().__init__(*args)
        self.norm1 = nn.LayerNorm(self.norm1.normalized_shape)


def test_vit_block_mistakes():
    fails(checks.check_vit_block, BlockNoScale, "not scaled")
    fails(checks.check_vit_block, BlockPostNorm, "post-norm")
    fails(checks.check_vit_block, BlockNoMlpResidual, "residual connection around the MLP")
    fails(checks.check_vit_block, BlockEps, "eps=1e-05")


# ---------------------------------------------------------------------------- MLA top-down sums
def bottom_up(c):
    p = list(c)
    for i in range(1, len(c)):
        p[i] = p[i - 1] + c[i]
    return p


def next_only(c):
    return [c[i] + c[i + 1] for i in range(len(c) - 1)] + [c[-1]]


def in_place(c):
    for i in range(len(c) - 2, -1, -1):
        c[i] += c[i + 1]
    return c


def test_mla_top_down_mistakes():
    fails(checks.check_mla_top_down, bottom_up, "bottom-up")
    fails(checks.check_mla_top_down, next_only, "adds only the next deeper tap")
    fails(checks.check_mla_top_down, next_only, "accumulate", hint=True)
    fails(checks.check_mla_top_down, lambda c: top_down(c)[::-1], "reverse order")
    fails(checks.check_mla_top_down, in_place, "in place")
    fails(checks.check_mla_top_down, lambda c: top_down(c)[0], "not only the last sum")


# ---------------------------------------------------------------------------- PUP (design exercise)
import math  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from check_contract import assert_pending_cells_fit, exec_exercise  # noqa: E402
from segedu.checks.setr import _pup_reference  # noqa: E402
from segedu.layers import ConvNormAct  # noqa: E402


def reference_pup(in_dim, num_classes, channels, patch_size):
    if patch_size < 2 or 2 ** round(math.log2(patch_size)) != patch_size:
        raise ValueError("patch_size must be a power of two")
    return PUPVariant(in_dim, num_classes, channels, patch_size)


class PUPVariant(nn.Module):
    """A PUP head written another way (nn.Upsample modules, a permute for the norm, upsample-then-classify: mmseg's
    order), with switches for the classic mistakes."""

    def __init__(self, in_dim, num_classes, channels, patch_size, bias=True, eps=1e-6, bug=None):
        super().__init__()
        self.bug = bug
        self.norm = nn.LayerNorm(in_dim, eps=eps)
        n = round(math.log2(patch_size))
        self.convs = nn.ModuleList(ConvNormAct(in_dim if i == 0 else channels, channels, 3, bias=bias)
                                   for i in range(n))
        self.linear_pred = nn.Conv2d(channels, num_classes, 1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)

    def forward(self, z):
        if self.bug:
            return _pup_reference(self, z, **self.bug)
        x = self.norm(z.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        for i, conv in enumerate(self.convs):
            x = conv(self.up(x) if i else x)
        return self.linear_pred(self.up(x))  # upsample, then classify (commutes with the 1x1 conv)


def pup_with(**kwargs):
    return lambda d, k, c, p: PUPVariant(d, k, c, p, **kwargs)


def test_pup_solution_and_an_alternative_pass(capsys):
    ns = exec_exercise("03_vit_and_setr", "ex03-pup-head", setr=setr)
    assert_passes_quietly(capsys, "check_pup_head", checks.check_pup_head, ns["PUPHead"])
    assert_passes_quietly(capsys, "check_pup_head", checks.check_pup_head, reference_pup)


def test_pup_cells_fit_the_notebook():
    assert_pending_cells_fit("03_vit_and_setr")


def test_pup_unsolved_raises_not_implemented():
    assert_stub_passes_through(checks.check_pup_head, Stub)


@pytest.mark.parametrize("bug,match", [
    (dict(order="up_conv"), "upsampled before every conv"),
    (dict(order="at_once"), "one jump at the end"),
    (dict(mode="nearest"), "nearest-neighbour"),
    (dict(align_corners=True), "align_corners=True"),
    (dict(norm=False), "not normalised"),
    (dict(relu=False), "ReLU"),
])
def test_pup_mistakes(bug, match):
    fails(checks.check_pup_head, pup_with(bug=bug), match)


def test_pup_structure_mistakes():
    fails(checks.check_pup_head, lambda d, k, c, p: PUPVariant(d, k, c, 16), r"unexpected convs\.3")  # always 4 stages
    fails(checks.check_pup_head, pup_with(bias=False), r"missing convs\.0\.conv\.bias(.|\n)*Hint: .*bias=True",
          hint=True)
    fails(checks.check_pup_head, pup_with(eps=1e-5), r"`norm` is a LayerNorm with eps=1e-05.*eps=1e-06")
    fails(checks.check_pup_head, lambda d, k, c, p: PUPVariant(d, k, c, p) if p in (4, 8, 16) else None,
          "should raise ValueError")


# ---------------------------------------------------------------------------- holes closed: stochastic depth
class ViTBlockNoDropPath(setr.Block):
    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTBlockDropout(setr.Block):
    def __init__(self, dim, num_heads, mlp_ratio, drop_path):
        super().__init__(dim, num_heads, mlp_ratio, drop_path)
        self.drop_path = nn.Dropout(drop_path)


def test_vit_block_stochastic_depth():
    fails(checks.check_vit_block, ViTBlockNoDropPath, "no stochastic depth")
    fails(checks.check_vit_block, ViTBlockDropout, "not single elements")


def test_vit_block_eps():
    class DefaultEps(setr.Block):
        def __init__(self, *args):
            super().__init__(*args)
            self.norm1 = nn.LayerNorm(self.norm1.normalized_shape[0])

    fails(checks.check_vit_block, DefaultEps, r"`norm1` is a LayerNorm with eps=1e-05.*eps=1e-06")
