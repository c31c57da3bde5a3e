"""The papers' tables, measured: parameters, multiply-accumulates and output strides of every model.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, matmuls and
attention) and reported as multiply-accumulates (FLOPs / 2), the unit the papers call "GFLOPs".
"""
from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from .registry import build_model, get_spec, list_models


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def count_macs(model: torch.nn.Module, size: int | tuple[int, int]) -> int:
    """Multiply-accumulates of one forward pass on a ``3 x size x size`` image."""
    h, w = (size, size) if isinstance(size, int) else size
    model.eval()
    device = next(model.parameters()).device  # a model built on the "meta" device costs no compute
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, 3, h, w, device=device))
    return counter.get_total_flops() // 2


@torch.no_grad()
def cpu_latency(model: torch.nn.Module, size: int, repeats: int = 3) -> float:
    """Median seconds for one image on the CPU (eval mode, after one warm-up pass)."""
    model.eval()
    x = torch.randn(1, 3, size, size)
    model(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def model_row(name: str, num_classes: int = 150, size: int | None = None, latency: bool = False) -> dict:
    """Measured facts of one registered model next to the published ones."""
    spec = get_spec(name)
    size = size or spec.crop_size
    with torch.device("meta"):  # shapes only: counting needs no real weights or arithmetic
        model = build_model(name, num_classes=num_classes)
    row = {
        "model": name,
        "encoder_params": count_params(model.encoder),
        "decoder_params": count_params(model.decoder),
        "params": count_params(model),
        "published_params_m": spec.published.get("params_m"),
        "size": size,
        "gmacs": count_macs(model, size) / 1e9,
        "published_gmacs": spec.published.get("gmacs"),
        "strides": tuple(getattr(model.encoder, "strides", ())),
    }
    if latency:
        row["cpu_latency_s"] = cpu_latency(build_model(name, num_classes=num_classes), size)
    return row


def zoo_table(pattern: str = "*", latency: bool = False) -> list[dict]:
    return [model_row(n, latency=latency) for n in list_models(pattern)]


def format_table(rows: list[dict]) -> str:
    """A Markdown table (the README carries its output)."""
    lat = any("cpu_latency_s" in r for r in rows)
    head = ["model", "encoder (M)", "decoder (M)", "total (M)", "paper (M)", "input", "GMACs", "paper GMACs",
            "strides"] + (["CPU latency (s)"] if lat else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], f"{r['encoder_params'] / 1e6:.2f}", f"{r['decoder_params'] / 1e6:.2f}",
                 f"{r['params'] / 1e6:.3f}", f"{r['published_params_m'] or '-'}", f"{r['size']}x{r['size']}",
                 f"{r['gmacs']:.1f}", f"{r['published_gmacs'] or '-'}", "/".join(map(str, r["strides"]))]
        if lat:
            cells.append(f"{r['cpu_latency_s']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
