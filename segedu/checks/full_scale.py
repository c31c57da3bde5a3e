"""Checks for notebook 10: going full scale (the batch plan for a world size, the ETA read from a training log)."""
from __future__ import annotations

from typing import Callable

import torch

from ._core import teaches, _diagnose, _fail, _passed

__all__ = ["check_batch_plan", "check_eta_seconds"]


def _call(where: str, fn: Callable, *args):
    try:
        return fn(*args)
    except NotImplementedError:  # an unsolved exercise: let it through unchanged (nbgrader, CI)
        raise
    except Exception as err:
        _fail(where, f"fn{args} raised {type(err).__name__}: {err}")


# ----------------------------------------------------------------------------------------------
# The batch plan: micro-batch and accumulation steps for a world size (segedu.train.accumulation_steps)
# ----------------------------------------------------------------------------------------------
def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def _plan(total: int, world: int, max_micro: int) -> tuple[int, int]:
    share = total // world                       # samples each process takes from every global batch
    micro = _largest_divisor(share, max_micro)   # what fits in memory and divides the share
    return micro, share // micro


@teaches("the recipe's batch as world size x per-GPU batch x accumulation (docs/architectures.md §3.4); "
         "segedu.train.accumulation_steps")
def check_batch_plan(fn: Callable[[int, int, int], tuple[int, int]]) -> None:
    """``fn(total_batch, world_size, max_micro_batch) -> (micro_batch, accumulation)``.

    Every process takes ``total_batch / world_size`` samples of each global batch and runs them as
    ``accumulation`` forward/backward passes of ``micro_batch`` samples: the largest micro-batch that fits
    (at most ``max_micro_batch``) and divides the share, so that ``world_size * micro_batch * accumulation
    == total_batch`` exactly. A total that the world size does not divide raises ``ValueError``.
    """
    from ..train import accumulation_steps

    where = "check_batch_plan"
    # (total, world, fits): one GPU, 8 GPUs, a micro-batch that must shrink to divide the share, a
    # memory that fits the whole share, and a larger total.
    cases = [(16, 1, 2), (16, 8, 2), (16, 2, 3), (16, 4, 8), (8, 1, 5), (32, 4, 3), (16, 2, 16)]
    for total, world, fits in cases:
        out = _call(where, fn, total, world, fits)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            _fail(where, f"expected a pair (micro_batch, accumulation), got {out!r}")
        try:
            got = torch.tensor([int(v) for v in out], dtype=torch.float64)
        except (TypeError, ValueError):
            _fail(where, f"expected two integers (micro_batch, accumulation), got {out!r}")
        micro, acc = _plan(total, world, fits)
        assert accumulation_steps(total, world, micro) == acc  # the plan segedu train runs
        expected = torch.tensor([micro, acc], dtype=torch.float64)
        share = total // world
        floor_micro = min(fits, share)
        setting = f"total batch {total}, world size {world}, at most {fits} samples per pass"
        candidates = [
            ((f"off by the world size: your plan makes every one of the {world} processes accumulate the whole "
              f"batch of {total}, so the step sees world x {total} = {world * total} samples.",
              f"each process takes only total / world = {share} samples per step."),
             lambda: torch.tensor([_largest_divisor(total, fits), total // _largest_divisor(total, fits)],
                                  dtype=torch.float64)),
            ((f"off by the world size: accumulation = total / micro_batch ignores the {world} processes.",
              "accumulation = total / (world x micro_batch)."),
             lambda: torch.tensor([micro, total // micro], dtype=torch.float64)),
            ("the world size is divided out twice: the share total / world is already per process, so "
             "accumulation = share / micro_batch.",
             lambda: torch.tensor([micro, share // (micro * world)], dtype=torch.float64)),
            (f"the micro-batch {floor_micro} does not divide the per-process share {share}: rounding the "
             f"accumulation down (or up) changes the total batch; take the largest micro-batch <= "
             f"max_micro_batch that divides the share.",
             lambda: torch.tensor([floor_micro, share // floor_micro], dtype=torch.float64)),
            (f"the micro-batch {floor_micro} does not divide the per-process share {share}: rounding the "
             f"accumulation up changes the total batch; take the largest micro-batch <= max_micro_batch "
             f"that divides the share.",
             lambda: torch.tensor([floor_micro, -(-share // floor_micro)], dtype=torch.float64)),
            ("max_micro_batch was ignored: the whole share in one pass may not fit in memory.",
             lambda: torch.tensor([share, 1], dtype=torch.float64)),
            ("the pair is swapped: return (micro_batch, accumulation).",
             lambda: torch.tensor([acc, micro], dtype=torch.float64)),
        ]
        _diagnose(f"{where} ({setting})", got, expected, candidates,
                  f"Expected micro_batch {micro} and accumulation {acc} "
                  f"({world} x {micro} x {acc} = {total}).", rtol=0, atol=0)
    try:
        fn(16, 3, 2)
    except NotImplementedError:
        raise
    except ValueError:
        pass
    except Exception as err:
        _fail(where, f"a total batch of 16 on 3 processes should raise ValueError, got {type(err).__name__}")
    else:
        _fail(where, "a total batch of 16 on 3 processes cannot be split evenly: raise ValueError instead of "
                     "training with another total batch")
    _passed(where, len(cases) + 1, "segedu.train.accumulation_steps")


# ----------------------------------------------------------------------------------------------
# The time left, read from metrics.jsonl's training records
# ----------------------------------------------------------------------------------------------
def _eta(records: list[dict], total: int, window: int, lag: int = 1, per_record: bool = False,
         since_start: bool = False, remaining: bool = True) -> float:
    i = max(0, len(records) - lag - window)      # index of the record the window starts at
    first, last = records[i], records[-1]
    if since_start:
        rate = last["seconds"] / last["step"]
    elif per_record:
        rate = (last["seconds"] - first["seconds"]) / (len(records) - 1 - i)
    else:
        rate = (last["seconds"] - first["seconds"]) / (last["step"] - first["step"])
    return rate * ((total - last["step"]) if remaining else total)


def _fake_log(n: int, every: int, start_up: float, per_step: float, eval_at: int, eval_seconds: float) -> list[dict]:
    """Training records as segedu.train writes them: a slow first interval (start-up, compilation), a
    steady rate after it and the time of one evaluation included after ``eval_at``."""
    records, seconds = [], start_up
    for k in range(1, n + 1):
        step = k * every
        seconds += per_step * every + (eval_seconds if step - every == eval_at else 0.0)
        records.append({"kind": "train", "step": step, "loss": 1.0 / k, "lr": 1e-4, "seconds": round(seconds, 2)})
    return records


@teaches("notebook 10 section on logs: the metrics.jsonl records segedu.train writes (segedu.logs.read_log); the "
         "rate over the last intervals, not since the start")
def check_eta_seconds(fn: Callable[..., float]) -> None:
    """``fn(train_records, total_iters, window=5) -> float``: seconds until ``total_iters``.

    The rate is measured over the last ``window`` intervals between records (from ``records[-1 - window]``,
    or the first record when there are fewer) in seconds per **iteration**, and multiplied by the iterations
    still to run, ``total_iters - records[-1]["step"]``. Fewer than two records raise ``ValueError``.
    """
    where = "check_eta_seconds"
    cases = [  # (log, total, window)
        (_fake_log(30, 10, 40.0, 0.25, 150, 20.0), 1000, 5),
        (_fake_log(12, 10, 25.0, 0.5, 1000, 0.0), 400, 3),
        (_fake_log(4, 50, 60.0, 0.1, 100, 5.0), 2000, 10),   # fewer records than the window
        (_fake_log(8, 10, 5.0, 0.3, 60, 8.0), 90, 2),     # an evaluation inside the window
    ]
    for records, total, window in cases:
        copy = [dict(r) for r in records]
        value = _call(where, fn, copy, total, window)
        if copy != records:
            _fail(where, "the records were modified; read them without changing them")
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if not isinstance(value, (int, float)):
            _fail(where, f"expected a number of seconds, got {type(value).__name__}")
        got = torch.tensor(float(value), dtype=torch.float64)
        expected = torch.tensor(_eta(records, total, window), dtype=torch.float64)
        last = records[-1]["step"]
        setting = f"{len(records)} records up to step {last}, total {total}, window {window}"
        candidates = [
            ("the rate is averaged since the start (seconds / step of the last record): that includes the "
             "start-up of the first interval (data workers, torch.compile); use the last `window` intervals.",
             lambda: torch.tensor(_eta(records, total, window, since_start=True), dtype=torch.float64)),
            ((f"the rate multiplies all {total} iterations, but only total_iters - {last} remain.",
              "multiply the seconds per iteration by total_iters - records[-1]['step']."),
             lambda: torch.tensor(_eta(records, total, window, remaining=False), dtype=torch.float64)),
            ("the rate is per record, not per iteration: records come every 10 (or more) iterations, so divide "
             "the seconds by the difference of their `step` values.",
             lambda: torch.tensor(_eta(records, total, window, per_record=True), dtype=torch.float64)),
            ("the window is one interval short: compare records[-1] with records[-1 - window], not "
             "records[-window].",
             lambda: torch.tensor(_eta(records, total, window, lag=0), dtype=torch.float64)),
            ("the result is in minutes; return seconds.",
             lambda: torch.tensor(_eta(records, total, window) / 60, dtype=torch.float64)),
            ("the result is in hours; return seconds.",
             lambda: torch.tensor(_eta(records, total, window) / 3600, dtype=torch.float64)),
        ]
        _diagnose(f"{where} ({setting})", got, expected, candidates,
                  f"Expected {expected.item():.1f} s.", rtol=1e-6, atol=1e-6)
    for short in ([], _fake_log(1, 10, 5.0, 0.3, 100, 0.0)):
        try:
            fn([dict(r) for r in short], 100, 5)
        except NotImplementedError:
            raise
        except ValueError:
            continue
        except Exception as err:
            _fail(where, f"{len(short)} record(s) should raise ValueError (no interval to measure), "
                         f"got {type(err).__name__}: {err}")
        _fail(where, f"{len(short)} record(s) give no interval to measure a rate: raise ValueError")
    _passed(where, len(cases) + 2, "the rate over the last `window` intervals x the iterations left")
