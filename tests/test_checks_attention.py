"""Checks of notebook 02 (self-attention): each passes on the reference and names planted mistakes."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from segedu import checks
from segedu.layers import MultiHeadSelfAttention

from check_contract import Stub, assert_passes_quietly, assert_stub_passes_through, fails, stub


def attention(q, k, v, mask=None, scale=None, softmax_dim=-1, mask_after=False, mask_added_after=False):
    scores = q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5 if scale is None else scale(q.shape[-1]))
    if mask is not None and not (mask_after or mask_added_after):
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(softmax_dim)
    if mask is not None and mask_after:
        weights = weights * mask
    if mask is not None and mask_added_after:
        weights = weights + torch.zeros_like(weights).masked_fill(~mask, float("-inf"))
    return weights @ v


class MHSA(nn.Module):
    """Multi-head self-attention by hand; the switches plant the classic mistakes."""

    def __init__(self, dim, num_heads, split="(qkv heads d)", merge="(heads d)", use_proj=True, scale="head"):
        super().__init__()
        self.num_heads, self.split, self.merge, self.use_proj, self.scale = num_heads, split, merge, use_proj, scale
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = rearrange(self.qkv(x), f"b n {self.split} -> qkv b heads n d", qkv=3, heads=self.num_heads)
        width = q.shape[-1] if self.scale == "head" else x.shape[-1]
        weights = (q @ k.transpose(-2, -1) / math.sqrt(width)).softmax(-1)
        out = rearrange(weights @ v, f"b heads n d -> b n {self.merge}")
        return self.proj(out) if self.use_proj else out


def mistake(**bug):
    return lambda dim, heads: MHSA(dim, heads, **bug)


@pytest.mark.parametrize("check,reference,name", [
    (checks.check_scaled_dot_product_attention, attention, "check_scaled_dot_product_attention"),
    (checks.check_scaled_dot_product_attention,
     lambda q, k, v, mask=None: F.scaled_dot_product_attention(q, k, v, mask), "check_scaled_dot_product_attention"),
    (checks.check_multi_head_self_attention, MultiHeadSelfAttention, "check_multi_head_self_attention"),
    (checks.check_multi_head_self_attention, MHSA, "check_multi_head_self_attention"),
], ids=["by_hand", "torch_sdpa", "segedu_mhsa", "mhsa_by_hand"])
def test_reference_passes_quietly_and_leaves_the_global_rng_alone(check, reference, name, capsys):
    assert_passes_quietly(capsys, name, check, reference)


def test_scaled_dot_product_attention_mistakes():
    check = checks.check_scaled_dot_product_attention
    fails(check, lambda q, k, v, mask=None: attention(q, k, v, mask, scale=lambda d: 1.0), "not scaled")
    fails(check, lambda q, k, v, mask=None: attention(q, k, v, mask, scale=lambda d: 1 / d), "divided by d = 16")
    fails(check, lambda q, k, v, mask=None: attention(q, k, v, mask, softmax_dim=-2), "over the queries")
    fails(check, lambda q, k, v, mask=None: attention(q, k, v, mask, mask_after=True), "after the softmax")
    fails(check, lambda q, k, v, mask=None: attention(q, k, v, mask, mask_added_after=True), "inf or NaN")
    fails(check, lambda q, k, v, mask=None: attention(q, k, v, None if mask is None else ~mask), "inverted")
    fails(check, lambda q, k, v, mask=None: attention(q, k, v), "mask is ignored")
    fails(check, lambda q, k, v, mask=None: (q @ k.transpose(-2, -1) / 4).softmax(-1), r"\[..., N, M\]")


def test_multi_head_self_attention_mistakes():
    check = checks.check_multi_head_self_attention
    fails(check, mistake(split="(qkv d heads)", merge="(d heads)"), r"split as \(head_dim, heads\)")
    fails(check, mistake(merge="(d heads)"), r"merged back as \(head_dim, heads\)")
    fails(check, mistake(split="(heads qkv d)"), r"\(heads, qkv, head_dim\)")
    fails(check, mistake(use_proj=False), "output projection `proj` is not applied")
    fails(check, mistake(scale="dim"), r"1 / sqrt\(dim\)")

    class NoProj(nn.Module):
        def __init__(self, dim, heads):
            super().__init__()
            self.qkv = nn.Linear(dim, 3 * dim)
    fails(check, NoProj, r"missing proj.weight(.|\n)*Hint: The heads are merged by the output projection", hint=True)


@pytest.mark.parametrize("check,unsolved", [
    (checks.check_scaled_dot_product_attention, stub),
    (checks.check_multi_head_self_attention, Stub),
])
def test_unsolved_exercises_raise_not_implemented(check, unsolved):
    assert_stub_passes_through(check, unsolved)
