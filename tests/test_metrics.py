"""SegMetrics against torchmetrics, and its definitions on a hand-checked example."""
import math

import pytest
import torch

from segedu.metrics import SegMetrics


def test_hand_example():
    m = SegMetrics(3)
    m.update(torch.tensor([[0, 1, 2, 2]]), torch.tensor([[0, 1, 1, 255]]))  # the 255 pixel is dropped
    out = m.compute()
    assert out["IoU"] == [1.0, 0.5, 0.0]          # class 2: predicted once, never labelled -> IoU 0
    assert math.isnan(out["Acc"][2])               # ... and no accuracy (no labelled pixel)
    assert out["mIoU"] == pytest.approx(0.5) and out["mAcc"] == pytest.approx(0.75)
    assert out["aAcc"] == pytest.approx(2 / 3)


def test_classes_absent_from_prediction_and_label_are_skipped():
    m = SegMetrics(5)
    m.update(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    out = m.compute()
    assert out["mIoU"] == 1.0 and math.isnan(out["IoU"][4])


def test_matches_torchmetrics_over_a_dataset():
    tm = pytest.importorskip("torchmetrics.classification")
    torch.manual_seed(0)
    k = 6
    ours = SegMetrics(k)
    jaccard = tm.MulticlassJaccardIndex(k, average=None, ignore_index=255)
    confusion = tm.MulticlassConfusionMatrix(k, ignore_index=255)
    accuracy = tm.MulticlassAccuracy(k, average="micro", ignore_index=255)
    for _ in range(4):  # dataset-level: accumulate over batches of different sizes
        target = torch.randint(0, k - 1, (2, 17, 23))  # class k-1 never labelled
        target[:, :3] = 255
        logits = torch.randn(2, k, 17, 23) + 3 * torch.nn.functional.one_hot(target.clamp(max=k - 1), k).permute(0, 3, 1, 2)
        ours.update(logits, target)
        pred = logits.argmax(1)
        jaccard.update(pred, target), confusion.update(pred, target), accuracy.update(pred, target)
    assert torch.equal(ours.confusion, confusion.compute())
    out = ours.compute()
    theirs = jaccard.compute().double()
    iou = torch.tensor(out["IoU"], dtype=torch.float64)
    defined = ~iou.isnan()  # torchmetrics reports 0 where a class is in neither prediction nor label
    torch.testing.assert_close(iou[defined], theirs[defined], atol=1e-6, rtol=1e-6)
    assert out["aAcc"] == pytest.approx(accuracy.compute().item(), abs=1e-6)
    assert out["mIoU"] == pytest.approx(theirs[defined].mean().item(), abs=1e-6)


def test_bad_labels_and_shapes_are_rejected():
    m = SegMetrics(4)
    with pytest.raises(ValueError, match=r"label values \[7\] are outside \[0, 4\)"):
        m.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[0, 7], [255, 1]]]))
    with pytest.raises(ValueError, match="does not match label shape"):
        m.update(torch.zeros(1, 3, 3, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="logits have 5 classes"):
        m.update(torch.zeros(1, 5, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
