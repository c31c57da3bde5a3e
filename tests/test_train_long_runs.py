"""Long runs survive (issue 11, section 4) and run folders are safe (issue 15): kill -9, SIGTERM, another
device count, checkpoint-every, the log cut on resume, the lock, --resume / --overwrite, checkpoint before eval."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from segedu import checkpoint as ckpt
from segedu.data import generate
from segedu.recipes import RECIPES
from segedu.train import LOCK, train

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
RECIPE = RECIPES["synthetic"].with_overrides(iters=8, batch_size=2, crop_size=64, warmup_iters=2, eval_every=8)
OPTIONS = dict(progress=False, device="cpu", checkpoint_every=3, log_every=1)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn"), n_train=8, n_val=2, size=(72, 96), seed=3)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1): the thread count changes float sums
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("full")
        train(RECIPE, tiny_data, out, **OPTIONS)
    finally:
        torch.set_num_threads(threads)
    return ckpt.load(out / "checkpoint.pt")["model"]


def same_weights(out, reference) -> None:
    state = ckpt.load(out / "checkpoint.pt")
    assert state["step"] == RECIPE.iters
    for k, v in reference.items():
        assert torch.equal(state["model"][k], v), k


def logged_steps(out) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == "train"]


def run_child(tmp_path, body: str, *, check_rc=None, timeout=300, new_session=False) -> subprocess.CompletedProcess:
    """Run ``body`` in a fresh Python (the recipe is in ``recipe``) with ``segedu.train.total_loss`` wrapped by
    ``hook(call_number)``, which the body defines."""
    (tmp_path / "recipe.json").write_text(json.dumps(RECIPE.to_dict()))
    script = textwrap.dedent('''
        import json, os, signal, sys
        import segedu.train as T
        from segedu.recipes import Recipe
        recipe = Recipe.from_dict(json.load(open(sys.argv[1])))
        real, calls = T.total_loss, [0]
        def counted(*args, **kwargs):
            calls[0] += 1
            hook(calls[0])
            return real(*args, **kwargs)
        T.total_loss = counted
    ''') + textwrap.dedent(body)
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "recipe.json")], env=ENV, text=True,
                         capture_output=True, timeout=timeout, check=False, start_new_session=new_session)
    if check_rc is not None:
        assert run.returncode == check_rc, run.stderr[-3000:]
    return run


def test_kill_9_then_resume_gives_the_uninterrupted_weights_and_log(tiny_data, tmp_path, uninterrupted, one_thread):
    out = tmp_path / "run"
    run_child(tmp_path, f'''
        def hook(n):
            if n == 6:  # in step 6: steps 1..5 are logged, the last checkpoint is step 3
                os.kill(os.getpid(), signal.SIGKILL)
        T.train(recipe, {str(tiny_data)!r}, {str(out)!r}, progress=False, device="cpu", checkpoint_every=3,
                log_every=1)
    ''', check_rc=-signal.SIGKILL)
    assert ckpt.load(out / "checkpoint.pt")["step"] == 3 and logged_steps(out) == [1, 2, 3, 4, 5]
    assert (out / LOCK).exists()  # the killed process left its lock file behind, unlocked
    train(RECIPE, tiny_data, out, resume=True, **OPTIONS)
    assert logged_steps(out) == list(range(1, 9))  # 4 and 5 once, not twice
    same_weights(out, uninterrupted)
    assert not (out / LOCK).exists()


def test_sigterm_writes_a_checkpoint_and_exits_naming_it(tiny_data, tmp_path, uninterrupted, one_thread):
    out = tmp_path / "run"
    run = run_child(tmp_path, f'''
        def hook(n):
            if n == 5:  # during step 5: it finishes, then the run stops
                os.kill(os.getpid(), signal.SIGTERM)
        from segedu.cli import main
        json.dump(recipe.to_dict(), open({str(tmp_path / "r.json")!r}, "w"))
        sys.exit(main(["train", "--config", {str(tmp_path / "r.json")!r}, "--data", {str(tiny_data)!r},
                       "--out", {str(out)!r}, "--device", "cpu", "--workers", "0", "--checkpoint-every", "100"]))
    ''', check_rc=143)
    assert f"stopped by SIGTERM after step 5: wrote {out / 'checkpoint.pt'}; continue with the same command and " \
           f"--resume" in run.stdout
    assert "Traceback" not in run.stderr
    assert ckpt.load(out / "checkpoint.pt")["step"] == 5
    train(RECIPE, tiny_data, out, resume=True, **OPTIONS)
    same_weights(out, uninterrupted)


def test_sigterm_to_the_process_group_spares_the_data_workers(tiny_data, tmp_path):
    """A scheduler signals the whole process group, DataLoader workers included: the run still ends with a
    checkpoint and a clean return. (The workers ignore the signal, so that under torchrun, where the processes
    agree to stop at the next log interval, they still deliver the batches up to it.)"""
    out = tmp_path / "run"
    run = run_child(tmp_path, f'''
        def hook(n):
            if n == 3:
                os.killpg(os.getpgid(0), signal.SIGTERM)  # the main process and its worker
        result = T.train(recipe, {str(tiny_data)!r}, {str(out)!r}, progress=False, device="cpu", num_workers=1,
                         checkpoint_every=100)
        print("stopped by", result.stopped_by, "at", result.step)
    ''', check_rc=0, new_session=True)
    assert "stopped by SIGTERM at 3" in run.stdout, run.stderr[-2000:]
    assert ckpt.load(out / "checkpoint.pt")["step"] == 3


def test_resume_with_another_recorded_device_count(tiny_data, tmp_path, uninterrupted, one_thread, capsys):
    out = tmp_path / "run"
    train(RECIPE, tiny_data, out, stop_after=4, **OPTIONS)
    state = ckpt.load(out / "checkpoint.pt")
    gpu_states = [torch.full((16,), r, dtype=torch.uint8) for r in range(4)]
    state["rng"]["cuda"], state["world_size"] = gpu_states, 4  # as if 4 GPU processes had written it
    ckpt.save_atomic(state, out / "checkpoint.pt")
    train(RECIPE, tiny_data, out, resume=True, **OPTIONS)  # one CPU process: the CUDA states are ignored
    assert "resuming a run of 4 process(es) on 1" in capsys.readouterr().out
    same_weights(out, uninterrupted)
    assert ckpt.cuda_state_for(gpu_states, 2) is gpu_states[2]      # rank 2 of a 2..4-GPU resume: its own
    assert ckpt.cuda_state_for(gpu_states, 6) is gpu_states[0]      # more ranks than were saved: rank 0's
    assert ckpt.cuda_state_for(gpu_states[:1], 1) is gpu_states[0]  # a 1-GPU checkpoint resumed on 2 GPUs


def test_set_rng_state_restores_this_ranks_cuda_state(monkeypatch):
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s: restored.append(s))
    state = ckpt.rng_state()
    state["cuda"] = [torch.full((8,), r, dtype=torch.uint8) for r in range(3)]
    ckpt.set_rng_state(state, rank=1)
    ckpt.set_rng_state(state, rank=5)
    assert [int(s[0]) for s in restored] == [1, 0]  # never set_rng_state_all, which fails on fewer GPUs


def test_run_folder_rules(tiny_data, tmp_path):
    recipe = RECIPE.with_overrides(iters=2, eval_every=2)
    out = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match=r"--resume: .*checkpoint\.pt does not exist; start without --resume"):
        train(recipe, tiny_data, out, resume=True, **OPTIONS)
    train(recipe, tiny_data, out, **OPTIONS)
    before = (out / "checkpoint.pt").read_bytes()
    with pytest.raises(ValueError, match=r"already holds a training checkpoint; continue it with --resume, replace "
                                         r"it with --overwrite, or choose another --out"):
        train(recipe, tiny_data, out, **OPTIONS)
    assert (out / "checkpoint.pt").read_bytes() == before and logged_steps(out) == [1, 2]
    with pytest.raises(ValueError, match=r"written with seed 0, not 1; resume with --seed 0"):
        train(recipe, tiny_data, out, resume=True, seed=1, **OPTIONS)
    (out / "notes.txt").write_text("mine")
    train(recipe, tiny_data, out, overwrite=True, seed=1, **OPTIONS)
    assert ckpt.load(out / "checkpoint.pt")["seed"] == 1 and logged_steps(out) == [1, 2]
    assert (out / "notes.txt").read_text() == "mine"  # --overwrite replaces the run's files, nothing else
    (tmp_path / "file").write_text("x")
    for bad, message in ((tmp_path / "file", "is a file; choose a folder"),
                         (tmp_path / "file" / "sub", "cannot write to the output folder")):
        with pytest.raises(ValueError, match=message):
            train(recipe, tiny_data, bad, **OPTIONS)


def test_a_second_process_on_the_same_folder_is_refused_until_it_ends(tiny_data, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f'''
        import time, torch
        from pathlib import Path
        from segedu.distributed import Context
        from segedu.train import RunFolder, TrainOptions
        folder = RunFolder(Path({str(out)!r}), TrainOptions(), Context(0, 1, torch.device("cpu"))).__enter__()
        print("locked", flush=True)
        time.sleep(120)
    ''')], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=rf"another segedu train \(pid {holder.pid}\) is writing to .*run; wait "
                                             r"for it to finish or choose another --out"):
            train(RECIPE.with_overrides(iters=1), tiny_data, out, **OPTIONS)
    finally:
        holder.kill()  # a crash: the lock goes with the process
        holder.wait()
    train(RECIPE.with_overrides(iters=1, eval_every=1), tiny_data, out, **OPTIONS)
    assert not (out / LOCK).exists()


def test_the_checkpoint_is_written_before_evaluation(tiny_data, tmp_path, monkeypatch):
    import segedu.train as train_module

    def corrupt_validation_image(*args, **kwargs):
        raise ValueError("validation image 7 is corrupt")
    monkeypatch.setattr(train_module, "evaluate", corrupt_validation_image)
    with pytest.raises(ValueError, match="corrupt"):
        train(RECIPE.with_overrides(iters=4, eval_every=2), tiny_data, tmp_path, **{**OPTIONS, "checkpoint_every": 100})
    assert ckpt.load(tmp_path / "checkpoint.pt")["step"] == 2  # the 2 iterations are kept


def test_nan_before_any_checkpoint_says_so(tiny_data, tmp_path, monkeypatch):
    import segedu.train as train_module
    real = train_module.total_loss
    monkeypatch.setattr(train_module, "total_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 1; stopping. No checkpoint has been written "
                                                 r"yet$"):
        train(RECIPE, tiny_data, tmp_path, **{**OPTIONS, "log_every": 5})
    assert not (tmp_path / "checkpoint.pt").exists()


def test_checkpoint_every_is_independent_of_evaluation(tiny_data, tmp_path, monkeypatch):
    import segedu.train as train_module
    saved = []
    real = train_module.ckpt.save_atomic
    monkeypatch.setattr(train_module.ckpt, "save_atomic", lambda obj, path: saved.append(obj["step"]) or real(obj, path))
    train(RECIPE.with_overrides(iters=7, eval_every=4), tiny_data, tmp_path, **{**OPTIONS, "checkpoint_every": 3})
    assert saved == [3, 4, 6, 7]  # every 3, before each evaluation (4), and at the end
    with pytest.raises(ValueError, match="checkpoint-every must be a positive number of iterations, got 0"):
        train(RECIPE, tiny_data, tmp_path / "x", **{**OPTIONS, "checkpoint_every": 0})


def test_a_step_whose_batch_has_no_labelled_pixel_has_zero_loss():
    from segedu.train import TrainForward, train_step
    torch.manual_seed(0)
    model = torch.nn.Module()
    conv = torch.nn.Conv2d(3, 4, 1)
    model.forward_train = lambda x: {"main": conv(x), "aux": []}
    model.aux_weights = ()
    optimizer = torch.optim.AdamW(conv.parameters(), lr=0.1)
    images, masks = torch.randn(4, 3, 8, 8), torch.full((4, 8, 8), 255)
    for micro in (None, 2):  # one piece (mean over its pixels) and two pieces (the step's normaliser)
        loss = train_step(TrainForward(model), model, optimizer, images, masks, micro=micro)
        assert loss.item() == 0.0 and all(torch.isfinite(p).all() for p in conv.parameters())
