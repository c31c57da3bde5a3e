"""``segedu bench``: every figure is produced, the transformers side is the same model, FLOPs are counted right.

Timings themselves are not asserted (they depend on the machine); what they are made of is.
"""
import json
import math

import pytest
import torch
from torch import nn

import segedu
from segedu.data import DecodedCache
from segedu.bench import (
    _b0_targets,
    bench_loader,
    bench_model,
    count_flops,
    format_loader,
    format_model,
    hf_segformer,
    peak_tflops,
    project_run,
)
from segedu.cli import main as cli_main
from segedu.data import SegmentationFolder, generate, train_transforms

TINY = {"device": "cpu", "batch": 1, "size": 64, "infer_batches": (1,), "steps": 1, "warmup": 0, "peak": 1.0}


def _check_implementation(result: dict, batch: int, infer_batches=("1",)) -> None:
    train = result["train"]
    assert train["batch"] == batch and train["clock"] == "process CPU time"
    assert train["ms"] > 0 and train["wall_ms"] > 0
    assert train["images_per_s"] == pytest.approx(batch / (train["ms"] * 1e-3))
    assert train["peak_memory_gb"] is None  # only CUDA reports it
    # MFU comes from the counted FLOPs, the step time and the peak (1 TFLOP/s here).
    assert train["flops"] > 0
    assert train["mfu"] == pytest.approx(train["flops"] / (train["ms"] * 1e-3) / 1e12)
    assert set(result["inference"]) == set(infer_batches)
    for b, inf in result["inference"].items():
        assert inf["images_per_s"] == pytest.approx(int(b) / (inf["ms"] * 1e-3))
        assert inf["mfu"] == pytest.approx(inf["flops"] / (inf["ms"] * 1e-3) / 1e12)
    # Training is forward + backward: about 3x the forward FLOPs (the input conv needs no input gradient).
    forward = result["inference"]["1"]["flops"] * batch
    assert 2.5 < train["flops"] / forward < 3.0


def test_bench_segformer_b0_against_transformers():
    report = bench_model("segformer-b0", **TINY)
    assert [r["implementation"] for r in report["results"]] == ["segedu", "transformers"]
    ours, hf = report["results"]
    assert ours["params"] == hf["params"] == 3_752_694  # docs/architectures.md section 6
    assert hf["class"].endswith("SegformerForSemanticSegmentation")
    for r in report["results"]:
        _check_implementation(r, batch=1)
    # Same architecture, same input: the counted work is the same on both sides.
    assert ours["train"]["flops"] == hf["train"]["flops"]
    assert ours["inference"]["1"]["flops"] == hf["inference"]["1"]["flops"]
    sp = report["speedup_vs_transformers"]
    assert sp["train_step"] == pytest.approx(hf["train"]["ms"] / ours["train"]["ms"])
    assert sp["inference_b1"] == pytest.approx(hf["inference"]["1"]["ms"] / ours["inference"]["1"]["ms"])
    assert report["transformers_note"] is None
    assert report["settings"] == {"batch": 1, "size": 64, "infer_batches": [1], "steps": 1, "warmup": 0,
                                  "bf16_autocast": False, "compile": False, "channels_last": False,
                                  "loss_chunk_rows": None, "grad_checkpointing": False,
                                  "clock": "process CPU time", "threads": torch.get_num_threads()}
    assert "targets" not in report  # the targets are for an H100 at batch 16, 512x512
    p = report["projection_160k"]
    assert p["train_minutes"] == pytest.approx(160_000 * ours["train"]["ms"] / 6e4)
    assert not p["includes_data"]
    table = format_model(report)
    assert "| segedu |" in table and "| transformers |" in table and "speed-up" in table


def test_memory_options_keep_the_model_flops():
    plain = bench_model("segformer-b0", hf=False, **TINY)
    saving = bench_model("segformer-b0", hf=False, loss_chunk_rows=16, grad_checkpointing=True, **TINY)
    assert saving["settings"]["loss_chunk_rows"] == 16 and saving["settings"]["grad_checkpointing"]
    # MFU counts model FLOPs: the forward recomputed by activation checkpointing is not counted again.
    assert saving["results"][0]["train"]["flops"] == plain["results"][0]["train"]["flops"]
    assert "activation checkpointing" in format_model(saving)


def test_hf_segformer_matches_registry_config_for_every_variant():
    for variant in ("b1", "b2"):
        with torch.device("meta"):
            ours = segedu.build_model(f"segformer-{variant}")
            hf = hf_segformer(f"segformer-{variant}")
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())


def test_bench_other_family_without_transformers_counterpart():
    report = bench_model("segnext-t", **TINY)
    assert [r["implementation"] for r in report["results"]] == ["segedu"]
    assert report["results"][0]["params"] == 4_263_414
    _check_implementation(report["results"][0], batch=1)
    assert report["speedup_vs_transformers"] is None
    assert report["transformers_note"] == "transformers has no segnext model"
    assert "no transformers comparison" in format_model(report)


def test_bench_swin_encoder_against_transformers_swin_model():
    # SwinModel fails on maps smaller than its window, so the input is at least 7 x 32 = 224.
    assert bench_model("ssformer-swin-t", **TINY)["transformers_note"].startswith("transformers SwinModel needs")
    report = bench_model("ssformer-swin-t", **{**TINY, "size": 224})
    names = [r["implementation"] for r in report["results"]]
    assert names == ["segedu", "segedu encoder", "transformers SwinModel"]
    full, encoder, hf = report["results"]
    # Same Swin-T; segedu keeps an output LayerNorm per stage, SwinModel one final LayerNorm.
    assert encoder["params"] - hf["params"] == 2 * (96 + 192 + 384 + 768) - 2 * 768
    assert full["params"] > encoder["params"]
    assert report["speedup_vs_transformers"]["compared"] == "segedu encoder vs transformers SwinModel"


def test_conv_backward_flops_respect_groups():
    # A 3x3 depth-wise conv: forward + both gradients = 3x the forward (torch's formula gives 66x here).
    conv = nn.Conv2d(64, 64, 3, padding=1, groups=64)
    x = torch.randn(2, 64, 16, 16, requires_grad=True)
    forward = count_flops(lambda: conv(x))
    assert forward == 2 * 2 * 64 * 9 * 16 * 16
    assert count_flops(lambda: conv(x).sum().backward()) == 3 * forward


def test_peak_tflops_table(monkeypatch):
    assert peak_tflops(torch.device("cpu")) is None
    for name, peak in [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0),
                       ("NVIDIA A100-SXM4-80GB", 312.0), ("Tesla T4", None)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, n=name: n)
        assert peak_tflops(torch.device("cuda")) == peak


def test_projection_takes_the_slower_of_compute_and_data():
    compute_only = project_run(step_ms=10.0, batch=16, inference_images_per_s=1000.0)
    assert compute_only["train_minutes"] == pytest.approx(160_000 * 0.010 / 60)
    assert compute_only["eval_minutes"] == pytest.approx(10 * 2000 / 1000 / 60)
    data_bound = project_run(step_ms=10.0, batch=16, inference_images_per_s=1000.0, loader_images_per_s=800.0)
    assert data_bound["data_ms_per_step"] == pytest.approx(20.0)
    assert data_bound["train_minutes"] == pytest.approx(160_000 * 0.020 / 60)


def test_loader_bench_returns_samples_per_second():
    result = bench_loader(images=3, image_size=(48, 64), crop=32, workers=1, batch=1, target_images_per_s=100.0)
    assert result["samples"] == 3 and result["image_size"] == [48, 64]
    steps = result["cpu_ms_per_sample"]
    assert list(steps)[:4] == ["decode", "RandomResize", "RandomCropCatMax", "RandomHorizontalFlip"]
    assert all(v >= 0 for v in steps.values())
    assert result["samples_per_s_per_worker"] == pytest.approx(1e3 / sum(steps.values()))
    assert result["workers_needed"] == math.ceil(100.0 / result["samples_per_s_per_worker"])
    assert result["dataloader"]["samples"] == 2  # the first batch is not timed
    assert "samples/s per worker" in format_loader(result)


def test_cli_bench_writes_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    rc = cli_main(["bench", "--model", "segformer-b0", "--device", "cpu", "--batch", "1", "--size", "64",
                   "--infer-batches", "1", "--steps", "1", "--warmup", "0", "--no-hf", "--amp", "--channels-last",
                   "--json", str(path)])
    assert rc == 0
    out = json.loads(path.read_text())
    assert out["command"] and out["arguments"]["model"] == "segformer-b0"
    settings = out["model"]["settings"]
    assert settings["bf16_autocast"] and settings["channels_last"] and settings["compile"] is False
    assert out["machine"]["torch"] == torch.__version__
    assert out["model"]["results"][0]["train"]["flops"] > 0
    assert "| segedu |" in capsys.readouterr().out
    assert cli_main(["bench"]) == 2  # nothing to measure


def test_decoded_cache_returns_the_folders_samples_and_rebuilds_when_stale(tmp_path):
    root = generate(tmp_path / "ade", n_train=3, n_val=0, size=(40, 56), seed=1)
    folder = SegmentationFolder(root, "training")
    cache = DecodedCache(folder, tmp_path / "cache")
    assert cache.built and len(cache) == 3
    for i in range(3):
        image, mask = cache[i]
        ref_image, ref_mask = folder[i]
        assert image.dtype == torch.uint8 and mask.dtype == torch.int64
        assert torch.equal(image, ref_image) and torch.equal(mask, ref_mask)
    assert (cache[1][1] == 255).any()  # unlabeled pixels: the ignore value survives the uint8 file
    assert not DecodedCache(folder, tmp_path / "cache").built  # reused as it is
    generate(tmp_path / "ade", n_train=4, n_val=0, size=(40, 56), seed=1, overwrite=True)
    grown = DecodedCache(SegmentationFolder(root, "training"), tmp_path / "cache")
    assert grown.built and len(grown) == 4
    crop = DecodedCache(folder, tmp_path / "cache", transforms=train_transforms(32))
    assert crop[0][0].shape == (3, 32, 32)


def test_loader_bench_from_the_cache():
    result = bench_loader(images=2, image_size=(48, 64), crop=32, cache=True)
    assert result["source"] == "pre-decoded uint8 cache"
    assert next(iter(result["cpu_ms_per_sample"])) == "read cache"
    assert result["samples_per_s_per_worker"] > 0


def test_b0_targets_are_judged_only_on_what_was_measured():
    report = {"results": [{"train": {"ms": 14.0, "peak_memory_gb": 9.5}}],
              "speedup_vs_transformers": {"inference_b16": 3.2},
              "projection_160k": project_run(step_ms=14.0, batch=16, inference_images_per_s=2000.0)}
    targets = _b0_targets(report)
    assert targets["step_ms"]["met"] and not targets["peak_memory_gb"]["met"]
    assert targets["inference_speedup_vs_hf"]["met"]
    assert targets["run_minutes"]["met"] is None  # the run target includes data loading, not measured here
    report["projection_160k"] = project_run(14.0, 16, 2000.0, loader_images_per_s=600.0)
    assert targets["run_minutes"]["target"] == 45.0
    assert _b0_targets(report)["run_minutes"]["met"] is False  # 26.7 ms per step: 71 min


def test_cli_bench_with_data_puts_loading_in_the_projection(tmp_path):
    path = tmp_path / "bench.json"
    assert cli_main(["bench", "--model", "segformer-b0", "--device", "cpu", "--batch", "1", "--size", "64",
                     "--infer-batches", "1", "--steps", "1", "--warmup", "0", "--no-hf", "--data",
                     "--data-images", "2", "--data-crop", "32", "--workers", "2", "--json", str(path)]) == 0
    out = json.loads(path.read_text())
    loader, projection = out["loader"], out["model"]["projection_160k"]
    assert projection["includes_data"]
    assert projection["data_ms_per_step"] == pytest.approx(1e3 / (2 * loader["samples_per_s_per_worker"]))


def test_bench_times_the_step_segedu_train_runs(monkeypatch):
    """The segedu side calls segedu.train.train_step on segedu.train.prepare_net (same compile boundary)."""
    import segedu.train as train_module
    calls = {"step": 0, "net": []}
    real_step, real_net = train_module.train_step, train_module.prepare_net

    def counted_step(*args, **kwargs):
        calls["step"] += 1
        return real_step(*args, **kwargs)

    def recorded_net(model, ctx, compile=False, mode="default"):
        calls["net"].append((compile, mode))
        return real_net(model, ctx, False, mode)  # (no compilation on this machine's test budget)
    monkeypatch.setattr(train_module, "train_step", counted_step)
    monkeypatch.setattr(train_module, "prepare_net", recorded_net)
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    bench_model("segformer-b0", **{**TINY, "steps": 2, "warmup": 1}, compile=True, compile_mode="max-autotune")
    assert calls == {"step": 3, "net": [(True, "max-autotune")]}  # warm-up + 2 timed steps, segedu side only
