"""Notebook 10's checks: each passes on a correct solution and names the planted classic mistakes."""
import pytest
import torch

from segedu import checks
from segedu.train import accumulation_steps

from check_contract import assert_passes_quietly, assert_stub_passes_through, fails, stub


def batch_plan(total_batch, world_size, max_micro_batch):
    if total_batch % world_size:
        raise ValueError(f"{total_batch} samples cannot be split over {world_size} processes")
    share = total_batch // world_size
    micro = max(d for d in range(1, min(share, max_micro_batch) + 1) if share % d == 0)
    return micro, accumulation_steps(total_batch, world_size, micro)


def eta_seconds(records, total_iters, window=5):
    if len(records) < 2:
        raise ValueError("need two training records to measure a rate")
    first, last = records[max(0, len(records) - 1 - window)], records[-1]
    per_iteration = (last["seconds"] - first["seconds"]) / (last["step"] - first["step"])
    return per_iteration * (total_iters - last["step"])


@pytest.mark.parametrize("check,reference,name", [
    (checks.check_batch_plan, batch_plan, "check_batch_plan"),
    (checks.check_eta_seconds, eta_seconds, "check_eta_seconds"),
])
def test_reference_passes_quietly_and_leaves_the_global_rng_alone(check, reference, name, capsys):
    torch.manual_seed(5)
    assert_passes_quietly(capsys, name, check, reference)


@pytest.mark.parametrize("check", [checks.check_batch_plan, checks.check_eta_seconds])
def test_unsolved_exercises_raise_not_implemented(check):
    assert_stub_passes_through(check, stub)


# ------------------------------------------------------------------------------ the batch plan
def test_batch_plan_mistakes():
    check = checks.check_batch_plan

    def ignores_world(total, world, fits):  # every process accumulates the whole batch
        return batch_plan(total, 1, fits)

    def accumulation_without_world(total, world, fits):
        micro, _ = batch_plan(total, world, fits)
        return micro, total // micro

    def world_twice(total, world, fits):
        micro, acc = batch_plan(total, world, fits)
        return micro, acc // world

    def no_divisor(total, world, fits):
        if total % world:
            raise ValueError("uneven")
        micro = min(fits, total // world)
        return micro, total // world // micro

    def no_memory_limit(total, world, fits):
        return batch_plan(total, world, total)

    fails(check, ignores_world, "off by the world size.*whole batch")
    fails(check, accumulation_without_world, "off by the world size")
    fails(check, world_twice, "divided out twice")
    fails(check, no_divisor, "does not divide the per-process share")
    fails(check, no_memory_limit, "max_micro_batch was ignored")
    fails(check, lambda t, w, f: batch_plan(t, w, f)[::-1], "swapped")
    fails(check, lambda t, w, f: batch_plan(1 if t % w else t, 1 if t % w else w, f), "raise ValueError")


# ------------------------------------------------------------------------------ the ETA
def test_eta_seconds_mistakes():
    check = checks.check_eta_seconds

    def since_start(records, total, window=5):
        eta_seconds(records, total, window)  # the ValueError for short logs
        return records[-1]["seconds"] / records[-1]["step"] * (total - records[-1]["step"])

    def whole_run(records, total, window=5):
        return eta_seconds(records, total, window) / (total - records[-1]["step"]) * total

    def per_record(records, total, window=5):
        if len(records) < 2:
            raise ValueError("short")
        i = max(0, len(records) - 1 - window)
        rate = (records[-1]["seconds"] - records[i]["seconds"]) / (len(records) - 1 - i)
        return rate * (total - records[-1]["step"])

    def window_short(records, total, window=5):
        if len(records) < 2:
            raise ValueError("short")
        first, last = records[max(0, len(records) - window)], records[-1]
        return (last["seconds"] - first["seconds"]) / (last["step"] - first["step"]) * (total - last["step"])

    def no_error(records, total, window=5):
        return eta_seconds(records, total, window) if len(records) >= 2 else 0.0

    def modifies(records, total, window=5):
        value = eta_seconds(records, total, window)
        records.pop(0)
        return value

    fails(check, since_start, "averaged since the start")
    fails(check, whole_run, "only total_iters - \\d+ remain")
    fails(check, per_record, "per record, not per iteration")
    fails(check, window_short, "one interval short")
    fails(check, lambda r, t, w=5: eta_seconds(r, t, w) / 60, "in minutes")
    fails(check, lambda r, t, w=5: eta_seconds(r, t, w) / 3600, "in hours")
    fails(check, no_error, "raise ValueError")
    fails(check, modifies, "records were modified")
