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
    fails(checks.check_mla_top_down, next_only, "accumulate")
    fails(checks.check_mla_top_down, lambda c: top_down(c)[::-1], "reverse order")
    fails(checks.check_mla_top_down, in_place, "in place")
    fails(checks.check_mla_top_down, lambda c: top_down(c)[0], "not only the last sum")
