"""The training loop, in the pieces a reader can follow: options, building, one step, the loop, checkpoints.

Where each paper's recipe enters (segedu.recipes.Recipe, docs/training.md):

* :func:`build_data` -- the mmseg ADE20K pipeline (random resize to ``recipe.scale`` x ``ratio_range``, crop with
  ``cat_max_ratio``, flip, photometric distortion) and the paper's test resize;
* :func:`build_model` -- ``recipe.build_model()``, then the ImageNet encoder the paper fine-tunes
  (``recipe.pretrained``, loaded with ``encoder_only=True`` before any step);
* :func:`build_optimizer_and_schedule` -- the official ``paramwise_cfg`` groups, AdamW or SGD, poly decay with
  warm-up to an absolute ``min_lr`` (segedu.optim);
* :func:`train_step` -- the loss with the auxiliary heads' weights (SETR 0.4) over the total batch of 16;
* :func:`run_loop` -- 160k iterations, evaluation every ``eval_every`` with the paper's test mode.

Reproducibility: the order of samples in epoch ``e`` is ``randperm(n, seed + e)`` and every sample's
augmentation is drawn from its own seed ``(seed, epoch, index)``, so the data a step sees depends only
on the step number. With the RNG states saved in the checkpoint, ``resume=True`` continues exactly where an
interrupted run stopped, and ``metrics.jsonl`` is cut back to the checkpoint's step.

Batch size: ``recipe.batch_size`` is the papers' total batch per step (16 = 2 per GPU x 8 GPUs). With
``world_size`` processes (torchrun, see segedu.distributed) and a per-process ``micro_batch``, each
process takes its ``batch_size / world_size`` samples of every global batch and runs them as
``accumulation = batch_size / (world_size * micro_batch)`` forward/backward passes, adding up the
gradients before one optimiser step.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import tempfile
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import distributed
from .data import IGNORE_INDEX, DecodedCache, SegmentationFolder, open_dataset, test_transforms, train_transforms
from .evaluate import evaluate
from .logs import plot_log, truncate_log
from .losses import total_loss
from .optim import build_optimizer, build_scheduler
from .recipes import PRETRAINED, Recipe
from .utils import seed_everything, stop_workers

LOG_EVERY = 10            # iterations between train records in metrics.jsonl, and between loss checks (host syncs)
CHECKPOINT_EVERY = 2000   # iterations between checkpoints (also written at every evaluation and at the end)
MAX_WORKERS = 8           # DataLoader workers per process at most, by default
CHECKPOINT, LOG, CURVES, LOCK = "checkpoint.pt", "metrics.jsonl", "curves.png", ".segedu-train.lock"


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


def default_workers(processes_per_node: int = 1) -> int:
    """DataLoader workers per process: this machine's usable cores shared by its training processes, one
    left for each main process, at most :data:`MAX_WORKERS`."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(MAX_WORKERS, cores // max(processes_per_node, 1) - 1))


@dataclass
class TrainOptions:
    """How to run a recipe: everything that is not the paper's recipe.

    Only ``seed`` changes the result (with the recipe); the rest is where, how fast, and what to keep.
    ``num_workers=None``: :func:`default_workers`. ``pretrained``: None = the recipe's encoder checkpoint,
    ``"none"`` = from scratch, else a file, folder or hub id read with ``pretrained_source`` (default: the
    recipe's). ``stop_after=n``: stop after n iterations of this call with a checkpoint to resume from.
    """

    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    device: str | torch.device | None = None
    num_workers: int | None = 0
    amp: bool | None = None
    progress: bool = True
    stop_after: int | None = None
    micro_batch: int | None = None
    channels_last: bool = False
    compile: bool = False
    grad_checkpointing: bool = False
    loss_chunk_rows: int | None = None
    data_cache: str | Path | None = None
    pretrained: str | None = None
    pretrained_source: str | None = None
    checkpoint_every: int = CHECKPOINT_EVERY
    log_every: int = LOG_EVERY
    deterministic: bool = False

    def __post_init__(self):
        if self.resume and self.overwrite:
            raise ValueError("--resume continues the run in --out and --overwrite replaces it; give one of them")
        for name in ("checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be a positive number of iterations, "
                                 f"got {getattr(self, name)}")


@dataclass
class TrainResult:
    out_dir: Path
    metrics: dict | None
    history: list = field(default_factory=list)
    seconds: float = 0.0
    is_main: bool = True            # rank 0 (the process that wrote the outputs)
    stopped_by: str | None = None   # "SIGINT" / "SIGTERM" when a signal ended the run early
    checkpoint: Path | None = None  # the last checkpoint written (or resumed from)
    step: int = 0                   # iterations done


class TrainForward(nn.Module):
    """``model.forward_train`` as a module's ``forward``: DistributedDataParallel (and torch.compile)
    only see calls of ``forward``, and the loss needs the auxiliary outputs as well."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> dict:
        return self.model.forward_train(images)


def train(recipe: Recipe, data_root: str | Path, out_dir: str | Path, options: TrainOptions | None = None,
          **kwargs) -> TrainResult:
    """Train ``recipe.model`` on the data set ``data_root`` names; returns the final validation metrics.

    ``kwargs`` are :class:`TrainOptions` fields (``seed=0, resume=False, device="cpu", progress=False, ...``).
    Writes to ``out_dir`` (rank 0 only): ``checkpoint.pt`` (model, optimiser, schedule, RNG, step),
    ``metrics.jsonl`` and ``curves.png``. A folder holding a checkpoint is continued only with ``resume`` and
    replaced only with ``overwrite``; a second process on the same folder is refused.
    """
    opts = dataclasses.replace(options, **kwargs) if options is not None else TrainOptions(**kwargs)
    ctx = distributed.setup(opts.device)
    try:
        with _kernel_settings(opts.deterministic), RunFolder(Path(out_dir), opts, ctx) as folder:
            return _train(recipe, data_root, folder, opts, ctx)
    finally:
        distributed.cleanup()


@contextmanager
def _kernel_settings(deterministic: bool):
    """cudnn autotuning on (the fastest kernels for each shape), or deterministic kernels on request."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled())
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = not deterministic, deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[:2]
        torch.use_deterministic_algorithms(saved[2])


class RunFolder:
    """The output folder of one run: checked writable, locked against a second process, and only continued
    (``resume``) or replaced (``overwrite``) when asked. The lock is an ``fcntl.flock`` on an open file, which
    the operating system releases when the process ends, however it ends."""

    def __init__(self, out_dir: Path, opts: TrainOptions, ctx: distributed.Context):
        self.out_dir, self.opts, self.ctx = out_dir, opts, ctx
        self.checkpoint, self.log, self.curves = out_dir / CHECKPOINT, out_dir / LOG, out_dir / CURVES
        self._lock = None

    def __enter__(self) -> RunFolder:
        problem = None
        if self.ctx.is_main:
            try:
                self._prepare()
            except (ValueError, FileNotFoundError) as exc:
                problem = exc
        if distributed.any_true(problem is not None):
            self.__exit__()
            raise problem or ValueError(f"rank 0 refused the output folder {self.out_dir}")
        return self

    def _prepare(self) -> None:
        out = self.out_dir
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file; choose a folder")
        try:
            out.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=out):
                pass
        except OSError as exc:
            raise ValueError(f"cannot write to the output folder {out} ({exc.strerror}); choose another --out") from None
        self._acquire_lock()
        try:
            self._check_checkpoint()
        except BaseException:
            self.__exit__()
            raise

    def _acquire_lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # no flock on this platform: no lock
            return
        path = self.out_dir / LOCK
        f = path.open("a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            pid = f.read().strip() or "?"
            f.close()
            raise ValueError(f"another segedu train (pid {pid}) is writing to {self.out_dir}; wait for it to "
                             f"finish or choose another --out") from None
        f.truncate(0)
        f.write(str(os.getpid()))
        f.flush()
        self._lock = f

    def _check_checkpoint(self) -> None:
        if self.checkpoint.exists():
            if self.opts.overwrite and not self.opts.resume:
                for path in (self.checkpoint, self.log, self.curves):  # only the files a run writes
                    path.unlink(missing_ok=True)
            elif not self.opts.resume:
                raise ValueError(f"{self.out_dir} already holds a training checkpoint; continue it with --resume, "
                                 f"replace it with --overwrite, or choose another --out")
        elif self.opts.resume:
            raise FileNotFoundError(f"--resume: {self.checkpoint} does not exist; start without --resume")

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            (self.out_dir / LOCK).unlink(missing_ok=True)
            self._lock.close()  # closing releases the flock
            self._lock = None


@dataclass
class Run:
    """What one training run is made of (built by :func:`_train`, used by the loop and the checkpoints)."""

    recipe: Recipe
    opts: TrainOptions
    ctx: distributed.Context
    folder: RunFolder
    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    val_set: Dataset
    micro: int
    amp: bool
    workers: int = 0                # DataLoader processes, for training and for the evaluations
    start: int = 0
    history: list = field(default_factory=list)
    saved_step: int | None = None   # the step of the checkpoint on disk, None before the first one


def _train(recipe: Recipe, data_root, folder: RunFolder, opts: TrainOptions, ctx: distributed.Context) -> TrainResult:
    device, world = ctx.device, ctx.world_size
    micro = opts.micro_batch or recipe.batch_size // world
    accumulation_steps(recipe.batch_size, world, micro)  # a clear error before anything is built
    if not opts.resume:
        pretrained_choice(recipe, opts.pretrained, opts.pretrained_source)  # a missing encoder file: say so now
    seed_everything(opts.seed, deterministic=False)  # the same seed on every process: the same initial weights
    train_set, val_set, augment = build_data(recipe, data_root, opts, ctx)
    state = ckpt.load(folder.checkpoint) if opts.resume else None
    if state is not None:
        check_resume(state, recipe, opts, folder.checkpoint)
    model = build_model(recipe, opts, ctx, pretrained=state is None)
    optimizer, scheduler = build_optimizer_and_schedule(model, recipe)
    workers = default_workers(int(os.environ.get("LOCAL_WORLD_SIZE", world))) if opts.num_workers is None \
        else opts.num_workers
    run = Run(recipe, opts, ctx, folder, model, prepare_net(model, ctx, opts.compile), optimizer, scheduler,
              val_set, micro, (device.type == "cuda") if opts.amp is None else opts.amp, workers)
    if state is not None:
        restore(run, state)
    elif ctx.is_main:
        truncate_log(folder.log, 0)  # a fresh run starts a fresh log
    # A generator of its own: creating the iterator would otherwise draw from the global RNG.
    loader = DataLoader(SeededAugment(train_set, augment, opts.seed), num_workers=workers,
                        generator=torch.Generator().manual_seed(opts.seed),
                        batch_sampler=rank_batches(len(train_set), recipe.batch_size, opts.seed, run.start,
                                                   ctx.rank, world),
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                        worker_init_fn=_leave_signals_to_the_main_process)
    batches = iter(loader)
    try:
        with StopSignals() as signals:
            return run_loop(run, batches, signals)
    finally:
        stop_workers(batches)  # its workers ignore SIGTERM: never leave them to the interpreter's exit


def _leave_signals_to_the_main_process(worker_id: int) -> None:
    """Ctrl-C and a scheduler's SIGTERM reach the whole process group: DataLoader workers ignore them, so that
    the main process (:class:`StopSignals`) can still draw its last batch and write the checkpoint."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def build_data(recipe: Recipe, data_root, opts: TrainOptions, ctx: distributed.Context):
    """Training set (with the recipe's augmentation pipeline), validation set (the paper's test resize).

    ``data_root``: an ADE20K-layout folder, parquet, save_to_disk folder or hub id (segedu.data.open_dataset).
    """
    train_set = open_dataset(data_root, "training", reduce_zero_label=recipe.reduce_zero_label,
                             num_classes=recipe.num_classes)
    if opts.data_cache is not None:
        if not isinstance(train_set, SegmentationFolder):
            raise ValueError(f"data_cache needs an ADE20K-layout folder; {data_root!r} is {type(train_set).__name__}")
        if ctx.is_main:
            DecodedCache(train_set, opts.data_cache)  # build (or check) it once ...
        if ctx.distributed:
            torch.distributed.barrier()
        train_set = DecodedCache(train_set, opts.data_cache)  # ... then every rank reads it
    val_set = open_dataset(data_root, "validation", reduce_zero_label=recipe.reduce_zero_label,
                           num_classes=recipe.num_classes,
                           transforms=test_transforms(recipe.test_short_side, recipe.test_size_divisor))
    augment = train_transforms(recipe.crop_size, scale=recipe.scale, ratio_range=recipe.ratio_range,
                               cat_max_ratio=recipe.cat_max_ratio)
    return train_set, val_set, augment


def build_model(recipe: Recipe, opts: TrainOptions, ctx: distributed.Context, pretrained: bool = True) -> nn.Module:
    """The recipe's model with its ImageNet encoder (unless resuming: the checkpoint has the weights), SyncBN
    across processes, on the device in the chosen memory format."""
    model = recipe.build_model()
    if pretrained:
        load_pretrained(model, recipe, opts, verbose=ctx.is_main)
    if opts.grad_checkpointing:
        model.set_grad_checkpointing()
    if ctx.distributed:
        model = distributed.convert_sync_batchnorm(model, ctx.device)
    return model.to(ctx.device, memory_format=torch.channels_last if opts.channels_last else torch.preserve_format)


def pretrained_choice(recipe: Recipe, pretrained: str | None = None, source: str | None = None):
    """``(path or hub id, converter source)`` of the encoder checkpoint to load, or None for from scratch."""
    entry = PRETRAINED[recipe.pretrained] if recipe.pretrained else None
    if pretrained is None:
        if entry is None:
            return None
        where, default_source = entry.default
        if where == entry.file and not Path(where).exists():
            raise FileNotFoundError(
                f"the {recipe.model} recipe starts from {entry.file} ({entry.origin}), which is not here: download it "
                f"and pass --pretrained PATH, or --pretrained none to train from scratch")
        return where, source or default_source
    if pretrained.lower() == "none":
        return None
    if source is None:
        if entry is None:
            raise ValueError(f"--pretrained {pretrained}: give --pretrained-source (official, timm, torchvision, "
                             f"transformers or mmseg); the recipe names no encoder checkpoint")
        source = entry.hub_source if pretrained == entry.hub_id else entry.source
    return pretrained, source


def load_pretrained(model: nn.Module, recipe: Recipe, opts: TrainOptions, verbose: bool = True) -> list[str] | None:
    """Fill ``model.encoder`` from the recipe's (or ``opts.pretrained``) ImageNet checkpoint; print what
    loaded and what kept its initialisation. A checkpoint that does not fit raises CheckpointMismatchError."""
    from .weights import CheckpointMismatchError, load_checkpoint, locate, read_state_dict
    choice = pretrained_choice(recipe, opts.pretrained, opts.pretrained_source)
    if choice is None:
        return None
    where, source = choice
    try:
        left = load_checkpoint(model, read_state_dict(locate(where)), source, encoder_only=True)
    except CheckpointMismatchError as err:  # one line: the command line prints one
        report = " ".join(line.strip() for line in str(err).splitlines())
        raise CheckpointMismatchError(f"the encoder checkpoint {where} ({source}): {report} -- is --pretrained-source "
                                      f"right, and is it {recipe.model}'s encoder?") from None
    if verbose:
        encoder = [k for k in model.state_dict() if k.startswith("encoder.")]
        kept = [k for k in left if k.startswith("encoder.")]
        others = sorted({k.split(".")[0] for k in left if not k.startswith("encoder.")})
        print(f"pretrained encoder from {where} ({source}): {len(encoder) - len(kept)} of {len(encoder)} encoder "
              f"tensors loaded; kept their initialisation: {', '.join(others + kept) or 'nothing'}")
    return left


def build_optimizer_and_schedule(model: nn.Module, recipe: Recipe):
    """The official optimiser over the ``paramwise_cfg`` groups and the poly schedule (segedu.optim)."""
    optimizer = build_optimizer(model, recipe.lr, recipe.weight_decay, recipe.head_lr_mult,
                                recipe.no_decay_keywords, optimizer=recipe.optimizer, momentum=recipe.momentum)
    scheduler = build_scheduler(optimizer, recipe.iters, recipe.warmup_iters, recipe.warmup_ratio,
                                recipe.poly_power, recipe.min_lr)
    return optimizer, scheduler


def prepare_net(model: nn.Module, ctx: distributed.Context, compile: bool = False, mode: str = "default") -> nn.Module:
    """What the step calls: ``forward_train`` wrapped for DDP, compiled when asked (forward only; the loss
    runs eager). segedu.bench times this same object."""
    net = distributed.wrap_ddp(TrainForward(model), ctx)
    return torch.compile(net, mode=mode) if compile else net


def train_step(net: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               masks: torch.Tensor, micro: int | None = None, amp: bool = False,
               loss_chunk_rows: int | None = None) -> torch.Tensor:
    """One optimiser step over this process's share of the global batch, in micro-batches of ``micro``.

    Every piece divides its summed loss by the labelled pixels of the whole step (all processes), so the
    pieces add up to the loss of the undivided batch; DDP averages the gradients, hence the ``/ world``.
    Returns the global batch's loss as a device tensor: nothing here waits for the device.
    """
    world = distributed.world_size()
    micro = micro or images.shape[0]
    pieces = list(zip(images.split(micro), masks.split(micro)))
    normalizer = None
    if world > 1 or len(pieces) > 1:
        normalizer = distributed.all_reduce_sum((masks != IGNORE_INDEX).sum()).clamp(min=1) / world  # 0 px: loss 0
    optimizer.zero_grad(set_to_none=True)
    loss_sum = torch.zeros((), device=images.device)
    for k, (x, y) in enumerate(pieces):
        last = k == len(pieces) - 1
        with nullcontext() if last or not hasattr(net, "no_sync") else net.no_sync():  # all-reduce once per step
            with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
                loss = total_loss(net(x), y, model.aux_weights, normalizer=normalizer, chunk_rows=loss_chunk_rows)
            loss.backward()
        loss_sum += loss.detach()
    optimizer.step()
    return distributed.all_reduce_sum(loss_sum) / world


class LossWatch:
    """Remembers on the device the first step whose loss was not finite; :meth:`check` reads it (one host
    sync) every ``log_every`` steps and before every checkpoint, so no NaN weights are ever saved."""

    def __init__(self, device: torch.device):
        self.bad_step = torch.zeros((), dtype=torch.long, device=device)
        self.bad_loss = torch.zeros((), device=device)

    def update(self, loss: torch.Tensor, step: int) -> None:
        first = (self.bad_step == 0) & ~torch.isfinite(loss)
        self.bad_step = torch.where(first, step, self.bad_step)
        self.bad_loss = torch.where(first, loss, self.bad_loss)

    def check(self, run: Run) -> None:
        step = int(self.bad_step)
        if step:
            saved = (f"the last good checkpoint is {run.folder.checkpoint} (step {run.saved_step})"
                     if run.saved_step is not None else "no checkpoint has been written yet")
            raise FloatingPointError(f"loss is {float(self.bad_loss)} at step {step}; stopping. {saved[0].upper()}"
                                     f"{saved[1:]}")


def run_loop(run: Run, batches, signals: StopSignals) -> TrainResult:
    """Steps ``start .. recipe.iters``: a checkpoint every ``checkpoint_every`` iterations and before every
    evaluation (every ``recipe.eval_every``); a signal, ``stop_after`` or the end stop it with a checkpoint."""
    recipe, opts, ctx = run.recipe, run.opts, run.ctx
    device, is_main = ctx.device, ctx.is_main
    run.model.train()
    watch, metrics, t0 = LossWatch(device), None, time.perf_counter()
    bar = tqdm(range(run.start, recipe.iters), initial=run.start, total=recipe.iters, desc=recipe.model,
               disable=not (opts.progress and is_main), dynamic_ncols=True)
    for step in bar:
        images, masks = _next_batch(batches)
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        if opts.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        loss = train_step(run.net, run.model, run.optimizer, images, masks, run.micro, run.amp, opts.loss_chunk_rows)
        run.scheduler.step()
        done = step + 1
        watch.update(loss, done)
        evaluate_now = done % recipe.eval_every == 0 or done == recipe.iters
        pause = opts.stop_after is not None and done - run.start >= opts.stop_after
        sync = done % opts.log_every == 0 or evaluate_now or pause or done % opts.checkpoint_every == 0
        stop = signals.received  # under torchrun: agreed on by all processes, at the sync points only
        if ctx.distributed:
            stop = (stop or "a signal") if sync and distributed.any_true(stop is not None) else None
        if sync or stop:
            watch.check(run)  # raises on a NaN / infinite loss, before anything is saved
            if done % opts.log_every == 0 or done == recipe.iters:
                _log_train(run, bar, done, float(loss), time.perf_counter() - t0)
        if evaluate_now or pause or stop or done % opts.checkpoint_every == 0:
            save_checkpoint(run, done)  # before evaluating: a failing evaluation costs no training
        if evaluate_now:
            metrics = _evaluate(run, done, bar)
        if stop or (pause and done < recipe.iters):
            return _result(run, None, t0, done, stop)
    if metrics is None:  # resumed a run that had already finished
        metrics = validate(run)
    return _result(run, metrics, t0, recipe.iters)


def _next_batch(batches):
    """The next batch; a data error raised in a DataLoader worker comes back as the error it was (torch wraps
    it in "Caught ValueError in DataLoader worker process 0" and the worker's traceback)."""
    try:
        return next(batches)
    except Exception as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        if not (lines and "in DataLoader worker process" in lines[0]):
            raise
        original = lines[-1].split(": ", 1)[-1] if lines[-1].startswith(type(exc).__name__) else lines[-1]
        try:
            error = type(exc)(original)
        except Exception:
            raise exc from None
        raise error from None


def _result(run: Run, metrics, t0: float, step: int, stopped_by: str | None = None) -> TrainResult:
    return TrainResult(run.folder.out_dir, metrics, run.history, time.perf_counter() - t0, run.ctx.is_main,
                       stopped_by, run.folder.checkpoint if run.saved_step is not None else None, step)


def _log_train(run: Run, bar, done: int, loss: float, elapsed: float) -> None:
    lr = run.optimizer.param_groups[0]["lr"]
    images_per_s = (done - run.start) * run.recipe.batch_size / elapsed  # all processes together
    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.1f}")
    if run.ctx.is_main:
        _write_jsonl(run.folder.log, {"kind": "train", "step": done, "loss": loss, "lr": lr,
                                      "seconds": round(elapsed, 2), "images_per_s": round(images_per_s, 2)})


def validate(run: Run) -> dict:
    """The recipe's test protocol (whole image or sliding window) on the validation set."""
    r = run.recipe
    return evaluate(run.model, run.val_set, r.num_classes, run.ctx.device, amp=run.amp, progress=False,
                    mode=r.test_mode, crop_size=r.slide_crop, stride=r.slide_stride, num_workers=run.workers)


def _evaluate(run: Run, done: int, bar) -> dict:
    metrics = validate(run)
    record = {"kind": "val", "step": done, "mIoU": metrics["mIoU"], "mAcc": metrics["mAcc"], "aAcc": metrics["aAcc"]}
    run.history.append(record)
    if run.ctx.is_main:
        _write_jsonl(run.folder.log, {**record, "IoU": metrics["IoU"]})
        plot_log(run.folder.log, run.folder.curves)
        bar.write(f"step {done}: mIoU {metrics['mIoU']:.4f}  mAcc {metrics['mAcc']:.4f}  aAcc {metrics['aAcc']:.4f}")
    return metrics


def _write_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


# --- checkpoints ------------------------------------------------------------------------------------------

def save_checkpoint(run: Run, step: int) -> None:
    """Model, optimiser, schedule, every RNG (CUDA: one state per process), step, recipe and seed, written
    atomically by rank 0 (every rank takes part in gathering the CUDA states)."""
    rng = ckpt.rng_state(distributed.gather_cuda_rng_states(run.ctx))
    if run.ctx.is_main:
        ckpt.save_atomic({"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                          "scheduler": run.scheduler.state_dict(), "rng": rng, "step": step,
                          "recipe": run.recipe.to_dict(), "history": run.history, "seed": run.opts.seed,
                          "world_size": run.ctx.world_size}, run.folder.checkpoint)
    run.saved_step = step


RUN_FIELDS = ("seed",)  # besides the recipe: what makes a resumed run differ from the one that stopped


def check_resume(state: dict, recipe: Recipe, opts: TrainOptions, path: Path) -> None:
    """Refuse to continue a checkpoint with another recipe or seed, naming the first field that differs."""
    saved = Recipe.from_dict(state["recipe"]).to_dict()
    now = recipe.to_dict()
    for name in [f.name for f in fields(Recipe)]:
        if saved[name] != now[name]:
            raise ValueError(f"{path} was written by another recipe: {name} is {saved[name]!r} there and "
                             f"{now[name]!r} now; resume with the same settings or choose another --out")
    for name in RUN_FIELDS:
        if name in state and state[name] != getattr(opts, name):
            raise ValueError(f"{path} was written with {name} {state[name]!r}, not {getattr(opts, name)!r}; "
                             f"resume with --{name} {state[name]} or choose another --out")


def restore(run: Run, state: dict) -> None:
    """Continue from ``state``: weights, optimiser, schedule, RNG, step; the log is cut back to that step."""
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    ckpt.set_rng_state(state["rng"], run.ctx.rank)
    run.start = run.saved_step = state["step"]
    run.history = list(state["history"])
    if run.ctx.is_main:
        kept = truncate_log(run.folder.log, run.start)
        logged = [{k: r[k] for k in ("kind", "step", "mIoU", "mAcc", "aAcc")} for r in kept if r.get("kind") == "val"]
        if len(logged) > len(run.history):  # the evaluation right after the checkpoint was written
            run.history = logged
    recorded = state.get("world_size", 1)
    if recorded != run.ctx.world_size and run.ctx.is_main:
        print(f"resuming a run of {recorded} process(es) on {run.ctx.world_size}: the same global batches; "
              f"random numbers on the GPU (dropout, drop-path) continue from rank 0's state where there is no "
              f"state of this rank")


class StopSignals:
    """SIGINT / SIGTERM set :attr:`received` instead of killing the process, so that the loop writes a
    checkpoint and returns; a second signal of the same kind acts as usual. Main thread only."""

    def __init__(self):
        self.received: str | None = None
        self._saved: dict = {}

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name
        signal.signal(signum, self._saved.get(signum, signal.SIG_DFL))

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
