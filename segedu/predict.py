"""Predict label maps for image files: a trained or public model, the paper's test pipeline, PNG outputs.

For each input image ``NAME.ext`` three files are written to the output folder, all at the image's
original resolution:

* ``NAME_mask.png``: 8-bit single channel, the predicted class index k of every pixel
  (for ADE20K, PNG value k + 1 of the original annotation files);
* ``NAME_color.png``: the label map drawn with the palette;
* ``NAME_overlay.png``: the palette colours blended into the image.

The test pipeline is the one of the model's recipe in :mod:`segedu.recipes` (the papers' ADE20K setting,
docs/architectures.md sections 1.3, 2.4, 3.4, 4.4, 5.2): keep-ratio resize to a short side (512, or 640
for SegFormer-B5), optionally to a multiple of 32, normalise, infer in ``whole`` / ``slide`` / ``ms-flip``
mode, resize the scores back to the image. Images are read as displayed (EXIF orientation applied).

The outputs carry segedu's marker (:func:`segedu.data.io.write_png`): ``predict`` replaces its own earlier
outputs, and refuses, before any work, to write over an input or over a file it did not make.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import json

import torch

from . import checkpoint as ckpt
from .data import ADE20K_CLASSES, test_transforms
from .data.io import check_output_folder, check_replaceable, read_image, write_png
from .evaluate import MODES, infer
from .recipes import RECIPES, Recipe
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
        """The ADE20K test setting of model ``name``: that of its recipe ``NAME-ade20k`` in :mod:`segedu.recipes`,
        the one source of test settings (so ``eval --weights`` and ``eval --checkpoint`` test alike)."""
        recipe = RECIPES.get(f"{name}-ade20k")
        if recipe is None:
            get_spec(name)  # an unknown model: its error names the known ones
            raise ValueError(f"model {name!r} has no ADE20K recipe to take a test setting from; give --mode, "
                             "or evaluate a training --checkpoint")
        return cls.from_recipe(recipe)

    def with_mode(self, mode: str | None = None, crop: int | None = None, stride: int | None = None) -> "TestSettings":
        """A copy with the mode and the sliding window replaced where given (``None`` keeps the field)."""
        return replace(self, mode=self.mode if mode is None else mode, crop=self.crop if crop is None else crop,
                       stride=self.stride if stride is None else stride)


def load_model(checkpoint: str | Path | None = None, name: str | None = None, weights: str | Path | None = None,
               source: str = "transformers", device=None) -> tuple[torch.nn.Module, TestSettings, dict]:
    """A model in eval mode on ``device``, its test settings and its training facts.

    Either ``checkpoint``, a segedu training checkpoint (its recipe gives the model, the class count
    and the test settings), or ``name`` + ``weights``, a public checkpoint read by
    :func:`segedu.weights.from_pretrained` from a file, folder or hub id (``source``: ``transformers``,
    ``official``, ``mmseg`` ...; test settings of its ADE20K recipe). The dict holds ``num_classes``,
    ``reduce_zero_label`` and ``classes`` (the class names, or ``None`` when unknown): a transformers
    checkpoint's ``config.json`` (``id2label``) gives them, and ADE20K's conventions apply only to a
    150-class model.
    """
    device = torch.device(device) if device is not None else default_device()
    if checkpoint is not None:
        state = ckpt.load(checkpoint)
        if not isinstance(state, dict) or not {"recipe", "model"} <= set(state):
            raise ValueError(f"{checkpoint} is not a segedu training checkpoint (it has no recipe and model; a bare "
                             "state_dict?): for public weights give --model NAME --weights PATH instead")
        recipe = Recipe.from_dict(state["recipe"])
        model = recipe.build_model()
        model.load_state_dict(state["model"])
        facts = {"num_classes": recipe.num_classes, "reduce_zero_label": recipe.reduce_zero_label, "classes": None}
        return model.to(device).eval(), TestSettings.from_recipe(recipe), facts
    if name is None or weights is None:
        raise ValueError("give a training --checkpoint, or --model NAME with --weights PATH_OR_HUB_ID")
    settings = TestSettings.for_paper(name)
    model = from_pretrained(name, weights, source)
    classes = config_classes(weights) if source == "transformers" else None
    if classes is not None and len(classes) != model.num_classes:
        raise ValueError(f"{weights}: config.json names {len(classes)} classes but the weights predict "
                         f"{model.num_classes}")
    ade = model.num_classes == len(ADE20K_CLASSES)
    facts = {"num_classes": model.num_classes, "reduce_zero_label": ade, "classes": classes}
    return model.to(device).eval(), settings, facts


def config_classes(weights: str | Path) -> tuple[str, ...] | None:
    """Class names from the ``id2label`` of a transformers checkpoint's ``config.json`` (a folder, a file
    beside it, or a hub id already downloaded by ``from_pretrained``); ``None`` without one."""
    path = Path(weights)
    config = path / "config.json" if path.is_dir() else path.with_name("config.json")
    if not path.exists():
        try:
            from huggingface_hub import hf_hub_download
            config = Path(hf_hub_download(str(weights), "config.json"))
        except Exception:  # no config.json in the repository, or offline: the class names stay unknown
            return None
    if not config.is_file():
        return None
    try:
        id2label = json.loads(config.read_text()).get("id2label") or {}
        return tuple(id2label[str(i)] if str(i) in id2label else id2label[i] for i in range(len(id2label))) or None
    except (json.JSONDecodeError, KeyError, AttributeError) as err:
        raise ValueError(f"{config}: id2label is not a map of 0..K-1 to class names ({err})") from err


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


MADE_BY = "segedu predict"  # the marker value of predict's outputs


def output_paths(paths, out_dir: str | Path) -> list[dict]:
    """``{"mask", "color", "overlay"}`` output paths of every input image."""
    out_dir = Path(out_dir)
    return [{kind: out_dir / f"{Path(p).stem}_{kind}.png" for kind in ("mask", "color", "overlay")} for p in paths]


def predict_files(model: torch.nn.Module, paths, out_dir: str | Path, settings: TestSettings, num_classes: int,
                  palette=None, amp: bool = False, alpha: float = 0.5) -> list[dict]:
    """Predict every image file in ``paths`` and write its mask, colour mask and overlay to ``out_dir``.

    Missing files, clashing names, an output folder that cannot be written, and outputs that would
    replace an input or a file segedu did not make are reported before any work starts; an unreadable
    image raises an error naming it. Returns one record per image: ``{"image", "mask", "color",
    "overlay", "classes"}`` (``classes``: the predicted class indices, ascending).
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
    out_dir = check_output_folder(out_dir, "--out")
    outputs = output_paths(paths, out_dir)
    check_replaceable([p for o in outputs for p in o.values()], inputs=paths)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for path, out in zip(paths, outputs):
        image = read_image(path)  # [3, H, W] uint8 as displayed; names the file if corrupt
        mask = predict_mask(model, image, settings, num_classes, amp)  # [H, W]
        records.append({
            "image": path,
            "mask": write_png(mask.to(torch.uint8)[None], out["mask"], MADE_BY),
            "color": write_png(colorize(mask, palette).permute(2, 0, 1), out["color"], MADE_BY),
            "overlay": write_png(overlay(image, mask, palette, alpha), out["overlay"], MADE_BY),
            "classes": mask.unique().tolist(),
        })
    return records


def describe(record: dict, classes=ADE20K_CLASSES) -> str:
    """One line per image: where the outputs went and the classes found."""
    names = ", ".join(classes[c] if c < len(classes) else str(c) for c in record["classes"])
    return f"{record['image']} -> {record['mask']}, {record['color'].name}, {record['overlay'].name} ({names})"
