"""The exercise checks: each passes on segedu's reference and names each planted classic mistake."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from segedu import checks
from segedu.data import reduce_zero_label
from segedu.losses import seg_loss
from segedu.metrics import SegMetrics
from segedu.models import segformer as sf

from check_contract import Stub, assert_passes_quietly, assert_stub_passes_through, fails, stub


# ---------------------------------------------------------------------------- references pass
def _iou(pred, target, num_classes, ignore_index=255):
    m = SegMetrics(num_classes, ignore_index)
    m.update(pred, target)
    return torch.tensor(m.compute()["IoU"])


def _acc(pred, target, ignore_index=255):
    keep = target != ignore_index
    return (pred[keep] == target[keep]).float().mean().item()


CASES = [
    (checks.check_reduce_zero_label, reduce_zero_label, "check_reduce_zero_label"),
    (checks.check_pixel_accuracy, _acc, "check_pixel_accuracy"),
    (checks.check_iou, _iou, "check_iou"),
    (checks.check_overlap_patch_embed, sf.OverlapPatchEmbed, "check_overlap_patch_embed"),
    (checks.check_efficient_attention, sf.EfficientSelfAttention, "check_efficient_attention"),
    (checks.check_mix_ffn, sf.MixFFN, "check_mix_ffn"),
    (checks.check_block, sf.Block, "check_block"),
    (checks.check_mit_stage, sf.MiTStage, "check_mit_stage"),
    (checks.check_segformer_head, sf.SegFormerHead, "check_segformer_head"),
    (checks.check_seg_loss, seg_loss, "check_seg_loss"),
]


@pytest.mark.parametrize("check,reference,name", CASES)
def test_reference_passes_quietly_and_leaves_the_global_rng_alone(check, reference, name, capsys):
    assert_passes_quietly(capsys, name, check, reference)


@pytest.mark.parametrize("check,reference,name", CASES)
def test_unsolved_exercises_raise_not_implemented(check, reference, name):
    assert_stub_passes_through(check, Stub if isinstance(reference, type) else stub)


# ---------------------------------------------------------------------------- 00: labels, metrics
def test_reduce_zero_label_mistakes():
    fails(checks.check_reduce_zero_label, lambda m: reduce_zero_label(reduce_zero_label(m)), "applied twice")
    fails(checks.check_reduce_zero_label, lambda m: m.long() - 1, "here it became -1")
    fails(checks.check_reduce_zero_label, lambda m: m - 1, "255 must stay 255")  # uint8 wraps 0 -> 255 only
    fails(checks.check_reduce_zero_label, lambda m: torch.where(m == 0, 255, m), "classes were not shifted")
    fails(checks.check_reduce_zero_label, lambda m: (m.long() - 1).clamp(min=0), "not class 0")

    def in_place(m):
        m[m == 0] = 255
        m -= 1
        m[m == 254] = 255
        return m
    fails(checks.check_reduce_zero_label, in_place, "in place")


def test_pixel_accuracy_mistakes():
    fails(checks.check_pixel_accuracy, lambda p, t, ignore_index=255: (p == t).float().mean().item(),
          "ignored pixels")
    fails(checks.check_pixel_accuracy,
          lambda p, t, ignore_index=255: ((p == t) & (t != ignore_index)).sum().item() / t.numel(), "denominator")
    fails(checks.check_pixel_accuracy, lambda p, t, ignore_index=255: 100 * _acc(p, t), "percentage")


def _cm(pred, target, k, keep):
    return torch.bincount(target[keep] * k + pred[keep], minlength=k * k).reshape(k, k).double()


def test_iou_mistakes():
    def ignore_counted(pred, target, k, ignore_index=255):
        keep = target != ignore_index
        cm = _cm(pred, target, k, keep)
        pcount = torch.bincount(pred.flatten(), minlength=k).double()  # all pixels, ignored ones too
        return cm.diag() / (pcount + cm.sum(1) - cm.diag())

    def zero_for_absent(pred, target, k, ignore_index=255):
        return torch.nan_to_num(_iou(pred, target, k), nan=0.0)

    def no_minus_intersection(pred, target, k, ignore_index=255):
        cm = _cm(pred, target, k, target != ignore_index)
        return cm.diag() / (cm.sum(0) + cm.sum(1))

    def per_image(pred, target, k, ignore_index=255):
        return torch.stack([_iou(p[None], t[None], k) for p, t in zip(pred, target)]).nanmean(0)

    def miou_only(pred, target, k, ignore_index=255):
        return _iou(pred, target, k).nanmean()

    fails(checks.check_iou, ignore_counted, "ignored pixels")
    fails(checks.check_iou, zero_for_absent, "not 0")
    fails(checks.check_iou, no_minus_intersection, "intersection was not subtracted")
    fails(checks.check_iou, per_image, "per image")
    fails(checks.check_iou, miou_only, "single number")


# ---------------------------------------------------------------------------- 05a
class PatchEmbedNoPad(sf.OverlapPatchEmbed):
    def __init__(self, in_channels, dim, patch_size, stride):
        super().__init__(in_channels, dim, patch_size, stride)
        self.proj.padding = (0, 0)


class PatchEmbedColumnMajor(sf.OverlapPatchEmbed):
    def forward(self, x):
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(rearrange(x, "b c h w -> b (w h) c")), (h, w)


class PatchEmbedNoNorm(sf.OverlapPatchEmbed):
    def forward(self, x):
        x = self.proj(x)
        return rearrange(x, "b c h w -> b (h w) c"), tuple(x.shape[-2:])


class PatchEmbedSwappedHW(sf.OverlapPatchEmbed):
    def forward(self, x):
        tokens, (h, w) = super().forward(x)
        return tokens, (w, h)


class PatchEmbedBadNames(nn.Module):
    def __init__(self, in_channels, dim, patch_size, stride):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, dim, patch_size, stride, patch_size // 2)
        self.norm = nn.LayerNorm(dim)


def test_overlap_patch_embed_mistakes():
    fails(checks.check_overlap_patch_embed, PatchEmbedNoPad, "loses the border")
    fails(checks.check_overlap_patch_embed, PatchEmbedNoPad, "pad the conv with patch_size // 2", hint=True)
    fails(checks.check_overlap_patch_embed, PatchEmbedColumnMajor, "column by column")
    fails(checks.check_overlap_patch_embed, PatchEmbedNoNorm, "LayerNorm is missing")
    fails(checks.check_overlap_patch_embed, PatchEmbedSwappedHW, "swapped")
    fails(checks.check_overlap_patch_embed, PatchEmbedBadNames, r"missing proj\.weight")


class _ESA(sf.EfficientSelfAttention):
    """The reference written out, with one switch per classic mistake."""

    bug = None

    def forward(self, x, hw):
        h, w = hw
        B, N, C = x.shape
        heads, d = self.num_heads, C // self.num_heads
        q = self.q(x)
        if self.sr_ratio > 1:
            if self.bug == "reshape":
                m = x.reshape(B, C, h, w)
            else:
                m = rearrange(x, "b (h w) c -> b c h w", h=h, w=w)
            x = self.norm(rearrange(self.sr(m), "b c h w -> b (h w) c"))
        k, v = self.kv(x).chunk(2, dim=-1)
        if self.bug == "kv":
            k, v = v, k
        q, k, v = (rearrange(t, "b n (heads d) -> b heads n d", heads=heads) for t in (q, k, v))
        scores = q @ k.transpose(-2, -1)
        if self.bug != "no_scale":
            scores = scores * (C ** -0.5 if self.bug == "dim_scale" else d ** -0.5)
        attn = scores.softmax(-2 if self.bug == "softmax_axis" else -1)
        return self.proj(rearrange(attn @ v, "b heads n d -> b n (heads d)"))


def _esa_with(bug):
    return type(f"ESA_{bug}", (_ESA,), {"bug": bug})


def test_efficient_attention_mistakes():
    checks.check_efficient_attention(_esa_with(None))  # the written-out version is correct
    fails(checks.check_efficient_attention, _esa_with("no_scale"), "not scaled")
    fails(checks.check_efficient_attention, _esa_with("dim_scale"), "scaled by 1 / sqrt\\(dim\\)")
    fails(checks.check_efficient_attention, _esa_with("dim_scale"), "per-head dimension", hint=True)
    fails(checks.check_efficient_attention, _esa_with("softmax_axis"), "softmax runs over the queries")
    fails(checks.check_efficient_attention, _esa_with("reshape"), "without transposing first")
    fails(checks.check_efficient_attention, _esa_with("kv"), "keys and values are swapped")


class ESANoReduction(nn.Module):
    """Plain attention: forgets the sr conv and its norm."""

    def __init__(self, dim, num_heads, sr_ratio):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)


def test_efficient_attention_missing_reduction():
    fails(checks.check_efficient_attention, ESANoReduction, r"missing sr\.weight")


# ---------------------------------------------------------------------------- 05b
class _FFN(sf.MixFFN):
    bug = None

    def forward(self, x, hw):
        h, w = hw
        y = self.fc1(x)
        if self.bug == "gelu_first":
            y = self.act(y)
        y = rearrange(y, "b (h w) c -> b c h w", h=h, w=w)
        y = rearrange(self.dwconv(y), "b c h w -> b (h w) c")
        if self.bug != "gelu_first":
            y = F.gelu(y, approximate="tanh") if self.bug == "tanh" else self.act(y)
        out = self.fc2(y)
        return out + x if self.bug == "residual" else out


def _ffn_with(bug):
    return type(f"FFN_{bug}", (_FFN,), {"bug": bug})


class FFNFullConv(sf.MixFFN):
    def __init__(self, dim, hidden_dim):
        super().__init__(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1)


def test_mix_ffn_mistakes():
    checks.check_mix_ffn(_ffn_with(None))
    fails(checks.check_mix_ffn, _ffn_with("gelu_first"), "GELU comes before the depth-wise conv")
    fails(checks.check_mix_ffn, _ffn_with("tanh"), "tanh approximation")
    fails(checks.check_mix_ffn, _ffn_with("residual"), "belongs to the Block")
    fails(checks.check_mix_ffn, FFNFullConv, "groups=hidden_dim", hint=True)


class BlockPostNorm(sf.Block):
    def forward(self, x, hw):
        x = self.norm1(x + self.attn(x, hw))
        return self.norm2(x + self.mlp(x, hw))


class BlockNoResidual(sf.Block):
    def forward(self, x, hw):
        x = self.attn(self.norm1(x), hw)
        return x + self.mlp(self.norm2(x), hw)


class BlockNormedResidual(sf.Block):
    def forward(self, x, hw):
        x = self.norm1(x)
        x = x + self.attn(x, hw)
        x = self.norm2(x)
        return x + self.mlp(x, hw)


def test_block_mistakes():
    fails(checks.check_block, BlockPostNorm, "post-norm")
    fails(checks.check_block, BlockNoResidual, "residual connection around the attention is missing")
    fails(checks.check_block, BlockNormedResidual, "residual carries the normalised tokens")
    fails(checks.check_block, BlockNormedResidual, "un-normalised x", hint=True)


class StageNoNorm(sf.MiTStage):
    def forward(self, x):
        x, (h, w) = self.patch_embed(x)
        for block in self.blocks:
            x = block(x, (h, w))
        return rearrange(x, "b (h w) c -> b c h w", h=h, w=w)


class StageReshape(sf.MiTStage):
    def forward(self, x):
        x, (h, w) = self.patch_embed(x)
        for block in self.blocks:
            x = block(x, (h, w))
        return self.norm(x).reshape(x.shape[0], -1, h, w)


class StageTokens(sf.MiTStage):
    def forward(self, x):
        x, hw = self.patch_embed(x)
        for block in self.blocks:
            x = block(x, hw)
        return self.norm(x)


def test_mit_stage_mistakes():
    fails(checks.check_mit_stage, StageNoNorm, "stage-end LayerNorm")
    fails(checks.check_mit_stage, StageReshape, "without transposing first")
    fails(checks.check_mit_stage, StageTokens, "feature map")


# ---------------------------------------------------------------------------- 05c
class _Head(sf.SegFormerHead):
    bug = None

    def forward(self, features):
        size = features[0].shape[-2:]
        outs = []
        for feat, linear in zip(features, self.linear_c):
            h, w = feat.shape[-2:]
            x = rearrange(linear(rearrange(feat, "b c h w -> b (h w) c")), "b (h w) e -> b e h w", h=h, w=w)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=self.bug == "align_corners")
            outs.append(x)
        x = torch.cat(outs if self.bug == "order" else outs[::-1], dim=1)
        x = F.relu(self.bn(self.linear_fuse(x)))
        return self.linear_pred(self.dropout(x))


def _head_with(bug):
    return type(f"Head_{bug}", (_Head,), {"bug": bug})


class HeadUpsampled(sf.SegFormerHead):
    def forward(self, features):
        return F.interpolate(super().forward(features), scale_factor=4, mode="bilinear")


def test_segformer_head_mistakes():
    checks.check_segformer_head(_head_with(None))
    fails(checks.check_segformer_head, _head_with("order"), r"concatenated as \[c1, c2, c3, c4\]")
    fails(checks.check_segformer_head, _head_with("order"), r"\[c4, c3, c2, c1\]", hint=True)
    fails(checks.check_segformer_head, _head_with("align_corners"), "align_corners=True")
    fails(checks.check_segformer_head, HeadUpsampled, "size of c1")


def test_seg_loss_mistakes():
    def shrink_labels(logits, target, ignore_index=255):
        small = F.interpolate(target[:, None].float(), size=logits.shape[-2:], mode="nearest")[:, 0].long()
        return F.cross_entropy(logits, small, ignore_index=ignore_index)

    def no_ignore(logits, target, ignore_index=255):
        up = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(up, target)

    def corners(logits, target, ignore_index=255):
        up = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=True)
        return F.cross_entropy(up, target, ignore_index=ignore_index)

    def mean_over_all(logits, target, ignore_index=255):
        up = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(up, target, ignore_index=ignore_index, reduction="sum") / target.numel()

    fails(checks.check_seg_loss, shrink_labels, "labels were shrunk")
    fails(checks.check_seg_loss, no_ignore, "crashed on label 255")
    fails(checks.check_seg_loss, no_ignore, "ignore_index=255", hint=True)
    fails(checks.check_seg_loss, corners, "align_corners=True")
    fails(checks.check_seg_loss, mean_over_all, "over all pixels")


# ---------------------------------------------------------------------------- holes closed: stochastic depth, eps
from segedu.layers import DropPath  # noqa: E402


class BlockNoDropPath(sf.Block):
    """DropPath built but never applied: identical to segedu's block in eval mode."""

    def forward(self, x, hw):
        x = x + self.attn(self.norm1(x), hw)
        return x + self.mlp(self.norm2(x), hw)


class BlockZeroRate(sf.Block):
    """The rate it is given is dropped on the floor."""

    def __init__(self, dim, num_heads, sr_ratio, mlp_ratio, drop_path):
        super().__init__(dim, num_heads, sr_ratio, mlp_ratio, 0.0)


class BlockDropout(sf.Block):
    """nn.Dropout (single elements) where DropPath (whole samples) belongs."""

    def __init__(self, dim, num_heads, sr_ratio, mlp_ratio, drop_path):
        super().__init__(dim, num_heads, sr_ratio, mlp_ratio, drop_path)
        self.drop_path = nn.Dropout(drop_path)


class BatchDropPath(DropPath):
    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        return x * x.new_empty(()).bernoulli_(keep) / keep  # one coin for the whole batch


class BlockBatchCoin(sf.Block):
    def __init__(self, dim, num_heads, sr_ratio, mlp_ratio, drop_path):
        super().__init__(dim, num_heads, sr_ratio, mlp_ratio, drop_path)
        self.drop_path = BatchDropPath(drop_path)


class UnscaledDropPath(DropPath):
    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        return x * x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)


class BlockUnscaled(sf.Block):
    def __init__(self, dim, num_heads, sr_ratio, mlp_ratio, drop_path):
        super().__init__(dim, num_heads, sr_ratio, mlp_ratio, drop_path)
        self.drop_path = UnscaledDropPath(drop_path)


class TimmStyleDropPath(nn.Module):
    """Stochastic depth written another way (timm's drop_path: torch.rand + floor), per sample, scaled."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = (keep + torch.rand((x.shape[0], 1, 1), dtype=x.dtype)).floor()
        return x.div(keep) * mask


class BlockTimmDropPath(sf.Block):
    def __init__(self, dim, num_heads, sr_ratio, mlp_ratio, drop_path):
        super().__init__(dim, num_heads, sr_ratio, mlp_ratio, drop_path)
        self.drop_path = TimmStyleDropPath(drop_path)


def test_block_stochastic_depth(capsys):
    assert_passes_quietly(capsys, "check_block", checks.check_block, BlockTimmDropPath)  # another correct way
    fails(checks.check_block, BlockNoDropPath, "behaves exactly as in eval mode: no stochastic depth")
    fails(checks.check_block, BlockZeroRate, "no stochastic depth")
    fails(checks.check_block, BlockDropout, "not single elements")
    fails(checks.check_block, BlockBatchCoin, "same branches for every sample")
    fails(checks.check_block, BlockUnscaled, "does not rescale the kept ones")
    fails(checks.check_block, BlockNoDropPath, r"Hint: Wrap each residual branch", hint=True)


def _stage_with(rates):
    class Stage(sf.MiTStage):
        def __init__(self, in_channels, dim, depth, num_heads, sr_ratio, mlp_ratio, patch_size, stride, drop_paths):
            super().__init__(in_channels, dim, depth, num_heads, sr_ratio, mlp_ratio, patch_size, stride,
                             rates(drop_paths[:depth]))
    return Stage


def test_mit_stage_drop_path_rates():
    fails(checks.check_mit_stage, _stage_with(lambda r: [0.0] * len(r)),
          r"block 1 .*behaves exactly as in eval mode: no stochastic depth")
    fails(checks.check_mit_stage, _stage_with(lambda r: r[::-1]), r"block 0 .*rate 0.*reversed")
    fails(checks.check_mit_stage, _stage_with(lambda r: r[1:] + r[:1]), r"block 0 .*(reversed|wrong blocks)")


class StageDefaultEps(sf.MiTStage):
    def __init__(self, *args):
        super().__init__(*args)
        self.norm = nn.LayerNorm(self.norm.normalized_shape[0])  # PyTorch's default eps 1e-5


class BlockDefaultEps(sf.Block):
    def __init__(self, *args):
        super().__init__(*args)
        self.norm2 = nn.LayerNorm(self.norm2.normalized_shape[0])


def test_layer_norm_eps_is_named():
    fails(checks.check_mit_stage, StageDefaultEps, r"`norm` is a LayerNorm with eps=1e-05.*eps=1e-06")
    fails(checks.check_block, BlockDefaultEps, r"`norm2` is a LayerNorm with eps=1e-05.*eps=1e-06")
    fails(checks.check_mit_stage, StageDefaultEps, r"Hint: nn\.LayerNorm\(\.\.\., eps=1e-06\) for `norm`", hint=True)


# ---------------------------------------------------------------------------- hints that guide instead of answering
import inspect  # noqa: E402

from check_contract import first_failure_and_hint  # noqa: E402
from segedu.checks import _core  # noqa: E402


def test_every_check_says_where_to_look_and_takes_hint():
    names = [n for n in dir(checks) if n.startswith("check_")]
    assert len(names) >= 35
    for name in names:
        assert name in _core.WHERE_TO_LOOK, f"{name} has no @teaches(where_to_look)"
        assert "hint" in inspect.signature(getattr(checks, name), follow_wrapped=False).parameters, name


def test_first_failure_names_the_concept_and_where_to_look_then_the_fix():
    first, second = first_failure_and_hint(checks.check_block, BlockNormedResidual)
    assert first.startswith("check_block (dim=16, heads=2, sr=2): the residual carries the normalised tokens.")
    assert "\nWhere to look: SegFormer Sec. 3.1" in first
    assert "un-normalised" not in first and "Hint:" not in first and first.endswith(_core.HINT_OFFER)
    assert second.splitlines()[:2] == first.splitlines()[:2]
    assert second.splitlines()[-1].startswith("Hint: add the branch to the un-normalised x")


def test_hint_true_gives_the_fix_at_once_and_a_pass_forgets():
    _core._LAST_FAILURE.pop("check_mla_top_down", None)
    fails(checks.check_mla_top_down, _bottom_up, "Hint: MLA is top-down", hint=True)
    checks.check_mla_top_down(lambda c: [sum(c[i:]) for i in range(len(c))])  # passes: the next failure is new
    message = fails(checks.check_mla_top_down, _bottom_up, "sums run bottom-up")
    assert "Hint:" not in message


def _bottom_up(c):
    p = list(c)
    for i in range(1, len(c)):
        p[i] = p[i - 1] + c[i]
    return p


def test_passing_checks_print_what_they_printed_before(capsys):
    checks.check_mix_ffn(sf.MixFFN)
    checks.check_block(sf.Block, hint=True)
    checks.check_iou(_iou)
    assert capsys.readouterr().out == (
        "check_mix_ffn passed: 3 cases match segedu.models.segformer.MixFFN\n"
        "check_block passed: 3 cases match segedu.models.segformer.Block\n"
        "check_iou passed: 2 cases match segedu.metrics.SegMetrics\n")


def test_split_message_keeps_labels_and_abbreviations_with_the_concept():
    assert _core.split_message("partition: the windows are numbered column by column; number them row by row") == (
        "partition: the windows are numbered column by column.", "number them row by row")
    assert _core.split_message("the softmax runs over the queries (dim=-2): take it over the keys") == (
        "the softmax runs over the queries (dim=-2).", "take it over the keys")
    assert _core.split_message("the residual x + ... belongs to the Block, not to the Mix-FFN") == (
        "the residual x + ... belongs to the Block, not to the Mix-FFN", None)
    assert _core.split_message("see SegFormer Sec. 3.1 for it") == ("see SegFormer Sec. 3.1 for it", None)


# ---------------------------------------------------------------------------- the cells waiting for the notebooks
from check_contract import NOTEBOOKS, assert_pending_cells_fit  # noqa: E402


@pytest.mark.parametrize("stem", sorted(p.stem for p in NOTEBOOKS.glob("[01]*.ipynb")))
def test_pending_cells_fit_their_notebook(stem):
    """Design exercises and "Check your understanding" cells (/tmp/g_cells/<stem>.json, when present): each either
    is in the notebook already or has an anchor found in exactly one cell."""
    assert_pending_cells_fit(stem)
