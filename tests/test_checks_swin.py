"""The notebook-04 checks pass on segedu's reference and name each planted classic mistake."""
import pytest
import torch
import torch.nn as nn
from einops import rearrange

from segedu import checks
from segedu.models import ssformer as ssf

from check_contract import Stub, assert_passes_quietly, assert_stub_passes_through, fails, stub


def swin_attention(x, attn, ws, shift):
    """SW-MSA through segedu's SwinBlock (H, W multiples of ws), built on a forked RNG: the caller's stream stays."""
    with torch.random.fork_rng(devices=[]):
        block = ssf.SwinBlock(x.shape[-1], attn.num_heads, ws, shift, 4.0, 0.0)
    block.attn = attn
    mask = ssf.shift_window_mask(x.shape[1], x.shape[2], ws, shift) if shift else None
    return block.window_attention(x, mask)


@pytest.mark.parametrize("check,args,name", [
    (checks.check_window_partition, (ssf.window_partition, ssf.window_reverse), "check_window_partition"),
    (checks.check_shifted_window_attention, (swin_attention,), "check_shifted_window_attention"),
    (checks.check_shifted_window_attention, (lambda *a: attention_with()(*a),), "check_shifted_window_attention"),
    (checks.check_patch_merging, (ssf.PatchMerging,), "check_patch_merging"),
], ids=["window_partition", "swin_block", "by_hand", "patch_merging"])
def test_reference_passes_quietly_and_leaves_the_global_rng_alone(check, args, name, capsys):
    assert_passes_quietly(capsys, name, check, *args)


@pytest.mark.parametrize("check,args", [
    (checks.check_window_partition, (stub, ssf.window_reverse)),
    (checks.check_window_partition, (ssf.window_partition, stub)),
    (checks.check_shifted_window_attention, (stub,)),
    (checks.check_patch_merging, (Stub,)),
], ids=["window_partition", "window_reverse", "shifted_window_attention", "patch_merging"])
def test_unsolved_exercises_raise_not_implemented(check, args):
    assert_stub_passes_through(check, *args)


# ---------------------------------------------------------------------------- windows
def partition_reshape(x, ws):
    return x.reshape(-1, ws, ws, x.shape[-1])


def partition_columns(x, ws):
    return rearrange(x, "b (nh wh) (nw ww) c -> (b nw nh) wh ww c", wh=ws, ww=ws)


def reverse_reshape(windows, ws, H, W):
    return windows.reshape(-1, H, W, windows.shape[-1])


def test_window_partition_mistakes():
    check = checks.check_window_partition
    fails(check, partition_reshape, ssf.window_reverse, "reshaped to \\[-1, ws, ws, C\\] directly")
    fails(check, partition_columns, ssf.window_reverse, "column by column")
    fails(check, ssf.window_partition, reverse_reshape, "reverse: the windows were reshaped straight")
    fails(check, lambda x, ws: ssf.window_partition(x, ws).flatten(1, 2), ssf.window_reverse, "flattened windows")


# ---------------------------------------------------------------------------- shifted windows
def attention_with(roll=-1, mask=True, roll_back=True):
    def fn(x, attn, ws, shift):
        H, W = x.shape[1:3]
        if shift:
            x = torch.roll(x, (roll * shift, roll * shift), dims=(1, 2))
        windows = rearrange(ssf.window_partition(x, ws), "n wh ww c -> n (wh ww) c")
        windows = attn(windows, ssf.shift_window_mask(H, W, ws, shift) if shift and mask else None)
        x = ssf.window_reverse(rearrange(windows, "n (wh ww) c -> n wh ww c", wh=ws), ws, H, W)
        if shift and roll_back:
            x = torch.roll(x, (-roll * shift, -roll * shift), dims=(1, 2))
        return x
    return fn


def test_shifted_window_attention_mistakes():
    fails(checks.check_shifted_window_attention, attention_with(roll=1), "rolled the wrong way")
    fails(checks.check_shifted_window_attention, attention_with(mask=False), "without the mask")
    fails(checks.check_shifted_window_attention, attention_with(roll_back=False), "not rolled back")
    fails(checks.check_shifted_window_attention, attention_with(roll=0), "never rolled")


def test_regular_windows_take_no_mask():
    def masked_regular_windows(x, attn, ws, shift):
        if shift:
            return attention_with()(x, attn, ws, shift)
        H, W = x.shape[1:3]
        windows = rearrange(ssf.window_partition(x, ws), "n wh ww c -> n (wh ww) c")
        windows = attn(windows, ssf.shift_window_mask(H, W, ws, max(ws // 2, 1)))
        return ssf.window_reverse(rearrange(windows, "n (wh ww) c -> n wh ww c", wh=ws), ws, H, W)

    fails(checks.check_shifted_window_attention, masked_regular_windows, "shift=0.*no mask is used")


# ---------------------------------------------------------------------------- patch merging
class MergeRowMajor(ssf.PatchMerging):
    def forward(self, x):
        x = torch.cat([x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class MergeUnfold(ssf.PatchMerging):
    def forward(self, x):
        H = x.shape[1]
        cols = nn.functional.unfold(rearrange(x, "b h w c -> b c h w"), 2, stride=2)  # [B, 4C, N]
        x = rearrange(cols, "b k (h w) -> b h w k", h=H // 2)
        return self.reduction(self.norm(x))


class MergeWithBias(ssf.PatchMerging):
    def __init__(self, dim):
        super().__init__(dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim)


def test_patch_merging_mistakes():
    fails(checks.check_patch_merging, MergeRowMajor, "x0, x2, x1, x3")
    fails(checks.check_patch_merging, MergeUnfold, "nn.Unfold")
    fails(checks.check_patch_merging, MergeWithBias, "unexpected reduction.bias")


# ---------------------------------------------------------------------------- any map size (design exercise)
import torch.nn.functional as F  # noqa: E402

from check_contract import assert_pending_cells_fit, exec_exercise  # noqa: E402
from segedu.checks.swin import _any_size  # noqa: E402


def any_size_by_hand(x, attn, ws, shift):
    """Another correct version: zeros concatenated by hand, partition / mask / reverse written out, no F.pad."""
    B, H, W, C = x.shape
    Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
    y = torch.cat([x, x.new_zeros(B, Hp - H, W, C)], dim=1)
    y = torch.cat([y, y.new_zeros(B, Hp, Wp - W, C)], dim=2)
    if shift:
        y = y.roll((-shift, -shift), dims=(1, 2))
    windows = rearrange(y, "b (nh wh) (nw ww) c -> (b nh nw) (wh ww) c", wh=ws, ww=ws)
    windows = attn(windows, ssf.shift_window_mask(Hp, Wp, ws, shift) if shift else None)
    y = rearrange(windows, "(b nh nw) (wh ww) c -> b (nh wh) (nw ww) c", b=B, nh=Hp // ws, wh=ws)
    if shift:
        y = y.roll((shift, shift), dims=(1, 2))
    return y[:, :H, :W]


def test_any_size_solution_and_an_alternative_pass(capsys):
    ns = exec_exercise("04_swin_and_ssformer", "ex04-window-attention-any-size", ssf=ssf,
                       shifted_window_attention=attention_with())
    for fn in (ns["window_attention_any_size"], any_size_by_hand):
        assert_passes_quietly(capsys, "check_window_attention_any_size", checks.check_window_attention_any_size, fn)


def test_any_size_cells_fit_the_notebook():
    assert_pending_cells_fit("04_swin_and_ssformer")


def test_any_size_unsolved_raises_not_implemented():
    assert_stub_passes_through(checks.check_window_attention_any_size, stub)


@pytest.mark.parametrize("bug,match", [
    (dict(pad="top_left", crop="matching"), "padded at the top and the left"),
    (dict(crop="bottom_right"), "crop keeps the wrong corner"),
    (dict(pad="after_roll"), "rolled before it was padded"),
    (dict(pad="replicate"), "repeats the border tokens"),
    (dict(pad="extra_window"), "a whole window of padding"),
    (dict(mask=False), "without the mask"),
])
def test_any_size_mistakes(bug, match):
    fails(checks.check_window_attention_any_size, lambda x, a, ws, s: _any_size(x, a, ws, s, **bug), match)


def test_any_size_shape_mistakes():
    def no_crop(x, attn, ws, shift):
        H, W = x.shape[1:3]
        return attention_with()(F.pad(x, (0, 0, 0, (-W) % ws, 0, (-H) % ws)), attn, ws, shift)

    fails(checks.check_window_attention_any_size, no_crop, r"10x13 map came back as \(12, 16\)")
    fails(checks.check_window_attention_any_size, no_crop, r"Hint: Crop the result back", hint=True)
