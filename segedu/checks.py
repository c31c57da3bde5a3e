"""Self-checks for the course exercises: a learner's function or module against segedu's reference.

Every ``check_*`` function follows the same recipe:

1. build the segedu reference with random weights (large enough that attention is not uniform and
   every layer matters), on fixed seeds, without touching the learner's random-number stream;
2. build the learner's module with the same constructor arguments and copy the reference weights
   into it with ``load_state_dict`` (so parameter names and shapes must match segedu's);
3. compare outputs on a few small random inputs (non-square, several heads / reduction ratios);
4. on a mismatch, recompute the output with each classic mistake and, if one matches, name it.

A failed check raises ``AssertionError`` whose message says what was expected and, where it can,
which bug produced the output; a passed check prints one line. An unsolved exercise (a stub that
raises ``NotImplementedError``, as nbgrader's student version does) lets that error through unchanged. The checks are deterministic, so a
notebook that calls them prints the same thing on every machine.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "check_reduce_zero_label",
    "check_pixel_accuracy",
    "check_iou",
    "check_overlap_patch_embed",
    "check_efficient_attention",
    "check_mix_ffn",
    "check_block",
    "check_mit_stage",
    "check_segformer_head",
    "check_seg_loss",
]

RTOL, ATOL = 1e-4, 1e-5  # float32, and room for equivalent orderings of the same arithmetic

Candidates = Iterable[tuple[str, Callable[[], torch.Tensor]]]


# ----------------------------------------------------------------------------------------------
# Shared machinery
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _seeded(seed: int):
    """Run a block on its own seed and give the caller's RNG state back afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = RTOL, atol: float = ATOL) -> bool:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape:
        return False
    return bool(torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol, equal_nan=True))


def _fail(where: str, message: str):
    raise AssertionError(f"{where}: {message}")


def _diagnose(where: str, out: torch.Tensor, expected: torch.Tensor, candidates: Candidates,
              generic: str, rtol: float = RTOL, atol: float = ATOL) -> None:
    """Raise if ``out`` is not ``expected``, naming the first classic mistake that reproduces it."""
    if _close(out, expected, rtol, atol):
        return
    for message, make in candidates:
        try:
            wrong = make()
        except Exception:  # a mistake that cannot even run on this input cannot be the one
            continue
        if _close(out, wrong, rtol, atol):
            _fail(where, message)
    diff = (out.double() - expected.double()).abs()
    diff = diff[~diff.isnan()]
    worst = f"{diff.max().item():.3g}" if diff.numel() else "nan"
    _fail(where, f"the values differ from segedu's (largest difference {worst}). {generic}")


def _randomize_(module: nn.Module, seed: int) -> nn.Module:
    """Weights with std 1/sqrt(fan_in), biases and norm affines away from their trivial values.

    The default initialisations (std 0.02, zero biases, unit norms) make attention almost uniform
    and hide bugs such as a missing scale; these weights keep every layer's effect visible.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(noise / math.sqrt(fan_in))
            elif name.endswith("weight"):  # LayerNorm / BatchNorm scale
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.2 * noise)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.2 * torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))
    return module


def _build(cls, args: tuple, where: str) -> nn.Module:
    try:
        module = cls(*args)
    except NotImplementedError:  # an unsolved exercise: let it through unchanged (nbgrader, CI)
        raise
    except Exception as err:
        _fail(where, f"constructing {getattr(cls, '__name__', cls)}{args} raised {type(err).__name__}: {err}. "
                     f"The check calls the constructor with segedu's arguments, in segedu's order.")
    if not isinstance(module, nn.Module):
        _fail(where, f"expected a torch.nn.Module subclass, got {type(module).__name__}")
    return module


def _copy_weights(student: nn.Module, reference: nn.Module, where: str, hints: dict[str, str]) -> None:
    """``load_state_dict`` with a readable account of every missing, extra or mis-shaped entry."""
    ref, mine = reference.state_dict(), student.state_dict()
    problems = []
    for key, value in ref.items():
        if key not in mine:
            problems.append(f"missing {key} {list(value.shape)}")
        elif mine[key].shape != value.shape:
            problems.append(f"{key} has shape {list(mine[key].shape)}, expected {list(value.shape)}")
    problems += [f"unexpected {key} {list(mine[key].shape)}" for key in mine if key not in ref]
    if problems:
        advice = [hint for pattern, hint in hints.items() if any(pattern in p for p in problems)]
        expected = ", ".join(f"{k} {list(v.shape)}" for k, v in ref.items())
        _fail(where, "the parameters do not match segedu's, so its weights cannot be copied in:\n  - "
              + "\n  - ".join(problems)
              + ("\nHint: " + " ".join(advice) if advice else "")
              + f"\nExpected exactly: {expected}")
    student.load_state_dict(ref)


def _run(where: str, fn: Callable, *args):
    try:
        with torch.no_grad():
            return fn(*args)
    except (AssertionError, NotImplementedError):
        raise
    except Exception as err:
        shapes = ", ".join(str(tuple(a.shape)) if isinstance(a, torch.Tensor) else repr(a) for a in args)
        _fail(where, f"calling it with ({shapes}) raised {type(err).__name__}: {err}")


def _expect_tensor(where: str, out, shape: tuple, hint: str = "") -> torch.Tensor:
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor) and tuple(out[0].shape) == shape:
        _fail(where, f"returned a {type(out).__name__} of {len(out)} items; return only the output tensor "
                     f"of shape {list(shape)}")
    if not isinstance(out, torch.Tensor):
        _fail(where, f"expected a tensor, got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape):
        _fail(where, f"output shape {list(out.shape)}, expected {list(shape)}. {hint}".rstrip())
    return out


def _passed(name: str, n: int, reference: str) -> None:
    print(f"{name} passed: {n} cases match {reference}")


def _to_map(tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """[B, N, C] -> [B, C, H, W] (the right way)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *hw)


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, N, C] (the right way)."""
    return x.flatten(2).transpose(1, 2)


# ----------------------------------------------------------------------------------------------
# 00: labels and metrics
# ----------------------------------------------------------------------------------------------
def check_reduce_zero_label(fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """``fn(mask) -> mask``: ADE20K PNG values to class indices (0 -> 255, v -> v - 1, 255 stays 255).

    Tried on uint8 and int64 masks; the input must not be modified in place.
    """
    from .data import reduce_zero_label as ref

    where = "check_reduce_zero_label"
    gen = torch.Generator().manual_seed(0)
    base = torch.randint(0, 151, (2, 5, 7), generator=gen)
    base[0, 0, :6] = torch.tensor([0, 1, 2, 149, 150, 255])  # the values that matter, always present
    n = 0
    for dtype in (torch.uint8, torch.int64):
        mask = base.to(dtype)
        keep = mask.clone()
        out = _run(where, fn, mask)
        if not torch.equal(mask, keep):
            _fail(where, "your function changed its input in place; work on a copy (e.g. mask.clone()) so the "
                         "caller's mask keeps its raw values")
        out = _expect_tensor(where, out, tuple(mask.shape))
        expected = ref(mask).long()
        x = mask.long()
        candidates = [
            ("it looks like reduce_zero_label was applied twice: raw 1 (wall) became 255 and 2 became 0. "
             "Masks from SegmentationFolder(reduce_zero_label=True) are already reduced.",
             lambda: ref(ref(mask)).long()),
            ("0 (unlabeled) must become 255, the ignore index; here it became -1. Shift first, then set the "
             "old zeros to 255.", lambda: x - 1),
            ("0 (unlabeled) must become 255, but the classes were not shifted: v must become v - 1 "
             "(1 = wall -> class 0).", lambda: torch.where(x == 0, 255, x)),
            ("the ignore value 255 must stay 255 (it becomes 254 after the shift: map it back).",
             lambda: torch.where(x == 0, 255, x - 1)),
            ("0 (unlabeled) must become the ignore index 255, not class 0 (wall).", lambda: (x - 1).clamp(min=0)),
            ("the shift goes the wrong way: v must become v - 1.", lambda: torch.where(x == 0, 255, x + 1)),
        ]
        _diagnose(f"{where} ({'uint8' if dtype == torch.uint8 else 'int64'} mask)", out.long(), expected,
                  candidates, "Expected 0 -> 255, v -> v - 1 for v in 1..150, 255 -> 255.", rtol=0, atol=0)
        n += 1
    _passed(where, n, "segedu.data.reduce_zero_label")


def _confusion(pred: torch.Tensor, target: torch.Tensor, k: int, ignore_index: int) -> torch.Tensor:
    keep = target != ignore_index
    return torch.bincount(target[keep] * k + pred[keep], minlength=k * k).reshape(k, k).double()


def _iou_from(inter, pred_count, label_count):
    return inter / (pred_count + label_count - inter)


def check_pixel_accuracy(fn: Callable[..., float]) -> None:
    """``fn(pred, target, ignore_index=255) -> float``: correct / labelled pixels, ignoring 255."""
    where = "check_pixel_accuracy"
    gen = torch.Generator().manual_seed(1)
    n = 0
    for shape in ((2, 6, 9), (1, 5, 4)):
        target = torch.randint(0, 4, shape, generator=gen)
        pred = torch.where(torch.rand(shape, generator=gen) < 0.6, target, torch.randint(0, 4, shape, generator=gen))
        target[torch.rand(shape, generator=gen) < 0.3] = 255
        out = _run(where, fn, pred, target, 255)
        if isinstance(out, torch.Tensor):
            if out.numel() != 1:
                _fail(where, f"expected one number, got a tensor of shape {list(out.shape)}")
            out = out.item()
        if not isinstance(out, (float, int)):
            _fail(where, f"expected a float, got {type(out).__name__}")
        keep = target != 255
        expected = (pred[keep] == target[keep]).double().mean().item()
        got = torch.tensor(float(out))
        candidates = [
            ("the ignored pixels (255) were counted in the denominator: divide by the number of labelled "
             "pixels only.", lambda: torch.tensor(((pred == target) & keep).double().sum().item() / target.numel())),
            ("the ignored pixels (255) were counted: drop them before comparing.",
             lambda: torch.tensor((pred == target).double().mean().item())),
            ("this is a percentage; return a fraction in [0, 1].", lambda: torch.tensor(100 * expected)),
        ]
        _diagnose(where, got, torch.tensor(expected), candidates, "Expected (#correct labelled pixels) / "
                  "(#labelled pixels).", rtol=1e-6, atol=1e-6)
        n += 1
    _passed(where, n, "segedu.metrics.SegMetrics (aAcc)")


def check_iou(fn: Callable[..., torch.Tensor]) -> None:
    """``fn(pred, target, num_classes, ignore_index=255) -> Tensor[num_classes]``: per-class IoU.

    Dataset-level (sum over all images of the batch first), ignored pixels dropped, NaN for a class
    absent from both prediction and label.
    """
    from .metrics import SegMetrics

    where = "check_iou"
    gen = torch.Generator().manual_seed(2)
    n = 0
    for k, shape in ((5, (3, 6, 7)), (4, (2, 5, 5))):
        # The last class never appears in the label: with k = 5 it is predicted on two pixels (IoU 0),
        # with k = 4 it is absent from both prediction and label (IoU undefined: NaN).
        target = torch.randint(0, k - 1, shape, generator=gen)
        pred = torch.where(torch.rand(shape, generator=gen) < 0.55, target,
                           torch.randint(0, k - 1, shape, generator=gen))
        target[torch.rand(shape, generator=gen) < 0.25] = 255
        if k == 5:
            pred[-1, -1, :2], target[-1, -1, :2] = k - 1, 0
        out = _run(where, fn, pred, target, k, 255)
        if isinstance(out, (float, int)) or (isinstance(out, torch.Tensor) and out.ndim == 0):
            _fail(where, f"expected one IoU per class (a tensor of shape [{k}]), got a single number: return the "
                         "per-class values; mIoU is their nanmean")
        out = _expect_tensor(where, out, (k,), "One IoU per class.")
        metric = SegMetrics(k)
        metric.update(pred, target)
        expected = torch.tensor(metric.compute()["IoU"], dtype=torch.float64)
        cm = _confusion(pred, target, k, 255)
        inter, label, pcount = cm.diag(), cm.sum(1), cm.sum(0)
        valid_pred = pred[(pred >= 0) & (pred < k)]
        all_pred = torch.bincount(valid_pred, minlength=k).double()

        def per_image():
            rows = []
            for b in range(shape[0]):
                c = _confusion(pred[b], target[b], k, 255)
                rows.append(_iou_from(c.diag(), c.sum(0), c.sum(1)))
            return torch.stack(rows).nanmean(0)

        candidates = [
            ("the ignored pixels (label 255) were counted: their predictions inflate the union. Drop every pixel "
             "whose label is ignore_index before counting.", lambda: _iou_from(inter, all_pred, label)),
            ("a class absent from both prediction and label must be NaN (undefined), not 0, so that nanmean "
             "skips it.", lambda: torch.nan_to_num(expected, nan=0.0)),
            ("the union is |P| + |L| - |P and L|: the intersection was not subtracted.",
             lambda: inter / (pcount + label)),
            ("that is the Dice / F1 score 2|P and L| / (|P| + |L|), not the IoU.",
             lambda: 2 * inter / (pcount + label)),
            ("that is the class accuracy |P and L| / |L| (recall), not the IoU: the union also counts the "
             "pixels wrongly predicted as the class.", lambda: inter / label),
            ("that is |P and L| / |P| (precision), not the IoU.", lambda: inter / pcount),
            ("the IoU was computed per image and then averaged; the benchmark sums intersections and unions "
             "over the whole set first (dataset-level IoU).", per_image),
        ]
        _diagnose(where, out.double(), expected, candidates,
                  "Expected IoU_c = |pred=c and label=c| / |pred=c or label=c| over labelled pixels.",
                  rtol=1e-6, atol=1e-6)
        n += 1
    _passed(where, n, "segedu.metrics.SegMetrics")


# ----------------------------------------------------------------------------------------------
# 05a: overlapped patch embedding, efficient self-attention
# ----------------------------------------------------------------------------------------------
def check_overlap_patch_embed(cls: type) -> None:
    """``cls(in_channels, dim, patch_size, stride)``; ``forward(x) -> (tokens [B, N, C], (h, w))``."""
    from .models.segformer import OverlapPatchEmbed

    where = "check_overlap_patch_embed"
    hints = {"proj": "Name the convolution `proj` (nn.Conv2d(in_channels, dim, patch_size, stride, "
                     "padding=patch_size // 2)).",
             "norm": "Name the LayerNorm `norm` (nn.LayerNorm(dim)), applied to the tokens."}
    cases = [((3, 16, 7, 4), (2, 3, 37, 50)), ((16, 24, 3, 2), (1, 16, 13, 10)), ((8, 12, 3, 2), (2, 8, 8, 8))]
    for i, (args, xshape) in enumerate(cases):
        with _seeded(10 + i):
            ref = _randomize_(OverlapPatchEmbed(*args), 10 + i).eval()
            mine = _build(cls, args, where).eval()
            _copy_weights(mine, ref, where, hints)
            x = torch.randn(xshape)
        out = _run(where, mine, x)
        tokens, (h, w) = _run(where, ref, x)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            _fail(where, "forward must return a pair (tokens, (h, w)): the [B, N, C] tokens and the size of the "
                         "token grid, which the next layers need to fold the tokens back into a map")
        got, hw = out
        B, _, H, W = xshape
        k, s = args[2], args[3]
        if isinstance(got, torch.Tensor) and got.ndim == 4:
            _fail(where, f"tokens have shape {list(got.shape)}: flatten the conv output to [B, N, C] "
                         f"= {list(tokens.shape)}")
        if isinstance(got, torch.Tensor) and tuple(got.shape) == (B, tokens.shape[2], tokens.shape[1]):
            _fail(where, f"tokens have shape {list(got.shape)} = [B, C, N]; transpose to [B, N, C] = "
                         f"{list(tokens.shape)}")
        unpadded = ((H - k) // s + 1) * ((W - k) // s + 1)
        if isinstance(got, torch.Tensor) and got.ndim == 3 and got.shape[1] == unpadded and unpadded != tokens.shape[1]:
            _fail(where, f"{got.shape[1]} tokens for a {H}x{W} input, expected ceil({H}/{s}) x ceil({W}/{s}) = "
                         f"{h}x{w} = {h * w}: pad the conv with patch_size // 2 = {k // 2}, which makes the token grid "
                         f"ceil(H / stride) x ceil(W / stride)")
        got = _expect_tensor(where, got, tuple(tokens.shape))
        try:
            hw_ok = tuple(int(v) for v in hw) == (h, w)
            hw_swapped = tuple(int(v) for v in hw) == (w, h)
        except Exception:
            _fail(where, f"the second output should be the grid size (h, w) = {(h, w)}, got {hw!r}")
        if not hw_ok:
            _fail(where, f"grid size {tuple(hw)}, expected (h, w) = {(h, w)}"
                  + (": height and width are swapped" if hw_swapped else ""))
        conv = ref.proj(x)
        candidates = [
            ("the tokens are flattened column by column ((w h) order); use row-major order "
             "rearrange(x, 'b c h w -> b (h w) c') so token n sits at row n // w, column n % w.",
             lambda: ref.norm(conv.permute(0, 3, 2, 1).flatten(1, 2))),
            ("the LayerNorm is missing (or not applied to the tokens).", lambda: _to_tokens(conv)),
            ("the conv output was reshaped to [B, N, C] without moving the channels last; transpose (or "
             "rearrange) instead of reshape.", lambda: ref.norm(conv.reshape(B, -1, conv.shape[1]))),
        ]
        _diagnose(where, got, tokens, candidates, "Expected conv -> flatten to [B, N, C] -> LayerNorm.")
    _passed(where, len(cases), "segedu.models.segformer.OverlapPatchEmbed")


def _esa_reference(p: dict, x: torch.Tensor, hw: tuple[int, int], heads: int, sr: int, *, scale: str = "head",
                   softmax_dim: int = -1, sr_input: str = "ok", kv_order: str = "kv", split: str = "hd",
                   eps: float = 1e-5) -> torch.Tensor:
    """Efficient self-attention written out, with switches that reproduce the classic mistakes."""
    B, N, C = x.shape
    h, w = hw
    d = C // heads
    q = F.linear(x, p["q.weight"], p["q.bias"])
    src = x
    if sr > 1:
        if sr_input == "ok":
            m = _to_map(x, (h, w))
        elif sr_input == "reshape":
            m = x.reshape(B, C, h, w)
        else:  # "swapped"
            m = _to_map(x, (w, h))
        src = _to_tokens(F.conv2d(m, p["sr.weight"], p["sr.bias"], stride=sr))
        src = F.layer_norm(src, (C,), p["norm.weight"], p["norm.bias"], eps)
    k, v = F.linear(src, p["kv.weight"], p["kv.bias"]).split(C, dim=-1)
    if kv_order == "vk":
        k, v = v, k

    def heads_of(t):
        if split == "hd":
            return t.reshape(B, t.shape[1], heads, d).transpose(1, 2)
        return t.reshape(B, t.shape[1], d, heads).permute(0, 3, 1, 2)

    q, k, v = heads_of(q), heads_of(k), heads_of(v)
    logits = q @ k.transpose(-2, -1)
    if scale == "head":
        logits = logits * d ** -0.5
    elif scale == "dim":
        logits = logits * C ** -0.5
    out = logits.softmax(softmax_dim) @ v  # [B, heads, N, d]
    if split == "hd":
        out = out.transpose(1, 2).reshape(B, N, C)
    else:
        out = out.permute(0, 2, 3, 1).reshape(B, N, C)
    return F.linear(out, p["proj.weight"], p["proj.bias"])


def check_efficient_attention(cls: type) -> None:
    """``cls(dim, num_heads, sr_ratio)``; ``forward(x [B, N, C], (h, w)) -> [B, N, C]``.

    Parameters as in segedu: ``q`` Linear(C, C), ``kv`` Linear(C, 2C) (keys first), ``sr``
    Conv2d(C, C, sr, stride=sr) and ``norm`` LayerNorm(C) when sr > 1, ``proj`` Linear(C, C).
    """
    from .models.segformer import EfficientSelfAttention

    where = "check_efficient_attention"
    hints = {"sr": "With sr_ratio > 1 the keys/values come from `sr` = nn.Conv2d(dim, dim, sr_ratio, "
                   "stride=sr_ratio) followed by `norm` = nn.LayerNorm(dim); with sr_ratio == 1 there is neither.",
             "kv": "Keys and values come from one fused `kv` = nn.Linear(dim, 2 * dim) (keys = first dim outputs).",
             "q.": "Queries come from `q` = nn.Linear(dim, dim).",
             "proj": "The heads are merged by `proj` = nn.Linear(dim, dim)."}
    # (dim, heads, sr), (B, h, w): non-square grids, one and several heads, sr 1, 2, 4 and a ragged 3.
    cases = [((16, 2, 2), (2, 6, 10)), ((16, 1, 1), (1, 5, 7)), ((24, 3, 4), (2, 8, 12)), ((16, 2, 3), (1, 7, 9))]
    for i, (args, (B, h, w)) in enumerate(cases):
        dim, heads, sr = args
        with _seeded(20 + i):
            ref = _randomize_(EfficientSelfAttention(*args), 20 + i).eval()
            mine = _build(cls, args, where).eval()
            _copy_weights(mine, ref, where, hints)
            x = torch.randn(B, h * w, dim)
        out = _run(where, mine, x, (h, w))
        expected = _run(where, ref, x, (h, w))
        out = _expect_tensor(where, out, tuple(expected.shape))
        p = {k: v for k, v in ref.state_dict().items()}
        f = lambda **bug: _esa_reference(p, x, (h, w), heads, sr, **bug)  # noqa: E731
        candidates = [
            ("the scores are not scaled: multiply q k^T by 1 / sqrt(head_dim) before the softmax.",
             lambda: f(scale="none")),
            (f"the scores are scaled by 1 / sqrt(dim) = 1 / sqrt({dim}); the scale uses the per-head dimension "
             f"head_dim = dim / num_heads = {dim // heads}.", lambda: f(scale="dim")),
            ("the softmax runs over the queries (dim=-2): each query's weights over the keys must sum to 1, so "
             "take the softmax over the last axis (the keys).", lambda: f(softmax_dim=-2)),
            ("the tokens were reshaped to [B, C, H, W] without transposing first: x.reshape(B, C, H, W) mixes "
             "channels and positions. Use x.transpose(1, 2).reshape(B, C, H, W) (or rearrange 'b (h w) c -> "
             "b c h w') before the sr conv.", lambda: f(sr_input="reshape")),
            ("height and width are swapped when the tokens are folded back into a map for the sr conv.",
             lambda: f(sr_input="swapped")),
            ("keys and values are swapped: the first `dim` outputs of `kv` are the keys, the last `dim` the "
             "values.", lambda: f(kv_order="vk")),
            ("the heads are split as (head_dim, heads); segedu (and the official code) splits the channels as "
             "(heads, head_dim): rearrange 'b n (heads d) -> b heads n d'.", lambda: f(split="dh")),
        ]
        _diagnose(f"{where} (dim={dim}, heads={heads}, sr={sr}, grid {h}x{w})", out, expected, candidates,
                  "Expected proj(softmax(q k^T / sqrt(head_dim)) v) with k, v from the sr-reduced tokens.")
    _passed(where, len(cases), "segedu.models.segformer.EfficientSelfAttention")


# ----------------------------------------------------------------------------------------------
# 05b: Mix-FFN, block, stage
# ----------------------------------------------------------------------------------------------
def _mix_ffn_reference(p: dict, x: torch.Tensor, hw: tuple[int, int], *, order: str = "conv_gelu",
                       fold: str = "ok", unfold: str = "ok", gelu: str = "none", residual: bool = False):
    B, N, _ = x.shape
    h, w = hw
    y = F.linear(x, p["fc1.weight"], p["fc1.bias"])
    hidden = y.shape[-1]
    act = lambda t: F.gelu(t, approximate=gelu)  # noqa: E731
    if order == "gelu_conv":
        y = act(y)
    m = {"ok": lambda t: _to_map(t, (h, w)), "reshape": lambda t: t.reshape(B, hidden, h, w),
         "swapped": lambda t: _to_map(t, (w, h))}[fold](y)
    m = F.conv2d(m, p["dwconv.weight"], p["dwconv.bias"], padding=1, groups=hidden)
    y = _to_tokens(m) if unfold == "ok" else m.reshape(B, N, hidden)
    if order == "conv_gelu":
        y = act(y)
    out = F.linear(y, p["fc2.weight"], p["fc2.bias"])
    return out + x if residual else out


def check_mix_ffn(cls: type) -> None:
    """``cls(dim, hidden_dim)``; ``forward(x [B, N, C], (h, w)) -> [B, N, C]``.

    ``fc1`` Linear(C, hidden) -> ``dwconv`` 3x3 depth-wise Conv2d(hidden, hidden, groups=hidden,
    padding 1) on the token map -> GELU -> ``fc2`` Linear(hidden, C). No residual inside.
    """
    from .models.segformer import MixFFN

    where = "check_mix_ffn"
    hints = {"dwconv.weight has shape": "`dwconv` is a depth-wise 3x3 conv on the hidden width: "
                                        "nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim), "
                                        "whose weight is [hidden_dim, 1, 3, 3].",
             "missing dwconv": "The 3x3 depth-wise conv must be called `dwconv`.",
             "fc": "The two Linears are `fc1` (dim -> hidden_dim) and `fc2` (hidden_dim -> dim)."}
    cases = [((8, 32), (2, 5, 7)), ((12, 48), (1, 6, 6)), ((16, 16), (2, 3, 8))]
    for i, (args, (B, h, w)) in enumerate(cases):
        with _seeded(30 + i):
            ref = _randomize_(MixFFN(*args), 30 + i).eval()
            mine = _build(cls, args, where).eval()
            _copy_weights(mine, ref, where, hints)
            x = torch.randn(B, h * w, args[0])
        out = _run(where, mine, x, (h, w))
        expected = _run(where, ref, x, (h, w))
        out = _expect_tensor(where, out, tuple(expected.shape))
        p = dict(ref.state_dict())
        f = lambda **bug: _mix_ffn_reference(p, x, (h, w), **bug)  # noqa: E731
        candidates = [
            ("the GELU comes before the depth-wise conv; Eq. 3 (and the official code) apply fc1 -> 3x3 "
             "depth-wise conv -> GELU -> fc2.", lambda: f(order="gelu_conv")),
            ("the GELU is missing.", lambda: f(order="none")),
            ("GELU uses the tanh approximation; use the exact nn.GELU() (approximate='none').",
             lambda: f(gelu="tanh")),
            ("the residual x + ... belongs to the Block, not to the Mix-FFN: return fc2(...) only.",
             lambda: f(residual=True)),
            ("the tokens were reshaped to [B, C, H, W] without transposing first: x.reshape(B, C, H, W) mixes "
             "channels and positions. Use x.transpose(1, 2).reshape(B, C, H, W) (or rearrange 'b (h w) c -> "
             "b c h w').", lambda: f(fold="reshape")),
            ("height and width are swapped when the tokens are folded into a map.", lambda: f(fold="swapped")),
            ("the conv output was reshaped back to [B, N, C] without moving the channels last: use "
             "flatten(2).transpose(1, 2) (or rearrange 'b c h w -> b (h w) c').", lambda: f(unfold="reshape")),
        ]
        _diagnose(f"{where} (dim={args[0]}, hidden={args[1]}, grid {h}x{w})", out, expected, candidates,
                  "Expected fc2(GELU(dwconv3x3(fc1(x) as a map))).")
    _passed(where, len(cases), "segedu.models.segformer.MixFFN")


def check_block(cls: type) -> None:
    """``cls(dim, num_heads, sr_ratio, mlp_ratio, drop_path)``; ``forward(x, (h, w)) -> x``.

    Pre-norm: ``x = x + attn(norm1(x), hw)``, then ``x = x + mlp(norm2(x), hw)`` with
    ``attn`` an EfficientSelfAttention and ``mlp`` a MixFFN(dim, dim * mlp_ratio).
    """
    from .models.segformer import Block

    where = "check_block"
    hints = {"norm": "The block's LayerNorms are `norm1` (before attention) and `norm2` (before the Mix-FFN).",
             "attn": "The attention is `attn` = EfficientSelfAttention(dim, num_heads, sr_ratio).",
             "mlp": "The Mix-FFN is `mlp` = MixFFN(dim, dim * mlp_ratio)."}
    cases = [((16, 2, 2, 2, 0.0), (2, 6, 8)), ((8, 1, 1, 4, 0.0), (1, 5, 3)), ((24, 3, 4, 2, 0.1), (1, 8, 12))]
    for i, (args, (B, h, w)) in enumerate(cases):
        with _seeded(40 + i):
            ref = _randomize_(Block(*args), 40 + i).eval()
            mine = _build(cls, args, where).eval()
            _copy_weights(mine, ref, where, hints)
            x = torch.randn(B, h * w, args[0])
        out = _run(where, mine, x, (h, w))
        expected = _run(where, ref, x, (h, w))
        out = _expect_tensor(where, out, tuple(expected.shape))
        attn = lambda t: ref.attn(t, (h, w))  # noqa: E731
        mlp = lambda t: ref.mlp(t, (h, w))  # noqa: E731
        n1, n2 = ref.norm1, ref.norm2

        def post_norm():
            y = n1(x + attn(x))
            return n2(y + mlp(y))

        def normed_residual():
            y = n1(x)
            y = y + attn(y)
            z = n2(y)
            return z + mlp(z)

        def no_attn_residual():
            y = attn(n1(x))
            return y + mlp(n2(y))

        def no_mlp_residual():
            y = x + attn(n1(x))
            return mlp(n2(y))

        def swapped_norms():
            y = x + attn(n2(x))
            return y + mlp(n1(y))

        def parallel():
            return x + attn(n1(x)) + mlp(n2(x))

        candidates = [
            ("this is a post-norm block (norm after the residual sum); SegFormer is pre-norm: "
             "x = x + attn(norm1(x)), then x = x + mlp(norm2(x)).", post_norm),
            ("the residual carries the normalised tokens; add the branch to the un-normalised x: "
             "x = x + attn(norm1(x)).", normed_residual),
            ("the residual connection around the attention is missing.", no_attn_residual),
            ("the residual connection around the Mix-FFN is missing.", no_mlp_residual),
            ("norm1 and norm2 are swapped: norm1 goes before the attention, norm2 before the Mix-FFN.",
             swapped_norms),
            ("the attention and the Mix-FFN run in parallel on the same input; they are sequential: the "
             "Mix-FFN sees the output of the attention step.", parallel),
        ]
        _diagnose(f"{where} (dim={args[0]}, heads={args[1]}, sr={args[2]})", out, expected, candidates,
                  "Expected x = x + attn(norm1(x), hw); x = x + mlp(norm2(x), hw).")
    _passed(where, len(cases), "segedu.models.segformer.Block")


def check_mit_stage(cls: type) -> None:
    """``cls(in_channels, dim, depth, num_heads, sr_ratio, mlp_ratio, patch_size, stride, drop_paths)``.

    ``forward(x [B, C_in, H, W]) -> [B, dim, ceil(H / stride), ceil(W / stride)]``: ``patch_embed``,
    the ``blocks`` (a ModuleList), the stage-end LayerNorm ``norm``, back to a feature map.
    """
    from .models.segformer import MiTStage

    where = "check_mit_stage"
    hints = {"patch_embed": "The stage starts with `patch_embed` = OverlapPatchEmbed(in_channels, dim, "
                            "patch_size, stride).",
             "blocks": "The blocks live in an nn.ModuleList called `blocks` (depth of them).",
             "missing norm.": "The stage ends with a LayerNorm called `norm` before the tokens become a map again."}
    cases = [((3, 16, 2, 2, 4, 2, 7, 4, [0.0, 0.0]), (2, 3, 64, 48)),
             ((16, 24, 1, 3, 2, 2, 3, 2, [0.0]), (1, 16, 10, 14))]
    for i, (args, xshape) in enumerate(cases):
        with _seeded(50 + i):
            ref = _randomize_(MiTStage(*args), 50 + i).eval()
            mine = _build(cls, args, where).eval()
            _copy_weights(mine, ref, where, hints)
            x = torch.randn(xshape)
        out = _run(where, mine, x)
        expected = _run(where, ref, x)
        B, C, h, w = expected.shape
        if isinstance(out, torch.Tensor) and tuple(out.shape) == (B, h * w, C):
            _fail(where, f"output shape {list(out.shape)} are tokens [B, N, C]; a stage returns a feature map "
                         f"[B, C, H, W] = {list(expected.shape)} for the next stage's conv and for the decoder")
        out = _expect_tensor(where, out, tuple(expected.shape))
        tokens, hw = ref.patch_embed(x)
        for blk in ref.blocks:
            tokens = blk(tokens, hw)
        candidates = [
            ("the stage-end LayerNorm (`norm`) is not applied.", lambda: _to_map(tokens, hw)),
            ("the tokens were reshaped to [B, C, H, W] without transposing first; use transpose(1, 2) then "
             "reshape (or rearrange 'b (h w) c -> b c h w').", lambda: ref.norm(tokens).reshape(B, C, h, w)),
        ]

        def blocks_swapped():
            t, _ = ref.patch_embed(x)
            for blk in ref.blocks:
                t = blk(t, (hw[1], hw[0]))
            return _to_map(ref.norm(t), hw)

        candidates.append(("the blocks were given (w, h) instead of (h, w).", blocks_swapped))
        _diagnose(where, out, expected, candidates,
                  "Expected patch_embed -> blocks(tokens, (h, w)) -> norm -> [B, C, h, w].")
    _passed(where, len(cases), "segedu.models.segformer.MiTStage")


# ----------------------------------------------------------------------------------------------
# 05c: decoder and loss
# ----------------------------------------------------------------------------------------------
def _head_reference(ref: nn.Module, feats: list[torch.Tensor], *, order: str = "c4c1", mode: str = "bilinear",
                    align_corners: bool = False, relu: bool = True, target: int = 0) -> torch.Tensor:
    size = feats[target].shape[-2:]
    outs = []
    for feat, linear in zip(feats, ref.linear_c):
        y = _to_map(linear(_to_tokens(feat)), feat.shape[-2:])
        if y.shape[-2:] != size:
            kw = {"align_corners": align_corners} if mode == "bilinear" else {}
            y = F.interpolate(y, size=size, mode=mode, **kw)
        outs.append(y)
    y = torch.cat(outs[::-1] if order == "c4c1" else outs, dim=1)
    y = ref.bn(ref.linear_fuse(y))
    return ref.linear_pred(F.relu(y) if relu else y)


def check_segformer_head(cls: type) -> None:
    """``cls(in_channels, embed_dim, num_classes, dropout)``; ``forward([c1, c2, c3, c4]) -> logits``.

    ``linear_c`` (ModuleList of Linear(C_i, E)) -> bilinear resize to c1's size (align_corners=False)
    -> concat in the order [c4, c3, c2, c1] -> ``linear_fuse`` 1x1 conv (no bias) -> ``bn`` -> ReLU
    -> ``dropout`` -> ``linear_pred`` 1x1 conv: logits at stride 4. Checked in eval mode.
    """
    from .models.segformer import SegFormerHead

    where = "check_segformer_head"
    hints = {"linear_c": "One Linear per stage in an nn.ModuleList `linear_c`: nn.Linear(C_i, embed_dim).",
             "linear_fuse": "`linear_fuse` = nn.Conv2d(4 * embed_dim, embed_dim, 1, bias=False) (the BN after it "
                            "makes a bias useless).",
             "bn": "`bn` = nn.BatchNorm2d(embed_dim) after the fuse conv.",
             "linear_pred": "`linear_pred` = nn.Conv2d(embed_dim, num_classes, 1)."}
    cases = [(((8, 16, 24, 32), 16, 5, 0.1), 2, [(13, 18), (7, 9), (4, 5), (2, 3)]),
             (((4, 8, 8, 12), 8, 3, 0.0), 1, [(8, 8), (4, 4), (2, 2), (1, 1)])]
    for i, (args, B, sizes) in enumerate(cases):
        with _seeded(60 + i):
            ref = _randomize_(SegFormerHead(*args), 60 + i).eval()
            mine = _build(cls, args, where).eval()
            _copy_weights(mine, ref, where, hints)
            feats = [torch.randn(B, c, *s) for c, s in zip(args[0], sizes)]
        out = _run(where, mine, feats)
        expected = _run(where, ref, feats)
        K, (h, w) = args[2], sizes[0]
        if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-2:] != expected.shape[-2:]:
            _fail(where, f"logits of spatial size {tuple(out.shape[-2:])}, expected {(h, w)} = the size of c1 "
                         f"(stride 4): resize c2..c4 to c1's size; the model, not the head, upsamples the logits "
                         f"to the image")
        out = _expect_tensor(where, out, (B, K, h, w))
        f = lambda **bug: _head_reference(ref, feats, **bug)  # noqa: E731
        candidates = [
            ("the features are concatenated as [c1, c2, c3, c4]; the official code (and its weights) use "
             "[c4, c3, c2, c1] (mmseg's SegformerHead uses the other order, so its weights do not load here).",
             lambda: f(order="c1c4")),
            ("bilinear resizing with align_corners=True; SegFormer uses align_corners=False.",
             lambda: f(align_corners=True)),
            ("nearest-neighbour resizing; SegFormer resizes the features bilinearly (align_corners=False).",
             lambda: f(mode="nearest")),
            ("the ReLU after linear_fuse + bn is missing.", lambda: f(relu=False)),
        ]
        _diagnose(where, out, expected, candidates,
                  "Expected linear_pred(dropout(relu(bn(linear_fuse(cat[c4, c3, c2, c1])))))."
                  " (Is bn in eval mode using its running statistics?)")
    _passed(where, len(cases), "segedu.models.segformer.SegFormerHead")


def check_seg_loss(fn: Callable[..., torch.Tensor]) -> None:
    """``fn(logits [B, K, h, w], target [B, H, W], ignore_index=255) -> scalar``.

    Logits at the decoder's stride are resized bilinearly (align_corners=False) to the label size,
    then cross-entropy averaged over the labelled pixels (label 255 ignored).
    """
    from .losses import seg_loss

    where = "check_seg_loss"
    gen = torch.Generator().manual_seed(70)
    n = 0
    for B, K, (h, w), (H, W) in ((2, 5, (6, 8), (24, 32)), (1, 4, (5, 7), (19, 27))):
        logits = 2 * torch.randn(B, K, h, w, generator=gen)
        target = torch.randint(0, K, (B, H, W), generator=gen)
        target[torch.rand(B, H, W, generator=gen) < 0.2] = 255
        logits_in, target_in = logits.clone(), target.clone()
        try:
            out = fn(logits_in, target_in, 255)
        except NotImplementedError:
            raise
        except (IndexError, RuntimeError) as err:
            if "out of bounds" in str(err) or "Target" in str(err) or "index" in str(err).lower():
                _fail(where, f"the loss crashed on label 255 ({type(err).__name__}: {err}). Pass "
                             f"ignore_index=255 to F.cross_entropy so those pixels are skipped")
            _fail(where, f"raised {type(err).__name__}: {err}")
        except Exception as err:
            _fail(where, f"raised {type(err).__name__}: {err}")
        if not isinstance(out, torch.Tensor) or out.numel() != 1:
            _fail(where, f"expected a scalar tensor, got {out!r:.80}")
        expected = seg_loss(logits, target)
        up = F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)
        ce = lambda z, t=target: F.cross_entropy(z, t, ignore_index=255)  # noqa: E731
        candidates = [
            ("the labels were shrunk to the logits' size; resize the logits up to the label size instead "
             "(bilinear, align_corners=False), so every labelled pixel counts.",
             lambda: ce(logits, F.interpolate(target[:, None].float(), size=(h, w), mode="nearest")[:, 0].long())),
            ("align_corners=True; SegFormer resizes with align_corners=False.",
             lambda: ce(F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=True))),
            ("nearest-neighbour upsampling of the logits; use bilinear (align_corners=False).",
             lambda: ce(F.interpolate(logits, size=(H, W), mode="nearest"))),
            ("the mean runs over all pixels, ignored ones counting 0 (mmseg 0.x's default); average over the "
             "labelled pixels only (F.cross_entropy's mean with ignore_index does this).",
             lambda: F.cross_entropy(up, target, ignore_index=255, reduction="sum") / target.numel()),
            ("this is the sum over pixels; take the mean over labelled pixels.",
             lambda: F.cross_entropy(up, target, ignore_index=255, reduction="sum")),
        ]
        _diagnose(where, out.reshape(()).detach(), expected, candidates,
                  "Expected F.cross_entropy(upsampled logits, target, ignore_index=255).")
        n += 1
    _passed(where, n, "segedu.losses.seg_loss")
