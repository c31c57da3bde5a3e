"""Speed defaults of segedu train (issue 11, section 7): cudnn autotuning unless --deterministic, DataLoader
workers from the machine, no host synchronisation per step; the CLI passes every training option through."""
import pytest
import torch

import segedu.train as train_module
from segedu.cli import main as cli_main
from segedu.data import generate
from segedu.recipes import RECIPES
from segedu.train import MAX_WORKERS, LossWatch, TrainOptions, default_workers, train

RECIPE = RECIPES["synthetic"].with_overrides(iters=20, batch_size=2, crop_size=32, warmup_iters=2, eval_every=20)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn"), n_train=4, n_val=1, size=(48, 64), seed=3)


def test_kernel_settings_during_the_run_and_after(tiny_data, tmp_path, monkeypatch):
    seen = []
    real = train_module.train_step

    def record(*args, **kwargs):
        seen.append((torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled()))
        return real(*args, **kwargs)
    monkeypatch.setattr(train_module, "train_step", record)
    before = (torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled())
    recipe = RECIPE.with_overrides(iters=1, eval_every=1)
    train(recipe, tiny_data, tmp_path / "fast", progress=False, device="cpu")
    train(recipe, tiny_data, tmp_path / "exact", progress=False, device="cpu", deterministic=True)
    assert seen == [(True, False), (False, True)]  # autotuned by default; --deterministic: both switches
    assert (torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled()) == before


def test_default_workers_follow_the_machine(monkeypatch):
    monkeypatch.setattr(train_module.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert default_workers() == MAX_WORKERS == 8
    assert default_workers(processes_per_node=8) == 7  # 64 cores / 8 GPUs, one left for each main process
    monkeypatch.setattr(train_module.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert default_workers() == 1 and default_workers(processes_per_node=2) == 0


def test_the_loss_is_read_back_every_log_interval_not_every_step(tiny_data, tmp_path, monkeypatch):
    checks = []
    real = LossWatch.check
    monkeypatch.setattr(LossWatch, "check", lambda self, run: checks.append(run.model.training) or real(self, run))
    train(RECIPE, tiny_data, tmp_path, progress=False, device="cpu", checkpoint_every=1000)
    assert len(checks) == 2  # steps 10 and 20 of 20 (the log interval; 20 is also the checkpoint and evaluation)


def test_cli_passes_the_training_options(tiny_data, tmp_path, monkeypatch):
    got = {}

    def fake_train(recipe, data, out, options):
        got.update(options=options, recipe=recipe)
        return train_module.TrainResult(out, None, stopped_by=None, is_main=False)
    monkeypatch.setattr(train_module, "train", fake_train)
    monkeypatch.setitem(RECIPES, "tiny", RECIPE)
    base = ["train", "--config", "tiny", "--data", str(tiny_data), "--out", str(tmp_path)]
    assert cli_main(base) == 0
    assert got["options"] == TrainOptions(num_workers=None, progress=True)  # the defaults: machine workers
    assert cli_main(base + ["--pretrained", "none", "--checkpoint-every", "500", "--deterministic", "--overwrite",
                            "--workers", "3", "--pretrained-source", "timm", "--seed", "4"]) == 0
    o = got["options"]
    assert (o.pretrained, o.pretrained_source, o.checkpoint_every, o.deterministic, o.overwrite, o.num_workers,
            o.seed) == ("none", "timm", 500, True, True, 3, 4)
