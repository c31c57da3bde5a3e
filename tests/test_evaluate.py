"""Whole / sliding-window / multi-scale+flip inference, dataset-level evaluation, ``segedu eval``."""
import json

import pytest
import torch
from torch import nn

from segedu import checkpoint as ckpt
from segedu.cli import main as cli_main
from segedu.data import generate, open_dataset, test_transforms
from segedu.evaluate import evaluate, infer, ms_flip_logits, predict_logits, slide_logits, slide_windows
from segedu.predict import load_model
from segedu.recipes import RECIPES
from segedu.registry import build_model

K = 5


def pointwise_model(seed: int = 0) -> nn.Module:
    """A 1x1 convolution: exactly translation- and flip-equivariant, any input size."""
    torch.manual_seed(seed)
    return nn.Conv2d(3, K, 1).eval()


class ConstantModel(nn.Module):
    """Logits that do not depend on the pixel: ``bias`` everywhere, at a quarter of the input size."""

    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.bias = nn.Parameter(bias)

    def forward(self, x):
        b, _, h, w = x.shape
        return self.bias[None, :, None, None].expand(b, -1, (h + 3) // 4, (w + 3) // 4)


class CountingModel(nn.Module):
    """Records the size of every batch it sees, returns zeros."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return x.new_zeros(x.shape[0], K, *x.shape[-2:])


def coverage(height, width, crop, stride) -> torch.Tensor:
    count = torch.zeros(height, width, dtype=torch.int64)
    for y1, y2, x1, x2 in slide_windows(height, width, crop, stride):
        count[y1:y2, x1:x2] += 1
    return count


# --- windows and the count map ---------------------------------------------------------------------

def test_windows_for_odd_sizes_by_hand():
    # 97 x 131, crop 64, stride 43: rows (97-64+42)//43+1 = 2, columns (131-64+42)//43+1 = 3;
    # the last window is pulled back inside the image (97-64 = 33, 131-64 = 67).
    windows = slide_windows(97, 131, 64, 43)
    rows = [(0, 64), (33, 97)]
    cols = [(0, 64), (43, 107), (67, 131)]
    assert windows == [(y1, y2, x1, x2) for y1, y2 in rows for x1, x2 in cols]


@pytest.mark.parametrize("size,crop,stride", [((97, 131), 64, 43), ((512, 683), 512, 341), ((40, 300), 64, 21),
                                              ((64, 64), 64, 64), ((1, 1), 8, 3), ((130, 70), (48, 32), (40, 17))])
def test_count_map_covers_every_pixel_and_windows_have_the_crop_size(size, crop, stride):
    h, w = size
    count = coverage(h, w, crop, stride)
    assert count.min() >= 1
    ch, cw = (crop, crop) if isinstance(crop, int) else crop
    assert {(y2 - y1, x2 - x1) for y1, y2, x1, x2 in slide_windows(h, w, crop, stride)} == {(min(ch, h), min(cw, w))}


def test_bad_windows_are_refused():
    with pytest.raises(ValueError, match="larger than crop_size"):
        slide_windows(100, 100, 32, 40)
    with pytest.raises(ValueError, match="positive"):
        slide_windows(100, 100, 0, 1)


# --- slide ------------------------------------------------------------------------------------------

def test_slide_with_a_crop_at_least_the_image_equals_whole():
    model = build_model("segformer-b0", num_classes=K).eval()
    torch.manual_seed(1)
    image = torch.randn(1, 3, 64, 96)
    whole = predict_logits(model, image, (64, 96))
    for crop in (96, (64, 96), 200):
        torch.testing.assert_close(slide_logits(model, image, crop, 50, K), whole)


@pytest.mark.parametrize("size,crop,stride", [((97, 131), 64, 43), ((50, 200), 32, 32), ((33, 33), 16, 5)])
def test_translation_equivariant_model_gives_slide_equal_whole(size, crop, stride):
    model = pointwise_model()
    image = torch.randn(2, 3, *size)
    torch.testing.assert_close(slide_logits(model, image, crop, stride, K), predict_logits(model, image))


def test_slide_averages_overlaps_with_the_count_map():
    # A model whose logits are the window's own offset-free constant 1: the average must be 1 everywhere,
    # whatever the number of overlapping windows; without the count division overlaps would read 2, 4 ...
    model = ConstantModel(torch.ones(K))
    out = slide_logits(model, torch.randn(1, 3, 97, 131), 64, 43, K)
    assert out.shape == (1, K, 97, 131)
    torch.testing.assert_close(out, torch.ones_like(out))
    assert coverage(97, 131, 64, 43).max() == 4  # the test above does see overlaps


def test_slide_batches_windows():
    model = CountingModel()
    slide_logits(model, torch.randn(2, 3, 97, 131), 64, 43, K, batch_size=4)
    assert model.calls == [(8, 3, 64, 64), (4, 3, 64, 64)]  # 6 windows x 2 images in chunks of 4 windows


def test_slide_checks_the_class_count():
    with pytest.raises(ValueError, match="predicts 5 classes"):
        slide_logits(pointwise_model(), torch.randn(1, 3, 40, 40), 32, 16, num_classes=7)


# --- multi-scale + flip ----------------------------------------------------------------------------

def test_ms_flip_of_a_constant_model_is_its_softmax():
    bias = torch.tensor([0.5, -1.0, 2.0, 0.0, 1.0])
    out = ms_flip_logits(ConstantModel(bias), torch.randn(1, 3, 97, 131))
    assert out.shape == (1, K, 97, 131)
    torch.testing.assert_close(out, bias.softmax(0)[None, :, None, None].expand_as(out))


def test_flip_with_a_flip_equivariant_model_equals_the_plain_pass():
    model = pointwise_model()
    image = torch.randn(1, 3, 45, 61)
    plain = ms_flip_logits(model, image, scales=(1.0,), flip=False)
    torch.testing.assert_close(ms_flip_logits(model, image, scales=(1.0,), flip=True), plain)
    torch.testing.assert_close(plain, predict_logits(model, image).softmax(1))


def test_flip_mirrors_the_prediction_back():
    # A model that sees only the left half as class 0: without mirroring back, the flipped pass
    # would vote for class 0 on the right half.
    class LeftHalf(nn.Module):
        def forward(self, x):
            b, _, h, w = x.shape
            logits = x.new_zeros(b, 2, h, w)
            logits[:, 0, :, : w // 2] = 10.0
            logits[:, 1, :, w // 2:] = 10.0
            return logits

    out = ms_flip_logits(LeftHalf(), torch.randn(1, 3, 8, 8), scales=(1.0,), flip=True)
    # The plain pass says class 0 on the left, the mirrored-back pass class 1: a half-half vote everywhere.
    torch.testing.assert_close(out[:, 0], torch.full((1, 8, 8), 0.5), atol=1e-4, rtol=0)


def test_ms_flip_probabilities_sum_to_one_and_use_every_scale():
    model = CountingModel()
    out = ms_flip_logits(model, torch.randn(1, 3, 40, 60), out_size=(80, 120))
    assert out.shape == (1, K, 80, 120)
    torch.testing.assert_close(out.sum(1), torch.ones(1, 80, 120))
    sizes = [c[-2:] for c in model.calls]
    assert sizes == [s for r in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75) for s in [(int(40 * r + 0.5), int(60 * r + 0.5))] * 2]


def test_ms_flip_min_short_side_raises_small_scales():
    # SETR's setr_multi_scale: with a 64-pixel minimum, scales 0.5 and 0.75 of a 64 x 96 image both run at 64 x 96.
    model = CountingModel()
    ms_flip_logits(model, torch.randn(1, 3, 64, 96), scales=(0.5, 0.75, 1.5), flip=False, min_short_side=64)
    assert [c[-2:] for c in model.calls] == [(64, 96), (64, 96), (96, 144)]


def test_ms_flip_can_slide_each_pass():
    model = pointwise_model()
    image = torch.randn(1, 3, 97, 131)
    slid = ms_flip_logits(model, image, scales=(1.0, 1.5), crop_size=64, stride=43, num_classes=K)
    whole = ms_flip_logits(model, image, scales=(1.0, 1.5))
    torch.testing.assert_close(slid, whole)


def test_infer_rejects_unknown_modes_and_missing_crops():
    model = pointwise_model()
    image = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match="unknown test mode"):
        infer(model, image, K, mode="tta")
    with pytest.raises(ValueError, match="slide_crop"):
        infer(model, image, K, mode="slide")


# --- dataset-level evaluation ----------------------------------------------------------------------

class ToyDataset(torch.utils.data.Dataset):
    """Images whose first two channels one-hot encode classes 0 / 1; masks at twice the image size."""

    def __init__(self, n=3):
        g = torch.Generator().manual_seed(0)
        self.small = [torch.randint(0, 2, (6 + i, 9 + i), generator=g) for i in range(n)]
        self.masks = [m.repeat_interleave(2, 0).repeat_interleave(2, 1) for m in self.small]  # 2x2 blocks
        self.masks[0][0, :4] = 255  # a few ignored pixels

    def __len__(self):
        return len(self.masks)

    def __getitem__(self, i):
        small = self.small[i].float()
        return torch.stack([1 - small, small, torch.zeros_like(small)]), self.masks[i]  # [3, h, w], [2h, 2w]


class Oracle(nn.Module):
    """Reads the class off the image: 10 * (channel 0, channel 1), then K-2 zero classes."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x):
        return torch.cat([self.scale * x[:, :2], x.new_zeros(x.shape[0], K - 2, *x.shape[-2:])], 1)


@pytest.mark.parametrize("mode,kw", [("whole", {}), ("slide", {"crop_size": 4, "stride": 3}),
                                     ("ms-flip", {"scales": (1.0, 2.0)})])
def test_evaluate_scores_at_the_mask_resolution(mode, kw):
    model = Oracle().train()
    out = evaluate(model, ToyDataset(), K, mode=mode, progress=False, **kw)
    assert model.training  # the caller's mode is restored
    # Bilinear x2 upsampling weighs the own low-resolution pixel 0.75: the argmax is exact.
    assert out["aAcc"] == 1.0 and out["mIoU"] == 1.0
    assert len(out["IoU"]) == K and all(iou != iou for iou in out["IoU"][2:])  # classes 2.. never occur: NaN


def test_evaluate_whole_equals_a_hand_loop():
    model, data = Oracle(), ToyDataset()
    out = evaluate(model, data, K, progress=False)
    inter = union = 0
    for image, mask in data:
        pred = predict_logits(model, image[None], mask.shape).argmax(1)[0]
        keep = mask != 255
        inter += ((pred == 0) & (mask == 0) & keep).sum()
        union += (((pred == 0) | (mask == 0)) & keep).sum()
    assert out["IoU"][0] == pytest.approx(float(inter / union))


def test_evaluate_with_loader_workers_matches_the_main_process():
    model, data = nn.Conv2d(3, K, 1), ToyDataset()
    with torch.no_grad():  # class 0 everywhere: right on about half the pixels
        model.weight.zero_(), model.bias.zero_(), model.weight[0, :2].fill_(1.0)
    with_workers = evaluate(model, data, K, progress=False, num_workers=2)
    in_process = evaluate(model, data, K, progress=False)
    assert 0 < in_process["aAcc"] < 1
    for key in ("IoU", "Acc", "mIoU", "aAcc"):
        torch.testing.assert_close(torch.tensor(with_workers[key]), torch.tensor(in_process[key]), equal_nan=True)


def test_evaluate_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="unknown test mode"):
        evaluate(Oracle(), ToyDataset(), K, mode="slidE", progress=False)


# --- segedu eval ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def eval_setup(tmp_path_factory):
    """A tiny synthetic ADE-layout set, the same validation split as a parquet file, and a checkpoint."""
    datasets = pytest.importorskip("datasets")
    root = generate(tmp_path_factory.mktemp("syn"), n_train=1, n_val=2, size=(72, 96), seed=5)
    rows = [{"image": {"bytes": jpg.read_bytes(), "path": jpg.name},
             "annotation": {"bytes": (root / "annotations" / "validation" / f"{jpg.stem}.png").read_bytes(),
                            "path": f"{jpg.stem}.png"}}
            for jpg in sorted((root / "images" / "validation").glob("*.jpg"))]
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    parquet = root.parent / "validation.parquet"
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(parquet))
    torch.manual_seed(0)
    recipe = RECIPES["synthetic"].with_overrides(test_short_side=64, test_size_divisor=32)
    model = build_model(recipe.model, num_classes=recipe.num_classes)
    path = root.parent / "checkpoint.pt"
    ckpt.save_atomic({"model": model.state_dict(), "recipe": recipe.to_dict(), "step": 0}, path)
    return root, parquet, path


@pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")
@pytest.mark.parametrize("mode,extra", [("whole", []), ("slide", ["--slide-crop", "48", "--slide-stride", "32"]),
                                        ("ms-flip", [])])
def test_cli_eval_modes_folder_and_parquet_agree(eval_setup, tmp_path, mode, extra, capsys):
    root, parquet, checkpoint = eval_setup
    args = ["eval", "--checkpoint", str(checkpoint), "--mode", mode, *extra, "--device", "cpu"]
    assert cli_main([*args, "--data", str(root), "--out", str(tmp_path)]) == 0
    assert f"mode {mode}" in capsys.readouterr().out
    record = json.loads((tmp_path / f"eval_{mode}.json").read_text())
    assert (tmp_path / f"class_iou_{mode}.png").stat().st_size > 0
    assert record["settings"]["mode"] == mode and len(record["IoU"]) == 150

    model, settings, _ = load_model(checkpoint, device="cpu")
    crop, stride = (48, 32) if mode == "slide" else (None, None)
    val = open_dataset(root, "validation", transforms=test_transforms(64, 32))
    direct = evaluate(model, val, 150, mode=mode, crop_size=crop, stride=stride, progress=False)
    assert record["mIoU"] == pytest.approx(direct["mIoU"]) and record["aAcc"] == pytest.approx(direct["aAcc"])

    assert cli_main([*args, "--data", str(parquet), "--out", str(tmp_path / "pq"), "--workers", "1"]) == 0
    from_parquet = json.loads((tmp_path / "pq" / f"eval_{mode}.json").read_text())
    assert from_parquet["IoU"] == record["IoU"] and from_parquet["aAcc"] == record["aAcc"]


def test_cli_eval_errors(eval_setup, tmp_path, capsys):
    root, _, checkpoint = eval_setup
    (tmp_path / "classes.txt").write_text("a\nb\n")
    assert cli_main(["eval", "--checkpoint", str(checkpoint), "--data", str(root),
                     "--classes", str(tmp_path / "classes.txt")]) == 2
    assert "2 class names given but the model predicts 150" in capsys.readouterr().err
    assert cli_main(["eval", "--checkpoint", str(checkpoint), "--data", str(root), "--mode", "slide"]) == 2
    assert "needs a crop and a stride" in capsys.readouterr().err
    assert cli_main(["eval", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "nothing.parquet")]) == 2
    assert "nothing.parquet" in capsys.readouterr().err


def test_cli_eval_out_is_checked_before_evaluating(eval_setup, tmp_path, capsys):
    """eval --out: a file, or a result file segedu did not write, stops eval before the model runs;
    its own earlier results are replaced."""
    root, _, checkpoint = eval_setup
    args = ["eval", "--checkpoint", str(checkpoint), "--data", str(root), "--device", "cpu", "--out"]
    (tmp_path / "file").write_text("mine")
    assert cli_main([*args, str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    (tmp_path / "eval_whole.json").write_text('{"mine": 1}')
    assert cli_main([*args, str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "eval_whole.json exists and segedu did not make it" in err and "mIoU" not in err
    assert (tmp_path / "eval_whole.json").read_text() == '{"mine": 1}'
    out = tmp_path / "results"
    assert cli_main([*args, str(out)]) == 0 and cli_main([*args, str(out)]) == 0  # its own files: replaced
    assert json.loads((out / "eval_whole.json").read_text())["segedu"] == "eval"
