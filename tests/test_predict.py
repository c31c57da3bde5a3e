"""segedu predict end to end on images this test writes: a training checkpoint and a public
(transformers save_pretrained) checkpoint; masks at the original resolution; clear errors."""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch
from torchvision.io import encode_jpeg, encode_png, write_file

from segedu import checkpoint as ckpt
from segedu.cli import main as cli_main
from segedu.data import ADE20K_PALETTE, test_transforms
from segedu.data.io import made_by_segedu, read_image
from segedu.predict import TestSettings, load_model, predict_files, predict_mask
from segedu.recipes import RECIPES
from segedu.registry import build_model, list_models
from segedu.viz import colorize, overlay, palette_for, plot_class_iou

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")

SIZES = {"street.jpg": (37, 53), "room.png": (30, 41), "grey.png": (25, 25)}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    g = torch.Generator().manual_seed(0)
    for name, (h, w) in SIZES.items():
        channels = 1 if name.startswith("grey") else 3
        pixels = torch.randint(0, 256, (channels, h, w), dtype=torch.uint8, generator=g)
        write_file(str(folder / name), encode_jpeg(pixels) if name.endswith(".jpg") else encode_png(pixels))
    return [folder / name for name in SIZES]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A segedu training checkpoint of a (randomly initialised) SegFormer-B0 with 7 classes."""
    torch.manual_seed(0)
    recipe = RECIPES["synthetic"].with_overrides(num_classes=7, test_short_side=64, test_size_divisor=32)
    model = build_model(recipe.model, num_classes=7)
    path = tmp_path_factory.mktemp("run") / "checkpoint.pt"
    ckpt.save_atomic({"model": model.state_dict(), "recipe": recipe.to_dict(), "step": 0}, path)
    return path


def _read(path):
    return read_image(path, label=True)  # as stored


def test_predict_from_a_training_checkpoint(trained, images, tmp_path, capsys):
    assert cli_main(["predict", "--checkpoint", str(trained), *map(str, images), "--out", str(tmp_path),
                     "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    model, settings, facts = load_model(trained, device="cpu")
    assert settings == TestSettings(64, 32, "whole") and facts["num_classes"] == 7
    palette = palette_for(7)
    for path in images:
        h, w = SIZES[path.name]
        mask = _read(tmp_path / f"{path.stem}_mask.png")
        assert mask.shape == (1, h, w) and mask.dtype == torch.uint8 and int(mask.max()) < 7
        image = read_image(path)
        expected = predict_mask(model, image, settings, 7)
        assert torch.equal(mask[0].long(), expected)
        assert torch.equal(_read(tmp_path / f"{path.stem}_color.png"), colorize(expected, palette).permute(2, 0, 1))
        assert torch.equal(_read(tmp_path / f"{path.stem}_overlay.png"), overlay(image, expected, palette))
        assert str(path) in printed
    assert palette[:7] == list(ADE20K_PALETTE[:7])


def test_predict_with_a_public_checkpoint(images, tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    hf = transformers.SegformerForSemanticSegmentation(transformers.SegformerConfig(num_labels=19)).eval()
    hf.save_pretrained(tmp_path / "hf")
    out = tmp_path / "out"
    assert cli_main(["predict", "--model", "segformer-b0", "--weights", str(tmp_path / "hf"), "--source",
                     "transformers", str(images[0]), "--out", str(out), "--device", "cpu"]) == 0
    model, settings, facts = load_model(name="segformer-b0", weights=tmp_path / "hf", device="cpu")
    assert facts["num_classes"] == 19 and settings == TestSettings(512, 32, "whole")  # SegFormer's test setting
    # config.json's id2label names the classes; a 19-class model is not ADE20K: no reduce_zero_label
    assert facts["classes"] == tuple(
        hf.config.id2label[i] for i in range(19))
    assert facts["reduce_zero_label"] is False
    image = read_image(images[0])
    # The transformers model on the same normalised, resized input gives the same label map.
    x, _ = test_transforms(512, 32)(image, torch.zeros(image.shape[1:], dtype=torch.int64))
    x = x[None]  # [1, 3, 512, 736]
    with torch.no_grad():
        ref = torch.nn.functional.interpolate(hf(pixel_values=x).logits, size=image.shape[1:], mode="bilinear",
                                              align_corners=False).argmax(1)[0]
    mask = _read(out / "street_mask.png")[0].long()
    assert mask.shape == SIZES["street.jpg"]
    assert (mask == ref).float().mean() > 0.99  # equal up to float ties


@pytest.mark.parametrize("mode,extra", [("slide", ["--slide-crop", "32", "--slide-stride", "21"]), ("ms-flip", [])])
def test_predict_other_test_modes(trained, images, tmp_path, mode, extra):
    assert cli_main(["predict", "--checkpoint", str(trained), str(images[0]), "--out", str(tmp_path),
                     "--device", "cpu", "--mode", mode, *extra]) == 0
    assert _read(tmp_path / "street_mask.png").shape == (1, *SIZES["street.jpg"])


def test_test_settings_have_one_source_the_recipes():
    """eval --weights (for_paper) and eval --checkpoint (from_recipe) test a model alike, for every model."""
    for name in list_models():
        assert TestSettings.for_paper(name) == TestSettings.from_recipe(RECIPES[f"{name}-ade20k"]), name
    assert TestSettings.for_paper("segformer-b5") == TestSettings(640, 32, "whole")
    assert TestSettings.for_paper("segnext-t") == TestSettings(512, 32, "whole")
    assert TestSettings.for_paper("setr-pup").with_mode(crop=256) == replace(TestSettings.for_paper("setr-pup"),
                                                                             crop=256)
    with pytest.raises(ValueError, match="needs a crop and a stride"):
        TestSettings(mode="slide")
    with pytest.raises(ValueError, match="Did you mean 'segformer-b0'"):
        TestSettings.for_paper("segformr-b0")


def test_setr_and_ssformer_test_without_a_size_divisor():
    """SETR and SSformer test after Resize(2048, 512) alone, with no ResizeToMultiple (docs/architectures.md 5.2)."""
    assert TestSettings.for_paper("setr-pup") == TestSettings(512, None, "slide", 512, 341, ms_min_short_side=512)
    assert TestSettings.for_paper("ssformer-swin-t") == TestSettings(512, None, "whole")



def test_the_test_settings_table_of_docs_is_the_recipes():
    """docs/training.md section 5 states each recipe's test protocol as segedu.recipes holds it."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    section = text[text.index("## 5. Test settings"):text.index("## 6.")]
    rows = {m[0]: (m[1], m[2].strip(), m[3].strip())
            for m in re.findall(r"^\| `([\w-]+)` \| (\w[\w-]*) \| ([^|]+)\| ([^|]+)\|", section, re.M)}
    assert set(rows) == set(RECIPES)
    for name, r in RECIPES.items():
        size = "stored size" if r.test_short_side is None else f"short side {r.test_short_side}, " + (
            f"multiple of {r.test_size_divisor}" if r.test_size_divisor else "no rounding")
        window = f"{r.slide_crop} / stride {r.slide_stride}" if r.test_mode == "slide" else "-"
        assert rows[name] == (r.test_mode, size, window), name

def test_predict_never_writes_over_inputs_or_files_it_did_not_make(trained, tmp_path, capsys):
    """An input named like an output, or a file of the user's in the way, stops predict before any work;
    its own earlier outputs are replaced."""
    write_file(str(tmp_path / "a.png"), encode_png(torch.full((3, 20, 24), 80, dtype=torch.uint8)))
    write_file(str(tmp_path / "a_mask.png"), encode_png(torch.full((3, 20, 24), 9, dtype=torch.uint8)))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    args = ["predict", "--checkpoint", str(trained), "--device", "cpu", "--out", str(tmp_path)]
    assert cli_main([*args, str(tmp_path / "a.png"), str(tmp_path / "a_mask.png")]) == 2
    assert "would replace the input image" in capsys.readouterr().err
    assert cli_main([*args, str(tmp_path / "a.png")]) == 2  # a_mask.png is the user's, not an output of segedu
    assert "segedu did not make it" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing written, nothing changed
    out = tmp_path / "out"
    assert cli_main([*args[:-1], str(out), str(tmp_path / "a.png")]) == 0
    assert made_by_segedu(out / "a_mask.png") and not made_by_segedu(tmp_path / "a_mask.png")
    assert cli_main([*args[:-1], str(out), str(tmp_path / "a.png")]) == 0  # its own outputs: replaced


def test_missing_and_corrupt_images_are_named(trained, images, tmp_path, capsys):
    assert cli_main(["predict", "--checkpoint", str(trained), str(images[0]), str(tmp_path / "nowhere.jpg"),
                     "--out", str(tmp_path / "out")]) == 2
    assert "nowhere.jpg" in capsys.readouterr().err
    assert not (tmp_path / "out" / "street_mask.png").exists()  # checked before any work
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    model, settings, facts = load_model(trained, device="cpu")
    with pytest.raises(ValueError, match="broken.jpg"):
        predict_files(model, [tmp_path / "broken.jpg"], tmp_path / "out", settings, facts["num_classes"])
    capsys.readouterr()
    assert cli_main(["predict", "--checkpoint", str(trained), str(tmp_path / "broken.jpg"),
                     "--out", str(tmp_path / "out")]) == 2  # one line naming the file, no traceback
    assert "segedu predict: error: could not decode" in capsys.readouterr().err
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert cli_main(["predict", "--checkpoint", str(tmp_path / "bad.pt"), str(images[0]),
                     "--out", str(tmp_path / "out")]) == 2
    assert "could not read checkpoint" in capsys.readouterr().err
    with pytest.raises(ValueError, match="named \\['street'\\]"):
        predict_files(model, [images[0], images[0]], tmp_path / "out", settings, facts["num_classes"])


def test_model_arguments_are_checked(trained, images, tmp_path, capsys):
    assert cli_main(["predict", str(images[0]), "--out", str(tmp_path)]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert cli_main(["predict", "--checkpoint", str(trained), "--weights", "x", "--model", "segformer-b0",
                     str(images[0]), "--out", str(tmp_path)]) == 2
    assert cli_main(["predict", "--checkpoint", str(tmp_path / "none.pt"), str(images[0]), "--out", str(tmp_path)]) == 2
    assert "none.pt" in capsys.readouterr().err


def test_overlay_blends_labelled_pixels_only():
    image = torch.full((3, 2, 2), 100, dtype=torch.uint8)
    mask = torch.tensor([[0, 1], [255, 0]])
    palette = [(200, 0, 0), (0, 0, 0)]
    out = overlay(image, mask, palette, alpha=0.5)
    assert out[:, 0, 0].tolist() == [150, 50, 50] and out[:, 0, 1].tolist() == [50, 50, 50]
    assert out[:, 1, 0].tolist() == [100, 100, 100]  # ignored: the image shows through
    with pytest.raises(ValueError, match="differ in size"):
        overlay(image, mask[:1], palette)


def test_palette_for_extends_the_ade20k_palette():
    big = palette_for(160)
    assert len(big) == 160 and big[:150] == list(ADE20K_PALETTE) and big == palette_for(160)


def test_plot_class_iou_skips_undefined_classes(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(plt.Axes, "barh", lambda self, names, values, **kw: calls.append((list(names), list(values))))
    plot_class_iou({"IoU": [0.5, float("nan"), 0.9], "mIoU": 0.7}, ["a", "b", "c"], tmp_path / "bars.png")
    assert calls == [(["c", "a"], [0.9, 0.5])]  # best first, the NaN class left out
    assert (tmp_path / "bars.png").stat().st_size > 0
