"""Bad input and faults at the command line (issue 15), as one table.

Every case runs ``segedu.cli.main`` (in-process; a few as a real subprocess) and asserts: the exit code, no
traceback, one ``error:`` line that names the cause, and that no file the user had before (the shared
inputs below and the files a case prepares) changed or vanished. Data: a few 32x32 images this file writes.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segedu import checkpoint as ckpt
from segedu.cli import main
from segedu.recipes import RECIPES
from segedu.registry import build_model

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")


# --- the user's files -------------------------------------------------------------------------------------

def _image(path: Path, size=(32, 32), value=90, fmt=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, format=fmt)


def _label(path: Path, size=(32, 32), values=(1, 2, 3), dtype=np.uint8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(values))
    Image.fromarray(rng.choice(np.array(values, dtype=dtype), size)).save(path)


def ade_folder(root: Path, splits=("training", "validation"), n=2, **label_kw) -> Path:
    """An ADE20K-layout folder of n 32x32 JPEG / PNG pairs per split."""
    for split in splits:
        for i in range(n):
            _image(root / "images" / split / f"img{i}.jpg", value=i)
            _label(root / "annotations" / split / f"img{i}.png", **label_kw)
    return root


def _parquet(path: Path, columns=("image", "annotation"), n=2) -> None:
    datasets = pytest.importorskip("datasets")
    src = ade_folder(path.parent / f".{path.stem}-src", splits=("validation",), n=n)
    rows = [{columns[0]: {"bytes": p.read_bytes(), "path": p.name},
             columns[1]: {"bytes": (src / "annotations/validation" / f"{p.stem}.png").read_bytes(), "path": None}}
            for p in sorted((src / "images/validation").iterdir())]
    features = datasets.Features({c: datasets.Image() for c in columns})
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Inputs shared by the cases: data, checkpoints, images, recipe files and one finished training run."""
    w = tmp_path_factory.mktemp("world")
    ade_folder(w / "sets" / "ade")
    _image(w / "pics" / "a.jpg", value=7)
    _image(w / "pics" / "b.png", value=8)
    (w / "pics" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    torch.manual_seed(0)
    recipe = RECIPES["synthetic"].with_overrides(iters=1, batch_size=2, crop_size=32, eval_every=1,
                                                 scale=(64, 32), warmup_iters=0)
    model = build_model(recipe.model, num_classes=recipe.num_classes)
    ckpt.save_atomic({"model": model.state_dict(), "recipe": recipe.to_dict(), "step": 0}, w / "ckpt.pt")
    torch.save(model.state_dict(), w / "state_dict.pt")
    (w / "text.pt").write_text("these are my notes, not a checkpoint\n")
    (w / "two_classes.txt").write_text("road\nsky\n")
    (w / "empty_classes.txt").write_text("\n\n")
    recipes = w / "recipes"
    recipes.mkdir()
    good = recipe.to_dict()
    (recipes / "tiny.json").write_text(json.dumps(good))
    (recipes / "broken.json").write_text('{"model": "segformer-b0", "iters": ')
    (recipes / "s.json").write_text(json.dumps({**good, "iters": "ten"}))
    (recipes / "n.json").write_text(json.dumps({**good, "iters": None}))
    (recipes / "f.json").write_text(json.dumps({**good, "iters": 1.5}))
    (recipes / "e0.json").write_text(json.dumps({**good, "eval_every": 0}))
    (recipes / "unknown_field.json").write_text(json.dumps({**good, "learning_rate": 0.1}))
    (recipes / "list.json").write_text("[1, 2]")
    _parquet(w / "pq" / "odd.parquet", columns=("x", "y"))
    for config in ("instance_segmentation", "panoptic"):
        _parquet(w / "pq" / "configs" / config / "validation" / "0000.parquet")
    _parquet(w / "pq" / "train_only" / "train" / "0000.parquet")
    run = w / "run"
    assert main(["train", "--config", str(recipes / "tiny.json"), "--data", str(w / "sets" / "ade"),
                 "--out", str(run), "--device", "cpu", "--workers", "0", "--seed", "0"]) == 0
    assert (run / "checkpoint.pt").is_file()
    return w


def _checksums(*roots: Path) -> dict[str, str]:
    sums = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file() and ".cache" not in p.parts:
                sums[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return sums


# --- setups that prepare a case's own files (in tmp) ------------------------------------------------------

def user_folder(tmp: Path) -> None:
    (tmp / "mydata" / "photos").mkdir(parents=True)
    (tmp / "mydata" / "notes.txt").write_text("my notes")
    _image(tmp / "mydata" / "photos" / "holiday.jpg")


def synthetic_plus_user_file(tmp: Path) -> None:
    root = tmp / "syn"
    ade_folder(root)
    for p in list(root.rglob("img*")):
        p.rename(p.with_name("SYN_" + p.name))
    (root / "meta.json").write_text(json.dumps({"generator": "segedu.data.synthetic", "version": 0}))
    (root / "images" / "training" / "my_own.jpg").write_bytes(b"mine")


def foreign_meta(tmp: Path) -> None:
    (tmp / "mydata").mkdir()
    (tmp / "mydata" / "meta.json").write_text('{"generator": "labelme"}')


def a_file(name):
    def setup(tmp: Path) -> None:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text("a file of mine")
    return setup


def input_named_like_output(tmp: Path) -> None:
    _image(tmp / "a.png", fmt="PNG")
    _image(tmp / "a_mask.png", value=3, fmt="PNG")


def data(**kw):
    def setup(tmp: Path) -> None:
        ade_folder(tmp / "d", **kw)
    return setup


def data_then(change):
    def setup(tmp: Path) -> None:
        ade_folder(tmp / "d")
        change(tmp / "d")
    return setup


def _no_validation(d): [p.unlink() for p in (d / "images" / "validation").iterdir()]; (d / "images/validation").rmdir()  # noqa: E702
def _no_labels(d): [p.unlink() for p in (d / "annotations" / "validation").iterdir()]  # noqa: E704
def _twin(d): _image(d / "images/validation/img0.png", fmt="PNG")  # noqa: E704
def _corrupt(d): (d / "images/validation/img1.jpg").write_bytes(b"\xff\xd8 broken")  # noqa: E704
def _rgb_label(d): _image(d / "annotations/validation/img0.png", fmt="PNG")  # noqa: E704
def _big16(d): _label(d / "annotations/validation/img0.png", values=(1, 300), dtype=np.uint16)  # noqa: E704
def _out_of_range(d): _label(d / "annotations/validation/img0.png", values=(1, 200))  # noqa: E704
def _small_label(d): _label(d / "annotations/validation/img0.png", size=(16, 16))  # noqa: E704
def _empty_images(d): [p.unlink() for p in (d / "images" / "validation").iterdir()]  # noqa: E704
def _train_big16(d): _label(d / "annotations/training/img0.png", values=(1, 300), dtype=np.uint16)  # noqa: E704


def foreign_eval_json(tmp: Path) -> None:
    (tmp / "out").mkdir()
    (tmp / "out" / "eval_whole.json").write_text('{"my": "results"}')


def foreign_cache(tmp: Path) -> None:
    (tmp / "cache").mkdir()
    (tmp / "cache" / "thesis.pdf").write_bytes(b"%PDF")


def copy_run(tmp: Path, world: Path) -> None:
    import shutil
    shutil.copytree(world / "run", tmp / "run")


# --- faults injected while a case runs ---------------------------------------------------------------------

def disk_full(monkeypatch) -> None:
    def write_text(self, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
    monkeypatch.setattr(Path, "write_text", write_text)


def read_only(monkeypatch) -> None:
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if "ro" in Path(p).parts else real(p, mode, **k))


def held_lock(tmp: Path):
    """A second segedu train on the same --out: the first one's lock is held (flock, as train.py takes it)."""
    lock = (tmp / "run" / ".segedu-train.lock").open("a+")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    lock.write("4242")
    lock.flush()
    return lock


@dataclass
class Case:
    id: str
    argv: list[str]
    says: tuple[str, ...]          # substrings of the error line (case-insensitive)
    code: int = 2
    setup: object = None           # (tmp) or (tmp, world) -> prepares the case's own files
    fault: object = None           # (monkeypatch) -> injects a fault during the run
    cwd: str | None = None         # run in {w}/cwd (relative paths)
    subprocess: bool = False
    marks: tuple = field(default_factory=tuple)


W, T = "{w}", "{tmp}"
CK = ["--checkpoint", f"{W}/ckpt.pt"]
ADE = f"{W}/sets/ade"
PRED = ["predict", *CK, "--device", "cpu"]
EVAL = ["eval", *CK, "--device", "cpu"]
TRAIN = ["train", "--config", f"{W}/recipes/tiny.json", "--device", "cpu", "--workers", "0"]

CASES = [
    # 1. segedu data touches only folders it made
    Case("data-user-folder", ["data", "--root", f"{T}/mydata"], ("did not make", "mydata"), setup=user_folder),
    Case("data-user-folder-subprocess", ["data", "--root", f"{T}/mydata"], ("did not make",), setup=user_folder,
         subprocess=True),
    Case("data-root-is-a-file", ["data", "--root", f"{T}/notes.txt"], ("is a file",), setup=a_file("notes.txt")),
    Case("data-set-plus-user-file", ["data", "--root", f"{T}/syn"], ("other file", "my_own.jpg"),
         setup=synthetic_plus_user_file),
    Case("data-foreign-meta", ["data", "--root", f"{T}/mydata"], ("did not make",), setup=foreign_meta),
    # predict never writes over its inputs or files it did not make
    Case("predict-input-named-like-output", [*PRED, f"{T}/a.png", f"{T}/a_mask.png", "--out", T],
         ("would replace the input image", "a_mask.png"), setup=input_named_like_output),
    Case("predict-input-named-like-output-subprocess", [*PRED, f"{T}/a.png", f"{T}/a_mask.png", "--out", T],
         ("would replace the input image",), setup=input_named_like_output, subprocess=True),
    Case("predict-user-file-in-the-way", [*PRED, f"{W}/pics/a.jpg", "--out", T], ("a_mask.png", "did not make"),
         setup=a_file("a_mask.png")),
    Case("predict-out-is-a-file", [*PRED, f"{W}/pics/a.jpg", "--out", f"{T}/f"], ("is a file",), setup=a_file("f")),
    Case("predict-out-under-a-file", [*PRED, f"{W}/pics/a.jpg", "--out", f"{T}/f/sub"], ("is a file",),
         setup=a_file("f")),
    Case("predict-out-read-only", [*PRED, f"{W}/pics/a.jpg", "--out", f"{T}/ro/out"], ("not writable",),
         setup=a_file("ro/x"), fault=read_only),
    Case("predict-missing-image", [*PRED, f"{W}/pics/nope.jpg", "--out", T], ("nope.jpg",)),
    Case("predict-corrupt-image", [*PRED, f"{W}/pics/broken.jpg", "--out", T], ("could not decode", "broken.jpg")),
    Case("predict-same-stem-twice", [*PRED, f"{W}/pics/a.jpg", f"{W}/pics/a.jpg", "--out", T], ("['a']",)),
    Case("predict-text-checkpoint", ["predict", "--checkpoint", f"{W}/text.pt", f"{W}/pics/a.jpg", "--out", T],
         ("could not read checkpoint", "text.pt")),
    Case("predict-bare-state-dict", ["predict", "--checkpoint", f"{W}/state_dict.pt", f"{W}/pics/a.jpg",
                                     "--out", T], ("not a segedu training checkpoint", "--weights")),
    Case("predict-missing-checkpoint", ["predict", "--checkpoint", f"{T}/none.pt", f"{W}/pics/a.jpg", "--out", T],
         ("none.pt", "does not exist")),
    Case("predict-no-model", ["predict", f"{W}/pics/a.jpg", "--out", T], ("--checkpoint",)),
    Case("predict-checkpoint-and-weights", [*PRED, "--model", "segformer-b0", "--weights", "x", f"{W}/pics/a.jpg",
                                            "--out", T], ("either --checkpoint",)),
    Case("predict-model-typo", ["predict", "--model", "segformr-b0", "--weights", f"{T}/w", f"{W}/pics/a.jpg",
                                "--out", T], ("did you mean", "segformer-b0")),
    Case("predict-missing-weights", ["predict", "--model", "segformer-b0", "--weights", "./no/such/folder",
                                     f"{W}/pics/a.jpg", "--out", T], ("does not exist",)),
    Case("predict-device-misspelled", [*PRED[:-2], "--device", "cdua", f"{W}/pics/a.jpg", "--out", T],
         ("not a device", "did you mean cuda")),
    Case("predict-device-cuda-absent", [*PRED[:-2], "--device", "cuda", f"{W}/pics/a.jpg", "--out", T],
         ("no cuda gpu", "--device cpu"), marks=(NO_GPU,)),
    Case("predict-device-cuda-7", [*PRED[:-2], "--device", "cuda:7", f"{W}/pics/a.jpg", "--out", T],
         ("cuda",), marks=(NO_GPU,)),
    Case("predict-slide-without-window", [*PRED, "--mode", "slide", f"{W}/pics/a.jpg", "--out", T],
         ("needs a crop and a stride",)),
    Case("predict-negative-slide-crop", [*PRED, "--slide-crop", "-5", f"{W}/pics/a.jpg", "--out", T],
         ("--slide-crop must be a positive",)),
    Case("predict-unknown-mode", [*PRED, "--mode", "tiles", f"{W}/pics/a.jpg", "--out", T], ("invalid choice",)),
    Case("predict-missing-classes-file", [*PRED, "--classes", f"{T}/c.txt", f"{W}/pics/a.jpg", "--out", T],
         ("class list", "c.txt")),
    Case("predict-no-out", [*PRED, f"{W}/pics/a.jpg"], ("--out",)),
    # 2. eval: the output path and the data before the work
    Case("eval-out-is-a-file", [*EVAL, "--data", ADE, "--out", f"{T}/f"], ("is a file",), setup=a_file("f")),
    Case("eval-out-user-result", [*EVAL, "--data", ADE, "--out", f"{T}/out"], ("eval_whole.json", "did not make"),
         setup=foreign_eval_json),
    Case("eval-out-read-only", [*EVAL, "--data", ADE, "--out", f"{T}/ro/out"], ("not writable",),
         setup=a_file("ro/x"), fault=read_only),
    Case("eval-out-disk-full", [*EVAL, "--data", ADE, "--out", f"{T}/out"], ("disk is full",), fault=disk_full),
    Case("eval-missing-data", [*EVAL, "--data", f"{T}/nothing"], ("no such folder",)),
    Case("eval-mistyped-relative-path", [*EVAL, "--data", "sets/aed"], ("no such folder", "did you mean sets/ade"),
         cwd="."),
    Case("eval-no-validation-split", [*EVAL, "--data", f"{T}/d"], ("missing folder", "validation"),
         setup=data(splits=("training",))),
    Case("eval-images-without-labels", [*EVAL, "--data", f"{T}/d"], ("no label map",), setup=data_then(_no_labels)),
    Case("eval-two-images-one-name", [*EVAL, "--data", f"{T}/d"], ("share the name",), setup=data_then(_twin)),
    Case("eval-no-images", [*EVAL, "--data", f"{T}/d"], ("no .jpg/.jpeg/.png images",),
         setup=data_then(_empty_images)),
    Case("eval-corrupt-image", [*EVAL, "--data", f"{T}/d"], ("could not decode", "img1.jpg"),
         setup=data_then(_corrupt)),
    Case("eval-rgb-label", [*EVAL, "--data", f"{T}/d"], ("single-channel",), setup=data_then(_rgb_label)),
    Case("eval-16-bit-label", [*EVAL, "--data", f"{T}/d"], ("16-bit label map", "300"), setup=data_then(_big16)),
    Case("eval-label-out-of-range", [*EVAL, "--data", f"{T}/d"], ("[199]", "img0.png"),
         setup=data_then(_out_of_range)),
    Case("eval-label-size-mismatch", [*EVAL, "--data", f"{T}/d"], ("size mismatch",), setup=data_then(_small_label)),
    Case("eval-parquet-unknown-columns", [*EVAL, "--data", f"{W}/pq/odd.parquet"], ("['x', 'y']", "--image-column")),
    Case("eval-parquet-wrong-column", [*EVAL, "--data", f"{W}/pq/odd.parquet", "--image-column", "img"],
         ("no column 'img'", "['x', 'y']")),
    Case("eval-parquet-several-configs", [*EVAL, "--data", f"{W}/pq/configs"],
         ("several configs", "instance_segmentation")),
    Case("eval-parquet-no-validation", [*EVAL, "--data", f"{W}/pq/train_only"], ("no parquet file of the validation",)),
    Case("eval-classes-wrong-count", [*EVAL, "--data", ADE, "--classes", f"{W}/two_classes.txt"],
         ("2 class names given",)),
    Case("eval-classes-empty", [*EVAL, "--data", ADE, "--classes", f"{W}/empty_classes.txt"], ("is empty",)),
    Case("eval-bare-state-dict", ["eval", "--checkpoint", f"{W}/state_dict.pt", "--data", ADE],
         ("not a segedu training checkpoint",)),
    Case("eval-text-checkpoint", ["eval", "--checkpoint", f"{W}/text.pt", "--data", ADE], ("could not read",)),
    Case("eval-zero-stride", [*EVAL, "--data", ADE, "--slide-stride", "0"], ("--slide-stride must be a positive",)),
    Case("eval-negative-workers", [*EVAL, "--data", ADE, "--workers", "-1"], ("--workers must be a non-negative",)),
    Case("eval-device-gpu", [*EVAL[:-2], "--device", "gpu", "--data", ADE], ("not a device",)),
    Case("eval-model-typo", ["eval", "--model", "setr-pupp", "--weights", "x", "--data", ADE], ("did you mean",)),
    # 3/4. train: data, numbers, names, recipe files (the run folder is the other engineer's)
    Case("train-missing-data", [*TRAIN, "--data", f"{T}/nothing", "--out", f"{T}/run"], ("no such folder",)),
    Case("train-mistyped-relative-path", [*TRAIN, "--data", "sets/ade_typo", "--out", f"{T}/run"],
         ("no such folder",), cwd="."),
    Case("train-no-validation-split", [*TRAIN, "--data", f"{T}/d", "--out", f"{T}/run"], ("missing folder",),
         setup=data_then(_no_validation)),
    Case("train-16-bit-label", [*TRAIN, "--data", f"{T}/d", "--out", f"{T}/run"], ("16-bit label map",),
         setup=data_then(_train_big16)),
    Case("train-negative-crop", [*TRAIN, "--data", ADE, "--crop", "-32", "--out", f"{T}/run"],
         ("--crop must be a positive",)),
    Case("train-zero-iters", [*TRAIN, "--data", ADE, "--iters", "0", "--out", f"{T}/run"],
         ("--iters must be a positive",)),
    Case("train-negative-lr", [*TRAIN, "--data", ADE, "--lr", "-1", "--out", f"{T}/run"], ("--lr must be a positive",)),
    Case("train-zero-batch", [*TRAIN, "--data", ADE, "--batch-size", "0", "--out", f"{T}/run"],
         ("--batch-size must be",)),
    Case("train-iters-not-a-number", [*TRAIN, "--data", ADE, "--iters", "ten"], ("invalid int value",)),
    Case("train-model-typo", ["train", "--model", "segformr-b0", "--data", ADE, "--out", f"{T}/run"],
         ("did you mean", "segformer-b0")),
    Case("train-unknown-recipe", ["train", "--config", "segformer-b9-ade20k", "--data", ADE, "--out", f"{T}/run"],
         ("unknown recipe",)),
    Case("train-recipe-file-missing", ["train", "--config", f"{T}/nope.json", "--data", ADE], ("nope.json",)),
    Case("train-recipe-invalid-json", ["train", "--config", f"{W}/recipes/broken.json", "--data", ADE],
         ("broken.json", "not valid json")),
    Case("train-recipe-unknown-field", ["train", "--config", f"{W}/recipes/unknown_field.json", "--data", ADE],
         ("unknown_field.json", "learning_rate")),
    Case("train-recipe-not-an-object", ["train", "--config", f"{W}/recipes/list.json", "--data", ADE],
         ("list.json",)),
    Case("train-recipe-string-iters", ["train", "--config", f"{W}/recipes/s.json", "--data", ADE,
                                       "--out", f"{T}/run"], ("s.json", "iters")),
    Case("train-recipe-null-iters", ["train", "--config", f"{W}/recipes/n.json", "--data", ADE,
                                     "--out", f"{T}/run"], ("n.json", "iters")),
    Case("train-recipe-float-iters", ["train", "--config", f"{W}/recipes/f.json", "--data", ADE,
                                      "--out", f"{T}/run"], ("f.json", "iters")),
    Case("train-recipe-eval-every-0", ["train", "--config", f"{W}/recipes/e0.json", "--data", ADE,
                                       "--out", f"{T}/run"], ("eval_every",)),
    Case("train-device-misspelled", [*TRAIN[:-4], "--device", "cpus", "--data", ADE, "--out", f"{T}/run"],
         ("not a device",)),
    Case("train-device-cuda-absent", [*TRAIN[:-4], "--device", "cuda", "--data", ADE, "--out", f"{T}/run"],
         ("no cuda gpu",), marks=(NO_GPU,)),
    Case("train-classes-missing", [*TRAIN, "--data", ADE, "--classes", f"{T}/c.txt", "--out", f"{T}/run"],
         ("class list",)),
    Case("train-data-cache-user-folder", [*TRAIN, "--data", ADE, "--data-cache", f"{T}/cache", "--out", f"{T}/run"],
         ("did not make", "thesis.pdf"), setup=foreign_cache),
    Case("train-data-cache-is-a-file", [*TRAIN, "--data", ADE, "--data-cache", f"{T}/f", "--out", f"{T}/run"],
         ("is a file",), setup=a_file("f")),
    Case("train-out-is-a-file", [*TRAIN, "--data", ADE, "--out", f"{T}/f"], ("is a file",), setup=a_file("f")),
    Case("train-same-command-twice", [*TRAIN, "--data", ADE, "--out", f"{T}/run"], ("--resume", "--overwrite"),
         setup=copy_run),
    Case("train-resume-without-checkpoint", [*TRAIN, "--data", ADE, "--out", f"{T}/new", "--resume"],
         ("does not exist",)),
    Case("train-resume-other-seed", [*TRAIN, "--data", ADE, "--out", f"{T}/run", "--resume", "--seed", "1"],
         ("seed",), setup=copy_run),
    Case("train-second-process-same-out", [*TRAIN, "--data", ADE, "--out", f"{T}/run"], ("another segedu train",),
         setup=copy_run, fault="lock"),
    Case("train-pretrained-missing", [*TRAIN, "--data", ADE, "--pretrained", f"{T}/mit_b0.pth", "--out",
                                      f"{T}/run"], ("mit_b0.pth",)),
    # bench: the CLI checks --json before measuring
    Case("bench-nothing-to-measure", ["bench"], ("nothing to measure",)),
    Case("bench-json-is-a-folder", ["bench", "--model", "segformer-b0", "--json", T], ("is a folder",)),
    Case("bench-json-user-file", ["bench", "--model", "segformer-b0", "--json", f"{T}/results.json"],
         ("did not make",), setup=a_file("results.json")),
    Case("bench-json-under-a-file", ["bench", "--model", "segformer-b0", "--json", f"{T}/f/b.json"], ("is a file",),
         setup=a_file("f")),
    Case("bench-model-typo", ["bench", "--model", "segnext-xl"], ("did you mean",)),
    Case("bench-zero-steps", ["bench", "--model", "segformer-b0", "--steps", "0"], ("--steps must be a positive",)),
    # the rest
    Case("zoo-pattern-matches-nothing", ["zoo", "--pattern", "unet*"], ("no model matches", "unet*")),
    Case("no-command", [], ("required",)),
    Case("unknown-command", ["fit"], ("invalid choice",)),
]


def _fill(items, w: Path, tmp: Path) -> list[str]:
    return [a.replace("{w}", str(w)).replace("{tmp}", str(tmp)) for a in items]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input_ends_in_one_line_and_loses_nothing(case, world, tmp_path, monkeypatch, capsys):
    if case.setup is not None:
        case.setup(tmp_path, world) if case.setup is copy_run else case.setup(tmp_path)
    argv = _fill(case.argv, world, tmp_path)
    before = _checksums(world, tmp_path)
    lock = held_lock(tmp_path) if case.fault == "lock" else None
    if case.subprocess:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        done = subprocess.run([sys.executable, "-m", "segedu.cli", *argv], capture_output=True, text=True, env=env,
                              cwd=world if case.cwd else None, timeout=300)
        code, out, err = done.returncode, done.stdout, done.stderr
    else:
        if case.cwd:
            monkeypatch.chdir(world)
        if callable(case.fault):
            case.fault(monkeypatch)
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code
        finally:
            monkeypatch.undo()
        out, err = capsys.readouterr()
    if lock is not None:
        lock.close()
    assert code == case.code, err[-2000:]
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err[-2000:]
    for says in case.says:
        assert says.lower() in errors[0].lower(), errors[0]
    after = _checksums(world, tmp_path)
    assert {p: s for p, s in after.items() if p in before} == before  # nothing the user had changed or vanished


def test_the_table_is_large_and_unique():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


def test_debug_shows_the_traceback(monkeypatch):
    """--debug (before or after the command) or SEGEDU_DEBUG=1 lets the exception through, traceback and all."""
    argv = ["zoo", "--pattern", "unet*"]
    for debug_argv in (["--debug", *argv], [*argv, "--debug"]):
        with pytest.raises(ValueError, match="no model matches"):
            main(debug_argv)
    monkeypatch.setenv("SEGEDU_DEBUG", "1")
    with pytest.raises(ValueError, match="no model matches"):
        main(argv)
    monkeypatch.setenv("SEGEDU_DEBUG", "0")
    assert main(argv) == 2
