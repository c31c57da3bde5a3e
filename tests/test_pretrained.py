"""segedu train starts from the ImageNet encoder each paper fine-tunes (issue 11, section 1), offline.

Each test writes an encoder checkpoint in one layout, built from an independent random-weight model where
one is installed (transformers, timm, torchvision, mmseg), trains one step with lr = 0, and checks that the
encoder in the run's checkpoint equals the converted file: every encoder weight came from the file.
"""
import dataclasses
import re

import pytest
import torch

import segedu
from segedu import checkpoint as ckpt
from segedu.cli import main as cli_main
from segedu.data import generate
from segedu.recipes import PRETRAINED, RECIPES
from segedu.train import pretrained_choice, train
from segedu.weights import CheckpointMismatchError, convert, read_state_dict


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn"), n_train=4, n_val=1, size=(72, 96), seed=3)


def one_step(name: str, **kw):
    """The model's ADE20K recipe cut to one step of 2 crops of 64 at lr 0, tested whole at the stored size."""
    return dataclasses.replace(RECIPES[f"{name}-ade20k"], iters=1, batch_size=2, crop_size=64, lr=0.0,
                               warmup_iters=0, eval_every=1, scale=(288, 72), test_short_side=None,
                               test_size_divisor=None, test_mode="whole", **kw)


def assert_encoder_from(run_dir, name, recipe, expected: dict) -> None:
    """Every encoder parameter of the trained model equals the converted checkpoint's (lr 0: unchanged)."""
    state = ckpt.load(run_dir / "checkpoint.pt")["model"]
    with torch.device("meta"):
        names = [n for n, _ in recipe.build_model().named_parameters() if n.startswith("encoder.")]
    compared = [n for n in names if n in expected]
    assert len(compared) >= len(names) - 8, "most of the encoder comes from the file"
    for n in compared:
        assert torch.equal(state[n], expected[n]), n


def _mit_b0_hf(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.SegformerForImageClassification(transformers.SegformerConfig())  # MiT-B0 + 1000 classes
    folder = tmp_path / "mit-b0"
    model.save_pretrained(folder)
    return folder


def test_transformers_folder_and_the_recipes_hub_id(tiny_data, tmp_path, monkeypatch, capsys):
    folder = _mit_b0_hf(tmp_path)
    recipe = one_step("segformer-b0")
    assert PRETRAINED[recipe.pretrained].default == ("nvidia/mit-b0", "transformers")
    # No network here: the hub download of the recipe's id returns the folder written above.
    import huggingface_hub
    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **kw: asked.append(repo) or str(folder))
    train(recipe, tiny_data, tmp_path / "run", progress=False, device="cpu")
    assert asked == ["nvidia/mit-b0"]
    out = capsys.readouterr().out
    assert re.search(r"pretrained encoder from nvidia/mit-b0 \(transformers\): (\d+) of \1 encoder tensors loaded; "
                     r"kept their initialisation: decoder", out), out
    expected = convert(read_state_dict(folder), "transformers", "segformer-b0")
    assert_encoder_from(tmp_path / "run", "segformer-b0", recipe, expected)


def test_official_mit_file_through_the_cli(tiny_data, tmp_path, monkeypatch):
    # NVlabs mix_transformer.py names (patch_embed1, block1.0..., the DWConv wrapper, norm1), random weights
    torch.manual_seed(4)
    official = {}
    for k, v in segedu.build_model("segformer-b0").encoder.state_dict().items():
        k = re.sub(r"stages\.(\d)\.", lambda m: f"<{int(m[1]) + 1}>.", k)
        k = re.sub(r"<(\d)>\.blocks\.", r"block\1.", re.sub(r"<(\d)>\.norm\.", r"norm\1.", k))
        k = re.sub(r"<(\d)>\.patch_embed\.", r"patch_embed\1.", k).replace("mlp.dwconv.", "mlp.dwconv.dwconv.")
        official[k] = torch.randn_like(v)
    assert "block1.0.mlp.dwconv.dwconv.weight" in official and "norm4.weight" in official
    official["head.weight"], official["head.bias"] = torch.randn(1000, 256), torch.zeros(1000)  # ImageNet classifier
    path = tmp_path / "mit_b0.pth"
    torch.save(official, path)
    recipe = one_step("segformer-b0")
    monkeypatch.setitem(RECIPES, "b0-one-step", recipe)
    args = ["train", "--config", "b0-one-step", "--data", str(tiny_data), "--device", "cpu", "--workers", "0",
            "--out", str(tmp_path / "run"), "--pretrained", str(path), "--pretrained-source", "official"]
    assert cli_main(args) == 0
    assert_encoder_from(tmp_path / "run", "segformer-b0", recipe, convert(official, "official", "segformer-b0"))


def test_mmseg_release_with_pickled_metadata(tiny_data, tmp_path):
    """An mmengine-style file (meta, message_hub with HistoryBuffer objects, state_dict) loads with no code run."""
    mmengine = pytest.importorskip("mmengine")
    from mmseg_stub import import_mmseg
    MODELS = import_mmseg()
    torch.manual_seed(1)
    mit = MODELS.build(dict(type="MixVisionTransformer", in_channels=3, embed_dims=32, num_stages=4,
                            num_layers=[2, 2, 2, 2], num_heads=[1, 2, 5, 8], patch_sizes=[7, 3, 3, 3],
                            sr_ratios=[8, 4, 2, 1], out_indices=(0, 1, 2, 3), mlp_ratio=4, qkv_bias=True))
    hub = mmengine.logging.MessageHub.get_instance("segedu-test")
    hub.update_scalar("train/loss", 0.5)
    path = tmp_path / "segformer_mit-b0_mmseg.pth"
    torch.save({"meta": {"mmseg_version": "1.2.2", "epoch": 1}, "message_hub": hub.state_dict(),
                "state_dict": {f"backbone.{k}": v for k, v in mit.state_dict().items()}}, path)
    with pytest.raises(Exception):  # what torch.load(weights_only=True) alone does with such a file
        torch.load(path, weights_only=True)
    recipe = one_step("segformer-b0")
    train(recipe, tiny_data, tmp_path / "run", progress=False, device="cpu", pretrained=str(path),
          pretrained_source="mmseg")
    assert_encoder_from(tmp_path / "run", "segformer-b0", recipe,
                        convert(read_state_dict(path), "mmseg", "segformer-b0"))


def test_timm_swin_safetensors(tiny_data, tmp_path, capsys):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file
    torch.manual_seed(2)
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)
    path = tmp_path / "model.safetensors"  # the file a timm hub repository holds
    save_file({k: v.contiguous() for k, v in swin.state_dict().items()}, path)
    recipe = one_step("ssformer-swin-t")
    assert PRETRAINED[recipe.pretrained].hub_source == "timm"
    train(recipe, tiny_data, tmp_path / "run", progress=False, device="cpu", pretrained=str(path),
          pretrained_source="timm")
    out = capsys.readouterr().out
    assert "kept their initialisation: decoder, encoder.norm0.bias" in out  # Swin's segmentation-only norms
    assert_encoder_from(tmp_path / "run", "ssformer-swin-t", recipe, convert(read_state_dict(path), "timm",
                                                                              "ssformer-swin-t"))


def test_torchvision_vit_for_setr(tiny_data, tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(3)
    vit = torchvision.models.VisionTransformer(image_size=224, patch_size=16, num_layers=12, num_heads=2,
                                               hidden_dim=64, mlp_dim=256)
    path = tmp_path / "vit.pth"
    torch.save(vit.state_dict(), path)
    recipe = one_step("setr-naive-base", model_kwargs={"aux_heads": True, "embed_dim": 64, "num_heads": 2})
    train(recipe, tiny_data, tmp_path / "run", progress=False, device="cpu", pretrained=str(path),
          pretrained_source="torchvision")
    expected = convert(read_state_dict(path), "torchvision", "setr-naive-base")  # positions 14x14 -> 32x32
    assert_encoder_from(tmp_path / "run", "setr-naive-base", recipe, expected)


def test_official_mscan_file(tiny_data, tmp_path):
    from test_segnext import _mmseg_segnext, _official_from_mmseg
    _, _, state = _mmseg_segnext((32, 64, 160, 256), (3, 3, 5, 2), 256, 16)
    official = {k[len("backbone."):]: v for k, v in _official_from_mmseg(state).items() if k.startswith("backbone.")}
    official["head.weight"], official["head.bias"] = torch.zeros(1000, 256), torch.zeros(1000)
    path = tmp_path / "mscan_t.pth"
    torch.save({"state_dict": official}, path)
    recipe = one_step("segnext-t")
    train(recipe, tiny_data, tmp_path / "run", progress=False, device="cpu", pretrained=str(path))  # recipe's source
    assert_encoder_from(tmp_path / "run", "segnext-t", recipe, convert({"state_dict": official}, "official",
                                                                        "segnext-t"))


def test_a_checkpoint_that_does_not_fit_stops_before_any_step(tiny_data, tmp_path):
    folder = _mit_b0_hf(tmp_path)
    with pytest.raises(CheckpointMismatchError, match=r"^the encoder checkpoint .*mit-b0 \(transformers\): checkpoint "
                                                      r"does not fit segformer-b1: shape mismatches \([^\n]*$"):
        train(one_step("segformer-b1"), tiny_data, tmp_path / "run", progress=False, device="cpu",
              pretrained=str(folder), pretrained_source="transformers")  # MiT-B0 weights for B1
    assert not (tmp_path / "run" / "checkpoint.pt").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_every_ade20k_recipe_names_its_encoder_and_the_synthetic_one_none(tmp_path, monkeypatch):
    for name, recipe in RECIPES.items():
        if name == "synthetic":
            assert recipe.pretrained is None and pretrained_choice(recipe) is None
            continue
        entry = PRETRAINED[recipe.pretrained]
        assert entry.file.endswith(".pth") and entry.origin and entry.source in segedu.weights.sources(recipe.model)
        assert entry.hub_source is None or entry.hub_source in segedu.weights.sources(recipe.model)
        assert pretrained_choice(recipe, "none") is None
    monkeypatch.chdir(tmp_path)  # no mscan_t.pth here: say where the file comes from
    with pytest.raises(FileNotFoundError, match=r"starts from mscan_t\.pth \(Visual-Attention-Network/SegNeXt "
                                                r"README.*--pretrained PATH, or --pretrained none"):
        pretrained_choice(RECIPES["segnext-t-ade20k"])
    (tmp_path / "mscan_t.pth").touch()
    assert pretrained_choice(RECIPES["segnext-t-ade20k"]) == ("mscan_t.pth", "official")
    assert pretrained_choice(RECIPES["setr-pup-ade20k"], "x.pth", "torchvision") == ("x.pth", "torchvision")
    with pytest.raises(ValueError, match="give --pretrained-source"):
        pretrained_choice(RECIPES["synthetic"], "x.pth")


class ReleaseMeta:
    """Stands for a class a release pickles in its metadata (as mmengine's MessageHub)."""

    def __init__(self):
        self.config, self.seed = "model = dict(...)", 0


class Touch:
    """A pickle whose loading would create ``path`` through ``call`` (os.system, open, or Path.touch)."""

    def __init__(self, call, path):
        self.call, self.path = call, path

    def __reduce__(self):
        import os
        from pathlib import Path
        if self.call == "system":
            return os.system, (f"touch {self.path}",)
        if self.call == "open":
            return open, (str(self.path), "w")
        return Path.touch, (Path(self.path),)


def test_release_files_are_read_without_running_their_code(tmp_path):
    from segedu.weights import load_pickled
    weights = {"backbone.w": torch.arange(3.0)}
    path = tmp_path / "release.pth"
    torch.save({"meta": {"hub": ReleaseMeta()}, "state_dict": weights}, path)
    assert read_state_dict(path).keys() == weights.keys() and torch.equal(read_state_dict(path)["backbone.w"],
                                                                         weights["backbone.w"])
    assert type(load_pickled(path)["meta"]["hub"]).__name__ == "ReleaseMeta"  # an inert stand-in, not the class
    assert not isinstance(load_pickled(path)["meta"]["hub"], ReleaseMeta)
    for call, refused in (("system", r"(posix|os)\.system"), ("open", r"(builtins|io)\.open"), ("touch", None)):
        marker = tmp_path / f"made-by-{call}"
        evil = tmp_path / f"{call}.pth"
        torch.save({"meta": Touch(call, marker), "state_dict": weights}, evil)
        assert not marker.exists()
        if refused:
            with pytest.raises(ValueError, match=rf"^refusing to read {re.escape(str(evil))}: it would call {refused} "
                                                 r"when unpickled \(a program, not a checkpoint\)$"):
                read_state_dict(evil)
        else:  # getattr(Path, "touch") is a stand-in, and torch's unpickler will not call what it returns
            with pytest.raises(ValueError, match=rf"^could not read checkpoint {re.escape(str(evil))}: Trying to "
                                                 r"call reduce for unrecognized function [^\n]*$"):
                read_state_dict(evil)
        assert not marker.exists(), f"{call}: loading ran code from the file"
    (tmp_path / "cut.pth").write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"^could not read checkpoint .*cut\.pth: [^\n]*$"):
        read_state_dict(tmp_path / "cut.pth")
