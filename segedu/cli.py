"""``segedu`` command line: ``train``, ``eval``, ``zoo``, ``data``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_data(args) -> None:
    from .data.synthetic import ensure_synthetic
    root = ensure_synthetic(args.root)
    print(f"synthetic ADE20K-layout data ready in {root}")


def _cmd_train(args) -> None:
    from .recipes import get_recipe
    from .report import write_report
    from .train import train
    recipe = get_recipe(args.config or f"{args.model}-ade20k").with_overrides(
        model=args.model, iters=args.iters, batch_size=args.batch_size, crop_size=args.crop, lr=args.lr)
    out = Path(args.out or f"runs/{recipe.model}")
    result = train(recipe, args.data, out, seed=args.seed, resume=args.resume, device=args.device,
                   num_workers=args.workers)
    write_report(out, args.data, recipe, result, device=args.device)


def _cmd_eval(args) -> None:
    from .report import evaluate_checkpoint
    evaluate_checkpoint(args.checkpoint, args.data, device=args.device)


def _cmd_zoo(args) -> None:
    from .zoo import format_table, zoo_table
    print(format_table(zoo_table(args.pattern, latency=args.latency)))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segedu", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("data", help="generate the synthetic ADE20K-layout data set (cached)")
    d.add_argument("--root", default="data/synthetic")
    d.set_defaults(func=_cmd_data)

    t = sub.add_parser("train", help="train a model on an ADE20K-layout folder")
    t.add_argument("--model", default="segformer-b0")
    t.add_argument("--data", required=True, help="folder with images/ and annotations/")
    t.add_argument("--config", help="recipe name (default: <model>-ade20k); see segedu.recipes")
    t.add_argument("--iters", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--crop", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--out", help="output folder (default runs/<model>)")
    t.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--workers", type=int, default=0)
    t.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="evaluate a training checkpoint (whole-image mIoU)")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--device", default=None)
    e.set_defaults(func=_cmd_eval)

    z = sub.add_parser("zoo", help="parameters and MACs of every registered model vs the papers")
    z.add_argument("--pattern", default="*")
    z.add_argument("--latency", action="store_true", help="also time one CPU forward pass")
    z.set_defaults(func=_cmd_zoo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as exc:
        print(f"segedu {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
