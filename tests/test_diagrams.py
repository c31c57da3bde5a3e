"""segedu.diagrams: every figure draws cleanly, is small and readable, and shows what the code computes.

Each figure is drawn once (module fixture). Shapes printed in the figures are checked against a forward
pass of the registered models on the meta device (no weights, no compute), with hooks on the layers;
the shifted-window picture is checked against an independent re-implementation of the official Swin
mask rule.
"""
import io
import warnings
from pathlib import Path

import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image

import segedu
from segedu import diagrams
from segedu.models.ssformer import shift_window_mask

NAMES = list(diagrams.DIAGRAMS)
DPI = 110
MAX_KB = 150


def _shape(t: torch.Tensor) -> str:
    """``[B, C, H, W]`` -> the ``H×W×C`` spelling the diagrams use."""
    _, c, h, w = t.shape
    return f"{h}×{w}×{c}"


class Drawn:
    def __init__(self, name):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # any warning (missing glyph, layout, deprecation) fails the test
            self.fig = diagrams.DIAGRAMS[name]()
            canvas = FigureCanvasAgg(self.fig)
            canvas.draw()
        self.renderer = canvas.get_renderer()
        image = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
        raw = io.BytesIO()
        image.save(raw, format="png")
        self.raw_kb = len(raw.getvalue()) / 1024
        self.size_px = image.size
        self.texts = [t for t in self.fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
        self.strings = "\n".join(t.get_text() for t in self.texts)


@pytest.fixture(scope="module")
def drawn():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = Drawn(name)
        return cache[name]

    return get


@pytest.mark.parametrize("name", NAMES)
def test_returns_a_figure_drawn_without_warnings(drawn, name):
    d = drawn(name)
    assert isinstance(d.fig, Figure)
    assert d.fig.dpi == DPI
    w, h = d.fig.bbox.size
    assert w == int(w) and h == int(h), f"{name}: {w}x{h} px is not whole (nbval's <Figure size WxH> pattern)"
    assert d.raw_kb < MAX_KB, f"{name}: {d.raw_kb:.0f} KB as a plain PNG at {DPI} dpi"


def test_png_bytes_and_inline_display(drawn):
    """``png_bytes`` (what ``save_all`` writes) and ``_repr_png_`` (what IPython shows): the same small PNG.

    A bare matplotlib Figure shows only as text in IPython unless the inline backend's printer is active;
    ours brings its PNG, and keeps the plain ``<Figure size ... Axes>`` text repr.
    """
    d = drawn("msca")
    data = diagrams.png_bytes(d.fig)
    assert len(data) / 1024 < MAX_KB
    image = Image.open(io.BytesIO(data))
    assert image.size == d.size_px  # 110 dpi: a 10.5 in wide figure is 1155 px wide
    assert round(image.info["dpi"][0]) == DPI
    assert d.fig._repr_png_() == data  # deterministic
    # what a notebook stores when the inline backend prints the figure: the same 256-colour PNG
    from IPython.core.pylabtools import print_figure
    inline = Image.open(io.BytesIO(print_figure(diagrams.msca(), "png")))
    assert inline.mode == "P" and abs(inline.width - d.size_px[0]) < 0.1 * d.size_px[0]  # tight bbox: close
    assert repr(d.fig).startswith("<Figure size ") and repr(d.fig).endswith(" Axes>")  # nbval's sanitizer form


@pytest.mark.parametrize("name", NAMES)
def test_committed_png_is_there_small_and_at_110_dpi(drawn, name):
    """docs/figures holds every diagram (``python -m segedu.diagrams`` writes them), at the figure's size."""
    path = Path(__file__).resolve().parents[1] / "docs" / "figures" / f"{name}.png"
    assert path.is_file(), f"{path} is missing: run python -m segedu.diagrams"
    assert path.stat().st_size / 1024 < MAX_KB
    with Image.open(path) as image:
        assert image.size == drawn(name).size_px, f"{path} is out of date: run python -m segedu.diagrams"
        assert round(image.info["dpi"][0]) == DPI


@pytest.mark.parametrize("name", NAMES)
def test_readable_text_inside_the_canvas_and_its_boxes(drawn, name):
    d = drawn(name)
    small = [(t.get_text(), t.get_fontsize()) for t in d.texts if t.get_fontsize() < 8]
    assert not small, f"{name}: text under 8 pt: {small[:3]}"
    fig_box = d.fig.bbox
    outside, overflow = [], []
    for t in d.texts:
        e = t.get_window_extent(d.renderer)
        if e.x0 < fig_box.x0 - 1 or e.y0 < fig_box.y0 - 1 or e.x1 > fig_box.x1 + 1 or e.y1 > fig_box.y1 + 1:
            outside.append(t.get_text())
        patch = getattr(t, "diagram_box", None)
        if patch is not None:
            b = patch.get_window_extent(d.renderer)
            if e.x0 < b.x0 + 1 or e.x1 > b.x1 - 1 or e.y0 < b.y0 + 1 or e.y1 > b.y1 - 1:
                overflow.append(t.get_text())
    assert not outside, f"{name}: text clipped by the canvas: {outside[:3]}"
    assert not overflow, f"{name}: text wider or taller than its box: {overflow[:3]}"


@pytest.mark.parametrize("name", NAMES)
def test_no_two_texts_overlap(drawn, name):
    d = drawn(name)
    boxes = [(t.get_text(), t.get_window_extent(d.renderer)) for t in d.texts]
    clashes = [(a, b) for i, (a, ea) in enumerate(boxes) for b, eb in boxes[i + 1:]
               if ea.x0 < eb.x1 - 1 and eb.x0 < ea.x1 - 1 and ea.y0 < eb.y1 - 1 and eb.y0 < ea.y1 - 1]
    assert not clashes, f"{name}: overlapping texts: {clashes[:3]}"


# ----------------------------------------------------------------------------------------------
# Content: what the figures print is what the code computes.
# ----------------------------------------------------------------------------------------------

def _meta_run(name: str, size: int = 512, hooks=(), **overrides):
    """Build ``name`` on the meta device and run encoder + decoder at ``size``; record module outputs.

    ``hooks``: attribute paths (``"decoder.convs.0"``) whose outputs are recorded.
    """
    with torch.device("meta"):
        model = segedu.build_model(name, **overrides).eval()
    seen = {}
    for path in hooks:
        module = model.get_submodule(path)
        module.register_forward_hook(lambda m, i, o, path=path: seen.setdefault(path, o))
    with torch.no_grad():
        x = torch.empty(1, 3, size, size, device="meta")
        feats = model.encoder(x)
        out = model.decoder(feats)
    return model, feats, out, seen


def test_setr_shapes(drawn):
    arch, dec = drawn("setr_architecture").strings, drawn("setr_decoders").strings
    # ViT keeps the H/16 grid in every layer: one layer gives the shapes of 24 (and builds much faster)
    hooks = [f"decoder.convs.{i}" for i in range(4)] + ["decoder.linear_pred"]
    _, feats, out, seen = _meta_run("setr-pup", hooks=hooks, depth=1, in_layer=1, aux_layers=())
    assert _shape(feats[-1]) in arch and _shape(feats[-1]) in dec  # 32×32×1024
    assert _shape(out) in dec and "512×512×150" in arch  # PUP logits at full size
    for i in range(4):  # each 3x3 conv's output: 32, 64, 128, 256 px
        assert _shape(seen[f"decoder.convs.{i}"]) in dec
    assert _shape(seen["decoder.linear_pred"]) in dec  # 256×256×150, then the last x2
    _, _, out, seen = _meta_run("setr-naive", hooks=["decoder.convs.0"], depth=1, in_layer=1, aux_layers=())
    assert _shape(seen["decoder.convs.0"]) in dec and _shape(out) in dec  # 32×32×256, 32×32×150
    model, _, out, seen = _meta_run("setr-mla", hooks=["decoder.neck", "decoder.head.streams.0"], depth=4,
                                    mla_layers=(1, 2, 3, 4))
    assert _shape(seen["decoder.neck"][0]) in dec and _shape(seen["decoder.head.streams.0"]) in dec
    assert _shape(out) in dec  # 128×128×150
    assert len(model.encoder.out_layers) == 4
    taps = segedu.registry.get_spec("setr-mla").config["mla_layers"]
    assert "concatenate [" + ", ".join(f"Z{diagrams._sup(i)}" for i in taps) + "]" in dec
    spec = segedu.registry.get_spec("setr-pup").config
    assert f"transformer layer × {spec['depth']}" in arch and f"{spec['num_heads']} heads" in arch


def _check_hierarchy(strings, name, out_size, hooks=()):
    model, feats, out, seen = _meta_run(name, hooks=hooks)
    for f in feats:
        assert _shape(f) in strings, f"{name}: feature {_shape(f)} not in the figure"
    assert _shape(out) in strings
    assert out.shape[-1] == out_size
    return model, feats, out, seen


def test_ssformer_shapes(drawn):
    s = drawn("ssformer_architecture").strings
    model, feats, _, _ = _check_hierarchy(s, "ssformer-swin-b", 128)
    E = model.decoder.linear_fuse.conv.out_channels
    assert f"128×128×{4 * E}" in s and f"1×1 conv {4 * E}→{E}" in s
    for i, stage in enumerate(model.encoder.stages):
        assert f"Swin blocks × {len(stage.blocks)}" in s
        assert f"window {stage.window_size}, shift {stage.blocks[1].shift}" in s
        if stage.downsample is not None:
            lin = stage.downsample.reduction
            assert f"{lin.in_features} → {lin.out_features}" in s


def test_segformer_shapes(drawn):
    s = drawn("segformer_architecture").strings
    model, feats, _, _ = _check_hierarchy(s, "segformer-b0", 128)
    for i, stage in enumerate(model.encoder.stages):
        conv = stage.patch_embed.proj
        k, st, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        assert f"{k}×{k} conv, stride {st}, pad {p}" in s
        assert f"sr {stage.blocks[0].attn.sr_ratio}" in s
    mlp = drawn("all_mlp_decoder").strings
    for f, lin in zip(feats, model.decoder.linear_c):
        assert f"{lin.in_features} → {lin.out_features}" in mlp and _shape(f) in mlp


def test_mit_stage_numbers(drawn):
    s = drawn("mit_stage").strings
    _, _, _, seen = _meta_run("segformer-b0", hooks=["encoder.stages.0.blocks.0.attn.sr",
                                                     "encoder.stages.0.patch_embed.proj"])
    keys = seen["encoder.stages.0.blocks.0.attn.sr"].shape[-2:].numel()
    queries = seen["encoder.stages.0.patch_embed.proj"].shape[-2:].numel()
    assert f"attention {queries}×{keys}" in s  # 16384 x 256


def test_segnext_shapes(drawn):
    s = drawn("segnext_architecture").strings
    model, feats, out, seen = _check_hierarchy(s, "segnext-t", 64, hooks=["decoder.squeeze"])
    ham = drawn("hamburger").strings
    cat_channels = model.decoder.squeeze.conv.in_channels
    assert f"64×64×{cat_channels}" in s and f"64×64×{cat_channels}" in ham
    sq = seen["decoder.squeeze"]
    nmf = model.decoder.hamburger.nmf
    assert f"{sq.shape[1]}×{sq.shape[2] * sq.shape[3]}" in ham  # X: D×N
    assert f"rank R = {nmf.rank}" in ham and f"{nmf.train_steps} (train) / {nmf.eval_steps} (eval)" in ham
    assert _shape(out) in ham
    for f in feats[1:]:
        assert _shape(f) in ham
    assert model.decoder.in_index == (1, 2, 3)  # stage 1 is not fed, as the figure says


def test_msca_kernels(drawn):
    s = drawn("msca").strings
    with torch.device("meta"):
        m = segedu.build_model("segnext-t")
    msca = m.encoder.stages[0].blocks[0].attn.msca
    assert f"{msca.conv0.kernel_size[0]}×{msca.conv0.kernel_size[1]} DW conv" in s
    for branch in msca.branches:
        (h1, w1), (h2, w2) = branch[0].kernel_size, branch[1].kernel_size
        assert f"{h1}×{w1} DW" in s and f"{h2}×{w2} DW" in s


def test_swin_shift_matches_the_code_and_the_official_rule(drawn):
    d = drawn("swin_shift")
    data = diagrams.swin_shift_data()
    n, ws, s = data["size"], data["window"], data["shift"]
    # regions: the official Swin construction (slices [0:-ws], [-ws:-s], [-s:] along each axis)
    official = torch.zeros(n, n, dtype=torch.long)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
        for wsl in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
            official[hs, wsl] = cnt
            cnt += 1
    assert torch.equal(data["labels"], official)
    assert torch.equal(data["mask"], shift_window_mask(n, n, ws, s))
    # the mask drawn in panel (c) is the last window's, and its axis labels are that window's tokens
    axm = next(a for a in d.fig.axes if a.get_label() == "mask")
    shown = torch.as_tensor(axm.images[0].get_array().data)
    assert torch.equal(shown.bool(), data["mask"][-1] != 0)
    rolled = torch.roll(torch.arange(n * n).reshape(n, n), (-s, -s), (0, 1))
    last_window = rolled[n - ws:, n - ws:].flatten().tolist()
    assert [int(t.get_text()) for t in axm.get_xticklabels()] == last_window
    # masked pairs are exactly the pairs of different regions (4 regions meet in the last window)
    regions = official[n - ws:, n - ws:].flatten()
    assert torch.equal(shown.bool(), regions[:, None] != regions[None, :])
    assert len(set(regions.tolist())) == 4
