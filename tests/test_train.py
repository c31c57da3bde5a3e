"""Training machinery: optimiser groups, schedule, checkpoints, resume, NaN stop, the CLI run."""
import json
import math

import pytest
import torch

import segedu
from segedu import checkpoint as ckpt
from segedu.cli import main as cli_main
from segedu.data import generate
from segedu.optim import build_optimizer, param_groups, poly_warmup_factor
from segedu.recipes import RECIPES, Recipe, get_recipe
from segedu.train import batch_indices, train


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn"), n_train=8, n_val=3, size=(72, 96), seed=3)


def tiny_recipe(**kw):
    base = RECIPES["synthetic"].with_overrides(iters=4, batch_size=2, crop_size=64, warmup_iters=2, eval_every=2)
    return base.with_overrides(**kw)


def test_param_groups_head_multiplier_and_no_decay():
    model = segedu.build_model("segformer-b0")
    groups = {g["name"]: g for g in param_groups(model, lr=6e-5, weight_decay=0.01, head_lr_mult=10)}
    assert set(groups) == {"default", "norm", "head"}
    assert groups["head"]["lr"] == pytest.approx(6e-4) and groups["default"]["lr"] == pytest.approx(6e-5)
    assert groups["norm"]["weight_decay"] == 0.0 and groups["default"]["weight_decay"] == 0.01
    no_decay = groups["norm"]["param_names"]
    assert "encoder.stages.0.blocks.0.norm1.weight" in no_decay
    assert all("norm" in n for n in no_decay)  # official: 'norm' decay_mult 0; biases keep their decay
    assert "encoder.stages.0.blocks.0.attn.q.bias" in groups["default"]["param_names"]
    assert "decoder.bn.weight" in groups["head"]["param_names"] and groups["head"]["weight_decay"] == 0.01
    total = sum(p.numel() for g in groups.values() for p in g["params"])
    assert total == sum(p.numel() for p in model.parameters())


def test_poly_schedule_with_warmup():
    # mmcv: linear warm-up from ratio * lr, poly(power 1) decay to 0 at the last iteration.
    assert poly_warmup_factor(0, 160_000) == pytest.approx(1e-6)
    assert poly_warmup_factor(750, 160_000) == pytest.approx((1 - 750 / 160_000) * (0.5 + 0.5e-6))
    assert poly_warmup_factor(1500, 160_000) == pytest.approx(1 - 1500 / 160_000)
    assert poly_warmup_factor(160_000, 160_000) == 0.0
    assert poly_warmup_factor(80_000, 160_000, warmup_iters=0, power=0.9, min_lr_ratio=0.01) == pytest.approx(
        0.5 ** 0.9 * 0.99 + 0.01)


def test_optimizer_is_adamw_with_recipe_groups():
    opt = build_optimizer(segedu.build_model("segformer-b0"), 6e-5, 0.01, 10.0)
    assert isinstance(opt, torch.optim.AdamW) and len(opt.param_groups) == 3


def test_batch_order_depends_only_on_the_step():
    a = batch_indices(10, 3, seed=0)
    first = [next(a) for _ in range(7)]
    resumed = batch_indices(10, 3, seed=0, start_step=4)
    assert [next(resumed) for _ in range(3)] == first[4:]
    assert {i for b in first[:3] for _, i in b} <= set(range(10)) and first[3][0][0] == 1  # epoch 1
    with pytest.raises(ValueError, match="fewer than one batch"):
        next(batch_indices(2, 3, seed=0))


def test_checkpoint_is_atomic_and_weights_only(tmp_path):
    path = tmp_path / "c.pt"
    ckpt.save_atomic({"step": 1, "w": torch.ones(2), "rng": ckpt.rng_state()}, path)
    assert not list(tmp_path.glob(".*.tmp"))
    state = ckpt.load(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(2))

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")
    with pytest.raises(RuntimeError, match="disk full"):
        ckpt.save_atomic({"step": 2, "bad": Boom()}, path)
    assert ckpt.load(path)["step"] == 1  # the old checkpoint survived the failed write
    assert not list(tmp_path.glob(".*.tmp"))

    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read checkpoint"):
        ckpt.load(tmp_path / "bad.pt")


def test_rng_state_round_trip():
    state = ckpt.rng_state()
    a = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    ckpt.set_rng_state(state)
    b = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_train_writes_outputs_and_resume_is_exact(tiny_data, tmp_path):
    recipe = tiny_recipe()
    full = train(recipe, tiny_data, tmp_path / "full", progress=False)
    assert (tmp_path / "full" / "checkpoint.pt").exists()
    log = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["kind"] == "val"] == [2, 4]
    assert 0.0 <= full.metrics["mIoU"] <= 1.0

    # Stopped after 3 of the 4 iterations (between evaluations), then resumed.
    stopped = train(recipe, tiny_data, tmp_path / "split", progress=False, stop_after=3)
    assert stopped.metrics is None
    assert ckpt.load(tmp_path / "split" / "checkpoint.pt")["step"] == 3
    train(recipe, tiny_data, tmp_path / "split", progress=False, resume=True)
    a = ckpt.load(tmp_path / "full" / "checkpoint.pt")
    b = ckpt.load(tmp_path / "split" / "checkpoint.pt")
    assert a["step"] == b["step"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k

    with pytest.raises(ValueError, match="another recipe: lr is 0.001 there and 1.0 now"):
        train(recipe.with_overrides(lr=1.0), tiny_data, tmp_path / "split", progress=False, resume=True)


def test_nan_loss_stops_with_the_step_and_keeps_the_checkpoint(tiny_data, tmp_path, monkeypatch):
    import segedu.train as train_module
    real, calls = train_module.total_loss, []

    def nan_at_step_3(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == 3 else loss
    monkeypatch.setattr(train_module, "total_loss", nan_at_step_3)
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 3; stopping. The last good checkpoint is .* \(step 2\)"):
        train(tiny_recipe(iters=6), tiny_data, tmp_path, progress=False)
    assert ckpt.load(tmp_path / "checkpoint.pt")["step"] == 2  # saved at the evaluation of step 2, kept


def test_labels_out_of_range_are_reported(tmp_path):
    root = generate(tmp_path / "bad", n_train=4, n_val=1, size=(64, 64), seed=0)
    from torchvision.io import decode_png, encode_png, read_file, write_file
    path = sorted((root / "annotations" / "training").glob("*.png"))[0]
    mask = decode_png(read_file(str(path)))
    mask[0, 0, 0] = 200  # ADE20K has 150 classes: 200 is no class
    write_file(str(path), encode_png(mask))
    with pytest.raises(ValueError, match=r"SYN_train_00000.png: label values \[199\] are outside \[0, 150\)"):
        train(tiny_recipe(batch_size=4, iters=1), root, tmp_path / "run", progress=False)


def test_cli_train_and_zoo(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(RECIPES, "tiny", tiny_recipe(iters=2))
    assert cli_main(["train", "--config", "tiny", "--data", str(tiny_data), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out
    for name in ("checkpoint.pt", "metrics.jsonl", "curves.png", "predictions.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert cli_main(["eval", "--checkpoint", str(tmp_path / "checkpoint.pt"), "--data", str(tiny_data)]) == 0
    assert cli_main(["zoo", "--pattern", "segformer-b0"]) == 0
    assert "| segformer-b0 | 3.32 | 0.43 | 3.753 | 3.8 | 512x512 | 8.4 | 8.4 |" in capsys.readouterr().out
    assert cli_main(["train", "--model", "segformer-b9", "--config", "tiny", "--data", str(tiny_data)]) == 2
    assert "unknown model 'segformer-b9'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown recipe"):
        get_recipe("nope")
    assert math.isfinite(RECIPES["segformer-b5-ade20k"].lr) and RECIPES["segformer-b5-ade20k"].crop_size == 640


def test_auxiliary_losses_are_weighted_in():
    from segedu.losses import seg_loss, total_loss
    torch.manual_seed(0)
    model = segedu.build_model("setr-naive-base", num_classes=5, aux_heads=True, embed_dim=64, num_heads=2)
    x, y = torch.randn(1, 3, 32, 48), torch.randint(0, 5, (1, 32, 48))
    out = model.forward_train(x)
    assert len(out["aux"]) == 3 and model.aux_weights == (0.4, 0.4, 0.4)
    expected = seg_loss(out["main"], y) + sum(0.4 * seg_loss(a, y) for a in out["aux"])
    torch.testing.assert_close(total_loss(out, y, model.aux_weights), expected)
    plain = segedu.build_model("segformer-b0", num_classes=5)
    assert plain.forward_train(torch.randn(1, 3, 64, 64))["aux"] == []


def test_every_registered_model_has_a_recipe_and_every_recipe_builds():
    from segedu.registry import get_spec
    recipes_of = {r.model for name, r in RECIPES.items() if name != "synthetic"}
    assert set(segedu.list_models()) <= recipes_of
    for name, r in RECIPES.items():
        with torch.device("meta"):  # structure only: no memory for ViT-L's 300M parameters
            model = r.build_model()
        opt = build_optimizer(model, r.lr, r.weight_decay, r.head_lr_mult, r.no_decay_keywords,
                              optimizer=r.optimizer, momentum=r.momentum)
        assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters())), name
        assert r.crop_size == get_spec(r.model).crop_size or name == "synthetic", name
        assert (r.batch_size, r.iters) == (16, 160_000) or name == "synthetic", name


def test_recipes_carry_the_papers_optimiser_schedule_and_test_protocol():
    setr = get_recipe("setr-pup-ade20k")
    assert (setr.optimizer, setr.momentum, setr.lr, setr.weight_decay, setr.head_lr_mult) == ("sgd", 0.9, 1e-3, 0.0, 10.0)
    assert (setr.poly_power, setr.warmup_iters) == (0.9, 0)
    assert setr.min_lr == 1e-4 and setr.lr * setr.min_lr_ratio == pytest.approx(1e-4)  # official min_lr
    assert (setr.test_mode, setr.slide_crop, setr.slide_stride) == ("slide", 512, 341)
    assert get_recipe("setr-naive-ade20k").lr == 0.01 and setr.model_kwargs == {"aux_heads": True}
    opt = build_optimizer(segedu.build_model("setr-naive-base", aux_heads=True, embed_dim=64, num_heads=2),
                          setr.lr, setr.weight_decay, setr.head_lr_mult, optimizer="sgd")
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    ss = get_recipe("ssformer-swin-t-ade20k")
    assert ss.head_lr_mult == 1.0 and "relative_position_bias_table" in ss.no_decay_keywords
    nx = get_recipe("segnext-l-ade20k")
    assert (nx.optimizer, nx.lr, nx.head_lr_mult, nx.warmup_iters, nx.test_mode) == ("adamw", 6e-5, 10.0, 1500, "whole")
    with pytest.raises(ValueError, match="test_mode 'slide' needs"):
        setr.with_overrides(slide_crop=0)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        setr.with_overrides(optimizer="lamb")


def test_recipe_json_file_round_trip(tmp_path):
    recipe = get_recipe("setr-mla-ade20k")
    path = tmp_path / "r.json"
    path.write_text(json.dumps(recipe.to_dict()))
    assert get_recipe(str(path)) == recipe
    path.write_text(json.dumps({**recipe.to_dict(), "lr_typo": 1}))
    with pytest.raises(ValueError, match=r"unknown recipe field\(s\) \['lr_typo'\]"):
        get_recipe(str(path))


class _TinyEncoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 4, stride=4)

    def forward(self, x):
        return [torch.nn.functional.gelu(self.conv(x))]          # [B, 8, H/4, W/4]


def _bn_free_model(name, num_classes=150, **kw):
    from segedu.models import SegmentationModel

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.classifier = torch.nn.Conv2d(8, num_classes, 1)

        def forward(self, features):
            return self.classifier(features[-1])

    return SegmentationModel(_TinyEncoder(), Head(), num_classes, min_size=4)


def test_gradient_accumulation_equals_the_full_batch(tiny_data, tmp_path, monkeypatch):
    # Without BatchNorm, micro-batches of 2 with 2 accumulation steps are the same step as one batch of 4:
    # each piece's summed loss is divided by the labelled pixels of the whole step.
    monkeypatch.setattr(Recipe, "build_model", lambda r: _bn_free_model(r.model, r.num_classes, **r.model_kwargs))
    recipe = tiny_recipe(batch_size=4, iters=3, eval_every=3)
    train(recipe, tiny_data, tmp_path / "full", progress=False, device="cpu")
    train(recipe, tiny_data, tmp_path / "accum", progress=False, device="cpu", micro_batch=2)
    a, b = ckpt.load(tmp_path / "full" / "checkpoint.pt"), ckpt.load(tmp_path / "accum" / "checkpoint.pt")
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], atol=1e-6, rtol=1e-5, msg=k)
    with pytest.raises(ValueError, match="total batch 4 is not a multiple of world_size x micro-batch = 1 x 3"):
        train(recipe, tiny_data, tmp_path / "bad", progress=False, device="cpu", micro_batch=3)


@pytest.mark.parametrize(("name", "kw"), [("segformer-b0", {}), ("segnext-t", {}), ("ssformer-swin-t", {}),
                                          ("setr-pup-base", {"embed_dim": 64, "num_heads": 2, "aux_heads": True})])
def test_grad_checkpointing_gives_the_same_gradients(name, kw):
    from segedu.losses import total_loss
    torch.manual_seed(0)
    model = segedu.build_model(name, num_classes=5, **kw).train()  # stochastic depth on: RNG replayed
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64))

    def grads():
        torch.manual_seed(1)
        model.zero_grad()
        total_loss(model.forward_train(x), y, model.aux_weights).backward()
        return {k: p.grad.clone() for k, p in model.named_parameters()}
    plain = grads()
    assert model.set_grad_checkpointing() > 0
    checkpointed = grads()
    for k in plain:
        torch.testing.assert_close(checkpointed[k], plain[k], msg=k)
    model.set_grad_checkpointing(False)
    assert all("forward" not in block.__dict__ for block in model.encoder_blocks())


def test_cli_train_with_micro_batch_and_speed_flags(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setitem(RECIPES, "tiny", tiny_recipe(iters=2, batch_size=4))
    args = ["train", "--config", "tiny", "--data", str(tiny_data), "--out", str(tmp_path), "--batch-size", "2",
            "--channels-last", "--grad-checkpointing", "--loss-chunk-rows", "16", "--device", "cpu"]
    assert cli_main(args) == 0
    assert ckpt.load(tmp_path / "checkpoint.pt")["step"] == 2
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_training_log_plots(tmp_path):
    from segedu.logs import moving_average, plot_log, read_log
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    log = tmp_path / "metrics.jsonl"
    records = [{"kind": "train", "step": s, "loss": 3.0 / s, "lr": 1e-3 * (1 - s / 40), "seconds": s} for s in (10, 20, 30)]
    records.append({"kind": "val", "step": 30, "mIoU": 0.4, "mAcc": 0.5, "aAcc": 0.8, "IoU": [0.4]})
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    train_records, val_records = read_log(log)
    assert [r["step"] for r in train_records] == [10, 20, 30] and val_records[0]["mIoU"] == 0.4
    assert plot_log(log, tmp_path / "curves.png").stat().st_size > 0
    with pytest.raises(FileNotFoundError, match="training log .* does not exist"):
        read_log(tmp_path / "missing.jsonl")


def test_decoded_cache_trains_to_the_same_weights(tiny_data, tmp_path):
    # Reading pre-decoded pixels instead of the JPEG/PNG files changes nothing but the speed.
    recipe = tiny_recipe(iters=2, eval_every=2)
    train(recipe, tiny_data, tmp_path / "files", progress=False, device="cpu")
    train(recipe, tiny_data, tmp_path / "cached", progress=False, device="cpu", data_cache=tmp_path / "cache")
    assert (tmp_path / "cache" / "index.json").exists()
    a, b = ckpt.load(tmp_path / "files" / "checkpoint.pt"), ckpt.load(tmp_path / "cached" / "checkpoint.pt")
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], atol=0, rtol=0, msg=k)
    import datasets
    files = sorted((tiny_data / "images" / "training").iterdir())[:1]
    row = {"image": {"bytes": files[0].read_bytes(), "path": files[0].name},
           "annotation": {"bytes": (tiny_data / "annotations" / "training" / f"{files[0].stem}.png").read_bytes(),
                          "path": f"{files[0].stem}.png"}}
    parquet = tmp_path / "train.parquet"
    datasets.Dataset.from_list([row], features=datasets.Features(
        {"image": datasets.Image(), "annotation": datasets.Image()})).to_parquet(str(parquet))
    with pytest.raises(ValueError, match="data_cache needs an ADE20K-layout folder"):
        train(recipe, parquet, tmp_path / "bad", progress=False, device="cpu", data_cache=tmp_path / "c2")


def test_cli_train_on_a_custom_dataset_with_its_class_list(tmp_path, monkeypatch, capsys):
    from torchvision.io import encode_jpeg, encode_png, write_file
    g = torch.Generator().manual_seed(0)
    root = tmp_path / "custom"
    for split, n in (("training", 4), ("validation", 2)):
        for kind in ("images", "annotations"):
            (root / kind / split).mkdir(parents=True)
        for i in range(n):
            mask = torch.randint(1, 4, (1, 48, 64), dtype=torch.uint8, generator=g)  # PNG values 1..3 (0 = other)
            write_file(str(root / "images" / split / f"x{i}.jpg"), encode_jpeg(mask.expand(3, -1, -1) * 60))
            write_file(str(root / "annotations" / split / f"x{i}.png"), encode_png(mask))
    (tmp_path / "classes.txt").write_text("road\nbuilding\nsky\n")
    monkeypatch.setitem(RECIPES, "tiny", tiny_recipe(iters=2, crop_size=32))
    args = ["train", "--config", "tiny", "--data", str(root), "--out", str(tmp_path / "run"), "--device", "cpu"]
    assert cli_main(args + ["--classes", str(tmp_path / "classes.txt")]) == 0
    state = ckpt.load(tmp_path / "run" / "checkpoint.pt")
    assert state["recipe"]["num_classes"] == 3 and state["model"]["decoder.linear_pred.weight"].shape[0] == 3
    assert "building" in capsys.readouterr().out  # the IoU table names the custom classes
    # Without reduce_zero_label, value 3 is out of range for 3 classes: a clear error, no training.
    assert cli_main(args + ["--classes", str(tmp_path / "classes.txt"), "--no-reduce-zero-label",
                            "--out", str(tmp_path / "run2")]) == 2
    assert "x0.png: label values [3] are outside [0, 3)" in capsys.readouterr().err
    # (tests/conftest.py: the failed run must not leave its DataLoader worker behind)
