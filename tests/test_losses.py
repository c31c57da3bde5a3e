"""The loss: seg_loss, its chunked form, and the normaliser that makes split batches add up."""
import pytest
import torch

from segedu.losses import chunked_seg_loss, seg_loss, total_loss


def _grad(loss_fn, logits, target, **kw):
    x = logits.clone().requires_grad_(True)
    loss = loss_fn(x, target, **kw)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


@pytest.mark.parametrize(("low", "high", "rows"), [
    ((16, 16), (64, 64), 7),      # x4, bands that do not divide the height
    ((13, 17), (52, 67), 64),     # odd sizes, one band
    ((10, 12), (33, 45), 5),      # non-integer scale factors
    ((8, 8), (8, 8), 3),          # already at the label size
])
def test_chunked_loss_equals_seg_loss(low, high, rows):
    torch.manual_seed(0)
    logits = torch.randn(2, 6, *low)
    target = torch.randint(0, 6, (2, *high))
    target[0, :3] = 255                                   # ignored rows
    target[1, :, -2:] = 255                               # ignored columns
    value, grad = _grad(seg_loss, logits, target)
    chunked_value, chunked_grad = _grad(chunked_seg_loss, logits, target, chunk_rows=rows)
    torch.testing.assert_close(chunked_value, value, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(chunked_grad, grad, atol=1e-8, rtol=1e-5)


def test_both_losses_upsample_bf16_logits_in_fp32():
    # Under autocast the decoder's logits are bf16; both losses convert the small low-resolution tensor to
    # fp32 before upsampling (resizing in bf16 would round the upsampled logits to 8 bits of mantissa).
    torch.manual_seed(1)
    logits = torch.randn(1, 5, 8, 8).bfloat16()
    target = torch.randint(0, 5, (1, 32, 32))
    exact = seg_loss(logits.float(), target)
    for loss in (seg_loss(logits, target), chunked_seg_loss(logits, target, chunk_rows=8)):
        assert loss.dtype == torch.float32
        torch.testing.assert_close(loss, exact, atol=0, rtol=1e-6)
    resized_in_bf16 = torch.nn.functional.interpolate(logits, size=(32, 32), mode="bilinear").float()
    assert seg_loss(resized_in_bf16, target) != exact  # the difference the fp32 resize avoids


def test_a_batch_without_labelled_pixels_has_zero_loss_and_gradient():
    logits = torch.randn(2, 5, 8, 8, requires_grad=True)
    target = torch.full((2, 32, 32), 255)
    outputs = {"main": logits, "aux": [logits * 2]}
    for loss in (seg_loss(logits, target), chunked_seg_loss(logits, target, chunk_rows=8),
                 total_loss(outputs, target, (0.4,))):
        assert loss.item() == 0.0
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.equal(grad, torch.zeros_like(grad))


def test_normalizer_makes_pieces_add_up_to_the_whole_batch():
    torch.manual_seed(2)
    logits = torch.randn(4, 5, 8, 8)
    target = torch.randint(0, 5, (4, 32, 32))
    target[:2, :20] = 255                                 # the pieces have different labelled counts
    whole = seg_loss(logits, target)
    count = (target != 255).sum()
    pieces = sum(seg_loss(logits[i:i + 2], target[i:i + 2], normalizer=count) for i in (0, 2))
    torch.testing.assert_close(pieces, whole)
    halves = [seg_loss(logits[i:i + 2], target[i:i + 2]) for i in (0, 2)]
    assert abs((halves[0] + halves[1]) / 2 - whole) > 1e-3  # the plain mean of means is not the same
    chunked = sum(chunked_seg_loss(logits[i:i + 2], target[i:i + 2], normalizer=count, chunk_rows=5) for i in (0, 2))
    torch.testing.assert_close(chunked, whole)


def test_total_loss_chunked_with_auxiliary_heads():
    torch.manual_seed(3)
    outputs = {"main": torch.randn(2, 5, 8, 8), "aux": [torch.randn(2, 5, 8, 8), torch.randn(2, 5, 16, 16)]}
    target = torch.randint(0, 5, (2, 32, 32))
    torch.testing.assert_close(total_loss(outputs, target, (0.4, 0.4), chunk_rows=6),
                               total_loss(outputs, target, (0.4, 0.4)))
    with pytest.raises(ValueError, match="chunk_rows must be a positive"):
        chunked_seg_loss(outputs["main"], target, chunk_rows=0)
