"""The mmsegmentation ADE20K data pipeline, written with torchvision.transforms.v2.

Train (mmseg ``configs/_base_/datasets/ade20k.py``, used unchanged by SETR,
SegFormer, SegNeXt and SSformer):

1. RandomResize, scale (2048, 512), ratio in [0.5, 2.0], keeping the aspect ratio
2. RandomCrop 512 x 512 with ``cat_max_ratio=0.75``
3. RandomFlip, horizontal, p = 0.5
4. PhotoMetricDistortion (image only)
5. Normalize with the ImageNet mean/std on the 0-255 scale
6. Pad to the crop size: image with 0, mask with 255 (ignored by the loss)

Test: keep-ratio resize to short side 512 (long side at most 2048), optionally
to a multiple of 32 (SegFormer and SegNeXt configs add this), then Normalize.
At test time the mask is NOT resized: predictions are resized back to the
original image size and scored against the original labels.

Image and mask travel together as ``tv_tensors.Image`` and ``tv_tensors.Mask``,
so every geometric step uses the same random numbers for both (bilinear for
the image, nearest for the mask) and photometric steps skip the mask.
All randomness comes from torch's global RNG, which the training loop and
DataLoader workers seed. The custom steps use the public ``make_params`` /
``transform`` API of ``v2.Transform`` (torchvision >= 0.21).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from .ade20k import IGNORE_INDEX

# ImageNet statistics on the 0-255 scale, RGB (= (0.485, 0.456, 0.406) * 255 ...).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _find(flat_inputs: list[Any], kind: type) -> Tensor:
    return next(x for x in flat_inputs if isinstance(x, kind))


def keep_ratio_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """Output (H, W) of mmcv's keep-ratio rescale to ``scale = (long, short)``.

    The factor is the largest that keeps the long side <= max(scale) and the
    short side <= min(scale): min(long_target / long, short_target / short);
    sizes are rounded half up. E.g. 683 x 512 -> 683 x 512 for (2048, 512).
    """
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


class RandomResize(v2.Transform):
    """mmseg ``RandomResize(scale, ratio_range, keep_ratio=True)``.

    Draws r ~ U(ratio_range), sets the target to (int(scale[0] r), int(scale[1] r))
    and rescales with :func:`keep_ratio_size`. Image: bilinear with
    antialiasing; mask: nearest (labels must never be blended).
    """

    def __init__(self, scale: tuple[int, int] = (2048, 512), ratio_range: tuple[float, float] = (0.5, 2.0)):
        super().__init__()
        self.scale, self.ratio_range = scale, ratio_range

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = F.get_size(_find(flat_inputs, tv_tensors.Image))
        low, high = self.ratio_range
        ratio = low + (high - low) * torch.rand(()).item()
        target = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        return {"size": list(keep_ratio_size(height, width, target))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return F.resize(inpt, params["size"], interpolation=InterpolationMode.NEAREST)
        return F.resize(inpt, params["size"], interpolation=InterpolationMode.BILINEAR, antialias=True)


class RandomCropCatMax(v2.Transform):
    """mmseg ``RandomCrop(crop_size, cat_max_ratio, ignore_index)``.

    Picks a random window; while the largest class (255 not counted) covers
    ``cat_max_ratio`` or more of it, or only one class is present, draws a
    new window, at most 10 times (the last draw is kept unchecked, as in
    mmseg). An image smaller than the crop is cropped to what exists; the
    Pad step fills the rest later.
    """

    def __init__(self, size: int | tuple[int, int], cat_max_ratio: float = 0.75, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.size, self.cat_max_ratio, self.ignore_index = _pair(size), cat_max_ratio, ignore_index

    def _accept(self, crop: Tensor) -> bool:
        labels, counts = torch.unique(crop, return_counts=True)
        counts = counts[labels != self.ignore_index]
        return counts.numel() > 1 and counts.max().item() / counts.sum().item() < self.cat_max_ratio

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        mask = _find(flat_inputs, tv_tensors.Mask)  # [H, W]
        height, width = mask.shape[-2:]
        crop_h, crop_w = min(self.size[0], height), min(self.size[1], width)

        def draw() -> tuple[int, int]:
            top = int(torch.randint(0, height - crop_h + 1, ()))
            left = int(torch.randint(0, width - crop_w + 1, ()))
            return top, left

        top, left = draw()
        if self.cat_max_ratio < 1:
            for _ in range(10):
                if self._accept(mask[..., top : top + crop_h, left : left + crop_w]):
                    break
                top, left = draw()
        return {"top": top, "left": left, "height": crop_h, "width": crop_w}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return F.crop(inpt, **params)


class PhotoMetricDistortion(v2.Transform):
    """mmseg ``PhotoMetricDistortion`` on a uint8 RGB image; the mask passes through.

    In order, each step with probability 0.5: brightness + U(-32, 32);
    contrast x U(0.5, 1.5) (mmseg's "contrast" is a plain multiplication),
    done either first or last at random; saturation x U(0.5, 1.5) in HSV;
    hue shifted by an integer in [-18, 18] OpenCV units (OpenCV hue runs
    0..180, so 18 units = 1/10 of the colour circle). Results are clipped to
    0..255 and truncated to uint8 after every step, as mmseg does.
    """

    def __init__(
        self,
        brightness_delta: float = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
    ):
        super().__init__()
        self.brightness_delta, self.hue_delta = brightness_delta, hue_delta
        self.contrast_range, self.saturation_range = contrast_range, saturation_range

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        def coin() -> bool:
            return bool(torch.rand(()) < 0.5)

        def uniform(low: float, high: float) -> float:
            return low + (high - low) * torch.rand(()).item()

        d = self.brightness_delta
        return {
            "brightness": uniform(-d, d) if coin() else None,
            "contrast_first": coin(),
            "contrast": uniform(*self.contrast_range) if coin() else None,
            "saturation": uniform(*self.saturation_range) if coin() else None,
            "hue": int(torch.randint(-self.hue_delta, self.hue_delta + 1, ())) if coin() else None,
        }

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.Image):
            return inpt
        img = inpt.as_subclass(Tensor)  # [3, H, W] uint8
        if params["brightness"] is not None:
            img = _to_uint8(img.float() + params["brightness"])
        if params["contrast_first"] and params["contrast"] is not None:
            img = _to_uint8(img.float() * params["contrast"])
        if params["saturation"] is not None:
            img = _scale_saturation(img, params["saturation"])
        if params["hue"] is not None:
            img = F.adjust_hue(img, params["hue"] / 180)
        if not params["contrast_first"] and params["contrast"] is not None:
            img = _to_uint8(img.float() * params["contrast"])
        return tv_tensors.wrap(img, like=inpt)


def _to_uint8(img: Tensor) -> Tensor:
    return img.clamp(0, 255).to(torch.uint8)  # truncates like numpy's astype


def _scale_saturation(img: Tensor, alpha: float) -> Tensor:
    """Multiply HSV saturation by ``alpha`` (clipped at 1), keeping hue and value.

    With V = max(r, g, b) and m = min(r, g, b), every channel is
    c = V - S V t(hue), so scaling S scales the distance V - c. The scale is
    capped at V / (V - m), where the smallest channel reaches 0 (S = 1).
    """
    x = img.float()
    value, low = x.max(dim=0, keepdim=True).values, x.min(dim=0, keepdim=True).values
    cap = value / (value - low).clamp_min(1e-6)
    return _to_uint8(value - torch.clamp(cap, max=alpha) * (value - x))


class PadTo(v2.Transform):
    """Pad bottom/right up to ``size``: image with ``fill``, mask with ``mask_fill``."""

    def __init__(self, size: int | tuple[int, int], fill: float = 0.0, mask_fill: int = IGNORE_INDEX):
        super().__init__()
        self.size, self.fill, self.mask_fill = _pair(size), fill, mask_fill

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = F.get_size(_find(flat_inputs, tv_tensors.Image))
        return {"padding": [0, 0, max(self.size[1] - width, 0), max(self.size[0] - height, 0)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        fill = self.mask_fill if isinstance(inpt, tv_tensors.Mask) else self.fill
        return F.pad(inpt, params["padding"], fill=fill)


class KeepRatioResize(v2.Transform):
    """Deterministic keep-ratio resize of the image only (mmseg test ``Resize``
    with ``keep_ratio=True``, then ``ResizeToMultiple`` if ``size_divisor``).

    ``ResizeToMultiple`` rounds each side UP to a multiple of the divisor,
    slightly changing the aspect ratio. The mask is returned unchanged.
    """

    def __init__(self, scale: tuple[int, int] = (2048, 512), size_divisor: int | None = None):
        super().__init__()
        self.scale, self.size_divisor = scale, size_divisor

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = F.get_size(_find(flat_inputs, tv_tensors.Image))
        size = keep_ratio_size(height, width, self.scale)
        if self.size_divisor:
            size = tuple(math.ceil(s / self.size_divisor) * self.size_divisor for s in size)
        return {"size": list(size)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return inpt
        return F.resize(inpt, params["size"], interpolation=InterpolationMode.BILINEAR, antialias=True)


def _normalize() -> list[v2.Transform]:
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=False),  # keep 0-255
        v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
    ]


class SegPipeline:
    """Run v2 transforms on an ``(image, mask)`` pair of plain tensors.

    Input: image uint8 [3, H, W], mask int64 [H, W]. Output: image float32
    [3, H', W'], mask int64 [H'', W''] as plain tensors (ready for a DataLoader).
    """

    def __init__(self, transforms: list[v2.Transform]) -> None:
        self.transforms = v2.Compose(transforms)

    def __call__(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        image, mask = self.transforms(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return image.as_subclass(Tensor), mask.as_subclass(Tensor)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transforms})"


def train_transforms(
    crop_size: int | tuple[int, int] = 512,
    scale: tuple[int, int] = (2048, 512),
    ratio_range: tuple[float, float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    photometric: bool = True,
) -> SegPipeline:
    """The mmseg ADE20K training pipeline (see the module docstring).

    Output image float32 [3, crop_h, crop_w] normalised, mask int64
    [crop_h, crop_w] with 255 in the padding. ``photometric=False`` drops
    the colour jitter (useful to check geometry).
    """
    steps: list[v2.Transform] = [
        RandomResize(scale, ratio_range),
        RandomCropCatMax(crop_size, cat_max_ratio),
        v2.RandomHorizontalFlip(p=0.5),
    ]
    if photometric:
        steps.append(PhotoMetricDistortion())
    return SegPipeline(steps + _normalize() + [PadTo(crop_size)])


def test_transforms(short_side: int | None = 512, size_divisor: int | None = None) -> SegPipeline:
    """The mmseg ADE20K test pipeline: keep-ratio resize to (4 * short_side,
    short_side), i.e. (2048, 512) for the default, optionally to a multiple
    of ``size_divisor`` (32 in the SegFormer/SegNeXt configs), then Normalize.
    ``short_side=None`` skips the resize (the image keeps its stored size).

    The mask is returned at its ORIGINAL size: evaluate after resizing the
    logits back to the mask's size, as mmseg does.
    """
    if short_side is None:
        return SegPipeline(_normalize())
    return SegPipeline([KeepRatioResize((4 * short_side, short_side), size_divisor)] + _normalize())


test_transforms.__test__ = False  # tell pytest this function is not a test


def denormalize(image: Tensor) -> Tensor:
    """Undo Normalize for plotting: float [..., 3, H, W] -> uint8 [..., 3, H, W]."""
    mean = image.new_tensor(IMAGENET_MEAN)[:, None, None]
    std = image.new_tensor(IMAGENET_STD)[:, None, None]
    return (image * std + mean).round().clamp(0, 255).to(torch.uint8)
