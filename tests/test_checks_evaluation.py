"""Notebook 08's checks: each passes on segedu's reference and names the planted classic mistakes."""
import pytest
import torch
import torch.nn.functional as F

from segedu import checks
from segedu.evaluate import slide_logits, slide_windows
from segedu.metrics import SegMetrics

from check_contract import assert_passes_quietly, assert_stub_passes_through, fails, stub


def confusion_matrix(pred, target, num_classes, ignore_index=255):
    m = SegMetrics(num_classes, ignore_index)
    m.update(pred, target)
    return m.confusion


def iou_from_confusion(cm):
    cm = cm.double()
    inter = cm.diag()
    return inter / (cm.sum(0) + cm.sum(1) - inter)


@pytest.mark.parametrize("check,args,name", [
    (checks.check_confusion_iou, (confusion_matrix, iou_from_confusion), "check_confusion_iou"),
    (checks.check_slide_logits, (slide_logits,), "check_slide_logits"),
], ids=["confusion_iou", "slide_logits"])
def test_reference_passes_quietly_and_leaves_the_global_rng_alone(check, args, name, capsys):
    torch.manual_seed(5)
    assert_passes_quietly(capsys, name, check, *args)


@pytest.mark.parametrize("check,args", [
    (checks.check_confusion_iou, (stub, iou_from_confusion)),
    (checks.check_confusion_iou, (confusion_matrix, stub)),
    (checks.check_slide_logits, (stub,)),
], ids=["confusion_matrix", "iou_from_confusion", "slide_logits"])
def test_unsolved_exercises_raise_not_implemented(check, args):
    assert_stub_passes_through(check, *args)


# ------------------------------------------------------------------------ confusion matrix and IoU
def test_confusion_iou_mistakes():
    check = checks.check_confusion_iou

    def counted_as_last(pred, target, k, ignore_index=255):
        return torch.bincount(target.clamp(max=k - 1).flatten() * k + pred.flatten(), minlength=k * k).reshape(k, k)

    def no_filter(pred, target, k, ignore_index=255):  # crashes on 255 in reshape
        return torch.bincount(target.flatten() * k + pred.flatten(), minlength=k * k).reshape(k, k)

    fails(check, lambda *a: confusion_matrix(*a).T, iou_from_confusion, "rows and columns are swapped")
    fails(check, counted_as_last, iou_from_confusion, "ignored pixels \\(label 255\\) were counted")
    fails(check, no_filter, iou_from_confusion, "drop the pixels whose label is ignore_index")
    fails(check, lambda *a: confusion_matrix(*a) / confusion_matrix(*a).sum(1, keepdim=True), iou_from_confusion,
          "returned fractions")
    fails(check, confusion_matrix, lambda cm: iou_from_confusion(cm).nan_to_num(0.0), "must be NaN")
    fails(check, confusion_matrix, lambda cm: cm.diag() / (cm.sum(0) + cm.sum(1)), "not subtracted")
    fails(check, confusion_matrix, lambda cm: cm.diag() / cm.sum(1), "recall")
    fails(check, confusion_matrix, lambda cm: iou_from_confusion(cm).nanmean(), "shape")


# ------------------------------------------------------------------------ sliding-window inference
def _slide(model, image, crop, stride, k, *, divide=True, align=True):
    b, _, H, W = image.shape
    canvas, count = torch.zeros(b, k, H, W), torch.zeros(1, 1, H, W)
    for y1, y2, x1, x2 in slide_windows(H, W, crop, stride):
        if not align:  # undo the shift of the last window: it starts at a multiple of the stride
            y1, x1 = (y1 if y2 < H else (max(H - crop + stride - 1, 0) // stride) * stride,
                      x1 if x2 < W else (max(W - crop + stride - 1, 0) // stride) * stride)
        with torch.no_grad():
            logits = F.interpolate(model(image[..., y1:y2, x1:x2]), size=(y2 - y1, x2 - x1), mode="bilinear")
        canvas[..., y1:y2, x1:x2] += logits
        count[..., y1:y2, x1:x2] += 1
    return canvas / count if divide else canvas


def test_slide_logits_mistakes():
    check = checks.check_slide_logits
    fails(check, lambda *a: _slide(*a, divide=False), "summed but not divided")
    fails(check, lambda *a: _slide(*a, align=False), "not aligned to the border")
    fails(check, lambda m, x, c, s, k: slide_logits(m, x, c, s, k).softmax(1), "values differ")
    fails(check, lambda m, x, c, s, k: slide_logits(m, x, c, s, k)[..., :-1], "output shape")
    fails(check, lambda m, x, c, s, k: F.interpolate(m(x), size=x.shape[-2:], mode="bilinear"), "values differ")


def test_slide_logits_reference_matches_whole_image_when_one_window():
    """A crop as large as the image is one window: slide inference is whole-image inference."""
    model = torch.nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(1, 3, 12, 20)
    with torch.no_grad():
        torch.testing.assert_close(slide_logits(model, x, 32, 16, 4), model(x))


# ---------------------------------------------------------------------------- multi-scale + flip (design exercise)
from segedu.checks.evaluation import _ms_flip  # noqa: E402
from segedu.evaluate import ms_flip_logits  # noqa: E402

from check_contract import assert_pending_cells_fit, exec_exercise  # noqa: E402


def ms_flip_batched(model, image, scales, flip=True):
    """Correct, written differently: the image and its mirror in one batch, round() on sizes that never end in .5
    here, probabilities accumulated in a list and stacked."""
    H, W = image.shape[-2:]
    probs = []
    for r in scales:
        x = F.interpolate(image, size=(int(H * r + 0.5), int(W * r + 0.5)), mode="bilinear", align_corners=False)
        batch = torch.cat([x, x.flip(3)]) if flip else x
        p = F.interpolate(model(batch), size=(H, W), mode="bilinear", align_corners=False).softmax(1)
        probs += [p[:len(image)], p[len(image):].flip(3)] if flip else [p]
    return torch.stack(probs).mean(0)


def test_ms_flip_solution_and_alternatives_pass(capsys):
    ns = exec_exercise("08_evaluation_and_inference", "ex08-ms-flip")
    for fn in (ns["ms_flip_probs"], ms_flip_batched, lambda m, x, s, flip=True: ms_flip_logits(m, x, s, flip=flip)):
        assert_passes_quietly(capsys, "check_ms_flip", checks.check_ms_flip, fn)


def test_ms_flip_cells_fit_the_notebook():
    assert_pending_cells_fit("08_evaluation_and_inference")


def test_ms_flip_unsolved_raises_not_implemented():
    assert_stub_passes_through(checks.check_ms_flip, stub)


@pytest.mark.parametrize("bug,match", [
    (dict(average="logits"), "logits were averaged"),
    (dict(resize_probs=True), "softmax was taken at the model's output size"),
    (dict(unflip=False), "not mirrored back"),
    (dict(vertical=True), "flip is vertical"),
    (dict(rounding="floor"), "truncated"),
    (dict(image_mode="nearest"), "nearest neighbour"),
    (dict(align_corners=True), "align_corners=True"),
    (dict(divide="scales"), "divided by the number of scales"),
])
def test_ms_flip_mistakes(bug, match):
    fails(checks.check_ms_flip, lambda m, x, s, flip=True: _ms_flip(m, x, s, flip, **bug), match)
