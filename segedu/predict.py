"""Predict label maps for image files: a trained or public model, the paper's test pipeline, PNG outputs.

For each input image ``NAME.ext`` three files are written to the output folder, all at the image's
original resolution:

* ``NAME_mask.png``: 8-bit single channel, the predicted class index k of every pixel
  (for ADE20K, PNG value k + 1 of the original annotation files);
* ``NAME_color.png``: the label map drawn with the palette;
* ``NAME_overlay.png``: the palette colours blended into the image.

The test pipeline is the one of the model's paper (architectures.md sections 1.3, 3.4, 4.4, 5.2):
keep-ratio resize to a short side (512, or 640 for SegFormer-B5), optionally to a multiple of 32,
normalise, infer in ``whole`` / ``slide`` / ``ms-flip`` mode, resize the scores back to the image.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torchvision.io import ImageReadMode, encode_png, write_file

from . import checkpoint as ckpt
from .data import ADE20K_CLASSES, test_transforms
from .data.ade20k import decode, quiet_codec_warnings
from .evaluate import MODES, infer
from .recipes import Recipe
from .registry import get_spec
from .utils import default_device
from .viz import colorize, overlay, palette_for
from .weights import from_pretrained


@dataclass(frozen=True)
class TestSettings:
    """How a model is tested: the resize before the model and the inference mode."""

    __test__ = False  # not a pytest test class
    short_side: int | None = 512        # keep-ratio resize target; None keeps the stored size
    size_divisor: int | None = 32       # then round both sides up to a multiple (SegFormer, SegNeXt)
    mode: str = "whole"                 # whole | slide | ms-flip (segedu.evaluate)
    crop: int | None = None             # sliding-window crop and stride
    stride: int | None = None
    ms_min_short_side: int | None = None  # ms-flip: smallest short side of a scaled image (SETR: the crop)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown test mode {self.mode!r}; expected one of {MODES}")
        if self.mode == "slide" and (self.crop is None or self.stride is None):
            raise ValueError("test mode 'slide' needs a crop and a stride (--slide-crop / --slide-stride)")

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> "TestSettings":
        """The recipe's test fields; SETR recipes also keep ms-flip scales at least a slide crop tall."""
        setr = get_spec(recipe.model).family == "setr"
        return cls(recipe.test_short_side, recipe.test_size_divisor, recipe.test_mode,
                   recipe.slide_crop, recipe.slide_stride, recipe.slide_crop if setr else None)

    @classmethod
    def for_paper(cls, name: str) -> "TestSettings":
        """The ADE20K test setting of model ``name``'s paper (sections 1.3, 2.4, 3.4, 4.4, 5.2): a keep-ratio
        resize to the crop size as short side; SETR then slides a crop-size window with stride 2/3 crop
        (512 / 341) and keeps every ms-flip scale at least a crop tall; SegFormer and SegNeXt round the
        size up to a multiple of 32 and run the whole image; SSformer runs the whole image as resized."""
        spec = get_spec(name)
        if spec.family == "setr":
            return cls(spec.crop_size, None, "slide", spec.crop_size, spec.crop_size * 2 // 3, spec.crop_size)
        return cls(spec.crop_size, 32 if spec.family in ("segformer", "segnext") else None, "whole")

    def with_mode(self, mode: str | None = None, crop: int | None = None, stride: int | None = None) -> "TestSettings":
        """A copy with the mode and the sliding window replaced where given."""
        return replace(self, mode=mode or self.mode, crop=crop or self.crop, stride=stride or self.stride)


def load_model(checkpoint: str | Path | None = None, name: str | None = None, weights: str | Path | None = None,
               source: str = "transformers", device=None) -> tuple[torch.nn.Module, TestSettings, dict]:
    """A model in eval mode on ``device``, its test settings and its training facts.

    Either ``checkpoint``, a segedu training checkpoint (its recipe gives the model, the class count
    and the test settings), or ``name`` + ``weights``, a public checkpoint read by
    :func:`segedu.weights.from_pretrained` from a file, folder or hub id (``source``: ``transformers``,
    ``official``, ``mmseg`` ...; test settings of the paper). The dict holds ``num_classes`` and
    ``reduce_zero_label``.
    """
    device = torch.device(device) if device is not None else default_device()
    if checkpoint is not None:
        state = ckpt.load(checkpoint)
        recipe = Recipe.from_dict(state["recipe"])
        model = recipe.build_model()
        model.load_state_dict(state["model"])
        facts = {"num_classes": recipe.num_classes, "reduce_zero_label": recipe.reduce_zero_label}
        return model.to(device).eval(), TestSettings.from_recipe(recipe), facts
    if name is None or weights is None:
        raise ValueError("give a training --checkpoint, or --model NAME with --weights PATH_OR_HUB_ID")
    model = from_pretrained(name, weights, source)
    facts = {"num_classes": model.num_classes, "reduce_zero_label": True}  # public checkpoints are ADE-style
    return model.to(device).eval(), TestSettings.for_paper(name), facts


@torch.no_grad()
def predict_mask(model: torch.nn.Module, image: torch.Tensor, settings: TestSettings, num_classes: int,
                 amp: bool = False) -> torch.Tensor:
    """Class indices int64 ``[H, W]`` for one uint8 RGB image ``[3, H, W]``, at the image's resolution."""
    device = next(model.parameters()).device
    pipeline = test_transforms(settings.short_side, settings.size_divisor)
    x, _ = pipeline(image, torch.zeros(image.shape[1:], dtype=torch.int64))  # [3, h, w] normalised
    scores = infer(model, x[None].to(device), num_classes, tuple(image.shape[1:]), settings.mode,
                   settings.crop, settings.stride, amp=amp, min_short_side=settings.ms_min_short_side)  # [1, K, H, W]
    return scores.argmax(1)[0].cpu()


def _write_png(tensor: torch.Tensor, path: Path) -> Path:
    with quiet_codec_warnings():
        write_file(str(path), encode_png(tensor.contiguous()))
    return path


def predict_files(model: torch.nn.Module, paths, out_dir: str | Path, settings: TestSettings, num_classes: int,
                  palette=None, amp: bool = False, alpha: float = 0.5) -> list[dict]:
    """Predict every image file in ``paths`` and write its mask, colour mask and overlay to ``out_dir``.

    Missing files and clashing names are reported before any work starts; an unreadable image raises
    an error naming it. Returns one record per image: ``{"image", "mask", "color", "overlay", "classes"}``
    (``classes``: the predicted class indices, ascending).
    """
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"image(s) not found: {', '.join(missing)}")
    stems = [p.stem for p in paths]
    clashes = sorted({s for s in stems if stems.count(s) > 1})
    if clashes:
        raise ValueError(f"several input images are named {clashes}: their outputs would overwrite each other")
    if num_classes > 255:
        raise ValueError(f"{num_classes} classes do not fit the 8-bit mask PNG")
    palette = palette or palette_for(num_classes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for path in paths:
        image = decode(path, ImageReadMode.RGB)  # [3, H, W] uint8; names the file if corrupt
        mask = predict_mask(model, image, settings, num_classes, amp)  # [H, W]
        records.append({
            "image": path,
            "mask": _write_png(mask.to(torch.uint8)[None], out_dir / f"{path.stem}_mask.png"),
            "color": _write_png(colorize(mask, palette).permute(2, 0, 1), out_dir / f"{path.stem}_color.png"),
            "overlay": _write_png(overlay(image, mask, palette, alpha), out_dir / f"{path.stem}_overlay.png"),
            "classes": mask.unique().tolist(),
        })
    return records


def describe(record: dict, classes=ADE20K_CLASSES) -> str:
    """One line per image: where the outputs went and the classes found."""
    names = ", ".join(classes[c] if c < len(classes) else str(c) for c in record["classes"])
    return f"{record['image']} -> {record['mask']}, {record['color'].name}, {record['overlay'].name} ({names})"
