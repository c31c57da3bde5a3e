"""The training log: ``metrics.jsonl`` (one JSON record per line) and its plots, next to the checkpoint.

Records written by segedu.train:

* ``{"kind": "train", "step", "loss", "lr", "seconds", "images_per_s"}`` every 10 iterations (loss of
  the global batch, learning rate of the encoder's parameter group, seconds since the start of this
  call -- a resumed run starts again from 0 --, training images per second over all processes);
* ``{"kind": "val", "step", "mIoU", "mAcc", "aAcc", "IoU"}`` at every evaluation.
"""
from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure  # not pyplot: writing a file must not change a notebook's backend


def read_log(path: str | Path) -> tuple[list[dict], list[dict]]:
    """The ``train`` and ``val`` records of a metrics.jsonl, in order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training log {path} does not exist")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("kind") == "train"], [r for r in records if r.get("kind") == "val"]


def truncate_log(path: str | Path, step: int) -> list[dict]:
    """Keep the records of steps ``<= step`` (a resumed run continues from its checkpoint's step, so the
    records a killed run wrote after it would otherwise appear twice); returns them. Written atomically."""
    path = Path(path)
    if not path.is_file():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short when the process was killed mid-write
            continue
        if record.get("step", 0) <= step:
            kept.append(record)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    tmp.replace(path)
    return kept


def moving_average(values: list[float], window: int) -> list[float]:
    """Mean of the last ``window`` values at each position (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot_log(log_path: str | Path, out_path: str | Path, smooth: int = 10) -> Path:
    """Three panels against the iteration: training loss (raw and a ``smooth``-record moving average),
    learning rate (log scale: the warm-up starts at 1e-6 x lr) and validation mIoU."""
    train, val = read_log(log_path)
    steps, losses = [r["step"] for r in train], [r["loss"] for r in train]
    fig = Figure(figsize=(12, 3.2))
    ax_loss, ax_lr, ax_miou = fig.subplots(1, 3)
    ax_loss.plot(steps, losses, alpha=0.35, label="loss")
    ax_loss.plot(steps, moving_average(losses, smooth), label=f"mean of {smooth}")
    ax_loss.set(title="training loss", xlabel="iteration", ylabel="cross-entropy")
    ax_loss.legend(loc="upper right")
    ax_lr.plot(steps, [r["lr"] for r in train])
    if train and min(r["lr"] for r in train) > 0:
        ax_lr.set_yscale("log")
    ax_lr.set(title="learning rate (encoder)", xlabel="iteration", ylabel="lr")
    ax_miou.plot([r["step"] for r in val], [r["mIoU"] for r in val], marker="o")
    ax_miou.set(title="validation mIoU", xlabel="iteration", ylabel="mIoU", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(out_path, dpi=80)
    return Path(out_path)
