"""Several processes (torchrun, gloo on the CPU) compute the same training step as one process."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from torch import nn

from segedu import checkpoint as ckpt
from segedu.data import generate
from segedu.distributed import GlobalBatchNorm, convert_sync_batchnorm
from segedu.recipes import RECIPES
from segedu.train import rank_batches, train


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn"), n_train=8, n_val=3, size=(72, 96), seed=3)


def test_each_rank_takes_its_share_of_the_global_batch():
    whole = next(rank_batches(10, 4, seed=0, start_step=2, rank=0, world_size=1))
    shares = [next(rank_batches(10, 4, seed=0, start_step=2, rank=r, world_size=2)) for r in (0, 1)]
    assert shares[0] + shares[1] == whole and len(shares[0]) == 2


def test_global_batchnorm_is_batchnorm_in_one_process():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    converted = convert_sync_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)), torch.device("cpu"))
    converted.load_state_dict(model.state_dict())
    assert isinstance(converted[1], GlobalBatchNorm) and set(converted.state_dict()) == set(model.state_dict())
    x = torch.randn(2, 3, 5, 5)
    assert not dist.is_initialized()
    torch.testing.assert_close(converted(x), model(x))
    torch.testing.assert_close(converted[1].running_var, model[1].running_var)


def test_two_processes_match_one_process(tiny_data, tmp_path):
    # A BN model (SegFormer's decoder has BatchNorm): SyncBN makes 2 processes x 2 images = 1 x 4.
    # No dropout and no stochastic depth: those draw different random numbers on 2 processes. SGD, not
    # AdamW: biases right before a BatchNorm have a gradient of zero plus rounding noise, which Adam's
    # g / sqrt(v) scales up to steps of size lr, so their weights would differ by ~lr for that reason alone.
    recipe = RECIPES["synthetic"].with_overrides(
        iters=3, batch_size=4, crop_size=64, warmup_iters=1, eval_every=3, optimizer="sgd", lr=0.01,
        model_kwargs={"drop_path_rate": 0.0, "decoder_dropout": 0.0})
    config = tmp_path / "recipe.json"
    config.write_text(json.dumps(recipe.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "segedu.cli", "train", "--config", str(config), "--data", str(tiny_data),
           "--out", str(tmp_path / "ddp"), "--batch-size", "2", "--device", "cpu"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process: thread count changes the order of float sums
    try:
        single = train(recipe, tiny_data, tmp_path / "one", progress=False, device="cpu")
    finally:
        torch.set_num_threads(threads)
    a, b = ckpt.load(tmp_path / "one" / "checkpoint.pt"), ckpt.load(tmp_path / "ddp" / "checkpoint.pt")
    assert a["step"] == b["step"] == 3 and a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], atol=1e-5, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")

    # Rank 0 alone wrote the log (no duplicated lines), and its validation scores are those of the whole
    # validation set: each process scored its share (2 and 1 of the 3 images), then the sums were reduced.
    log = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in log if r["kind"] == "val"]
    assert [r["step"] for r in log] == [3, 3]
    assert val[0]["aAcc"] == pytest.approx(single.metrics["aAcc"], abs=1e-3)
    assert val[0]["mIoU"] == pytest.approx(single.metrics["mIoU"], abs=1e-3)
    losses = [r["loss"] for r in log if r["kind"] == "train"]
    one_log = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert losses[0] == pytest.approx(next(r["loss"] for r in one_log if r["kind"] == "train"), rel=1e-5)
