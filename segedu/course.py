"""The course's four small trained models, one per family, trained on one budget and cached.

Notebooks that need a *trained* network (rather than random weights) call :func:`trained`::

    from segedu.course import trained
    model = trained("segformer")          # segformer | segnext | ssformer | setr

The first call trains the model with :func:`segedu.train.train` on the synthetic set (``data/synthetic``,
generated on first use) and writes the weights to ``data/course/<family>-<digest>.pt`` (atomically, git-ignored);
every later call, in this notebook or another, reads that file back with ``weights_only=True``. The digest
covers the recipe and the seed, so changing the budget trains afresh instead of loading stale weights.

One budget for every family (:data:`BUDGET`): the same iterations, batch, crop, optimiser, schedule and data
stream (the samples a step sees depend only on the step: segedu.train's seeded sampler). SegFormer-B0 and
SegNeXt-T are the published variants; Swin-T (28M parameters in its encoder) and SETR's ViT-B (86M) would not
train in the time budget, so :data:`FAMILIES` gives them reduced depth and width as ``model_kwargs`` (the same
code with fewer, narrower layers: **not** the published models; the configurations of notebook 07).

The head predicts 22 classes: ADE20K's first 22, which hold the synthetic set's ten (the largest id is water,
21). Evaluation restricts the scores to those ten (:func:`predict`), since no other label exists in the data.

Also here: the image corruptions of the robustness experiment (:data:`CORRUPTIONS`), written after the
definitions of ImageNet-C (Hendrycks & Dietterich, ICLR 2019) as packaged in bethgelab/imagecorruptions
``imagecorruptions/corruptions.py``, the code behind the Cityscapes-C style benchmarks.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint as ckpt
from .data import SYNTHETIC_CLASSES, ensure_synthetic
from .evaluate import predict_logits
from .recipes import RECIPES, Recipe

_REPO = Path(__file__).resolve().parent.parent
DATA_ROOT = _REPO / "data" / "synthetic"
CACHE_DIR = _REPO / "data" / "course"
FORMAT = 1  # bump to invalidate every cached model (a change in what the cache file holds)

# family -> (registered model, build_model overrides, label for tables and plots)
FAMILIES: dict[str, tuple[str, dict, str]] = {
    "segformer": ("segformer-b0", {}, "SegFormer-B0"),
    "segnext": ("segnext-t", {}, "SegNeXt-T"),
    "ssformer": ("ssformer-swin-t", dict(embed_dim=48, depths=(2, 2, 2, 2), num_heads=(2, 4, 8, 16), window_size=4),
                 "SSformer (Swin, reduced)"),
    "setr": ("setr-naive-base", dict(embed_dim=256, depth=4, num_heads=4, patch_size=8, img_size=64, in_layer=4,
                                     aux_layers=(2, 3, 4)),
             "SETR-Naive (ViT, reduced)"),
}

NUM_CLASSES = 22                                       # ADE20K indices 0..21 hold the synthetic set's ten
CLASS_IDS = tuple(v - 1 for v in SYNTHETIC_CLASSES)    # the ten ADE20K indices (after reduce_zero_label)

# The one budget (notebook 07's): 50 AdamW steps of 8 crops of 64x64 from images rescaled to a short side of
# 54-108 pixels, lr 1e-3 (from scratch), 5 warm-up iterations, poly decay; the whole-image test at short side 72.
BUDGET = dict(iters=50, batch_size=8, crop_size=64, lr=1e-3, weight_decay=0.01, head_lr_mult=1.0, warmup_iters=5,
              scale=(288, 72), ratio_range=(0.75, 1.5), test_short_side=72, test_size_divisor=None)


def _family(name: str) -> str:
    """Accept the family key or its registered model name (``"segformer"`` or ``"segformer-b0"``)."""
    if name in FAMILIES:
        return name
    for key, (model, _, _) in FAMILIES.items():
        if name == model:
            return key
    raise ValueError(f"unknown course model {name!r}; choose one of {', '.join(FAMILIES)}")


def recipe(name: str, iters: int | None = None) -> Recipe:
    """The synthetic recipe with this family's model and the common :data:`BUDGET` (``iters`` overrides)."""
    model, kwargs, _ = FAMILIES[_family(name)]
    budget = {**BUDGET, "iters": iters or BUDGET["iters"]}
    budget["warmup_iters"] = min(budget["warmup_iters"], budget["iters"])
    return replace(RECIPES["synthetic"], model=model, model_kwargs=dict(kwargs), num_classes=NUM_CLASSES,
                   eval_every=budget["iters"], **budget)


def cache_path(name: str, iters: int | None = None, seed: int = 0, cache_dir: str | Path | None = None) -> Path:
    """Where :func:`trained` keeps this model: the file name carries a digest of the recipe and the seed."""
    r = recipe(name, iters)
    key = json.dumps({"format": FORMAT, "recipe": r.to_dict(), "seed": seed}, sort_keys=True, default=list)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(cache_dir or CACHE_DIR) / f"{_family(name)}-{digest}.pt"


@contextlib.contextmanager
def _rng_untouched():
    """Training and model construction draw random numbers; the caller's RNG streams must not depend on
    whether the model came from the cache, so every global RNG is restored afterwards."""
    state = ckpt.rng_state()
    try:
        yield
    finally:
        ckpt.set_rng_state(state)


def _train(name: str, iters: int | None, seed: int, data_root: Path, path: Path) -> dict:
    from .logs import read_log
    from .train import train

    r = recipe(name, iters)
    with tempfile.TemporaryDirectory(prefix="segedu-course-") as out, contextlib.redirect_stdout(io.StringIO()):
        result = train(r, data_root, out, seed=seed, progress=False, device="cpu")
        state = ckpt.load(Path(out) / "checkpoint.pt")
        steps, _ = read_log(Path(out) / "metrics.jsonl")
    record = {
        "model": state["model"], "recipe": r.to_dict(), "seed": seed, "format": FORMAT, "family": _family(name),
        "losses": [[s["step"], s["loss"]] for s in steps],                 # every 10 iterations
        "val": {k: result.metrics[k] for k in ("mIoU", "mAcc", "aAcc")},   # segedu.evaluate, 22-way argmax
    }
    if path.parent == CACHE_DIR and not (path.parent / ".gitignore").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        note = "# trained course models (segedu.course): generated, never committed\n*\n"
        (path.parent / ".gitignore").write_text(note)
    ckpt.save_atomic(record, path)
    return record


def _load(path: Path, name: str, iters: int | None, seed: int) -> dict | None:
    """The cached record if it exists and was written for exactly this recipe and seed; else None."""
    if not path.is_file():
        return None
    try:
        record = ckpt.load(path)
    except ValueError:  # a foreign or damaged file: train again and replace it
        return None
    same = (record.get("format") == FORMAT and record.get("seed") == seed
            and Recipe.from_dict(dict(record["recipe"])) == recipe(name, iters))
    return record if same else None


def record(name: str, iters: int | None = None, seed: int = 0, data_root: str | Path | None = None,
           cache_dir: str | Path | None = None) -> dict:
    """The cache record of a course model (trained first if missing): ``model`` (state dict), ``recipe``,
    ``seed``, ``losses`` (``[step, loss]`` every 10 iterations) and ``val`` (segedu.evaluate's mIoU, mAcc, aAcc
    on the 100 validation images, with the 22-way argmax)."""
    path = cache_path(name, iters, seed, cache_dir)
    found = _load(path, name, iters, seed)
    if found is not None:
        return found
    root = Path(data_root) if data_root is not None else ensure_synthetic(DATA_ROOT)
    with _rng_untouched():
        return _train(name, iters, seed, root, path)


def trained(name: str, iters: int | None = None, seed: int = 0, data_root: str | Path | None = None,
            cache_dir: str | Path | None = None) -> nn.Module:
    """The course model of family ``name`` (``segformer``, ``segnext``, ``ssformer``, ``setr``), trained on the
    synthetic set on the common :data:`BUDGET`, in eval mode on the CPU.

    Trains on the first call (about 5-15 s per family on 2 idle CPU cores) and caches the weights under
    ``data/course/``; later calls load them. ``iters`` shortens the budget (tests); ``data_root`` defaults to
    ``data/synthetic`` (generated if missing); ``cache_dir`` to ``data/course``. The caller's random number
    streams are left as they were, trained or loaded.
    """
    rec = record(name, iters, seed, data_root, cache_dir)
    with _rng_untouched():
        model = Recipe.from_dict(dict(rec["recipe"])).build_model()
    model.load_state_dict(rec["model"])
    return model.eval()


# ------------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """ADE20K class indices ``[B, *out_size]`` for a normalised batch, the argmax taken over the synthetic set's
    ten classes only (:data:`CLASS_IDS`)."""
    logits = predict_logits(model.eval(), images, out_size)             # [B, 22, H, W]
    ids = torch.tensor(CLASS_IDS)
    return ids[logits[:, ids].argmax(1)]


# ----------------------------------------------------------------------------------------------- corruptions
# Severities 1..5 of each corruption: the parameter lists of imagecorruptions/corruptions.py (ImageNet-C).
SEVERITY = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),        # std of the noise on the [0, 1] scale
    "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),  # disk radius, anti-alias sigma
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),                 # added to V of HSV
    "jpeg_compression": (25, 18, 15, 10, 7),                  # JPEG quality
}


def _as_float(images: torch.Tensor) -> torch.Tensor:
    if images.dtype != torch.uint8:
        raise TypeError(f"corruptions take uint8 images [B, 3, H, W] or [3, H, W], got {images.dtype}")
    return images.float() / 255


def _as_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def gaussian_noise(images: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """``clip(x + N(0, std^2), 0, 1)`` on the [0, 1] scale, back to uint8 (rounded)."""
    x = _as_float(images)
    return _as_uint8(x + std * torch.randn(x.shape, generator=generator))


def disk_kernel(radius: float, alias_sigma: float) -> torch.Tensor:
    """A normalised disk of ``radius`` pixels (on a grid of at least 17 x 17), smoothed by a small Gaussian of
    ``alias_sigma`` against aliasing: the point-spread function of an out-of-focus lens."""
    half = max(8, math.ceil(radius))
    grid = torch.arange(-half, half + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).double()
    disk /= disk.sum()
    k = 1 if radius <= 8 else 2                                    # 3x3 or 5x5 smoothing
    t = torch.arange(-k, k + 1, dtype=torch.float64)
    g = torch.exp(-t ** 2 / (2 * alias_sigma ** 2))
    g /= g.sum()
    smooth = F.conv2d(disk[None, None], (g[:, None] * g[None, :])[None, None], padding=k)[0, 0]
    return (smooth / smooth.sum()).float()


def defocus_blur(images: torch.Tensor, radius: float, alias_sigma: float) -> torch.Tensor:
    """Convolve every channel with :func:`disk_kernel` (borders reflected)."""
    x = _as_float(images)
    batch = x if x.dim() == 4 else x[None]
    kernel = disk_kernel(radius, alias_sigma)
    pad = kernel.shape[-1] // 2
    c = batch.shape[1]
    padded = F.pad(batch, (pad,) * 4, mode="reflect") if pad < min(batch.shape[-2:]) else \
        F.pad(batch, (pad,) * 4, mode="replicate")
    out = F.conv2d(padded, kernel[None, None].expand(c, 1, -1, -1).contiguous(), groups=c)
    return _as_uint8(out if x.dim() == 4 else out[0])


def brightness(images: torch.Tensor, delta: float) -> torch.Tensor:
    """Add ``delta`` to the value V = max(R, G, B) of HSV, hue and saturation kept. Every RGB channel is V
    times a function of hue and saturation, so that is a scaling of RGB by V'/V (black becomes grey V')."""
    x = _as_float(images)
    v = x.amax(dim=-3, keepdim=True)
    v_new = (v + delta).clamp(max=1)
    out = torch.where(v > 0, x * v_new / v.clamp(min=1e-12), v_new.expand_as(x))
    return _as_uint8(out)


def jpeg_compression(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode and decode with libjpeg at ``quality`` (torchvision.io)."""
    from torchvision.io import decode_jpeg, encode_jpeg

    if images.dtype != torch.uint8:
        raise TypeError(f"corruptions take uint8 images, got {images.dtype}")
    batch = images if images.dim() == 4 else images[None]
    with warnings.catch_warnings():  # torchvision 0.29 announces that its codecs move to torchcodec
        warnings.simplefilter("ignore", DeprecationWarning)
        out = torch.stack([decode_jpeg(encode_jpeg(im.contiguous(), quality=quality)) for im in batch])
    return out if images.dim() == 4 else out[0]


def corrupt(images: torch.Tensor, kind: str, severity: int, seed: int = 0) -> torch.Tensor:
    """``images`` (uint8 ``[B, 3, H, W]`` or ``[3, H, W]``) under corruption ``kind`` at ``severity`` 1..5;
    severity 0 returns them unchanged. Random corruptions draw from a generator seeded by ``seed``."""
    if kind not in SEVERITY:
        raise ValueError(f"unknown corruption {kind!r}; choose one of {', '.join(SEVERITY)}")
    if severity == 0:
        return images.clone()
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be 0..5, got {severity}")
    c = SEVERITY[kind][severity - 1]
    if kind == "gaussian_noise":
        return gaussian_noise(images, c, torch.Generator().manual_seed(seed))
    if kind == "defocus_blur":
        return defocus_blur(images, *c)
    if kind == "brightness":
        return brightness(images, c)
    return jpeg_compression(images, c)


CORRUPTIONS = tuple(SEVERITY)

__all__ = ["BUDGET", "CACHE_DIR", "CLASS_IDS", "CORRUPTIONS", "DATA_ROOT", "FAMILIES", "NUM_CLASSES", "SEVERITY",
           "brightness", "cache_path", "corrupt", "defocus_blur", "disk_kernel", "gaussian_noise", "jpeg_compression",
           "predict", "recipe", "record", "trained"]
