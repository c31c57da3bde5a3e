"""The training loop: data, model, AdamW + poly schedule, periodic evaluation, atomic checkpoints.

Reproducibility: the order of samples in epoch ``e`` is ``randperm(n, seed + e)`` and every sample's
augmentation is drawn from its own seed ``(seed, epoch, index)``, so the data a step sees depends only
on the step number. Together with the RNG states saved in the checkpoint, ``resume=True`` continues
exactly where an interrupted run stopped.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .data import SegmentationFolder, test_transforms, train_transforms
from .evaluate import evaluate
from .losses import check_labels, total_loss
from .optim import build_optimizer, build_scheduler
from .recipes import Recipe
from .registry import build_model
from .utils import default_device, seed_everything


class SeededAugment(Dataset):
    """Apply ``transforms`` to ``dataset[i]`` with randomness seeded by ``(seed, epoch, i)``.

    Indices are ``(epoch, i)`` pairs (see :func:`batch_indices`). The global RNG is forked, so the
    model's own randomness (dropout, stochastic depth) is unaffected by data loading.
    """

    def __init__(self, dataset: Dataset, transforms, seed: int):
        self.dataset, self.transforms, self.seed = dataset, transforms, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: tuple[int, int]):
        epoch, i = index
        image, mask = self.dataset[i]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((self.seed, epoch, i)) % 2**63)
            return self.transforms(image, mask)


def batch_indices(n: int, batch_size: int, seed: int, start_step: int = 0):
    """Endless ``[(epoch, i), ...]`` batches; step ``s`` always gets the same batch (drop_last)."""
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise ValueError(f"the training set has {n} samples, fewer than one batch of {batch_size}")
    step = start_step
    while True:
        epoch, k = divmod(step, per_epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        yield [(epoch, int(i)) for i in order[k * batch_size:(k + 1) * batch_size]]
        step += 1


@dataclass
class TrainResult:
    out_dir: Path
    metrics: dict | None
    history: list = field(default_factory=list)
    seconds: float = 0.0


def _write_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def train(recipe: Recipe, data_root: str | Path, out_dir: str | Path, seed: int = 0, resume: bool = False,
          device: str | torch.device | None = None, num_workers: int = 0, amp: bool | None = None,
          progress: bool = True, stop_after: int | None = None) -> TrainResult:
    """Train ``recipe.model`` on an ADE20K-layout folder; returns the final validation metrics.

    Writes to ``out_dir``: ``checkpoint.pt`` (model, optimiser, schedule, RNG, step), ``metrics.jsonl``.
    ``stop_after=n`` stops after n iterations of this call with a checkpoint to ``resume`` from
    (for time-limited jobs); the result then has ``metrics=None``.
    """
    device = torch.device(device) if device is not None else default_device()
    amp = (device.type == "cuda") if amp is None else amp  # bf16 autocast on the GPU
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path, ckpt_path = out_dir / "metrics.jsonl", out_dir / "checkpoint.pt"
    seed_everything(seed)

    train_set = SegmentationFolder(data_root, "training", reduce_zero_label=recipe.reduce_zero_label,
                                   num_classes=recipe.num_classes)
    val_set = SegmentationFolder(data_root, "validation", reduce_zero_label=recipe.reduce_zero_label,
                                 num_classes=recipe.num_classes,
                                 transforms=test_transforms(recipe.test_short_side, recipe.test_size_divisor))
    augment = train_transforms(recipe.crop_size, scale=recipe.scale, ratio_range=recipe.ratio_range,
                               cat_max_ratio=recipe.cat_max_ratio)

    model = build_model(recipe.model, num_classes=recipe.num_classes).to(device)
    optimizer = build_optimizer(model, recipe.lr, recipe.weight_decay, recipe.head_lr_mult,
                                recipe.no_decay_keywords)
    scheduler = build_scheduler(optimizer, recipe.iters, recipe.warmup_iters, recipe.warmup_ratio,
                                recipe.poly_power, recipe.min_lr_ratio)
    start, history = 0, []
    if resume and ckpt_path.exists():
        state = ckpt.load(ckpt_path)
        if state["recipe"] != recipe.to_dict():
            raise ValueError(f"{ckpt_path} was written by another recipe; refusing to resume:\n"
                             f"  checkpoint: {state['recipe']}\n  now:        {recipe.to_dict()}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        start, history = state["step"], state["history"]
    elif log_path.exists():
        log_path.unlink()  # a fresh run starts a fresh log

    # A generator of its own: creating the iterator would otherwise draw from the global RNG.
    loader = DataLoader(SeededAugment(train_set, augment, seed), num_workers=num_workers,
                        generator=torch.Generator().manual_seed(seed),
                        batch_sampler=batch_indices(len(train_set), recipe.batch_size, seed, start),
                        pin_memory=device.type == "cuda", persistent_workers=num_workers > 0)
    batches = iter(loader)

    def save(step: int) -> None:
        ckpt.save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "rng": ckpt.rng_state(), "step": step,
                          "recipe": recipe.to_dict(), "history": history, "seed": seed}, ckpt_path)

    model.train()
    metrics = None
    t0 = time.perf_counter()
    bar = tqdm(range(start, recipe.iters), initial=start, total=recipe.iters, desc=recipe.model,
               disable=not progress, dynamic_ncols=True)
    for step in bar:
        images, masks = next(batches)
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        check_labels(masks, recipe.num_classes)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = total_loss(model.forward_train(images), masks, model.aux_weights)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is {loss.item()} at step {step + 1}; stopping. The last good "
                                     f"checkpoint is {ckpt_path} (step {start if not history else history[-1]['step']})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        done = step + 1
        lr = optimizer.param_groups[0]["lr"]
        elapsed = time.perf_counter() - t0
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}",
                        img_s=f"{(done - start) * recipe.batch_size / elapsed:.1f}")
        if done % 10 == 0 or done == recipe.iters:
            _write_jsonl(log_path, {"kind": "train", "step": done, "loss": loss.item(), "lr": lr,
                                    "seconds": round(elapsed, 2)})
        if done % recipe.eval_every == 0 or done == recipe.iters:
            metrics = evaluate(model, val_set, recipe.num_classes, device, amp=amp, progress=False)
            record = {"kind": "val", "step": done, "mIoU": metrics["mIoU"], "mAcc": metrics["mAcc"],
                      "aAcc": metrics["aAcc"]}
            history.append(record)
            _write_jsonl(log_path, {**record, "IoU": metrics["IoU"]})
            bar.write(f"step {done}: mIoU {metrics['mIoU']:.4f}  mAcc {metrics['mAcc']:.4f}  aAcc {metrics['aAcc']:.4f}")
            save(done)
        if stop_after is not None and done - start >= stop_after and done < recipe.iters:
            if done % recipe.eval_every:
                save(done)
            return TrainResult(out_dir, None, history, time.perf_counter() - t0)
    if metrics is None:  # resumed a run that had already finished
        metrics = evaluate(model, val_set, recipe.num_classes, device, amp=amp, progress=False)
    return TrainResult(out_dir, metrics, history, time.perf_counter() - t0)
