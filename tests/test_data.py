"""Tests for segedu.data: ADE20K conventions, the folder dataset, the synthetic
generator and the mmseg pipeline. Fast: everything runs on tiny images."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from PIL import Image
from torchvision.io import encode_jpeg, encode_png, write_file

from segedu.data import ade20k, synthetic
from segedu.data import transforms as T
from segedu.data.io import read_image

# torchvision >= 0.29 flags its image codecs as deprecated on every call.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors run faster (and steadier on 2 cores) with one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------
# ADE20K facts and label rules
# ----------------------------------------------------------------------------
def test_class_names_and_palette():
    names, palette = ade20k.ADE20K_CLASSES, ade20k.ADE20K_PALETTE
    assert len(names) == 150 and len(set(names)) == 150
    assert names[:10] == (
        "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass"
    )
    assert names[12] == "person" and names[20] == "car" and names[-2:] == ("clock", "flag")
    assert len(palette) == 150 and all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in palette)
    assert palette[0] == (120, 120, 120) and palette[2] == (6, 230, 230)
    assert palette[12] == (150, 5, 61) and palette[149] == (92, 0, 255)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_reduce_zero_label(dtype):
    raw = torch.tensor([0, 1, 2, 150, 254, 255], dtype=dtype)
    out = ade20k.reduce_zero_label(raw)
    assert out.dtype == dtype
    assert out.tolist() == [255, 0, 1, 149, 253, 255]


def test_audit_labels_names_bad_values():
    ade20k.audit_labels(torch.tensor([[0, 149], [255, 3]]), 150)  # valid: no error
    with pytest.raises(ValueError, match=r"frame_7\.png.*\[150, 200\]"):
        ade20k.audit_labels(torch.tensor([[0, 150], [200, 255]]), 150, where="frame_7.png")
    with pytest.raises(ValueError, match=r"\[-1\]"):
        ade20k.audit_labels(torch.tensor([-1, 0]), 10)


def test_label_histogram():
    masks = [torch.tensor([[0, 1], [255, 1]]), torch.tensor([[2, 2], [2, 0]])]
    hist = ade20k.label_histogram(masks, num_classes=3)
    assert hist.shape == (256,) and hist[:3].tolist() == [2, 2, 3] and hist[255] == 1
    pairs = [(torch.zeros(3, 2, 2), m) for m in masks]  # a dataset of (image, mask)
    assert torch.equal(ade20k.label_histogram(pairs, 3), hist)


# ----------------------------------------------------------------------------
# SegmentationFolder
# ----------------------------------------------------------------------------
def _write_pair(root, split, stem, label_values, size=(20, 30)):
    """Write one JPEG and one label PNG in the ADE20K layout."""
    h, w = size
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    mask = torch.tensor(label_values, dtype=torch.uint8).repeat(h * w // len(label_values) + 1)[: h * w]
    write_file(str(root / "images" / split / f"{stem}.jpg"), encode_jpeg(image, quality=95))
    write_file(str(root / "annotations" / split / f"{stem}.png"), encode_png(mask.view(1, h, w)))
    return mask.view(h, w)


def test_folder_reads_pairs(tmp_path):
    raw_a = _write_pair(tmp_path, "training", "a", [0, 1, 150])
    _write_pair(tmp_path, "training", "b", [3, 4])
    ds = ade20k.SegmentationFolder(tmp_path, "training")
    assert len(ds) == 2 and ds.num_classes == 150 and ds.classes[0] == "wall"
    image, mask = ds[0]
    assert image.shape == (3, 20, 30) and image.dtype == torch.uint8
    assert mask.shape == (20, 30) and mask.dtype == torch.int64
    assert torch.equal(mask, ade20k.reduce_zero_label(raw_a.long()))

    raw = ade20k.SegmentationFolder(tmp_path, "training", reduce_zero_label=False, classes=[str(i) for i in range(151)])
    assert raw.num_classes == 151 and torch.equal(raw[0][1], raw_a.long())

    flipped = ade20k.SegmentationFolder(tmp_path, "training", transforms=lambda i, m: (i.flip(-1), m.flip(-1)))
    assert torch.equal(flipped[0][1], mask.flip(-1))


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="images/training"):
        ade20k.SegmentationFolder(tmp_path, "training")
    with pytest.raises(ValueError, match="split"):
        ade20k.SegmentationFolder(tmp_path, "train")

    _write_pair(tmp_path, "validation", "ok", [1, 2])
    (tmp_path / "images" / "validation" / "lonely.jpg").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="lonely.png"):
        ade20k.SegmentationFolder(tmp_path, "validation")

    (tmp_path / "images" / "validation" / "lonely.jpg").write_bytes(b"this is not a jpeg")
    _write_pair(tmp_path, "validation", "zz_big_label", [1, 160])  # 160 -> 159: out of range
    (tmp_path / "annotations" / "validation" / "lonely.png").write_bytes(
        (tmp_path / "annotations" / "validation" / "ok.png").read_bytes()
    )
    ds = ade20k.SegmentationFolder(tmp_path, "validation")
    assert [p.stem for p in ds.images] == ["lonely", "ok", "zz_big_label"]
    with pytest.raises(ValueError, match="lonely.jpg"):
        ds[0]
    ds[1]
    with pytest.raises(ValueError, match=r"zz_big_label\.png.*\[159\]"):
        ds[2]


def test_folder_size_mismatch_and_rgb_mask(tmp_path):
    _write_pair(tmp_path, "training", "a", [1, 2])
    png = tmp_path / "annotations" / "training" / "a.png"
    write_file(str(png), encode_png(torch.ones(1, 10, 10, dtype=torch.uint8)))
    ds = ade20k.SegmentationFolder(tmp_path, "training")
    assert ds.load_mask(0).shape == (10, 10)
    with pytest.raises(ValueError, match="size mismatch"):
        ds[0]
    write_file(str(png), encode_png(torch.ones(3, 20, 30, dtype=torch.uint8)))
    with pytest.raises(ValueError, match="single-channel"):
        ds[0]


# ----------------------------------------------------------------------------
# Synthetic generator
# ----------------------------------------------------------------------------
SMALL = (72, 96)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_render_scene_is_deterministic():
    a = synthetic.render_scene(np.random.default_rng([0, 0, 3]), SMALL)
    b = synthetic.render_scene(np.random.default_rng([0, 0, 3]), SMALL)
    c = synthetic.render_scene(np.random.default_rng([0, 0, 4]), SMALL)
    assert a[0].shape == (*SMALL, 3) and a[0].dtype == np.uint8
    assert a[1].shape == SMALL and a[1].dtype == np.uint8
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_class_ids_are_real_ade20k_ids():
    names = [ade20k.ADE20K_CLASSES[v - 1] for v in synthetic.SYNTHETIC_CLASSES]
    assert sorted(names) == sorted(
        ["sky", "building", "tree", "road", "grass", "sidewalk", "person", "mountain", "car", "water"]
    )


def test_generate_layout_determinism_and_class_coverage(tmp_path):
    first = synthetic.generate(tmp_path / "a", n_train=40, n_val=40, size=SMALL, seed=1)
    synthetic.generate(tmp_path / "b", n_train=5, n_val=40, size=SMALL, seed=1)
    files_a, files_b = _files(first), _files(tmp_path / "b")
    assert len(list((first / "images" / "training").glob("*.jpg"))) == 40
    assert len(list((first / "annotations" / "validation").glob("*.png"))) == 40
    # Image i of a split depends only on (seed, split, i): same bytes in both sets.
    shared = [k for k in files_b if k != "meta.json"]
    assert len(shared) == 90 and all(files_a[k] == files_b[k] for k in shared)
    meta = json.loads(files_a["meta.json"])
    assert meta["counts"] == {"training": 40, "validation": 40} and meta["size_hw"] == list(SMALL)

    allowed = set(synthetic.SYNTHETIC_CLASSES) | {0}
    for split in ("training", "validation"):
        ds = ade20k.SegmentationFolder(first, split, reduce_zero_label=False, classes=[str(i) for i in range(151)])
        hist = ade20k.label_histogram(ds, 151)
        present = set(torch.nonzero(hist).flatten().tolist())
        assert present <= allowed, present - allowed
        missing = set(synthetic.SYNTHETIC_CLASSES) - present
        assert not missing, f"{split} lacks {missing}"
        assert 0 < hist[0] / hist.sum() < 0.05  # a little is unlabeled, as in ADE20K
        image, _ = ds[0]
        assert image.shape == (3, *SMALL)
    with pytest.raises(FileExistsError):
        synthetic.generate(first, n_train=1, n_val=1, size=SMALL, seed=1)


def test_ensure_synthetic_caches(tmp_path):
    root = tmp_path / "syn"
    kw = dict(n_train=3, n_val=2, size=(40, 56), seed=0)
    synthetic.ensure_synthetic(root, **kw)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    synthetic.ensure_synthetic(root, **kw)  # same parameters: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == stamps

    synthetic.ensure_synthetic(root, **{**kw, "n_train": 2, "seed": 5})  # new parameters: regenerated
    assert json.loads((root / "meta.json").read_text())["seed"] == 5
    assert len(list((root / "images" / "training").iterdir())) == 2  # stale files removed
    assert len(list((root / "annotations" / "training").iterdir())) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["syn"]  # written beside root, swapped in, nothing left over


def test_ensure_synthetic_touches_only_its_own_folders(tmp_path):
    """A folder of the user's (no segedu meta.json), or a set with a file added, is refused and left as it was."""
    kw = dict(n_train=1, n_val=1, size=(40, 56), seed=0)
    mine = tmp_path / "mine"
    (mine / "images").mkdir(parents=True)
    (mine / "notes.txt").write_text("my notes")
    (mine / "images" / "holiday.jpg").write_bytes(b"jpeg")
    with pytest.raises(FileExistsError, match="2 file.* that segedu did not make"):
        synthetic.ensure_synthetic(mine, **kw)
    (mine / "meta.json").write_text('{"generator": "someone else"}')
    with pytest.raises(FileExistsError, match="did not make"):
        synthetic.ensure_synthetic(mine, **kw)
    assert sorted(p.name for p in mine.rglob("*")) == ["holiday.jpg", "images", "meta.json", "notes.txt"]

    ours = synthetic.ensure_synthetic(tmp_path / "ours", **kw)
    assert json.loads((ours / "meta.json").read_text())["generator"] == synthetic.GENERATOR  # the marker
    (ours / "images" / "training" / "extra.jpg").write_bytes(b"the user's")
    with pytest.raises(FileExistsError, match=r"also holds 1 other file.*extra.jpg"):
        synthetic.ensure_synthetic(ours, **{**kw, "seed": 1})
    assert (ours / "images" / "training" / "extra.jpg").read_bytes() == b"the user's"
    (tmp_path / "empty").mkdir()
    assert (synthetic.ensure_synthetic(tmp_path / "empty", **kw) / "meta.json").is_file()  # nothing to lose


# ----------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------
COLOURS = torch.tensor([[r, g, b] for r in (40, 140, 240) for g in (40, 140, 240) for b in (40, 240)][:12])


def _coded_pair(h=144, w=192, block=16, seed=0):
    """A mask of square blocks and an image whose colour encodes each label."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.randint(0, len(COLOURS), (h // block + 1, w // block + 1), generator=g)
    mask = mask.repeat_interleave(block, 0).repeat_interleave(block, 1)[:h, :w]
    image = COLOURS[mask].permute(2, 0, 1).to(torch.uint8)  # [3, H, W]
    return image, mask


def _interior(mask, radius=2):
    """Pixels whose (2r+1)^2 neighbourhood holds one label (and no padding)."""
    m = F.pad(mask[None, None].float(), [radius] * 4, value=255.0)
    k = 2 * radius + 1
    high, low = F.max_pool2d(m, k, 1)[0, 0], -F.max_pool2d(-m, k, 1)[0, 0]
    return (high == low) & (mask != 255)


def test_train_pipeline_keeps_image_and_mask_aligned():
    image, mask = _coded_pair()
    pipeline = T.train_transforms(crop_size=96, scale=(576, 144), photometric=False)
    checked = 0
    for seed in range(30):
        torch.manual_seed(seed)
        out_image, out_mask = pipeline(image, mask)
        assert out_image.shape == (3, 96, 96) and out_image.dtype == torch.float32
        assert out_mask.shape == (96, 96) and out_mask.dtype == torch.int64
        rgb = T.denormalize(out_image).long()  # [3, H, W]
        inside = _interior(out_mask)
        expected = COLOURS[out_mask[inside]].T  # [3, N]
        assert torch.equal(rgb[:, inside], expected), f"misaligned at seed {seed}"
        checked += int(inside.sum())
    assert checked > 30 * 96 * 96 * 0.3


def test_padding_and_photometric_keep_pad_aligned():
    image, mask = _coded_pair(h=60, w=80, block=10)
    pipeline = T.train_transforms(crop_size=128, scale=(160, 60), ratio_range=(0.8, 1.5))
    for seed in range(20):
        torch.manual_seed(seed)
        out_image, out_mask = pipeline(image, mask)
        assert out_image.shape == (3, 128, 128) and out_mask.shape == (128, 128)
        pad = out_mask == 255  # the only 255s are padding here
        assert pad.any()
        assert (out_image[:, pad] == 0).all()  # image padded with 0 after Normalize
        assert (out_image[:, ~pad].abs().sum(0) > 0).all()
        rows, cols = torch.nonzero(~pad, as_tuple=True)  # content sits top-left
        assert rows.min() == 0 and cols.min() == 0


def test_pad_values():
    image = tv_tensors.Image(torch.full((3, 5, 6), 7.0))
    mask = tv_tensors.Mask(torch.zeros(5, 6, dtype=torch.int64))
    out_image, out_mask = T.PadTo((8, 9))(image, mask)
    assert out_mask.shape == (8, 9) and (out_mask[5:] == 255).all() and (out_mask[:, 6:] == 255).all()
    assert (out_mask[:5, :6] == 0).all() and (out_image[:, 5:] == 0).all() and (out_image[:, :5, :6] == 7).all()


def test_cat_max_ratio_redraws_crops():
    mask = torch.zeros(64, 128, dtype=torch.int64)
    mask[:, 100:] = 1  # class 1 only in the right 28 columns
    image = torch.zeros(3, 64, 128, dtype=torch.uint8)

    def balanced_rate(cat_max_ratio):
        crop = T.RandomCropCatMax((64, 64), cat_max_ratio=cat_max_ratio)
        good = 0
        for seed in range(200):
            torch.manual_seed(seed)
            _, out = crop(tv_tensors.Image(image), tv_tensors.Mask(mask))
            assert out.shape == (64, 64)
            counts = torch.bincount(out.flatten(), minlength=2)
            good += int(counts.min() > 0 and counts.max() / counts.sum() < 0.75)
        return good / 200

    assert balanced_rate(1.0) < 0.35  # plain random crop: ~12 of 65 offsets are balanced
    assert balanced_rate(0.75) > 0.75  # up to 10 redraws find a balanced crop


def test_crop_smaller_image_and_single_class():
    crop = T.RandomCropCatMax(64)
    image, mask = tv_tensors.Image(torch.zeros(3, 30, 100)), tv_tensors.Mask(torch.full((30, 100), 4))
    out_image, out_mask = crop(image, mask)  # one class only: gives up after 10 redraws
    assert out_image.shape == (3, 30, 64) and out_mask.shape == (30, 64)


def test_keep_ratio_rule():
    assert T.keep_ratio_size(512, 683, (2048, 512)) == (512, 683)
    assert T.keep_ratio_size(144, 192, (2048, 512)) == (512, 683)  # 192 * 512 / 144 = 682.7
    assert T.keep_ratio_size(100, 1000, (2048, 512)) == (205, 2048)  # long side caps the factor
    assert T.keep_ratio_size(144, 192, (576, 144)) == (144, 192)


def test_test_transforms_sizes():
    image, mask = _coded_pair()
    out_image, out_mask = T.test_transforms(512)(image, mask)
    assert out_image.shape == (3, 512, 683) and out_image.dtype == torch.float32
    assert torch.equal(out_mask, mask)  # the mask keeps its original size
    out_image, _ = T.test_transforms(512, size_divisor=32)(image, mask)
    assert out_image.shape == (3, 512, 704)
    out_image, _ = T.test_transforms(512, size_divisor=32)(torch.zeros(3, 100, 1000, dtype=torch.uint8), mask)
    assert out_image.shape == (3, 224, 2048)
    out_image, out_mask = T.test_transforms(None)(image, mask)  # no resize at all
    assert out_image.shape == (3, 144, 192) and torch.equal(out_mask, mask)


def test_photometric_distortion():
    image, mask = _coded_pair(h=32, w=32, block=8)
    distort = T.PhotoMetricDistortion()
    changed = 0
    for seed in range(10):
        torch.manual_seed(seed)
        out_image, out_mask = distort(tv_tensors.Image(image), tv_tensors.Mask(mask))
        assert out_image.dtype == torch.uint8 and torch.equal(out_mask, mask)
        changed += int(not torch.equal(out_image, image))
    assert changed >= 7  # all four steps are skipped with probability 1/16
    pixel = torch.tensor([200, 100, 50], dtype=torch.uint8).view(3, 1, 1)
    assert torch.equal(T._scale_saturation(pixel, 1.0), pixel)
    assert T._scale_saturation(pixel, 5.0).flatten().tolist() == [200, 66, 0]  # S capped at 1
    grey = T._scale_saturation(pixel, 0.0).flatten().tolist()
    assert grey == [200, 200, 200]  # S = 0 keeps V = max channel


def test_normalize_round_trip():
    image, mask = _coded_pair(h=32, w=48)
    out_image, _ = T.test_transforms(32)(image, mask)
    assert out_image.shape == (3, 32, 48)
    assert torch.equal(T.denormalize(out_image), image)
    expected = (image[0].float() - T.IMAGENET_MEAN[0]) / T.IMAGENET_STD[0]
    assert torch.allclose(out_image[0], expected)


# ----------------------------------------------------------------------------
# Class lists, decoding errors
# ----------------------------------------------------------------------------
def test_read_and_resolve_classes(tmp_path):
    (tmp_path / "classes.txt").write_text("sky\n\n  road \ncar\n")
    assert ade20k.read_classes(tmp_path / "classes.txt") == ("sky", "road", "car")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        ade20k.read_classes(tmp_path / "empty.txt")
    assert ade20k.resolve_classes(150, None) == ade20k.ADE20K_CLASSES
    assert ade20k.resolve_classes(3, None) == ("class_0", "class_1", "class_2")
    assert ade20k.resolve_classes(150, ["a", "b"]) == ("a", "b")  # given names fix the count


def test_read_image_names_missing_and_corrupt_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        read_image(tmp_path / "nope.jpg")
    with pytest.raises(ValueError, match="row 3"):
        read_image(b"garbage", where="row 3")
    png = io.BytesIO()
    Image.fromarray(np.arange(6, dtype=np.uint8).reshape(2, 3)).save(png, format="PNG")
    assert read_image(png.getvalue(), label=True).tolist() == [[[0, 1, 2], [3, 4, 5]]]


def _exif_jpeg(path, pixels: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation tag
    Image.fromarray(pixels).save(path, format="JPEG", quality=100, exif=exif.tobytes())


def test_read_image_decodes_jpeg_png_16_bit_and_exif_without_warnings(tmp_path):
    """The one reader: RGB from JPEG / grey / palette PNG, 16-bit labels with their values, EXIF rotation
    applied to images (as displayed) and not to label maps; no deprecation warning from any of it."""
    stored = np.zeros((8, 12, 3), dtype=np.uint8)
    stored[:2, :, 0] = 255  # a red band at the top of the stored pixels
    _exif_jpeg(tmp_path / "rotated.JPG", stored, orientation=6)  # 6: shown rotated 90 degrees clockwise
    grey = np.arange(20, dtype=np.uint8).reshape(4, 5)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    wide = np.array([[0, 1, 150, 255]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "label16.png")  # Pillow writes mode I;16 as 16-bit PNG
    Image.fromarray(wide.astype(np.uint8)).save(tmp_path / "label8.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DeprecationWarning (e.g. torchvision.io's) fails the test
        shown = read_image(tmp_path / "rotated.JPG")
        as_stored = read_image(tmp_path / "rotated.JPG", label=True)
        rgb_grey = read_image(tmp_path / "grey.png")
        label16 = read_image(tmp_path / "label16.png", label=True)
        label8 = read_image(tmp_path / "label8.png", label=True)
    assert shown.shape == (3, 12, 8) and shown.dtype == torch.uint8  # displayed: portrait
    assert shown[0, :, -2:].float().mean() > 200 and shown[0, :, :2].float().mean() < 50  # red band now on the right
    assert as_stored.shape == (3, 8, 12)  # label maps are read as stored, like mmseg's LoadAnnotations
    assert rgb_grey.shape == (3, 4, 5) and torch.equal(rgb_grey[1], torch.from_numpy(grey))
    assert label16.dtype == torch.int32 and label16.tolist() == [[[0, 1, 150, 255]]]
    assert torch.equal(ade20k.prepare_mask(label16, 150, True, "m"), ade20k.prepare_mask(label8, 150, True, "m"))
    Image.fromarray(np.array([[0, 300]], dtype=np.uint16)).save(tmp_path / "big16.png")
    with pytest.raises(ValueError, match=r"big16.png: a 16-bit label map with values up to 300"):
        ade20k.prepare_mask(read_image(tmp_path / "big16.png", label=True), 150, True, str(tmp_path / "big16.png"))


def test_folder_applies_exif_so_a_rotated_photo_lines_up_with_its_mask(tmp_path):
    """A non-square photo stored landscape with EXIF 'rotate 90': its label map was drawn on the portrait view."""
    for d in ("images/training", "annotations/training"):
        (tmp_path / d).mkdir(parents=True)
    _exif_jpeg(tmp_path / "images/training/photo.jpeg", np.full((8, 12, 3), 90, np.uint8), orientation=6)
    Image.fromarray(np.ones((12, 8), np.uint8)).save(tmp_path / "annotations/training/photo.PNG")
    image, mask = ade20k.SegmentationFolder(tmp_path, "training")[0]
    assert image.shape == (3, 12, 8) and mask.shape == (12, 8)


def test_folder_pairs_any_case_lists_skipped_files_and_takes_val(tmp_path):
    for d in ("images/val", "annotations/val"):
        (tmp_path / d).mkdir(parents=True)
    for name in ("a.JPG", "b.jpeg", "c.png"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images/val" / name,
                                                            format="PNG" if name.endswith("png") else "JPEG")
    for stem in ("a", "b", "c", "orphan"):
        Image.fromarray(np.ones((4, 4), np.uint8)).save(tmp_path / "annotations/val" / f"{stem}.png")
    (tmp_path / "images/val/notes.txt").write_text("mine")
    ds = ade20k.SegmentationFolder(tmp_path, "validation")
    assert [p.name for p in ds.images] == ["a.JPG", "b.jpeg", "c.png"] and len(ds) == 3
    assert ds.summary().endswith("skipped 2: notes.txt (not a .jpg/.jpeg/.png file), "
                                 "orphan.png (label map without an image)")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images/val/a.png")
    with pytest.raises(ValueError, match="a.JPG and a.png .* share the name 'a'"):
        ade20k.SegmentationFolder(tmp_path, "validation")


def test_prepare_mask_reduces_and_audits():
    raw = torch.tensor([[[0, 1, 3]]], dtype=torch.uint8)
    assert ade20k.prepare_mask(raw, 150, True, "m").tolist() == [[255, 0, 2]]
    with pytest.raises(ValueError, match=r"m: label values \[3\]"):
        ade20k.prepare_mask(raw, 3, False, "m")
    with pytest.raises(ValueError, match="single-channel"):
        ade20k.prepare_mask(raw.expand(3, 1, 3), 150, True, "m")
