"""The training loop: data, model, optimiser + poly schedule, periodic evaluation, atomic checkpoints.

Reproducibility: the order of samples in epoch ``e`` is ``randperm(n, seed + e)`` and every sample's
augmentation is drawn from its own seed ``(seed, epoch, index)``, so the data a step sees depends only
on the step number. Together with the RNG states saved in the checkpoint, ``resume=True`` continues
exactly where an interrupted run stopped.

Batch size: ``recipe.batch_size`` is the papers' total batch per step (16 = 2 per GPU x 8 GPUs). With
``world_size`` processes (torchrun, see segedu.distributed) and a per-process ``micro_batch``, each
process takes its ``batch_size / world_size`` samples of every global batch and runs them as
``accumulation = batch_size / (world_size * micro_batch)`` forward/backward passes, adding up the
gradients before one optimiser step. One GPU with micro-batch 2 and 8 accumulation steps computes
the same step as 8 GPUs with 2 each (BatchNorm statistics aside: they are per micro-batch).
"""
from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import distributed
from .data import IGNORE_INDEX, DecodedCache, SegmentationFolder, open_dataset, test_transforms, train_transforms
from .evaluate import evaluate
from .logs import plot_log
from .losses import check_labels, total_loss
from .optim import build_optimizer, build_scheduler
from .recipes import Recipe
from .utils import seed_everything


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


def rank_batches(n: int, batch_size: int, seed: int, start_step: int, rank: int, world_size: int):
    """This process's share of every global batch of :func:`batch_indices`: samples
    ``[rank * b, (rank + 1) * b)`` with ``b = batch_size / world_size``."""
    share = batch_size // world_size
    for batch in batch_indices(n, batch_size, seed, start_step):
        yield batch[rank * share:(rank + 1) * share]


def accumulation_steps(batch_size: int, world_size: int, micro_batch: int) -> int:
    """Micro-batches per process and step so that ``world_size * micro_batch * steps == batch_size``."""
    if micro_batch < 1 or batch_size % (world_size * micro_batch):
        raise ValueError(f"the total batch {batch_size} is not a multiple of world_size x micro-batch = "
                         f"{world_size} x {micro_batch}; choose --batch-size so that it divides "
                         f"{batch_size // world_size if batch_size % world_size == 0 else batch_size}")
    return batch_size // (world_size * micro_batch)


class TrainForward(nn.Module):
    """``model.forward_train`` as a module's ``forward``: DistributedDataParallel (and torch.compile)
    only see calls of ``forward``, and the loss needs the auxiliary outputs as well."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> dict:
        return self.model.forward_train(images)


@dataclass
class TrainResult:
    out_dir: Path
    metrics: dict | None
    history: list = field(default_factory=list)
    seconds: float = 0.0
    is_main: bool = True  # rank 0 (the process that wrote the outputs)


def _write_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def train(recipe: Recipe, data_root: str | Path, out_dir: str | Path, seed: int = 0, resume: bool = False,
          device: str | torch.device | None = None, num_workers: int = 0, amp: bool | None = None,
          progress: bool = True, stop_after: int | None = None, micro_batch: int | None = None,
          channels_last: bool = False, compile: bool = False, grad_checkpointing: bool = False,
          loss_chunk_rows: int | None = None, data_cache: str | Path | None = None) -> TrainResult:
    """Train ``recipe.model`` on the data set ``data_root`` names; returns the final validation metrics.

    Writes to ``out_dir`` (rank 0 only): ``checkpoint.pt`` (model, optimiser, schedule, RNG, step),
    ``metrics.jsonl`` and ``curves.png``. ``stop_after=n`` stops after n iterations of this call with a
    checkpoint to ``resume`` from (for time-limited jobs); the result then has ``metrics=None``.

    ``micro_batch``: samples per forward pass and process (default: the whole share, no accumulation).
    Speed options: ``amp`` (bf16 autocast; default on the GPU), ``channels_last`` memory format,
    ``compile`` (torch.compile), ``grad_checkpointing`` (recompute encoder blocks in the backward),
    ``loss_chunk_rows`` (the chunked loss of segedu.losses, bands of that many rows). ``data_cache``: a
    folder for a :class:`segedu.data.DecodedCache` of the training images (folders only; built once, by
    rank 0), so that workers read decoded pixels instead of decoding JPEG/PNG.
    """
    ctx = distributed.setup(device)
    try:
        return _train(recipe, data_root, Path(out_dir), ctx, seed, resume, num_workers, amp, progress,
                      stop_after, micro_batch, channels_last, compile, grad_checkpointing, loss_chunk_rows,
                      data_cache)
    finally:
        distributed.cleanup()


def _train(recipe, data_root, out_dir, ctx, seed, resume, num_workers, amp, progress, stop_after,
           micro_batch, channels_last, compile, grad_checkpointing, loss_chunk_rows, data_cache) -> TrainResult:
    device, world = ctx.device, ctx.world_size
    amp = (device.type == "cuda") if amp is None else amp  # bf16 autocast on the GPU
    micro = micro_batch or recipe.batch_size // world
    accumulation = accumulation_steps(recipe.batch_size, world, micro)
    log_path, ckpt_path = out_dir / "metrics.jsonl", out_dir / "checkpoint.pt"
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)  # the same seed on every process: the same initial weights

    # data_root: an ADE20K-layout folder, parquet, save_to_disk folder or hub id (segedu.data.open_dataset)
    train_set = open_dataset(data_root, "training", reduce_zero_label=recipe.reduce_zero_label,
                             num_classes=recipe.num_classes)
    if data_cache is not None:
        if not isinstance(train_set, SegmentationFolder):
            raise ValueError(f"data_cache needs an ADE20K-layout folder; {data_root!r} is {type(train_set).__name__}")
        if ctx.is_main:
            DecodedCache(train_set, data_cache)  # build (or check) it once ...
        if ctx.distributed:
            torch.distributed.barrier()
        train_set = DecodedCache(train_set, data_cache)  # ... then every rank reads it
    val_set = open_dataset(data_root, "validation", reduce_zero_label=recipe.reduce_zero_label,
                           num_classes=recipe.num_classes,
                           transforms=test_transforms(recipe.test_short_side, recipe.test_size_divisor))
    augment = train_transforms(recipe.crop_size, scale=recipe.scale, ratio_range=recipe.ratio_range,
                               cat_max_ratio=recipe.cat_max_ratio)

    model = recipe.build_model()
    if grad_checkpointing:
        model.set_grad_checkpointing()
    if ctx.distributed:
        model = distributed.convert_sync_batchnorm(model, device)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    optimizer = build_optimizer(model, recipe.lr, recipe.weight_decay, recipe.head_lr_mult,
                                recipe.no_decay_keywords, optimizer=recipe.optimizer, momentum=recipe.momentum)
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
    elif log_path.exists() and ctx.is_main:
        log_path.unlink()  # a fresh run starts a fresh log

    net = distributed.wrap_ddp(TrainForward(model), ctx)  # forward(images) -> {"main", "aux"}
    if compile:
        net = torch.compile(net)

    # A generator of its own: creating the iterator would otherwise draw from the global RNG.
    loader = DataLoader(SeededAugment(train_set, augment, seed), num_workers=num_workers,
                        generator=torch.Generator().manual_seed(seed),
                        batch_sampler=rank_batches(len(train_set), recipe.batch_size, seed, start, ctx.rank, world),
                        pin_memory=device.type == "cuda", persistent_workers=num_workers > 0)
    batches = iter(loader)

    def save(step: int) -> None:
        if ctx.is_main:
            ckpt.save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                              "scheduler": scheduler.state_dict(), "rng": ckpt.rng_state(), "step": step,
                              "recipe": recipe.to_dict(), "history": history, "seed": seed}, ckpt_path)

    def validate() -> dict:
        return evaluate(model, val_set, recipe.num_classes, device, amp=amp, progress=False,
                        mode=recipe.test_mode, crop_size=recipe.slide_crop, stride=recipe.slide_stride)

    def step_loss(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Forward and backward over this process's share in ``accumulation`` micro-batches; returns
        the loss of the whole global batch (the same number on every process)."""
        if world == 1 and accumulation == 1:
            normalizer = None  # one piece: the plain mean over its labelled pixels
        else:  # every piece divides by the step's labelled pixels; DDP averages, hence / world
            normalizer = distributed.all_reduce_sum((masks != IGNORE_INDEX).sum()).clamp(min=1) / world
        loss_sum = torch.zeros((), device=device)
        for k, (x, y) in enumerate(zip(images.split(micro), masks.split(micro))):
            last = k == accumulation - 1
            with nullcontext() if last or not ctx.distributed else net.no_sync():  # all-reduce once per step
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    loss = total_loss(net(x), y, model.aux_weights, normalizer=normalizer,
                                      chunk_rows=loss_chunk_rows)
                loss.backward()
            loss_sum += loss.detach()
        return distributed.all_reduce_sum(loss_sum) / world

    model.train()
    metrics = None
    t0 = time.perf_counter()
    bar = tqdm(range(start, recipe.iters), initial=start, total=recipe.iters, desc=recipe.model,
               disable=not (progress and ctx.is_main), dynamic_ncols=True)
    for step in bar:
        images, masks = next(batches)
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        check_labels(masks, recipe.num_classes)
        optimizer.zero_grad(set_to_none=True)
        loss = step_loss(images, masks).item()
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at step {step + 1}; stopping. The last good "
                                     f"checkpoint is {ckpt_path} (step {start if not history else history[-1]['step']})")
        optimizer.step()
        scheduler.step()
        done = step + 1
        lr = optimizer.param_groups[0]["lr"]
        elapsed = time.perf_counter() - t0
        images_per_s = (done - start) * recipe.batch_size / elapsed  # all processes together
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.1f}")
        if ctx.is_main and (done % 10 == 0 or done == recipe.iters):
            _write_jsonl(log_path, {"kind": "train", "step": done, "loss": loss, "lr": lr,
                                    "seconds": round(elapsed, 2), "images_per_s": round(images_per_s, 2)})
        if done % recipe.eval_every == 0 or done == recipe.iters:
            metrics = validate()
            record = {"kind": "val", "step": done, "mIoU": metrics["mIoU"], "mAcc": metrics["mAcc"],
                      "aAcc": metrics["aAcc"]}
            history.append(record)
            if ctx.is_main:
                _write_jsonl(log_path, {**record, "IoU": metrics["IoU"]})
                plot_log(log_path, out_dir / "curves.png")
                bar.write(f"step {done}: mIoU {metrics['mIoU']:.4f}  mAcc {metrics['mAcc']:.4f}  "
                          f"aAcc {metrics['aAcc']:.4f}")
            save(done)
        if stop_after is not None and done - start >= stop_after and done < recipe.iters:
            if done % recipe.eval_every:
                save(done)
            return TrainResult(out_dir, None, history, time.perf_counter() - t0, ctx.is_main)
    if metrics is None:  # resumed a run that had already finished
        metrics = validate()
    return TrainResult(out_dir, metrics, history, time.perf_counter() - t0, ctx.is_main)
