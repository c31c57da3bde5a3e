"""open_dataset: an ADE-layout folder, parquet files, a save_to_disk folder and a (mocked or offline)
hub id holding the same JPEG/PNG bytes must give the same samples. All data is written here."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torchvision.io import encode_jpeg, encode_png, write_file

from segedu.data import HubSegmentation, label_histogram, open_dataset, read_classes, reduce_zero_label
from segedu.data import hub

datasets = pytest.importorskip("datasets")
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")

SIZES = {"training": [(20, 30), (24, 18), (16, 16)], "validation": [(22, 26), (18, 40)]}
HF_SPLIT = {"training": "train", "validation": "validation"}


def _features():
    return datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})


@pytest.fixture(scope="module")
def ade(tmp_path_factory):
    """An ADEChallengeData2016-style folder (PNG values 0..150) and its rows as {split: [row, ...]}."""
    root = tmp_path_factory.mktemp("ADEChallengeData2016")
    g = torch.Generator().manual_seed(0)
    rows = {}
    for split, sizes in SIZES.items():
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        rows[split] = []
        for i, (h, w) in enumerate(sizes):
            stem = f"ADE_{split[:5]}_{i:08d}"
            jpeg = encode_jpeg(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g), quality=90)
            png = encode_png(torch.randint(0, 151, (1, h, w), dtype=torch.uint8, generator=g))
            write_file(str(root / "images" / split / f"{stem}.jpg"), jpeg)
            write_file(str(root / "annotations" / split / f"{stem}.png"), png)
            rows[split].append({"image": {"bytes": bytes(jpeg.numpy()), "path": f"{stem}.jpg"},
                                "annotation": {"bytes": bytes(png.numpy()), "path": f"{stem}.png"}})
    return root, rows


def _table(rows):
    return datasets.Dataset.from_list(rows, features=_features())


@pytest.fixture(scope="module")
def stores(ade, tmp_path_factory):
    """The same rows as a parquet file per split, a hub-style parquet folder and a save_to_disk folder."""
    _, rows = ade
    out = tmp_path_factory.mktemp("stores")
    (out / "hub_layout" / "data").mkdir(parents=True)
    for split, hf in HF_SPLIT.items():
        _table(rows[split]).to_parquet(str(out / f"{split}.parquet"))
        _table(rows[split]).to_parquet(str(out / "hub_layout" / "data" / f"{hf}-00000-of-00001.parquet"))
    datasets.DatasetDict({hf: _table(rows[s]) for s, hf in HF_SPLIT.items()}).save_to_disk(str(out / "saved"))
    return out


def _samples(ds):
    return [ds[i] for i in range(len(ds))]


def _assert_same(a, b):
    assert len(a) == len(b)
    for (img_a, mask_a), (img_b, mask_b) in zip(a, b):
        assert img_a.dtype == img_b.dtype == torch.uint8 and mask_a.dtype == mask_b.dtype == torch.int64
        assert torch.equal(img_a, img_b) and torch.equal(mask_a, mask_b)


@pytest.mark.parametrize("split", ["training", "validation"])
def test_folder_parquet_and_save_to_disk_give_the_same_samples(ade, stores, split):
    root, _ = ade
    folder = open_dataset(root, split)
    assert type(folder).__name__ == "SegmentationFolder"
    reference = _samples(folder)
    assert [tuple(m.shape) for _, m in reference] == SIZES[split]
    for spec in (stores / f"{split}.parquet", stores / "hub_layout", stores / "saved", str(stores / "saved")):
        ds = open_dataset(spec, split)
        assert isinstance(ds, HubSegmentation) and ds.classes[0] == "wall"
        _assert_same(_samples(ds), reference)


def test_split_spellings_and_reduce_zero_label(ade, stores):
    root, rows = ade
    raw = open_dataset(stores / "saved", "val", reduce_zero_label=False, num_classes=151)
    reduced = open_dataset(stores / "saved", "validation")
    assert raw.num_classes == 151
    assert torch.equal(reduce_zero_label(raw[0][1]), reduced[0][1])
    assert (raw[0][1] == 0).any() and (reduced[0][1] == 255).any()  # 0 (unlabeled) became the ignore value
    assert len(open_dataset(stores / "hub_layout", "train")) == len(rows["training"])
    with pytest.raises(ValueError, match="unknown split 'test'"):
        open_dataset(root, "test")


def test_label_histogram_and_transforms_on_a_hub_set(ade, stores):
    root, _ = ade
    ds = open_dataset(stores / "saved", "training")
    assert torch.equal(label_histogram(ds, 150), label_histogram(open_dataset(root, "training"), 150))
    flipped = open_dataset(stores / "saved", "training", transforms=lambda i, m: (i.flip(-1), m.flip(-1)))
    assert torch.equal(flipped[1][1], ds[1][1].flip(-1))


def test_label_audit_guards_hub_rows(ade, tmp_path):
    _, rows = ade
    bad = dict(rows["training"][0])
    bad["annotation"] = {"bytes": bytes(encode_png(torch.full((1, 20, 30), 200, dtype=torch.uint8)).numpy()),
                         "path": "bad.png"}
    _table([rows["training"][1], bad]).to_parquet(str(tmp_path / "bad.parquet"))
    ds = open_dataset(tmp_path / "bad.parquet", "training")
    ds[0]
    with pytest.raises(ValueError, match=r"bad\.png.*\[199\].*outside \[0, 150\)"):
        ds[1]


def test_custom_classes_with_one_flag(tmp_path):
    (tmp_path / "images" / "training").mkdir(parents=True)
    (tmp_path / "annotations" / "training").mkdir(parents=True)
    write_file(str(tmp_path / "images" / "training" / "a.jpg"), encode_jpeg(torch.zeros(3, 8, 8, dtype=torch.uint8)))
    mask = torch.tensor([0, 1, 2, 3], dtype=torch.uint8).repeat(16).view(1, 8, 8)
    write_file(str(tmp_path / "annotations" / "training" / "a.png"), encode_png(mask))
    (tmp_path / "classes.txt").write_text("road\nlane\n\ncar\n")
    classes = read_classes(tmp_path / "classes.txt")
    ds = open_dataset(tmp_path, "training", classes=classes)
    assert ds.classes == ("road", "lane", "car") and ds.num_classes == 3
    assert sorted(ds[0][1].unique().tolist()) == [0, 1, 2, 255]
    with pytest.raises(ValueError, match=r"\[3\]"):  # value 3 is no class without reduce_zero_label
        open_dataset(tmp_path, "training", classes=classes, reduce_zero_label=False)[0]
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_classes(tmp_path / "nope.txt")


def test_plain_parquet_without_image_features(ade, tmp_path):
    """A parquet file written by another tool: struct columns {bytes, path}, no datasets metadata."""
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    root, rows = ade
    pq.write_table(pa.Table.from_pylist(rows["validation"]), str(tmp_path / "plain.parquet"))
    _assert_same(_samples(open_dataset(tmp_path / "plain.parquet", "validation")), _samples(open_dataset(root, "val")))


def test_readable_errors(ade, stores, tmp_path):
    _, rows = ade
    renamed = datasets.Dataset.from_list(
        [{"img": r["image"], "label": r["annotation"]} for r in rows["validation"]],
        features=datasets.Features({"img": datasets.Image(), "label": datasets.Image()}))
    renamed.to_parquet(str(tmp_path / "renamed.parquet"))
    with pytest.raises(ValueError, match=r"no column 'picture' \(--image-column\); its columns are \['img', 'label'\]"):
        open_dataset(tmp_path / "renamed.parquet", "validation", image_column="picture")
    odd = datasets.Dataset.from_list(
        [{"x": r["image"], "y": r["annotation"]} for r in rows["validation"]],
        features=datasets.Features({"x": datasets.Image(), "y": datasets.Image()}))
    odd.to_parquet(str(tmp_path / "odd.parquet"))
    with pytest.raises(ValueError, match=r"no image column I know .*\['x', 'y'\]: name it with --image-column"):
        open_dataset(tmp_path / "odd.parquet", "validation")
    corrupt = dict(rows["validation"][0], image={"bytes": b"not a jpeg", "path": "broken.jpg"})
    _table([corrupt]).to_parquet(str(tmp_path / "corrupt.parquet"))
    with pytest.raises(ValueError, match="broken.jpg"):
        open_dataset(tmp_path / "corrupt.parquet", "validation")[0]
    with pytest.raises(FileNotFoundError, match="no such folder"):
        open_dataset(tmp_path / "missing.parquet", "validation")
    with pytest.raises(FileNotFoundError, match="no parquet file of the validation split"):
        (tmp_path / "empty").mkdir()
        open_dataset(tmp_path / "empty", "validation")
    with pytest.raises(ValueError, match="no validation split"):
        datasets.DatasetDict({"train": _table(rows["training"])}).save_to_disk(str(tmp_path / "only_train"))
        open_dataset(tmp_path / "only_train", "validation")


def test_hub_id_goes_through_load_dataset(ade, monkeypatch):
    """The hub path without network: load_dataset is replaced by one returning the rows in memory."""
    root, rows = ade
    calls = []

    def fake_load_dataset(**kwargs):
        calls.append(kwargs)
        return _table(rows[{"train": "training", "validation": "validation"}[kwargs["split"]]])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(datasets, "load_dataset_builder", lambda **kw: (_ for _ in ()).throw(ConnectionError()))
    from_hub = open_dataset("someone/ade20k-copy", "validation")
    _assert_same(_samples(from_hub), _samples(open_dataset(root, "validation")))
    open_dataset("scene_parse_150", "training")
    assert calls == [{"path": "someone/ade20k-copy", "split": "validation"},
                     {**hub.HUB_ALIASES["scene_parse_150"], "split": "train"}]


def test_hub_id_offline_fails_with_a_message_naming_the_id(tmp_path):
    code = ("from segedu.data import open_dataset\n"
            "try:\n    open_dataset('someone/no-such-ade20k', 'validation')\n"
            "except ConnectionError as e:\n    print('ERROR', e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "ERROR could not load the hub dataset 'someone/no-such-ade20k'" in out.stdout, out.stderr[-2000:]


def test_columns_named_otherwise_are_found_or_given(ade, tmp_path):
    """A copy with columns 'img' / 'label' is read by name detection, or with image_column / label_column."""
    _, rows = ade
    renamed = datasets.Dataset.from_list(
        [{"pixels": r["image"], "label": r["annotation"]} for r in rows["validation"]],
        features=datasets.Features({"pixels": datasets.Image(), "label": datasets.Image()}))
    renamed.to_parquet(str(tmp_path / "renamed.parquet"))
    given = open_dataset(tmp_path / "renamed.parquet", "validation", image_column="pixels")
    assert given.image_column == "pixels" and given.label_column == "label"
    _assert_same(_samples(given), _samples(open_dataset(ade[0], "validation")))


def test_a_parquet_export_with_several_configs_is_never_mixed(ade, tmp_path):
    """scene_parsing/ and instance_segmentation/ side by side: scene_parsing is taken; without it, refused."""
    _, rows = ade
    for config, take in (("scene_parsing", slice(None)), ("instance_segmentation", slice(0, 1))):
        for split, hf in HF_SPLIT.items():
            (tmp_path / "export" / config / hf).mkdir(parents=True, exist_ok=True)
            _table(rows[split][take]).to_parquet(str(tmp_path / "export" / config / hf / "0000.parquet"))
    ds = open_dataset(tmp_path / "export", "validation")
    assert len(ds) == len(rows["validation"])  # scene_parsing's rows only
    (tmp_path / "export" / "scene_parsing").rename(tmp_path / "export" / "other")
    with pytest.raises(ValueError, match=r"several configs \(instance_segmentation, other\)"):
        open_dataset(tmp_path / "export", "validation")


def test_hub_split_names_fall_back_between_validation_and_val(ade, monkeypatch):
    _, rows = ade
    asked = []

    def fake_load_dataset(**kwargs):
        asked.append(kwargs["split"])
        if kwargs["split"] != "val":
            raise ValueError(f'Unknown split "{kwargs["split"]}". Should be one of [\'train\', \'val\'].')
        return _table(rows["validation"])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(datasets, "load_dataset_builder", lambda **kw: (_ for _ in ()).throw(ConnectionError()))
    assert len(open_dataset("someone/copy-with-val", "validation")) == len(rows["validation"])
    assert asked == ["validation", "val"]


def test_a_mistyped_relative_path_is_a_missing_folder_not_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "data" / "synthetic").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "load_dataset", lambda **kw: pytest.fail("sent to the hub"))
    with pytest.raises(FileNotFoundError, match=r"--data data/synthtic: no such folder .*did you mean data/synthetic"):
        open_dataset("data/synthtic", "validation")
    assert hub.is_local_path("data/a/b") and not hub.is_local_path("someone/ade20k") and hub.is_local_path("./x")
