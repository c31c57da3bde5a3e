"""The notebook-04 checks pass on segedu's reference and name each planted classic mistake."""
import pytest
import torch
import torch.nn as nn
from einops import rearrange

from segedu import checks
from segedu.models import ssformer as ssf


def swin_attention(x, attn, ws, shift):
    """SW-MSA through segedu's SwinBlock (H, W multiples of ws)."""
    block = ssf.SwinBlock(x.shape[-1], attn.num_heads, ws, shift, 4.0, 0.0)
    block.attn = attn
    mask = ssf.shift_window_mask(x.shape[1], x.shape[2], ws, shift) if shift else None
    return block.window_attention(x, mask)


def test_references_pass(capsys):
    checks.check_window_partition(ssf.window_partition, ssf.window_reverse)
    checks.check_shifted_window_attention(swin_attention)
    checks.check_patch_merging(ssf.PatchMerging)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" passed:")[0] for line in lines] == [
        "check_window_partition", "check_shifted_window_attention", "check_patch_merging"]


def test_unsolved_exercises_raise_not_implemented():
    class Stub(nn.Module):
        def __init__(self, *args):
            super().__init__()
            raise NotImplementedError()

    def stub(*args):
        raise NotImplementedError()

    with pytest.raises(NotImplementedError):
        checks.check_window_partition(stub, ssf.window_reverse)
    with pytest.raises(NotImplementedError):
        checks.check_shifted_window_attention(stub)
    with pytest.raises(NotImplementedError):
        checks.check_patch_merging(Stub)


def test_checks_leave_the_global_rng_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    checks.check_window_partition(ssf.window_partition, ssf.window_reverse)
    checks.check_shifted_window_attention(attention_with())  # draws no random numbers itself
    checks.check_patch_merging(ssf.PatchMerging)
    assert torch.equal(torch.rand(3), expected)


# ---------------------------------------------------------------------------- windows
def partition_reshape(x, ws):
    return x.reshape(-1, ws, ws, x.shape[-1])


def partition_columns(x, ws):
    return rearrange(x, "b (nh wh) (nw ww) c -> (b nw nh) wh ww c", wh=ws, ww=ws)


def reverse_reshape(windows, ws, H, W):
    return windows.reshape(-1, H, W, windows.shape[-1])


def test_window_partition_mistakes():
    with pytest.raises(AssertionError, match="reshaped to \\[-1, ws, ws, C\\] directly"):
        checks.check_window_partition(partition_reshape, ssf.window_reverse)
    with pytest.raises(AssertionError, match="column by column"):
        checks.check_window_partition(partition_columns, ssf.window_reverse)
    with pytest.raises(AssertionError, match="reverse: the windows were reshaped straight"):
        checks.check_window_partition(ssf.window_partition, reverse_reshape)
    with pytest.raises(AssertionError, match="flattened windows"):
        checks.check_window_partition(lambda x, ws: ssf.window_partition(x, ws).flatten(1, 2), ssf.window_reverse)


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
    with pytest.raises(AssertionError, match="rolled the wrong way"):
        checks.check_shifted_window_attention(attention_with(roll=1))
    with pytest.raises(AssertionError, match="without the mask"):
        checks.check_shifted_window_attention(attention_with(mask=False))
    with pytest.raises(AssertionError, match="not rolled back"):
        checks.check_shifted_window_attention(attention_with(roll_back=False))
    with pytest.raises(AssertionError, match="never rolled"):
        checks.check_shifted_window_attention(attention_with(roll=0))


def test_regular_windows_take_no_mask():
    def masked_regular_windows(x, attn, ws, shift):
        if shift:
            return attention_with()(x, attn, ws, shift)
        H, W = x.shape[1:3]
        windows = rearrange(ssf.window_partition(x, ws), "n wh ww c -> n (wh ww) c")
        windows = attn(windows, ssf.shift_window_mask(H, W, ws, max(ws // 2, 1)))
        return ssf.window_reverse(rearrange(windows, "n (wh ww) c -> n wh ww c", wh=ws), ws, H, W)

    with pytest.raises(AssertionError, match="shift=0.*no mask is used"):
        checks.check_shifted_window_attention(masked_regular_windows)


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
    with pytest.raises(AssertionError, match="x0, x2, x1, x3"):
        checks.check_patch_merging(MergeRowMajor)
    with pytest.raises(AssertionError, match="nn.Unfold"):
        checks.check_patch_merging(MergeUnfold)
    with pytest.raises(AssertionError, match="unexpected reduction.bias"):
        checks.check_patch_merging(MergeWithBias)
