"""Architecture diagrams of the four families, drawn with matplotlib (no image files needed at run time).

Every public function takes no argument and returns a :class:`matplotlib.figure.Figure`:

=========================  ==========================================================================
``setr_architecture()``    image -> 16x16 patches -> projection + positions -> 24 layers -> decoder
``setr_decoders()``        SETR's Naive, PUP and MLA decoders side by side
``ssformer_architecture()`` Swin stages (C, 2C, 4C, 8C at strides 4..32) -> SSformer's all-MLP decoder
``swin_shift()``           the cyclic shift of an 8x8 token map (window 4, shift 2) and one window's mask
``segformer_architecture()`` MiT stages -> all-MLP decoder -> H/4 x W/4 x N_cls
``mit_stage()``            one MiT stage: overlapped patch embedding, efficient attention, Mix-FFN
``all_mlp_decoder()``      SegFormer's decoder (Eq. 4, Fig. 2)
``segnext_architecture()`` MSCAN stages -> LightHam head on stages 2-4
``msca()``                 multi-scale convolutional attention (Eq. 1-2, Fig. 2)
``hamburger()``            the LightHam head: squeeze, Hamburger (NMF), align, classify
=========================  ==========================================================================

In a notebook, make the call the last expression of a cell::

    from segedu import diagrams
    diagrams.swin_shift()

Display. The figures are ``matplotlib.figure.Figure`` objects (the subclass :class:`DiagramFigure`), built
without pyplot: nothing touches pyplot's global state (no open figures to close, no backend switched), so
a script or a test can draw them all, and a notebook never shows one twice. A *bare* ``Figure`` returned
by a cell shows only its text repr in Jupyter unless the inline backend has already registered its
``Figure`` printer -- checked with nbclient and ipykernel 7 / matplotlib-inline 0.2: importing
``matplotlib.pyplot`` is not enough, a pyplot figure must have been drawn in that kernel before. So
``DiagramFigure`` adds ``_repr_png_`` (a 110 dpi PNG, see :func:`png_bytes`): the diagram shows in any
kernel; where the inline printer is active it takes precedence and shows the same picture. Either way
the PNG has 256 colours (the figure's canvas quantizes every PNG it writes), about 30-45 KB, which keeps
the notebooks small. The text repr stays ``<Figure size WxH with 1 Axes>``. Figures have ``dpi = 110``, so a
notebook shows them at the size of the PNGs in ``docs/figures``. Outside IPython use ``fig.savefig``.

Numbers and shapes come from the registered configurations (``segedu.registry.get_spec``) and from
segedu's own functions (the shifted-window mask is :func:`segedu.models.ssformer.shift_window_mask`),
not from a copy: ``tests/test_diagrams.py`` checks the shapes printed against a forward pass of the
models on the meta device. ``python -m segedu.diagrams [folder]`` writes every figure as a PNG
(default ``docs/figures``, 110 dpi).

Colours mark the role of each step, the same in every figure (see ``ROLES``).
"""
from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure
from PIL import Image
from matplotlib.backend_bases import FigureCanvasBase
from matplotlib.colors import ListedColormap
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Polygon, Rectangle

from .registry import get_spec

__all__ = [
    "setr_architecture", "setr_decoders", "ssformer_architecture", "swin_shift", "segformer_architecture",
    "mit_stage", "all_mlp_decoder", "segnext_architecture", "msca", "hamburger", "DIAGRAMS", "save_all",
    "swin_shift_data", "png_bytes", "DiagramFigure",
]

DPI = 110
FS = 9  # body font size (pt); nothing is drawn smaller than 8 pt

# role -> (fill, edge, legend text)
ROLES = {
    "data": ("#ececec", "#5f5f5f", "tensor"),
    "embed": ("#fde0c2", "#c0650a", "embedding / positions"),
    "attn": ("#d3e4f5", "#1f5b99", "attention"),
    "conv": ("#d7ecd0", "#2f7a1f", "convolution"),
    "mlp": ("#e8dbf3", "#6a3d9a", "linear (MLP)"),
    "norm": ("#fff1c1", "#a67c00", "norm / activation"),
    "resample": ("#cdeeed", "#16736d", "resize / merge / concat"),
    "ham": ("#fbd3e9", "#a3206b", "matrix decomposition"),
    "head": ("#f6cfcf", "#a61c00", "classifier / logits"),
}
INK = "#262626"
GREY = "#6b6b6b"


# ----------------------------------------------------------------------------------------------
# Drawing helpers. Every figure uses one axes covering the whole canvas, in inches (1 unit = 1 in).
# ----------------------------------------------------------------------------------------------

@dataclass
class _Box:
    x: float
    y: float
    w: float
    h: float

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    @property
    def cy(self) -> float:
        return self.y + self.h / 2

    @property
    def left(self):
        return (self.x, self.cy)

    @property
    def right(self):
        return (self.x + self.w, self.cy)

    @property
    def top(self):
        return (self.cx, self.y + self.h)

    @property
    def bottom(self):
        return (self.cx, self.y)


def _quantize_png(data: bytes, dpi: float) -> bytes:
    """A PNG reduced to 256 colours: flat diagrams lose nothing visible and shrink about three times."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    image = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO()
    image.save(out, format="png", optimize=True, dpi=(dpi, dpi))  # no text chunks: deterministic bytes
    return out.getvalue()


class _DiagramCanvas(FigureCanvasBase):
    """Writes every PNG of a diagram in 256 colours: ``savefig``, and IPython's inline printer, which calls
    ``fig.canvas.print_figure`` (so a notebook stores the small PNG too). Other formats are unchanged."""

    def print_figure(self, filename, *args, **kwargs):
        fmt = kwargs.get("format")
        if fmt is None and isinstance(filename, (str, Path)):
            fmt = Path(filename).suffix.lstrip(".") or None
        if (fmt or "png").lower() != "png":
            return super().print_figure(filename, *args, **kwargs)
        dpi = kwargs.get("dpi")
        dpi = self.figure.dpi if dpi in (None, "figure") else dpi
        buf = io.BytesIO()
        result = super().print_figure(buf, *args, **{**kwargs, "format": "png"})
        data = _quantize_png(buf.getvalue(), dpi)
        if hasattr(filename, "write"):
            filename.write(data)
        else:
            Path(filename).write_bytes(data)
        return result


def png_bytes(fig: Figure, dpi: int = DPI) -> bytes:
    """The figure as a 256-colour PNG at ``dpi`` (what ``save_all`` writes and a notebook shows)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    data = buf.getvalue()
    return data if isinstance(fig.canvas, _DiagramCanvas) else _quantize_png(data, dpi)


class DiagramFigure(Figure):
    """A plain ``Figure`` that IPython can show by itself, in 256 colours.

    A bare ``matplotlib.figure.Figure`` as the last expression of a cell shows only its text repr unless the
    inline backend has registered its ``Figure`` printer (tested: importing pyplot is not enough). This
    subclass adds ``_repr_png_``, so the diagram shows in any kernel; where the inline printer is active it
    takes precedence and prints through the figure's canvas, which quantizes PNGs as well. The text repr is
    the usual ``<Figure size ... Axes>``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _DiagramCanvas(self)

    def _repr_png_(self) -> bytes:
        return png_bytes(self)

    def __repr__(self) -> str:
        w, h = self.bbox.size
        return f"<Figure size {w:g}x{h:g} with {len(self.axes)} Axes>"


def _canvas(width: float, height: float, title: str | None = None):
    fig = DiagramFigure(figsize=(width, height), dpi=DPI, facecolor="white")
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_axis_off()
    ax.set_label("diagram")
    if title:
        ax.text(0.15, height - 0.12, title, fontsize=12, fontweight="bold", ha="left", va="top", color=INK)
    return fig, ax


def _text(ax, x, y, s, fs=FS, ha="center", va="center", color=INK, **kw):
    return ax.text(x, y, s, fontsize=fs, ha=ha, va=va, color=color, linespacing=1.15, **kw)


def _box(ax, cx, cy, w, h, text="", role="conv", fs=FS, ls="-", bold=False, alpha=1.0) -> _Box:
    fill, edge, _ = ROLES[role]
    patch = ax.add_patch(FancyBboxPatch((cx - w / 2, cy - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.06",
                                        facecolor=fill, edgecolor=edge, linewidth=1.2, linestyle=ls, alpha=alpha))
    if text:
        t = _text(ax, cx, cy, text, fs=fs, fontweight="bold" if bold else "normal")
        t.diagram_box = patch  # tests check that the text fits inside its box
    return _Box(cx - w / 2, cy - h / 2, w, h)


def _frame(ax, x, y, w, h, label=None, color=GREY, fs=FS, label_pos="top-left") -> _Box:
    """A dashed group frame (a stage, a block, the neck...) with a label."""
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=0.1", facecolor="none",
                                edgecolor=color, linewidth=1.0, linestyle=(0, (4, 3))))
    if label:
        if label_pos == "top-left":
            _text(ax, x + 0.08, y + h - 0.06, label, fs=fs, ha="left", va="top", color=color, fontweight="bold")
        elif label_pos == "top":
            _text(ax, x + w / 2, y + h - 0.06, label, fs=fs, va="top", color=color, fontweight="bold")
        elif label_pos == "bottom":
            _text(ax, x + w / 2, y + 0.06, label, fs=fs, va="bottom", color=color, fontweight="bold")
    return _Box(x, y, w, h)


def _arrow(ax, p0, p1, color=INK, lw=1.2, ls="-", rad=0.0, head=True):
    style = "-|>" if head else "-"
    ax.add_patch(FancyArrowPatch(p0, p1, arrowstyle=style, mutation_scale=11, color=color, linewidth=lw,
                                 linestyle=ls, shrinkA=0, shrinkB=0, connectionstyle=f"arc3,rad={rad}"))


def _path(ax, points, color=INK, lw=1.2, ls="-", head=True):
    """A polyline with an arrow head at its end."""
    xs, ys = zip(*points[:-1])
    ax.plot(xs, ys, color=color, linewidth=lw, linestyle=ls, solid_capstyle="butt")
    _arrow(ax, points[-2], points[-1], color=color, lw=lw, ls=ls, head=head)


def _op(ax, cx, cy, sym, r=0.13, fs=11) -> _Box:
    """A round operator node: '+' (sum), '×' (element-wise product), 'C' (concatenation)."""
    ax.add_patch(Circle((cx, cy), r, facecolor="white", edgecolor=INK, linewidth=1.2))
    _text(ax, cx, cy, sym, fs=fs, fontweight="bold")
    return _Box(cx - r, cy - r, 2 * r, 2 * r)


def _slab(ax, x, y, w, h, d, role="data", text=None, fs=FS - 0.5, text_below=True) -> _Box:
    """A feature map as a 3-D slab: front face ``w x h`` at (x, y), depth ``d`` going up-right."""
    fill, edge, _ = ROLES[role]
    dx, dy = 0.55 * d, 0.45 * d
    ax.add_patch(Polygon([(x, y + h), (x + dx, y + h + dy), (x + w + dx, y + h + dy), (x + w, y + h)],
                         closed=True, facecolor=fill, edgecolor=edge, linewidth=1.0, alpha=0.75))
    ax.add_patch(Polygon([(x + w, y), (x + w + dx, y + dy), (x + w + dx, y + h + dy), (x + w, y + h)],
                         closed=True, facecolor=edge, edgecolor=edge, linewidth=1.0, alpha=0.35))
    ax.add_patch(Rectangle((x, y), w, h, facecolor=fill, edgecolor=edge, linewidth=1.0))
    if text:
        if text_below:
            _text(ax, x + (w + dx) / 2, y - 0.06, text, fs=fs, va="top")
        else:
            _text(ax, x + (w + dx) / 2, y + h + dy + 0.06, text, fs=fs, va="bottom")
    return _Box(x, y, w + dx, h + dy)


def _legend(ax, roles, x, y, fs=FS - 0.5, step=None):
    """One row of colour swatches naming the roles used in the figure."""
    for role in roles:
        fill, edge, name = ROLES[role]
        ax.add_patch(FancyBboxPatch((x, y - 0.07), 0.22, 0.14, boxstyle="round,pad=0,rounding_size=0.03",
                                    facecolor=fill, edgecolor=edge, linewidth=1.0))
        _text(ax, x + 0.28, y, name, fs=fs, ha="left")
        x += step if step else 0.5 + 0.06 * len(name)


def _shape(h: int, w: int, c: int | str) -> str:
    return f"{h}×{w}×{c}"


def _sub(i: int) -> str:
    return "₀₁₂₃₄₅₆₇₈₉"[i]


def _sup(n: int) -> str:
    return "".join("⁰¹²³⁴⁵⁶⁷⁸⁹"[int(ch)] for ch in str(n))


# ----------------------------------------------------------------------------------------------
# Facts, from the registered configurations.
# ----------------------------------------------------------------------------------------------

K = 150  # ADE20K classes: every registered model's default head
SIZE = 512  # the ADE20K crop every diagram uses


def _setr_facts() -> dict:
    pup, mla, naive = get_spec("setr-pup").config, get_spec("setr-mla").config, get_spec("setr-naive").config
    p, d = pup["patch_size"], pup["embed_dim"]
    g = SIZE // p
    return dict(patch=p, dim=d, depth=pup["depth"], heads=pup["num_heads"], hidden=int(d * pup["mlp_ratio"]),
                grid=g, tokens=g * g, patch_values=p * p * 3, naive_layer=naive["in_layer"],
                pup_layer=pup["in_layer"], up_channels=pup["channels"], pup_convs=pup["num_convs"],
                pup_scale=pup["up_scale"], mla_layers=tuple(mla["mla_layers"]), mla_channels=mla["mla_channels"],
                mla_head=mla["mla_head_channels"], mla_cls_kernel=mla["mla_classifier_kernel"],
                naive_channels=naive["channels"])


def _swin_facts(variant: str = "b") -> dict:
    cfg = get_spec(f"ssformer-swin-{variant}").config
    c = cfg["embed_dim"]
    return dict(C=c, depths=tuple(cfg["depths"]), heads=tuple(cfg["num_heads"]), window=cfg["window_size"],
                dims=tuple(c * 2 ** i for i in range(4)), strides=(4, 8, 16, 32), decoder=cfg["decoder_channels"])


def _segformer_facts(variant: str = "b0") -> dict:
    cfg = get_spec(f"segformer-{variant}").config
    return dict(dims=tuple(cfg["embed_dims"]), depths=tuple(cfg["depths"]), heads=tuple(cfg["num_heads"]),
                sr=tuple(cfg["sr_ratios"]), mlp=tuple(cfg["mlp_ratios"]), E=cfg["decoder_dim"],
                kernels=(7, 3, 3, 3), strides=(4, 2, 2, 2))


def _segnext_facts(variant: str = "t") -> dict:
    cfg = get_spec(f"segnext-{variant}").config
    return dict(dims=tuple(cfg["embed_dims"]), depths=tuple(cfg["depths"]), mlp=tuple(cfg["mlp_ratios"]),
                ham=cfg["ham_channels"], channels=cfg["decoder_channels"], rank=cfg["nmf_rank"],
                train_steps=cfg["nmf_train_steps"], eval_steps=cfg["nmf_eval_steps"])


# ----------------------------------------------------------------------------------------------
# SETR
# ----------------------------------------------------------------------------------------------

def setr_architecture() -> Figure:
    """SETR: image -> 16x16 patches -> linear projection + positions -> 24 ViT-L layers -> decoder."""
    f = _setr_facts()
    g, d, p = f["grid"], f["dim"], f["patch"]
    fig, ax = _canvas(10.5, 5.6, f"SETR: a pure transformer encoder (ViT-L/{p}) and a decoder, at {SIZE}×{SIZE}")
    # Row 1: the image becomes a token sequence.
    y1 = 3.95
    img = _box(ax, 0.95, y1, 1.3, 1.3, role="data")
    for i in range(1, 8):  # a few patch borders
        t = img.x + i * img.w / 8
        ax.plot([t, t], [img.y, img.y + img.h], color="#9a9a9a", lw=0.6)
        t = img.y + i * img.h / 8
        ax.plot([img.x, img.x + img.w], [t, t], color="#9a9a9a", lw=0.6)
    ax.add_patch(Rectangle((img.x, img.y + img.h * 7 / 8), img.w / 8, img.h / 8, facecolor=ROLES["embed"][1],
                           alpha=0.6))
    _text(ax, img.cx, img.y - 0.08, f"image\n{_shape(SIZE, SIZE, 3)}", va="top")
    _arrow(ax, img.right, (1.95, y1))
    for i in range(5):
        _box(ax, 2.2 + i * 0.36, y1, 0.28, 0.28, role="embed" if i == 0 else "data")
    _text(ax, 2.2 + 5 * 0.36 - 0.05, y1, "…", fs=11)
    _text(ax, 2.95, y1 - 0.55, f"{p}×{p} patches: {g}×{g} = {f['tokens']}\n"
                               f"each {p}·{p}·3 = {f['patch_values']} values", va="top")
    emb = _box(ax, 5.05, y1, 1.55, 0.8, f"linear projection\n{f['patch_values']} → {d}\n"
                                        f"({p}×{p} conv, stride {p})", "embed")
    _arrow(ax, (4.15, y1), emb.left)
    plus = _op(ax, 6.25, y1, "+")
    _arrow(ax, emb.right, plus.left)
    pos = _box(ax, 6.25, 4.95, 2.1, 0.5, f"cls token + learned position\nembedding ({1 + f['tokens']}×{d})",
               "embed", fs=FS - 0.5)
    _arrow(ax, pos.bottom, plus.top)
    seq = _slab(ax, 6.95, y1 - 0.35, 0.9, 0.7, 0.25, text=f"tokens\n{1 + f['tokens']}×{d}\n(cls + {g}·{g})")
    _arrow(ax, plus.right, (seq.x, y1))
    # wrap to row 2, into the first LayerNorm
    xin, r1, r2 = 0.8, 1.85, 1.05
    _path(ax, [(seq.x + seq.w + 0.05, y1), (9.6, y1), (9.6, 2.82), (xin, 2.82), (xin, r1 + 0.21)])
    # Row 2: the transformer and the decoder.
    _frame(ax, 0.25, 0.45, 3.95, 2.2, f"transformer layer × {f['depth']} (pre-norm)", color=ROLES["attn"][1])
    _text(ax, 4.35, 2.45, "(MLA also reads " + ", ".join(f"Z{_sup(i)}" for i in f["mla_layers"][:-1]) + ")",
          fs=8, ha="left", va="top", color=GREY)
    for yy, name, role in ((r1, f"multi-head self-attention\n{f['heads']} heads × {d // f['heads']}", "attn"),
                           (r2, f"MLP {d}→{f['hidden']}→{d}\nGELU", "mlp")):
        ln = _box(ax, xin, yy, 0.5, 0.42, "LN", "norm")
        blk = _box(ax, 2.15, yy, 1.9, 0.55, name, role, fs=FS - 0.5)
        s = _op(ax, 3.6, yy, "+")
        _arrow(ax, ln.right, blk.left)
        _arrow(ax, blk.right, s.left)
    # residuals: around the attention (above it), then around the MLP (left and below)
    ax.add_patch(Circle((xin, r1 + 0.4), 0.035, color=GREY))
    _path(ax, [(xin, r1 + 0.4), (3.6, r1 + 0.4), (3.6, r1 + 0.13)], color=GREY, lw=1.0)
    _path(ax, [(3.6, r1 - 0.13), (3.6, r1 - 0.4), (xin, r1 - 0.4), (xin, r2 + 0.21)])
    ax.add_patch(Circle((xin, r1 - 0.4), 0.035, color=GREY))
    _path(ax, [(xin, r1 - 0.4), (0.4, r1 - 0.4), (0.4, r2 - 0.42), (3.6, r2 - 0.42), (3.6, r2 - 0.13)],
          color=GREY, lw=1.0)
    y2 = 1.45
    z = _slab(ax, 4.6, y2 - 0.6, 0.9, 0.9, 0.5, text=f"Z{_sup(f['depth'])}: drop cls, reshape\n"
                                                    f"{_shape(g, g, d)}\n(H/{p} × W/{p} × {d})")
    _path(ax, [(3.6 + 0.13, r2), (4.3, r2), (4.3, y2 - 0.15), (z.x, y2 - 0.15)])
    dec = _box(ax, 6.85, y2, 1.35, 0.9, "decoder\nNaive · PUP · MLA\n(next figure)", "conv")
    _arrow(ax, (z.x + z.w + 0.05, y2 - 0.15), (dec.x, y2 - 0.15))
    out = _slab(ax, 8.2, y2 - 0.6, 1.25, 1.25, 0.12, role="head", text=f"logits\n{_shape(SIZE, SIZE, K)}\n"
                                                                     f"(K = {K} classes)")
    _arrow(ax, (dec.x + dec.w, y2 - 0.15), (out.x, y2 - 0.15))
    _legend(ax, ["data", "embed", "attn", "mlp", "norm", "conv", "head"], 0.3, 0.15)
    return fig


def _column(ax, cx, y, steps, w, step=0.55, h=0.36, fs=FS - 0.5, shape_dx=0.08):
    """Boxes from top to bottom joined by arrows; ``steps`` = [(text, role, shape printed after or None)].

    The shape after a box is written right of the arrow leaving it. Returns the boxes.
    """
    boxes = []
    for i, (text, role, shape) in enumerate(steps):
        b = _box(ax, cx, y - i * step, w, h, text, role, fs=fs)
        if boxes:
            _arrow(ax, boxes[-1].bottom, b.top)
        boxes.append(b)
        if shape and i + 1 < len(steps):
            _text(ax, cx + shape_dx, y - (i + 0.5) * step, shape, fs=8, ha="left", color=GREY)
    return boxes


def setr_decoders() -> Figure:
    """SETR's three decoders as segedu (= the official code) builds them, at 512x512 with K = 150."""
    f = _setr_facts()
    g, d, c = f["grid"], f["dim"], f["up_channels"]
    fig, ax = _canvas(11.0, 7.6, f"SETR's three decoders on the {_shape(g, g, d)} token map "
                                 f"(ViT-L, {SIZE}×{SIZE}, K = {K})")
    top = 6.75
    # Naive
    _text(ax, 1.2, 7.15, "Naive", fs=11, fontweight="bold")
    zn = f"Z{_sup(f['naive_layer'])}"
    _column(ax, 1.2, top, [
        (f"{zn}\n{_shape(g, g, d)}", "data", None),
        ("LayerNorm", "norm", None),
        (f"1×1 conv {d}→{f['naive_channels']}\nBN, ReLU", "conv", _shape(g, g, f["naive_channels"])),
        (f"1×1 conv {f['naive_channels']}→{K}", "head", _shape(g, g, K)),
        (f"bilinear ×{SIZE // g}", "resample", _shape(SIZE, SIZE, K)),
        (f"{_shape(SIZE, SIZE, K)}", "head", None),
    ], w=1.7, step=0.82, h=0.46)
    # PUP
    _text(ax, 3.75, 7.15, "PUP: progressive upsampling", fs=11, fontweight="bold")
    zp = f"Z{_sup(f['pup_layer'])}"
    steps = [(f"{zp}  {_shape(g, g, d)}", "data", None), ("LayerNorm", "norm", None)]
    size, cin = g, d
    for i in range(f["pup_convs"]):
        steps.append((f"3×3 conv {cin}→{c}, BN, ReLU", "conv", _shape(size, size, c)))
        cin = c
        if i + 1 < f["pup_convs"]:
            size *= f["pup_scale"]
            steps.append((f"bilinear ×{f['pup_scale']}", "resample", _shape(size, size, c)))
    steps.append((f"1×1 conv {c}→{K}", "head", _shape(size, size, K)))
    size *= f["pup_scale"]
    steps.append((f"bilinear ×{f['pup_scale']}", "resample", _shape(size, size, K)))
    steps.append((_shape(size, size, K), "head", None))
    _column(ax, 3.35, top, steps, w=2.0, step=0.5, h=0.32, shape_dx=0.1)
    # MLA
    x0 = 5.35
    _text(ax, 8.15, 7.15, "MLA: multi-level feature aggregation", fs=11, fontweight="bold")
    layers = f["mla_layers"]
    xs = [x0 + 0.7 + i * 1.4 for i in range(len(layers))]
    mc, mh = f["mla_channels"], f["mla_head"]
    _frame(ax, x0 - 0.02, 3.55, 5.6, 2.75, "neck", color=GREY)
    for yy, shp in ((5.28, _shape(g, g, mc)), (3.45, _shape(g, g, mc)), (2.75, _shape(g, g, mh))):
        _text(ax, x0 - 0.08, yy, shp, fs=8, ha="right", color=GREY)
    ysum = 5.05
    for i, (x, layer) in enumerate(zip(xs, layers)):
        inp = _box(ax, x, top, 1.3, 0.46, f"Z{_sup(layer)}\n{_shape(g, g, d)}", "data", fs=8)
        proj = _box(ax, x, 5.75, 1.3, 0.6, f"LN, 1×1 conv\n{d}→{mc}\nBN, ReLU", "conv", fs=8)
        _arrow(ax, inp.bottom, proj.top)
        if i < len(layers) - 1:
            sm = _op(ax, x, ysum, "+")
            _arrow(ax, proj.bottom, sm.top)
        else:
            ax.plot([x, x], [proj.y, ysum], color=INK, lw=1.2)
    for i in range(len(layers) - 1):  # top-down: the deeper level flows into the shallower one
        _arrow(ax, (xs[i + 1] - (0.13 if i + 1 < len(layers) - 1 else 0), ysum), (xs[i] + 0.13, ysum))
    _text(ax, (xs[0] + xs[1]) / 2, ysum + 0.04, "top-down sums", fs=8, va="bottom", color=GREY)
    stream_steps = [
        (f"3×3 conv {mc}→{mc}\nBN, ReLU", "conv", 4.1),
        (f"3×3 conv {mc}→{mh}\nBN, ReLU", "conv", 3.1),
        (f"3×3 conv {mh}→{mh}\nBN, ReLU", "conv", 2.4),
        (f"bilinear ×4\n→ {_shape(4 * g, 4 * g, mh)}", "resample", 1.76),
    ]
    for i, x in enumerate(xs):
        prev = (x, ysum - (0.13 if i < len(layers) - 1 else 0))
        for text, role, yy in stream_steps:
            b = _box(ax, x, yy, 1.3, 0.5 if role == "conv" else 0.44, text, role, fs=8)
            _arrow(ax, prev, b.top)
            prev = b.bottom
        _arrow(ax, prev, (x, 1.38))
    cat = _box(ax, (xs[0] + xs[-1]) / 2, 1.2, xs[-1] - xs[0] + 1.3, 0.36,
               f"concatenate [{', '.join(f'Z{_sup(i)}' for i in layers)}]  →  "
               f"{_shape(4 * g, 4 * g, len(layers) * mh)}", "resample", fs=8)
    k = f["mla_cls_kernel"]
    cls = _box(ax, cat.cx - 1.3, 0.58, 2.2, 0.36,
               f"{k}×{k} conv {len(layers) * mh}→{K}  →  {_shape(4 * g, 4 * g, K)}", "head", fs=8)
    _arrow(ax, (cls.cx, cat.y), cls.top)
    up = _box(ax, cat.cx + 1.45, 0.58, 2.0, 0.36, f"bilinear ×4 → {_shape(SIZE, SIZE, K)}", "resample", fs=8)
    _arrow(ax, cls.right, up.left)
    _legend(ax, ["data", "norm", "conv", "resample", "head"], 0.3, 0.15)
    return fig


# ----------------------------------------------------------------------------------------------
# The hierarchical encoders (Swin, MiT, MSCAN): one layout, four stage columns and their features.
# ----------------------------------------------------------------------------------------------

_X0, _STAGE_W, _GAP, _Y_TOP, _Y_FEAT = 1.35, 2.15, 0.25, 6.45, 3.2
_FEAT = [(0.72, 0.72, 0.1), (0.54, 0.54, 0.16), (0.4, 0.4, 0.22), (0.28, 0.28, 0.28)]


def _stages(ax, stage_boxes, features, label):
    """Image, then four stage columns, each a list of (text, role, height) boxes from the top, each with
    its output feature map drawn as a slab below it. Returns (stage frames, slabs)."""
    frames, slabs = [], []
    img = _box(ax, 0.6, _Y_TOP - 1.0, 0.8, 0.8, f"image\n{SIZE}×{SIZE}\n×3", "data", fs=8)
    _text(ax, 0.15, 4.2, label, fs=10, ha="left", fontweight="bold", color=ROLES["attn"][1])
    for i, boxes in enumerate(stage_boxes):
        x = _X0 + i * (_STAGE_W + _GAP)
        total = sum(h for _, _, h in boxes) + 0.12 * (len(boxes) - 1) + 0.45
        fr = _frame(ax, x, _Y_TOP - total, _STAGE_W, total, f"stage {i + 1}", color=GREY)
        frames.append(fr)
        yy = _Y_TOP - 0.38
        prev = None
        for text, role, h in boxes:
            b = _box(ax, fr.cx, yy - h / 2, _STAGE_W - 0.16, h, text, role, fs=8)
            if prev is not None:
                _arrow(ax, prev.bottom, b.top)
            prev = b
            yy -= h + 0.12
        w, h, dd = _FEAT[i]
        slab = _slab(ax, fr.cx - (w + 0.55 * dd) / 2, _Y_FEAT, w, h, dd, text=features[i])
        _arrow(ax, (fr.cx, fr.y), (fr.cx, _Y_FEAT + h + 0.45 * dd + 0.03))
        slabs.append(slab)
        if i:
            _arrow(ax, (frames[i - 1].x + _STAGE_W, _Y_TOP - 0.7), (fr.x, _Y_TOP - 0.7))
        else:
            _arrow(ax, img.right, (fr.x, img.cy))
    return frames, slabs


def _mlp_decoder_rows(ax, frames, linear_text, strides, E, fuse_text, cls_text, out_text, name,
                      cat_text, note):
    """The all-MLP decoder under four stage columns: per-stage layer, upsample to H/4, concat, fuse, classify."""
    for i, fr in enumerate(frames):
        m = _box(ax, fr.cx, 2.25, _STAGE_W - 0.3, 0.44, linear_text[i], "mlp", fs=8)
        _arrow(ax, (fr.cx, _Y_FEAT - 0.4), m.top)
        u = _box(ax, fr.cx, 1.62, _STAGE_W - 0.3, 0.36, f"upsample ×{strides[i] // 4} → "
                 f"{_shape(SIZE // 4, SIZE // 4, E)}", "resample", fs=8)
        _arrow(ax, m.bottom, u.top)
        _arrow(ax, u.bottom, (fr.cx, 1.24))
    x_left, x_right = frames[0].x + 0.15, frames[-1].x + _STAGE_W - 0.15
    cat = _box(ax, (x_left + x_right) / 2, 1.07, x_right - x_left, 0.34,
               f"concatenate the four maps → {_shape(SIZE // 4, SIZE // 4, 4 * E)} {cat_text}",
               "resample", fs=8)
    fuse = _box(ax, 3.3, 0.48, 2.5, 0.42, fuse_text, "mlp", fs=8)
    _arrow(ax, (fuse.cx, cat.y), fuse.top)
    cls = _box(ax, 6.1, 0.48, 2.3, 0.42, cls_text, "head", fs=8)
    _arrow(ax, fuse.right, cls.left)
    _text(ax, 7.45, 0.48, out_text, fs=8, ha="left")
    _arrow(ax, cls.right, (7.4, 0.48))
    _text(ax, 0.15, 1.85, name, fs=10, ha="left", fontweight="bold", color=ROLES["mlp"][1])
    _text(ax, 10.9, 0.48, note, fs=8, ha="right", color=GREY)


def ssformer_architecture() -> Figure:
    """SSformer: a Swin encoder (Swin-B, window 7) and the light all-MLP decoder (mmseg's SegformerHead)."""
    f = _swin_facts("b")
    C, ws, E = f["C"], f["window"], f["decoder"]
    fig, ax = _canvas(11.0, 7.0, f"SSformer: Swin-B encoder + light all-MLP decoder ({SIZE}×{SIZE}, C = {C}, "
                                 f"K = {K})")
    names = ["C", "2C", "4C", "8C"]
    stage_boxes = []
    for i in range(4):
        first = (f"patch partition 4×4×3 = 48\nlinear embedding 48→{C}\n(4×4 conv, stride 4), LN", "embed", 0.62) \
            if i == 0 else (f"patch merging: concat 2×2\ntokens, LN, Linear\n"
                            f"4·{f['dims'][i - 1]} = {4 * f['dims'][i - 1]} → {f['dims'][i]}", "resample", 0.62)
        stage_boxes.append([
            first,
            (f"Swin blocks × {f['depths'][i]}: W-MSA\nand SW-MSA alternate\nwindow {ws}, shift {ws // 2}, "
             f"{f['heads'][i]} heads", "attn", 0.62),
            (f"LN (norm{i})", "norm", 0.28),
        ])
    feats = [f"H/{s}×W/{s}×{n}\n{_shape(SIZE // s, SIZE // s, dim)}"
             for s, n, dim in zip(f["strides"], names, f["dims"])]
    frames, _ = _stages(ax, stage_boxes, feats, "Swin\nencoder")
    _mlp_decoder_rows(ax, frames, [f"1×1 conv {dim}→{E}, BN, ReLU\n(the “MLP”)" for dim in f["dims"]],
                      f["strides"], E, f"fuse: 1×1 conv {4 * E}→{E}, BN, ReLU", f"dropout, 1×1 conv {E}→{K}",
                      f"logits {_shape(SIZE // 4, SIZE // 4, K)} (H/4),\nbilinear → {_shape(SIZE, SIZE, K)}",
                      "all-MLP\ndecoder", f"(4·{E})", "C/2C/4C/8C =\n" + "/".join(map(str, f["dims"])))
    _legend(ax, ["data", "embed", "attn", "norm", "resample", "mlp", "head"], 0.3, 0.1)
    return fig


# ----------------------------------------------------------------------------------------------
# Swin's cyclic shift
# ----------------------------------------------------------------------------------------------

_REGION_COLOURS = ["#9ecae1", "#fdd0a2", "#c7e9c0", "#dadaeb", "#fcbba1", "#d9d9d9", "#fee391", "#a1d99b",
                   "#f1b6da"]


def swin_shift_data(size: int = 8, window: int = 4, shift: int = 2) -> dict:
    """What :func:`swin_shift` draws, computed by segedu's own functions.

    * ``ids``: token numbers ``[size, size]`` in the original map (row-major);
    * ``rolled_ids``: ``torch.roll(ids, (-shift, -shift))``, the map the windows are cut from;
    * ``mask``: ``shift_window_mask(size, size, window, shift)``, ``[nW, ws², ws²]`` of 0 / -100;
    * ``window_positions``: ``[nW, ws²]`` positions (row-major in the rolled map) of each window's tokens,
      from ``window_partition``;
    * ``labels``: ``[size, size]`` region of every position of the rolled map, read off the mask (two
      tokens of a window share a region iff their mask entry is 0; regions are numbered in the order
      their first token appears, row-major: the 3 x 3 numbering of ``shift_window_mask``);
    * ``labels_original``: the same regions on the original map (``labels`` rolled back by ``+shift``).
    """
    from .models.ssformer import shift_window_mask, window_partition

    ids = torch.arange(size * size).reshape(size, size)
    rolled = torch.roll(ids, shifts=(-shift, -shift), dims=(0, 1))
    mask = shift_window_mask(size, size, window, shift)
    pos = torch.arange(size * size).reshape(1, size, size, 1)
    win_pos = window_partition(pos, window).reshape(-1, window * window)  # [nW, ws²]
    first = torch.full((size * size,), -1, dtype=torch.long)
    for w, members in enumerate(win_pos):
        same = mask[w] == 0
        for j, p in enumerate(members.tolist()):
            first[p] = members[same[j]].min()  # the first position (row-major) of p's region
    order = sorted(set(first.tolist()))
    labels = torch.tensor([order.index(v) for v in first.tolist()]).reshape(size, size)
    return dict(size=size, window=window, shift=shift, ids=ids, rolled_ids=rolled, mask=mask, labels=labels,
                labels_original=torch.roll(labels, shifts=(shift, shift), dims=(0, 1)), window_positions=win_pos)


def _grid(ax, x0, y0, cell, labels, numbers, window, offset=0, title=None):
    n = labels.shape[0]
    for r in range(n):
        for c in range(n):
            ax.add_patch(Rectangle((x0 + c * cell, y0 + (n - 1 - r) * cell), cell, cell,
                                   facecolor=_REGION_COLOURS[int(labels[r, c])], edgecolor="white", linewidth=0.8))
            _text(ax, x0 + (c + 0.5) * cell, y0 + (n - 0.5 - r) * cell, str(int(numbers[r, c])), fs=8,
                  color="#333333")
    for k in range(n + 1):  # window borders (shifted by ``offset`` on the original map)
        if (k - offset) % window == 0 or k in (0, n):
            lw = 2.4 if (k - offset) % window == 0 else 1.0
            ax.plot([x0 + k * cell] * 2, [y0, y0 + n * cell], color=INK, lw=lw)
            ax.plot([x0, x0 + n * cell], [y0 + (n - k) * cell] * 2, color=INK, lw=lw)
    for region in labels.unique().tolist():  # the region number, on a badge at the region's centre
        rows, cols = (labels == region).nonzero(as_tuple=True)
        cx = x0 + (cols.float().mean().item() + 0.5) * cell
        cy = y0 + (n - 0.5 - rows.float().mean().item()) * cell
        ax.add_patch(Circle((cx, cy), 0.095, facecolor="white", edgecolor=INK, linewidth=0.9, zorder=7))
        _text(ax, cx, cy, str(region), fs=8, fontweight="bold", zorder=8)
    if title:
        _text(ax, x0 + n * cell / 2, y0 + n * cell + 0.1, title, fs=FS, va="bottom", fontweight="bold")


def _strip(ax, x0, y0, cell, n, rows=None, cols=None, color="red"):
    """Outline a strip of cells: ``rows=(r0, r1)`` (all columns) or ``cols=(c0, c1)`` (all rows)."""
    if rows:
        r0, r1 = rows
        ax.add_patch(Rectangle((x0 - 0.03, y0 + (n - r1) * cell - 0.03), n * cell + 0.06, (r1 - r0) * cell + 0.06,
                               facecolor="none", edgecolor=color, linewidth=2.4, zorder=6))
    else:
        c0, c1 = cols
        ax.add_patch(Rectangle((x0 + c0 * cell - 0.03, y0 - 0.03), (c1 - c0) * cell + 0.06, n * cell + 0.06,
                               facecolor="none", edgecolor=color, linewidth=2.4, linestyle=(0, (3, 1.5)),
                               zorder=6))


def swin_shift() -> Figure:
    """The cyclic shift of Swin's SW-MSA on an 8x8 token map, window 4, shift 2, and the mask of one window."""
    data = swin_shift_data()
    n, ws, s = data["size"], data["window"], data["shift"]
    W, H = 12.0, 5.1
    fig, ax = _canvas(W, H, f"Swin's shifted windows by cyclic shift: {n}×{n} tokens, window {ws}, shift {s}")
    red, blue = "#c0392b", "#1f5b99"
    cell, ya = 0.34, 1.45
    xa, xb = 0.45, 4.3
    side = n * cell
    _grid(ax, xa, ya, cell, data["labels_original"], data["ids"], ws, offset=s,
          title=f"(a) original map, windows shifted by {s}")
    _grid(ax, xb, ya, cell, data["labels"], data["rolled_ids"], ws,
          title=f"(b) after torch.roll(x, ({-s}, {-s})): regular windows")
    _strip(ax, xa, ya, cell, n, rows=(0, s), color=red)
    _strip(ax, xa, ya, cell, n, cols=(0, s), color=blue)
    _strip(ax, xb, ya, cell, n, rows=(n - s, n), color=red)
    _strip(ax, xb, ya, cell, n, cols=(n - s, n), color=blue)
    # the roll, between the panels
    _arrow(ax, (xa + side + 0.2, ya + side / 2), (xb - 0.2, ya + side / 2), lw=2.0)
    _text(ax, (xa + side + xb) / 2, ya + side / 2 + 0.1, "cyclic\nshift", fs=8.5, va="bottom", fontweight="bold")
    # where the strips went: arcs beside panel (b)
    ax.add_patch(FancyArrowPatch((xb + side + 0.15, ya + side - 0.05), (xb + side + 0.15, ya + s * cell / 2),
                                 arrowstyle="-|>", mutation_scale=13, color=red, linewidth=1.8,
                                 connectionstyle="arc3,rad=-0.35", shrinkA=0, shrinkB=0))
    _text(ax, xb + side + 0.62, ya + side / 2 + 0.2, f"top {s} rows\n→ bottom", fs=8.5, color=red,
          fontweight="bold", ha="left")
    ax.add_patch(FancyArrowPatch((xb + 0.05, ya - 0.15), (xb + side - s * cell / 2, ya - 0.15),
                                 arrowstyle="-|>", mutation_scale=13, color=blue, linewidth=1.8,
                                 connectionstyle="arc3,rad=0.25", shrinkA=0, shrinkB=0))
    _text(ax, xb + side / 2, ya - 0.72, f"left {s} columns → right", fs=8.5, color=blue, fontweight="bold")
    _text(ax, xa + side / 2, ya - 0.2, f"red: rows 0–{s - 1}, blue (dashed): columns 0–{s - 1}", fs=8,
          va="top", color=GREY)
    # legend of the regions
    _text(ax, 0.45, 0.55, "regions:", fs=8.5, ha="left")
    for r in range(9):
        x = 1.15 + r * 0.36
        ax.add_patch(Rectangle((x, 0.43), 0.26, 0.24, facecolor=_REGION_COLOURS[r], edgecolor=GREY, lw=0.6))
        _text(ax, x + 0.13, 0.55, str(r), fs=8)
    _text(ax, 0.45, 0.2, "Cell: token id. Colour and circled number: region of the rolled map (0–8, as in "
          "segedu.models.ssformer.shift_window_mask). A window's tokens attend to each other only "
          "within one region.", fs=8, ha="left", color=GREY)
    # (c) the mask of the last window (four regions meet there)
    w = data["mask"].shape[0] - 1
    mask = data["mask"][w]
    members = data["window_positions"][w].tolist()
    regs = [int(data["labels"].flatten()[p]) for p in members]
    toks = [str(int(data["rolled_ids"].flatten()[p])) for p in members]
    N = ws * ws
    mx, my, mc = 9.1, 1.45, 0.17
    axm = fig.add_axes((mx / W, my / H, N * mc / W, N * mc / H))
    axm.set_label("mask")
    axm.imshow((mask != 0).float().numpy(), cmap=ListedColormap(["#f7f7f7", "#3b3b3b"]), vmin=0, vmax=1,
               interpolation="nearest")
    axm.set_xticks(range(N))
    axm.set_yticks(range(N))
    axm.set_xticklabels(toks, fontsize=8, rotation=90)
    axm.set_yticklabels(toks, fontsize=8)
    for lab, reg in zip(axm.get_xticklabels() + axm.get_yticklabels(), regs + regs):
        lab.set_bbox(dict(facecolor=_REGION_COLOURS[reg], edgecolor="none", pad=0.6))
    axm.tick_params(length=0, pad=2)
    axm.set_xlabel("key token", fontsize=8.5, labelpad=2)
    axm.set_ylabel("query token", fontsize=8.5, labelpad=2)
    _text(ax, mx + N * mc / 2, my + N * mc + 0.1, f"(c) mask of window {w} (bottom right)\n"
          "dark: -100 (masked), light: 0", fs=FS, va="bottom", fontweight="bold")
    meet = sorted(set(regs))
    _text(ax, mx + N * mc / 2, 0.55, f"regions {', '.join(map(str, meet))} meet in this window:\n"
          "only pairs within one region attend", fs=8.5, va="center")
    return fig


# ----------------------------------------------------------------------------------------------
# SegFormer
# ----------------------------------------------------------------------------------------------

def segformer_architecture() -> Figure:
    """SegFormer: four MiT stages (H/4 .. H/32, C1..C4) and the all-MLP decoder, with B0's numbers."""
    f = _segformer_facts("b0")
    big = _segformer_facts("b2")
    E = f["E"]
    fig, ax = _canvas(11.0, 7.0, f"SegFormer: MiT encoder + all-MLP decoder (MiT-B0 at {SIZE}×{SIZE}, "
                                 f"N_cls = {K})")
    cin = (3,) + f["dims"][:3]
    stage_boxes = []
    for i in range(4):
        k, s = f["kernels"][i], f["strides"][i]
        stage_boxes.append([
            (f"overlapped patch embed\n{k}×{k} conv, stride {s}, pad {k // 2}\n{cin[i]}→{f['dims'][i]}, LN",
             "embed", 0.62),
            (f"blocks × {f['depths'][i]}: efficient self-\nattention (sr {f['sr'][i]}, {f['heads'][i]} "
             f"head{'s' if f['heads'][i] > 1 else ''})\n+ Mix-FFN (×{f['mlp'][i]}, 3×3 DW)", "attn", 0.62),
            ("LN", "norm", 0.28),
        ])
    feats = [f"H/{4 * 2 ** i}×W/{4 * 2 ** i}×C{_sub(i + 1)}\n"
             f"{_shape(SIZE // (4 * 2 ** i), SIZE // (4 * 2 ** i), f['dims'][i])}" for i in range(4)]
    frames, _ = _stages(ax, stage_boxes, feats, "MiT\nencoder")
    _mlp_decoder_rows(ax, frames, [f"MLP: Linear C{_sub(i + 1)}→C\n{dim} → {E}"
                                          for i, dim in enumerate(f["dims"])],
                      (4, 8, 16, 32), E, f"MLP (fuse) 4C→C: 1×1 conv, BN, ReLU", f"MLP C→N_cls: {E} → {K}",
                      f"H/4×W/4×N_cls\n{_shape(SIZE // 4, SIZE // 4, K)}", "all-MLP\ndecoder", "(H/4 × W/4 × 4C)",
                      f"B1–B5: C{_sub(1)}..C{_sub(4)} = {', '.join(map(str, big['dims']))}\n"
                      f"C = {E} (B0, B1), {big['E']} (B2–B5)")
    _legend(ax, ["data", "embed", "attn", "norm", "resample", "mlp", "head"], 0.3, 0.1)
    return fig


def mit_stage() -> Figure:
    """One MiT stage: overlapped patch embedding, then blocks of LN -> efficient attention -> LN -> Mix-FFN."""
    f = _segformer_facts("b0")
    fig, ax = _canvas(11.0, 6.4, "One MiT stage (SegFormer): overlapped patch embedding, then blocks of "
                                 "efficient self-attention and Mix-FFN")
    x = 1.3
    inp = _box(ax, x, 5.6, 2.1, 0.5, "map H×W×C_in\n(image or previous stage)", "data", fs=8)
    emb = _box(ax, x, 4.6, 2.1, 0.95, "overlapped patch embed\nconv k×k, stride s, pad k//2\n"
                                     "stage 1: 7×7, s 4, pad 3\nstages 2–4: 3×3, s 2, pad 1", "embed", fs=8)
    _arrow(ax, inp.bottom, emb.top)
    fl = _box(ax, x, 3.65, 2.1, 0.42, "flatten, LayerNorm", "norm", fs=8)
    _arrow(ax, emb.bottom, fl.top)
    tok = _box(ax, x, 2.9, 2.1, 0.5, "tokens N×C\nN = H/s · W/s", "data", fs=8)
    _arrow(ax, fl.bottom, tok.top)
    h1, sr = SIZE // 4, f["sr"][0]
    _text(ax, 0.25, 2.4, f"Example: B0, stage 1, {SIZE}×{SIZE}\n"
                         f"N = {h1}·{h1} = {h1 * h1} queries\n"
                         f"sr = {sr}: N/sr² = {h1 * h1 // sr ** 2} keys\n"
                         f"attention {h1 * h1}×{h1 * h1 // sr ** 2}\n"
                         f"instead of {h1 * h1}×{h1 * h1}\n\n"
                         f"sr = {', '.join(map(str, f['sr']))} (stages 1–4);\n"
                         f"the paper's R = sr² =\n{', '.join(str(r * r) for r in f['sr'])}", fs=8, ha="left", va="top")
    bx0, bx1 = 2.75, 10.85
    _frame(ax, bx0, 0.55, bx1 - bx0, 5.4, "block × L (B0: L = 2 in every stage)", color=ROLES["attn"][1])
    _text(ax, bx1 - 0.1, 5.89, "efficient self-attention", fs=9, ha="right", va="top", color=ROLES["attn"][1],
          fontweight="bold")
    _text(ax, bx1 - 0.1, 2.95, "Mix-FFN", fs=9, ha="right", va="top", color=ROLES["mlp"][1], fontweight="bold")
    xr = bx0 + 0.35  # the residual stream runs down this line
    ya = 4.3
    _path(ax, [tok.right, (bx0 + 0.15, tok.cy), (bx0 + 0.15, ya), (xr + 0.3, ya)])
    ln1 = _box(ax, xr + 0.6, ya, 0.55, 0.38, "LN", "norm", fs=8)
    xb = ln1.x + ln1.w + 0.3  # branch point after the LN
    q = _box(ax, 5.3, ya, 1.3, 0.5, "Q = Linear(x)\nN×C", "mlp", fs=8)
    _arrow(ax, ln1.right, q.left)
    ax.add_patch(Circle((xb, ya), 0.035, color=INK))
    red = _box(ax, 5.75, 5.2, 2.1, 0.62, "reshape H×W×C, conv sr×sr,\nstride sr, flatten, LN\n"
                                        "N → N/sr² tokens", "conv", fs=8)
    _path(ax, [(xb, ya), (xb, red.cy), red.left])
    kv = _box(ax, 7.75, 5.2, 1.45, 0.5, "K, V = Linear\n(N/sr²)×C each", "mlp", fs=8)
    _arrow(ax, red.right, kv.left)
    att = _box(ax, 7.75, ya, 1.7, 0.62, "softmax(QKᵀ/√d)·V\nN × N/sr² weights\nper head", "attn", fs=8)
    _arrow(ax, q.right, att.left)
    _arrow(ax, kv.bottom, att.top)
    proj = _box(ax, 9.25, ya, 0.9, 0.5, "Linear\nN×C", "mlp", fs=8)
    _arrow(ax, att.right, proj.left)
    s1 = _op(ax, 10.1, ya, "+")
    _arrow(ax, proj.right, s1.left)
    ax.add_patch(Circle((xr, ya), 0.035, color=GREY))
    _path(ax, [(xr, ya), (xr, 3.6), (10.1, 3.6), (10.1, ya - 0.13)], color=GREY, lw=1.0)
    # Mix-FFN row
    yf = 2.1
    _path(ax, [s1.right, (10.55, ya), (10.55, 3.2), (xr, 3.2), (xr, yf), (xr + 0.3, yf)])
    ln2 = _box(ax, xr + 0.6, yf, 0.55, 0.38, "LN", "norm", fs=8)
    fc1 = _box(ax, 4.75, yf, 1.3, 0.5, "Linear C→4C\nN×4C", "mlp", fs=8)
    _arrow(ax, ln2.right, fc1.left)
    dw = _box(ax, 6.45, yf, 1.7, 0.62, "reshape H×W×4C,\n3×3 depth-wise\nconv, flatten", "conv", fs=8)
    _arrow(ax, fc1.right, dw.left)
    ge = _box(ax, 7.85, yf, 0.7, 0.38, "GELU", "norm", fs=8)
    _arrow(ax, dw.right, ge.left)
    fc2 = _box(ax, 9.05, yf, 1.3, 0.5, "Linear 4C→C\nN×C", "mlp", fs=8)
    _arrow(ax, ge.right, fc2.left)
    s2 = _op(ax, 10.05, yf, "+")
    _arrow(ax, fc2.right, s2.left)
    ax.add_patch(Circle((xr, yf), 0.035, color=GREY))
    _path(ax, [(xr, yf), (xr, 1.4), (10.05, 1.4), (10.05, yf - 0.13)], color=GREY, lw=1.0)
    _text(ax, xr + 0.2, 1.47, "the 3×3 conv's zero padding leaks position: no positional embedding is needed",
          fs=8, ha="left", va="bottom", color=GREY)
    _path(ax, [s2.right, (10.55, yf), (10.55, 0.95), (10.3, 0.95)])
    _text(ax, 10.2, 0.95, "after L blocks: LN, reshape → H/s × W/s × C (the stage's output)", fs=8, ha="right")
    _legend(ax, ["data", "embed", "norm", "mlp", "conv", "attn"], 0.3, 0.2)
    return fig


def all_mlp_decoder() -> Figure:
    """SegFormer's all-MLP decoder (Eq. 4): per-stage Linear to C, upsample to H/4, concat, fuse, classify."""
    f = _segformer_facts("b0")
    big = _segformer_facts("b2")
    E = f["E"]
    fig, ax = _canvas(11.0, 5.4, f"SegFormer's all-MLP decoder (Eq. 4, Fig. 2): MiT-B0 at {SIZE}×{SIZE}, "
                                 f"N_cls = {K}")
    ys = [4.35, 3.35, 2.35, 1.35]
    sizes = [(0.7, 0.7, 0.1), (0.5, 0.5, 0.16), (0.36, 0.36, 0.22), (0.26, 0.26, 0.3)]
    ups = []
    for i, yy in enumerate(ys):
        st = 4 * 2 ** i
        w, h, d = sizes[i]
        _slab(ax, 0.45 + (0.7 - w) / 2, yy - h / 2, w, h, d)
        _text(ax, 1.45, yy + 0.12, f"F{_sub(i + 1)}: H/{st}×W/{st}×C{_sub(i + 1)}", fs=8.5, ha="left")
        _text(ax, 1.45, yy - 0.15, _shape(SIZE // st, SIZE // st, f["dims"][i]), fs=8, ha="left", color=GREY)
        m = _box(ax, 4.15, yy, 1.55, 0.48, f"Linear C{_sub(i + 1)}→C\n{f['dims'][i]} → {E}", "mlp", fs=8)
        _arrow(ax, (3.1, yy), m.left)
        u = _box(ax, 6.05, yy, 1.55, 0.48, f"upsample ×{2 ** i}\n→ H/4×W/4×C", "resample", fs=8)
        _arrow(ax, m.right, u.left)
        ups.append(u)
    cat = _op(ax, 7.35, 2.85, "C")
    for u in ups:
        _arrow(ax, u.right, (cat.cx - 0.1, cat.cy + (0.1 if u.cy > cat.cy else -0.1)))
    _text(ax, 7.58, 2.85, f"concat\nH/4×W/4×4C\n{_shape(SIZE // 4, SIZE // 4, 4 * E)}", fs=8, ha="left")
    fuse = _box(ax, 8.55, 1.75, 1.5, 0.62, "MLP (fuse)\nLinear 4C→C\n(1×1 conv, BN, ReLU)", "mlp", fs=8)
    _path(ax, [cat.bottom, (cat.cx, fuse.cy), fuse.left])
    cls = _box(ax, 10.15, 1.75, 1.35, 0.62, f"MLP\nLinear C→N_cls\n{E} → {K}", "head", fs=8)
    _arrow(ax, fuse.right, cls.left)
    _text(ax, cls.cx, 1.3, f"M: H/4×W/4×N_cls\n{_shape(SIZE // 4, SIZE // 4, K)}", fs=8, va="top")
    _text(ax, 0.45, 0.8, "F̂ᵢ = Linear(Cᵢ, C)(Fᵢ),   F̂ᵢ = Upsample(H/4 × W/4)(F̂ᵢ),   "
                         "F = Linear(4C, C)(Concat(F̂ᵢ)),   M = Linear(C, N_cls)(F)", fs=9, ha="left")
    _text(ax, 0.45, 0.45, f"C = {E} in B0 and B1, {big['E']} in B2–B5. Official code: the per-stage layer is "
                          "nn.Linear, the concat order [F₄, F₃, F₂, F₁], dropout 0.1 before the classifier.",
          fs=8, ha="left", color=GREY)
    _legend(ax, ["data", "mlp", "resample", "head"], 0.45, 0.15)
    return fig


# ----------------------------------------------------------------------------------------------
# SegNeXt
# ----------------------------------------------------------------------------------------------

def segnext_architecture() -> Figure:
    """SegNeXt: MSCAN (4 stages of MSCA blocks) and the LightHam head on stages 2-4 (stage 1 unused)."""
    f = _segnext_facts("t")
    fig, ax = _canvas(11.0, 7.0, f"SegNeXt: MSCAN encoder + LightHam decoder (SegNeXt-T at {SIZE}×{SIZE}, "
                                 f"K = {K})")
    stage_boxes = []
    for i in range(4):
        stem = f"stem: 3×3 conv s2, BN, GELU,\n3×3 conv s2, BN (3→{f['dims'][0] // 2}→{f['dims'][0]})"
        first = (stem, "conv", 0.5) \
            if i == 0 else (f"3×3 conv, stride 2\n{f['dims'][i - 1]}→{f['dims'][i]}, BN", "conv", 0.5)
        stage_boxes.append([
            first,
            (f"MSCA blocks × {f['depths'][i]}:\nBN, 1×1, GELU, MSCA, 1×1\nBN, conv MLP (×{f['mlp'][i]})",
             "attn", 0.62),
            ("LN", "norm", 0.28),
        ])
    feats = [f"H/{4 * 2 ** i}×W/{4 * 2 ** i}×C{_sub(i + 1)}\n"
             f"{_shape(SIZE // (4 * 2 ** i), SIZE // (4 * 2 ** i), f['dims'][i])}" for i in range(4)]
    frames, _ = _stages(ax, stage_boxes, feats, "MSCAN\nencoder")
    _text(ax, frames[0].cx, 2.05, "stage 1 is not fed\nto the decoder: too\nlow-level, and stride 4\n"
                                  "would be costly", fs=8, color=GREY)
    for i in (1, 2, 3):
        cx, st = frames[i].cx, 4 * 2 ** i
        u = _box(ax, cx, 2.2, _STAGE_W - 0.3, 0.44, (f"bilinear ×{st // 8} → H/8\n" if i > 1 else
                                                     "already at H/8\n") +
                 _shape(SIZE // 8, SIZE // 8, f["dims"][i]), "resample", fs=8)
        _arrow(ax, (cx, _Y_FEAT - 0.4), u.top)
        _arrow(ax, u.bottom, (cx, 1.55))
    tot = sum(f["dims"][1:])
    x_left, x_right = frames[1].x + 0.15, frames[3].x + _STAGE_W - 0.15
    cat = _box(ax, (x_left + x_right) / 2, 1.38, x_right - x_left, 0.34,
               f"concatenate stages 2–4 → {_shape(SIZE // 8, SIZE // 8, tot)}", "resample", fs=8)
    ham = _box(ax, 6.0, 0.6, 4.3, 0.56, f"LightHam head: squeeze {tot}→{f['ham']}, Hamburger (NMF, rank "
                                        f"{f['rank']}),\nalign {f['ham']}→{f['channels']}, 1×1 conv → {K} "
                                        "(details: hamburger())", "ham", fs=8)
    _arrow(ax, (ham.cx, cat.y), ham.top)
    out = _box(ax, 9.55, 0.6, 2.0, 0.5, f"logits H/8×W/8×K\n{_shape(SIZE // 8, SIZE // 8, K)}", "head", fs=8)
    _arrow(ax, ham.right, out.left)
    _text(ax, 0.15, 1.2, "LightHam\ndecoder", fs=10, ha="left", fontweight="bold", color=ROLES["ham"][1])
    _legend(ax, ["data", "conv", "attn", "norm", "resample", "ham", "head"], 0.3, 0.1)
    return fig


def msca() -> Figure:
    """MSCA (SegNeXt Eq. 1-2, Fig. 2): 5x5 DW conv, three strip-conv branches + identity, sum, 1x1 conv, x input."""
    fig, ax = _canvas(10.5, 5.7, "MSCA: multi-scale convolutional attention (SegNeXt Eq. 1–2, Fig. 2)")
    yc = 3.0
    inp = _box(ax, 0.8, yc, 1.1, 0.5, "F\nH×W×C", "data", fs=8.5)
    dw5 = _box(ax, 2.55, yc, 1.35, 0.55, "5×5 DW conv\n(local)", "conv", fs=8.5)
    _arrow(ax, inp.right, dw5.left)
    branch_y = [4.35, 3.45, 2.55, 1.65]
    ends = []
    for yy, k in zip(branch_y, [None, 7, 11, 21]):
        if k is None:
            ax.plot([dw5.x + dw5.w, 4.1, 4.1, 6.75], [yc, yc, yy, yy], color=INK, lw=1.2)
            _text(ax, 5.5, yy + 0.08, "identity", fs=8.5, color=GREY, va="bottom")
            ends.append((6.75, yy))
            continue
        a = _box(ax, 4.85, yy, 1.1, 0.45, f"1×{k} DW", "conv", fs=8.5)
        b = _box(ax, 6.2, yy, 1.1, 0.45, f"{k}×1 DW", "conv", fs=8.5)
        _path(ax, [dw5.right, (4.1, yc), (4.1, yy), a.left])
        _arrow(ax, a.right, b.left)
        ends.append(b.right)
    s = _op(ax, 7.3, yc, "+")
    for e in ends:
        _arrow(ax, e, (s.cx - 0.09, s.cy + (0.09 if e[1] > s.cy else -0.09)))
    mix = _box(ax, 8.3, yc, 1.05, 0.55, "1×1 conv\n(channels)", "conv", fs=8.5)
    _arrow(ax, s.right, mix.left)
    mul = _op(ax, 9.35, yc, "×")
    _arrow(ax, mix.right, mul.left)
    _text(ax, 9.0, yc + 0.1, "Att", fs=9, va="bottom", fontweight="bold")
    _path(ax, [inp.top, (inp.cx, 4.95), (mul.cx, 4.95), mul.top])
    _text(ax, 5.0, 5.0, "the input F multiplies the attention map Att (element-wise, no softmax)", fs=8.5,
          va="bottom", color=GREY)
    out = _box(ax, 9.35, 2.05, 0.95, 0.48, "Out\nH×W×C", "data", fs=8.5)
    _arrow(ax, mul.bottom, out.top)
    # a strip pair composes into a full k x k kernel (of rank 1): drawn for k = 7
    c, ky, green = 0.07, 1.62, ROLES["conv"][1]
    for j in range(7):
        ax.add_patch(Rectangle((0.4 + j * c, ky + 3 * c), c, c, facecolor=green, edgecolor="white", lw=0.4))
        ax.add_patch(Rectangle((1.45, ky + j * c), c, c, facecolor=green, edgecolor="white", lw=0.4))
        for i in range(7):
            ax.add_patch(Rectangle((2.05 + j * c, ky + i * c), c, c, facecolor=green, alpha=0.55,
                                   edgecolor="white", lw=0.4))
    _text(ax, 1.15, ky + 3.5 * c, "then", fs=8)
    _text(ax, 1.78, ky + 3.5 * c, "=", fs=11)
    _text(ax, 0.3, ky - 0.1, "1×7 then 7×1: a 7×7 kernel (rank 1)\nfrom 14 weights per channel, not 49", fs=8,
          ha="left", va="top")
    _text(ax, 0.3, 0.9, "Att = Conv₁ₓ₁( Σᵢ₌₀³ Scaleᵢ( DW-Conv₅ₓ₅(F) ) ),   Out = Att ⊗ F     "
                        "(Scale₀: identity; Scale₁,₂,₃: 1×k then k×1 depth-wise, k = 7, 11, 21)",
          fs=9, ha="left")
    _text(ax, 0.3, 0.55, "A strip pair sees a k×k window with 2k weights per channel instead of k². In an MSCAN "
                         "block MSCA sits inside: 1×1 conv, GELU, MSCA, 1×1 conv, + residual.", fs=8, ha="left",
          color=GREY)
    _legend(ax, ["data", "conv"], 0.3, 0.18)
    return fig


def hamburger() -> Figure:
    """SegNeXt's LightHam head: stages 2-4 at H/8, squeeze, Hamburger (bread, NMF ham, bread), align, classify."""
    f = _segnext_facts("t")
    variants = {v: _segnext_facts(v) for v in "tsbl"}
    h8 = SIZE // 8
    tot = sum(f["dims"][1:])
    D, N, R = f["ham"], h8 * h8, f["rank"]
    fig, ax = _canvas(11.0, 6.2, f"LightHam head of SegNeXt (SegNeXt-T at {SIZE}×{SIZE}, K = {K})")
    for j, yy in enumerate([5.2, 4.55, 3.9]):
        i = j + 1
        st = 4 * 2 ** i
        _box(ax, 1.15, yy, 1.8, 0.46, f"stage {i + 1}: H/{st}×W/{st}×C{_sub(i + 1)}\n"
                                      f"{_shape(SIZE // st, SIZE // st, f['dims'][i])}", "data", fs=8)
        _arrow(ax, (2.05, yy), (2.57, yy))
    rs = _box(ax, 3.2, 4.55, 1.25, 1.75, f"bilinear\nresize\nto H/8\n({h8}×{h8})", "resample", fs=8)
    cat = _op(ax, 4.25, 4.55, "C")
    _arrow(ax, rs.right, cat.left)
    _text(ax, 4.25, 4.8, _shape(h8, h8, tot), fs=8, va="bottom", color=GREY)
    sq = _box(ax, 5.55, 4.55, 1.7, 0.62, f"squeeze\n1×1 conv {tot}→{D}\nGN(32), ReLU", "conv", fs=8)
    _arrow(ax, cat.right, sq.left)
    _frame(ax, 0.35, 0.95, 8.95, 2.35, "Hamburger", color=ROLES["ham"][1])
    yb = 2.1
    _path(ax, [sq.bottom, (sq.cx, 3.5), (0.75, 3.5), (0.75, yb), (0.95, yb)])
    lb = _box(ax, 1.75, yb, 1.55, 0.62, "lower bread\n1×1 conv (bias)\nReLU: X ≥ 0", "conv", fs=8)
    _arrow(ax, (0.95, yb), lb.left)
    nmf = _box(ax, 4.45, yb, 3.3, 1.8, "", "ham")
    _text(ax, nmf.cx, nmf.y + nmf.h - 0.12, f"ham: NMF, X ≈ B·Cᵀ (rank R = {R})", fs=8.5, va="top",
          fontweight="bold")
    # the factorisation, to scale in R
    bx, by = nmf.x + 0.2, nmf.y + 0.8
    ax.add_patch(Rectangle((bx, by), 0.9, 0.5, facecolor="white", edgecolor=INK, lw=0.9))
    _text(ax, bx + 0.45, by + 0.25, "X", fs=9)
    _text(ax, bx + 0.45, by - 0.1, f"{D}×{N}", fs=8)
    _text(ax, bx + 1.05, by + 0.25, "≈", fs=11)
    ax.add_patch(Rectangle((bx + 1.25, by), 0.16, 0.5, facecolor=ROLES["ham"][0], edgecolor=INK, lw=0.9))
    _text(ax, bx + 1.33, by + 0.25, "B", fs=8)
    _text(ax, bx + 1.33, by - 0.1, f"{D}×{R}", fs=8)
    ax.add_patch(Rectangle((bx + 1.6, by + 0.34), 0.9, 0.16, facecolor=ROLES["ham"][0], edgecolor=INK, lw=0.9))
    _text(ax, bx + 2.05, by + 0.42, "Cᵀ", fs=8)
    _text(ax, bx + 2.05, by + 0.2, f"{R}×{N}", fs=8)
    _text(ax, nmf.cx, nmf.y + 0.08, f"bases B: random; coefficients C = softmax(XᵀB)\n"
                                    f"{f['train_steps']} (train) / {f['eval_steps']} (eval) multiplicative "
                                    "updates of C and B,\nthen C once more", fs=8, va="bottom")
    _arrow(ax, lb.right, nmf.left)
    ub = _box(ax, 7.0, yb, 1.3, 0.62, "upper bread\n1×1 conv\nGN(32)", "conv", fs=8)
    _arrow(ax, nmf.right, ub.left)
    s = _op(ax, 8.05, yb, "+")
    _arrow(ax, ub.right, s.left)
    ax.add_patch(Circle((0.75, yb), 0.035, color=GREY))
    _path(ax, [(0.75, yb), (0.75, 1.15), (8.05, 1.15), s.bottom], color=GREY, lw=1.0)
    relu = _box(ax, 8.8, yb, 0.7, 0.38, "ReLU", "norm", fs=8)
    _arrow(ax, s.right, relu.left)
    al = _box(ax, 10.2, 3.0, 1.4, 0.62, f"align\n1×1 conv {D}→{f['channels']}\nGN(32), ReLU", "conv", fs=8)
    _path(ax, [relu.right, (al.cx, yb), al.bottom])
    cls = _box(ax, 10.2, 4.3, 1.4, 0.55, f"dropout 0.1\n1×1 conv {f['channels']}→{K}", "head", fs=8)
    _arrow(ax, al.top, cls.bottom)
    _text(ax, 10.2, 4.65, f"logits H/8×W/8×K\n{_shape(h8, h8, K)}", fs=8, va="bottom")
    rows = ";  ".join(f"{v.upper()}: {variants[v]['ham']} channels, R = {variants[v]['rank']}" for v in "tsbl")
    _text(ax, 0.35, 0.62, f"D = ham channels, N = H/8·W/8, R = NMF rank.  {rows}", fs=8, ha="left", color=GREY)
    _text(ax, 0.35, 0.3, "The bases B are drawn afresh at every forward pass; gradients flow through every "
                         "update (no torch.no_grad).", fs=8, ha="left", color=GREY)
    return fig


# ----------------------------------------------------------------------------------------------

DIAGRAMS = {f.__name__: f for f in (setr_architecture, setr_decoders, ssformer_architecture, swin_shift,
                                    segformer_architecture, mit_stage, all_mlp_decoder, segnext_architecture,
                                    msca, hamburger)}


def save_all(folder: str | Path = "docs/figures", dpi: int = DPI) -> list[Path]:
    """Write every diagram as ``<folder>/<name>.png`` (see :func:`png_bytes`); returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fn in DIAGRAMS.items():
        path = folder / f"{name}.png"
        path.write_bytes(png_bytes(fn(), dpi))
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in save_all(*(sys.argv[1:2] or ["docs/figures"])):
        print(p, f"{p.stat().st_size / 1024:.0f} KB")
