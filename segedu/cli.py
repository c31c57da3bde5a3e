"""``segedu`` command line: ``data``, ``train``, ``eval``, ``predict``, ``bench``, ``zoo``."""
from __future__ import annotations

import argparse
import difflib
import errno
import os
import sys
from pathlib import Path


def _cmd_data(args) -> None:
    from .data.synthetic import ensure_synthetic
    root = ensure_synthetic(args.root)  # writes or replaces only a missing, empty or segedu-made folder
    print(f"synthetic ADE20K-layout data ready in {root}")


def _cmd_train(args) -> None:
    from .recipes import get_recipe
    from .report import write_report
    from .train import CHECKPOINT_EVERY, TrainOptions, train
    classes = None
    if args.classes:  # a custom dataset: its class list sets the number of classes
        from .data import read_classes
        classes = read_classes(args.classes)
    given = dict(model=args.model, iters=args.iters, crop_size=args.crop, lr=args.lr,
                 num_classes=len(classes) if classes else None, reduce_zero_label=args.reduce_zero_label)
    recipe = get_recipe(args.config or f"{args.model or 'segformer-b0'}-ade20k").with_overrides(
        **{k: v for k, v in given.items() if v is not None})  # None: the option was not given
    out = Path(args.out or f"runs/{recipe.model}")
    options = TrainOptions(seed=args.seed, resume=args.resume, overwrite=args.overwrite, device=args.device,
                           num_workers=args.workers, micro_batch=args.batch_size, amp=args.amp,
                           channels_last=args.channels_last, compile=args.compile,
                           grad_checkpointing=args.grad_checkpointing, loss_chunk_rows=args.loss_chunk_rows,
                           data_cache=args.data_cache, pretrained=args.pretrained,
                           pretrained_source=args.pretrained_source, deterministic=args.deterministic,
                           checkpoint_every=CHECKPOINT_EVERY if args.checkpoint_every is None else args.checkpoint_every)
    result = train(recipe, args.data, out, options)
    if result.stopped_by:  # SIGINT / SIGTERM: a checkpoint was written, nothing else is
        if result.is_main:
            print(f"stopped by {result.stopped_by} after step {result.step}: wrote {result.checkpoint}; "
                  f"continue with the same command and --resume")
        raise SystemExit(130 if result.stopped_by == "SIGINT" else 143)
    if result.is_main:  # under torchrun, rank 0 alone writes the report
        write_report(out, args.data, recipe, result, device=args.device, classes=classes)


def _model_source(args) -> dict:
    """The model arguments shared by eval and predict: a training checkpoint or public weights."""
    if (args.checkpoint is None) == (args.weights is None) or (args.weights is not None and args.model is None):
        raise ValueError("give either --checkpoint CKPT, or --model NAME --weights PATH_OR_HUB_ID [--source ...]")
    return {"checkpoint": args.checkpoint, "name": args.model, "weights": args.weights, "source": args.source}


def _cmd_eval(args) -> None:
    from .data import read_classes
    from .report import evaluate_checkpoint
    evaluate_checkpoint(data=args.data, device=args.device, mode=args.mode, crop=args.slide_crop,
                        stride=args.slide_stride, classes=read_classes(args.classes) if args.classes else None,
                        reduce_zero_label=args.reduce_zero_label, out_dir=args.out, amp=args.amp,
                        num_workers=args.workers, image_column=args.image_column, label_column=args.label_column,
                        **_model_source(args))


def _cmd_predict(args) -> None:
    from .data import read_classes
    from .data.ade20k import resolve_classes
    from .predict import describe, load_model, predict_files
    model, settings, facts = load_model(device=args.device, **_model_source(args))
    settings = settings.with_mode(args.mode, args.slide_crop, args.slide_stride)
    classes = resolve_classes(facts["num_classes"], read_classes(args.classes) if args.classes else facts["classes"])
    amp = next(model.parameters()).device.type == "cuda" if args.amp is None else args.amp
    for record in predict_files(model, args.images, args.out, settings, facts["num_classes"], amp=amp):
        print(describe(record, classes))


def _cmd_bench(args) -> None:
    import json
    import shlex

    from .bench import (
        bench_loader,
        bench_model,
        format_loader,
        format_model,
        machine_info,
    )
    if not args.model and not args.data_loader:
        raise ValueError("nothing to measure: give --model NAME, --data, or both")
    from .data.io import MARKER, check_output_folder, check_replaceable
    if args.json:  # before measuring: the file must be writable and, if it exists, one segedu wrote
        if Path(args.json).is_dir():
            raise IsADirectoryError(f"--json {args.json} is a folder; give a file name such as {args.json}/bench.json")
        check_output_folder(Path(args.json).parent, "--json")
        check_replaceable([args.json], what="--json")
    out = {MARKER: "bench", "command": shlex.join(sys.argv),  # the process's command line
           "arguments": {k: v for k, v in vars(args).items() if k != "func"}, "machine": machine_info()}
    if args.data_loader:
        out["loader"] = bench_loader(args.data_root, images=args.data_images, crop=args.data_crop,
                                     workers=args.workers, cache=args.data_cache)
        print(format_loader(out["loader"]))
    if args.model:
        # Data in the projection: the measured per-worker rate times --workers (workers run in parallel).
        loader_rate = (out["loader"]["samples_per_s_per_worker"] * args.workers
                       if args.data_loader and args.workers else None)
        out["model"] = bench_model(
            args.model, args.device, batch=args.batch, size=args.size, infer_batches=args.infer_batches,
            steps=args.steps, warmup=args.warmup, amp=args.amp, compile=args.compile is not None,
            compile_mode=args.compile or "default", channels_last=args.channels_last,
            loss_chunk_rows=args.loss_chunk_rows, grad_checkpointing=args.grad_checkpointing, hf=not args.no_hf,
            peak=args.peak_tflops, loader_images_per_s=loader_rate)
        print(format_model(out["model"]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")


def _cmd_zoo(args) -> None:
    from .registry import list_models
    from .zoo import format_table, zoo_table
    if not list_models(args.pattern):
        raise ValueError(f"no model matches --pattern {args.pattern!r}; try 'segformer-*' (models: "
                         f"{', '.join(list_models())})")
    print(format_table(zoo_table(args.pattern, latency=args.latency)))


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="segedu", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show the traceback of an error (or set SEGEDU_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("data", help="generate the synthetic ADE20K-layout data set (cached)")
    d.add_argument("--root", default="data/synthetic")
    d.set_defaults(func=_cmd_data)

    t = sub.add_parser("train", help="train a model with a published recipe (torchrun for several GPUs)")
    t.add_argument("--model", default=None, help="model name (default: the recipe's; segformer-b0 without --config)")
    t.add_argument("--data", required=True,
                   help="ADE20K-layout folder, parquet file or folder, save_to_disk folder, or hub id")
    t.add_argument("--config", help="recipe name or a recipe .json file (default: <model>-ade20k); see segedu.recipes")
    t.add_argument("--iters", type=int)
    t.add_argument("--batch-size", type=int, help="micro-batch per process; the recipe's total batch is reached "
                   "by gradient accumulation (default: total / processes)")
    t.add_argument("--crop", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--out", help="output folder (default runs/<model>)")
    t.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    t.add_argument("--overwrite", action="store_true", help="replace the run in --out (its checkpoint and log)")
    t.add_argument("--checkpoint-every", type=int, metavar="N",
                   help="write <out>/checkpoint.pt every N iterations (default 2000; also at every evaluation)")
    t.add_argument("--pretrained", metavar="PATH|HUB_ID|none",
                   help="encoder checkpoint to start from (default: the recipe's, see docs/training.md; none: scratch)")
    t.add_argument("--pretrained-source", choices=("official", "timm", "torchvision", "transformers", "mmseg"),
                   help="layout of --pretrained (default: the recipe's)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--workers", type=int, default=None,
                   help="DataLoader processes (default: the machine's cores less one, at most 8)")
    t.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels (torch.use_deterministic_algorithms; default: cudnn autotuning)")
    t.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    t.add_argument("--classes", help="custom dataset: text file of class names, one per line")
    t.add_argument("--reduce-zero-label", action=argparse.BooleanOptionalAction, default=None,
                   help="shift labels by -1 (0 -> 255 ignore); default: the recipe's (on for ADE20K)")
    speed = t.add_argument_group("speed options")
    speed.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                       help="bf16 autocast (default: on for cuda)")
    speed.add_argument("--channels-last", action="store_true", help="NHWC memory format for convolutions")
    speed.add_argument("--compile", action="store_true", help="torch.compile the training forward")
    speed.add_argument("--grad-checkpointing", action="store_true",
                       help="recompute encoder blocks in the backward pass (less memory, ~1 more forward)")
    speed.add_argument("--loss-chunk-rows", type=int, default=None,
                       help="chunked loss: upsample and score this many label rows at a time")
    speed.add_argument("--data-cache", metavar="DIR", default=None,
                       help="read training images from a pre-decoded uint8 cache in DIR (built on first use)")
    t.set_defaults(func=_cmd_train)

    def model_and_test_arguments(q: argparse.ArgumentParser) -> None:  # shared by eval and predict
        q.add_argument("--checkpoint", help="segedu training checkpoint (its recipe gives the test setting)")
        q.add_argument("--model", help="registered model name, with --weights for a public checkpoint")
        q.add_argument("--weights", help="public checkpoint: file, folder or hub id (segedu.weights.from_pretrained)")
        q.add_argument("--source", default="transformers", help="layout of --weights: transformers, official, mmseg")
        q.add_argument("--mode", choices=("whole", "slide", "ms-flip"),
                       help="test mode (default: the recipe's, or the model's paper)")
        q.add_argument("--slide-crop", type=int, help="sliding-window crop (slide mode, or the passes of ms-flip)")
        q.add_argument("--slide-stride", type=int, help="sliding-window stride")
        q.add_argument("--classes", help="text file of class names, one per line (custom datasets)")
        q.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                       help="bf16 autocast (default: on for cuda)")
        q.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")

    e = sub.add_parser("eval", help="mIoU / mAcc / aAcc and per-class IoU on the validation split")
    model_and_test_arguments(e)
    e.add_argument("--data", required=True,
                   help="ADE20K-layout folder, parquet file or folder, save_to_disk folder, or hub id")
    e.add_argument("--reduce-zero-label", action=argparse.BooleanOptionalAction, default=None,
                   help="map label 0 to ignore and v to v-1 (default: as in training; on for ADE20K)")
    e.add_argument("--out", help="also write eval_<mode>.json and class_iou_<mode>.png here")
    e.add_argument("--image-column", help="hub / parquet data: the column of the images (default: found by name)")
    e.add_argument("--label-column", help="hub / parquet data: the column of the label maps (default: found by name)")
    e.add_argument("--workers", type=int, default=0, help="DataLoader processes decoding the next images")
    e.set_defaults(func=_cmd_eval)

    pr = sub.add_parser("predict", help="label maps, colour masks and overlays for image files")
    model_and_test_arguments(pr)
    pr.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    pr.add_argument("--out", required=True, help="output folder")
    pr.set_defaults(func=_cmd_predict)

    z = sub.add_parser("zoo", help="parameters and MACs of every registered model vs the papers")
    z.add_argument("--pattern", default="*")
    z.add_argument("--latency", action="store_true", help="also time one CPU forward pass")
    z.set_defaults(func=_cmd_zoo)

    b = sub.add_parser("bench", help="training/inference speed, memory and MFU vs transformers; data-loader rate")
    b.add_argument("--model", help="registered model to time (e.g. segformer-b0)")
    b.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    b.add_argument("--batch", type=int, help="training batch (default: 16 on a GPU, 2 on the CPU)")
    b.add_argument("--size", type=int, help="square input size (default: the model's crop on a GPU, 128 on the CPU)")
    b.add_argument("--infer-batches", type=int, nargs="+", help="inference batches (default: 1 16; CPU 1 2)")
    b.add_argument("--steps", type=int, help="timed steps (default: 20 on a GPU, 3 on the CPU)")
    b.add_argument("--warmup", type=int, help="untimed steps first (default: 5 on a GPU, 1 on the CPU)")
    b.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on for cuda)")
    b.add_argument("--compile", nargs="?", const="default", metavar="MODE",
                   help="torch.compile the segedu side, optionally with a mode such as reduce-overhead "
                        "(transformers stays eager)")
    b.add_argument("--channels-last", action="store_true", help="NHWC memory format, both sides")
    b.add_argument("--loss-chunk-rows", type=int, help="segedu side: the chunked loss, as segedu train")
    b.add_argument("--grad-checkpointing", action="store_true", help="segedu side: recompute encoder blocks")
    b.add_argument("--no-hf", action="store_true", help="skip the transformers comparison")
    b.add_argument("--peak-tflops", type=float, help="peak dense bf16 TFLOP/s for MFU (default: from the GPU's name)")
    b.add_argument("--data", dest="data_loader", action="store_true",
                   help="also measure the training data pipeline (samples/s per DataLoader worker)")
    b.add_argument("--data-root", help="ADE20K-layout folder for --data (default: synthetic 512x683 scenes)")
    b.add_argument("--data-images", type=int, default=64, help="synthetic images for --data")
    b.add_argument("--data-crop", type=int, default=512)
    b.add_argument("--data-cache", action="store_true", help="read --data samples from a pre-decoded uint8 cache")
    b.add_argument("--workers", type=int, default=0,
                   help="with --data: also time a real DataLoader with this many workers, and add data loading "
                        "(per-worker rate x WORKERS) to the 160k-iteration projection")
    b.add_argument("--json", help="write every figure, the command, machine and versions to this file")
    b.set_defaults(func=_cmd_bench)
    for q in sub.choices.values():  # --debug also after the command (SUPPRESS keeps the top-level value)
        q.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


# Integer options that must be positive (or, for workers, not negative): checked before any work.
_POSITIVE = ("iters", "batch_size", "crop", "slide_crop", "slide_stride", "batch", "size", "steps", "data_images",
             "data_crop", "checkpoint_every", "loss_chunk_rows")
_NOT_NEGATIVE = ("workers", "warmup")


def _check_numbers(args) -> None:
    for name in _POSITIVE + _NOT_NEGATIVE:
        value = getattr(args, name, None)
        if isinstance(value, int) and value < (1 if name in _POSITIVE else 0):
            need = "a positive" if name in _POSITIVE else "a non-negative"
            raise ValueError(f"--{name.replace('_', '-')} must be {need} integer, got {value}")
    if getattr(args, "lr", None) is not None and not args.lr > 0:
        raise ValueError(f"--lr must be a positive number, got {args.lr}")


def _check_device(name: str | None) -> None:
    """An unknown, misspelt or absent --device fails here, naming the devices this machine has."""
    if name is None:
        return
    import torch
    known = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        near = difflib.get_close_matches(name.split(":")[0], ["cpu", "cuda", "mps"], n=1)
        hint = f"; did you mean {near[0]}?" if near else ""
        raise ValueError(f"--device {name!r} is not a device: use {' or '.join(known)}{hint}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {name}: no CUDA GPU is visible here; use --device cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available here; use {' or '.join(known)}")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name}: segedu runs on {' or '.join(known)}")


def _check_recipe_file(config: str | None) -> None:
    """A --config JSON file that cannot be read as a recipe fails here, naming the file."""
    if not config or not config.endswith(".json"):
        return
    import json

    from .recipes import get_recipe
    try:
        get_recipe(config)
    except json.JSONDecodeError as err:
        raise ValueError(f"recipe file {config} is not valid JSON ({err}); fix the file") from err
    except (TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"recipe file {config}: {err}; fix the file (see segedu.recipes.Recipe)") from err


def _check_data(args) -> None:
    """Before training or evaluation: the data exist and pair up; print what was found and skipped."""
    from .data import open_dataset
    from .data.hub import is_local_path
    if not is_local_path(str(args.data)):
        return  # a hub id: its columns and splits are checked from its metadata when it is opened
    splits = ("training", "validation") if args.command == "train" else ("validation",)
    columns = {"image_column": getattr(args, "image_column", None), "label_column": getattr(args, "label_column", None)}
    for split in splits:
        dataset = open_dataset(args.data, split, **columns)
        if os.environ.get("RANK", "0") == "0":  # under torchrun, one process says it
            print(dataset.summary())


def _check_outputs(args) -> None:
    from .data.io import check_output_folder
    if args.command in ("eval", "predict") and args.out:
        check_output_folder(args.out, "--out")


def _preflight(args) -> None:
    """Checks of the arguments that need no work: numbers, device, model name, recipe file, outputs, data."""
    _check_numbers(args)
    _check_device(getattr(args, "device", None))
    if getattr(args, "model", None):
        from .registry import get_spec
        get_spec(args.model)  # an unknown name: "Did you mean ...?" and the known names
    if args.command == "train":
        _check_recipe_file(args.config)
    _check_outputs(args)
    if args.command in ("train", "eval"):
        _check_data(args)


def _message(exc: BaseException) -> str:
    """One line for an error: its first line, the file an OSError names, and what to do where known."""
    if isinstance(exc, OSError) and exc.strerror:  # raised by the system: name the file and the cause
        where = f"{exc.filename}: " if exc.filename else ""
        text = f"{where}{exc.strerror}"
        if exc.errno == errno.ENOSPC:
            text += " (the disk is full: free some space or write to another disk)"
        elif exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            text += " (not writable: give a folder you may write to)"
    elif isinstance(exc, KeyError):
        text = f"missing entry {exc}"
    else:
        text = str(exc).strip() or type(exc).__name__
    lines = [line for line in text.splitlines() if line.strip()] or [type(exc).__name__]
    line = lines[0]
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: its last line holds the cause
        line = lines[-1].split(": ", 1)[-1]
    expected = (ValueError, OSError, KeyError, TypeError, FloatingPointError, ConnectionError, ImportError)
    if not isinstance(exc, expected) and type(exc).__name__ != "CheckpointMismatchError":
        line = f"{type(exc).__name__}: {line} (rerun with --debug for the traceback)"
    return line


def main(argv: list[str] | None = None) -> int:
    """Run one command. Bad input ends in one line on stderr and exit code 2; ``--debug`` (or
    ``SEGEDU_DEBUG=1``) shows the traceback instead."""
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("SEGEDU_DEBUG", "") not in ("", "0")
    try:
        _preflight(args)
        args.func(args)
    except KeyboardInterrupt:
        print(f"segedu {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # bad input, missing files, an offline hub id, a diverged run ...: one clear line
        if debug:
            raise
        print(f"segedu {args.command}: error: {_message(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
