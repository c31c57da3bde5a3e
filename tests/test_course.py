"""segedu.course: the cached course models (deterministic training, cache hits, invalidation) and the corruptions."""
import pytest
import torch

import segedu.train
from segedu import course
from segedu.data import generate

ITERS = 2  # a two-step budget: the tests check the machinery, not the accuracy


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    # 8 training scenes (one batch of 8) and 3 validation scenes, small: the real set takes a minute to generate
    return generate(tmp_path_factory.mktemp("syn"), n_train=8, n_val=3, size=(72, 96), seed=3)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_training_is_deterministic(tiny_data, tmp_path):
    one = course.trained("setr", iters=ITERS, data_root=tiny_data, cache_dir=tmp_path / "a")
    two = course.trained("setr", iters=ITERS, data_root=tiny_data, cache_dir=tmp_path / "b")
    assert same_weights(one, two)
    untrained = course.recipe("setr", ITERS).build_model()
    assert not same_weights(one, untrained)  # it did train
    assert not one.training


def test_cache_hit_returns_identical_weights_without_training(tiny_data, tmp_path, monkeypatch):
    first = course.trained("segformer", iters=ITERS, data_root=tiny_data, cache_dir=tmp_path)
    path = course.cache_path("segformer", ITERS, cache_dir=tmp_path)
    assert path.is_file() and not list(tmp_path.glob(".*.tmp"))  # written atomically: no temporary left behind

    def no_training(*args, **kwargs):
        raise AssertionError("a cache hit must not train")

    monkeypatch.setattr(segedu.train, "train", no_training)
    again = course.trained("segformer-b0", iters=ITERS, data_root=tiny_data, cache_dir=tmp_path)  # registry name
    assert same_weights(first, again)
    saved = torch.load(path, weights_only=True)  # plain tensors and values: loadable without running code
    assert saved["family"] == "segformer" and saved["recipe"]["iters"] == ITERS


def test_cache_key_changes_with_the_budget_and_seed(tmp_path):
    base = course.cache_path("segnext", cache_dir=tmp_path)
    assert base.parent == tmp_path and base.name.startswith("segnext-")
    assert course.cache_path("segnext", iters=3, cache_dir=tmp_path) != base
    assert course.cache_path("segnext", seed=1, cache_dir=tmp_path) != base
    assert course.cache_path("segnext", cache_dir=tmp_path) == base


def test_damaged_cache_file_is_replaced(tiny_data, tmp_path):
    path = course.cache_path("setr", ITERS, cache_dir=tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a checkpoint")
    model = course.trained("setr", iters=ITERS, data_root=tiny_data, cache_dir=tmp_path)
    assert same_weights(model, course.trained("setr", iters=ITERS, data_root=tiny_data, cache_dir=tmp_path))
    assert torch.load(path, weights_only=True)["family"] == "setr"


def test_callers_random_stream_is_untouched(tiny_data, tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    course.trained("setr", iters=ITERS, data_root=tiny_data, cache_dir=tmp_path)  # trains (cache miss)
    assert torch.equal(torch.rand(3), expected)
    torch.manual_seed(123)
    course.trained("setr", iters=ITERS, data_root=tiny_data, cache_dir=tmp_path)  # loads (cache hit)
    assert torch.equal(torch.rand(3), expected)


def test_one_budget_for_every_family():
    recipes = {key: course.recipe(key) for key in course.FAMILIES}
    shared = ("iters", "batch_size", "crop_size", "lr", "weight_decay", "warmup_iters", "scale", "ratio_range",
              "optimizer", "num_classes", "test_short_side")
    for field in shared:
        assert len({getattr(r, field) for r in recipes.values()}) == 1, field
    assert {r.model for r in recipes.values()} == {"segformer-b0", "segnext-t", "ssformer-swin-t", "setr-naive-base"}
    with pytest.raises(ValueError, match="unknown course model"):
        course.recipe("unet")


def test_predict_uses_only_the_synthetic_classes():
    model = course.recipe("segformer", ITERS).build_model().eval()
    pred = course.predict(model, torch.randn(2, 3, 40, 56), (50, 70))
    assert pred.shape == (2, 50, 70) and set(pred.unique().tolist()) <= set(course.CLASS_IDS)


@pytest.mark.parametrize("kind", course.CORRUPTIONS)
def test_corruptions_keep_shape_and_grow_with_severity(kind):
    images = torch.randint(0, 256, (2, 3, 30, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images[:, :, :, :20] = 60  # flat areas, where blur and JPEG change little, next to texture
    before = images.clone()
    assert torch.equal(course.corrupt(images, kind, 0), images)
    change = []
    for severity in (1, 3, 5):
        out = course.corrupt(images, kind, severity, seed=1)
        assert out.shape == images.shape and out.dtype == torch.uint8
        assert torch.equal(out, course.corrupt(images, kind, severity, seed=1))  # seeded: reproducible
        assert course.corrupt(images[0], kind, severity, seed=1).shape == images[0].shape  # one image [3, H, W]
        change.append((out.float() - images.float()).abs().mean().item())
    assert torch.equal(images, before)
    assert change[0] < change[1] < change[2], change
    with pytest.raises(ValueError):
        course.corrupt(images, kind, 6)


def test_corruptions_match_their_definitions():
    images = torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    # Gaussian noise: clip(x / 255 + std * N(0, 1), 0, 1) * 255, rounded
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(4))
    expected = ((images.float() / 255 + 0.18 * noise).clamp(0, 1) * 255).round().to(torch.uint8)
    assert torch.equal(course.gaussian_noise(images, 0.18, torch.Generator().manual_seed(4)), expected)
    # brightness: V of HSV + delta; a black pixel becomes grey delta, hue and saturation of others kept
    black = torch.zeros(3, 1, 1, dtype=torch.uint8)
    assert course.brightness(black, 0.2).flatten().tolist() == [51, 51, 51]
    pixel = torch.tensor([100, 50, 0], dtype=torch.uint8).view(3, 1, 1)  # V = 100/255
    assert course.brightness(pixel, 0.1).flatten().tolist() == [126, 63, 0]  # scaled by (100/255 + 0.1) / (100/255)
    # defocus: a normalised disk; a constant image stays constant
    kernel = course.disk_kernel(4, 0.5)
    assert kernel.shape == (17, 17) and torch.isclose(kernel.sum(), torch.tensor(1.0))
    assert torch.equal(kernel, kernel.flip(0)) and torch.equal(kernel, kernel.T)
    flat = torch.full((3, 32, 32), 77, dtype=torch.uint8)
    assert torch.equal(course.defocus_blur(flat, 6, 0.5), flat)
    # JPEG: lower quality, larger error
    errors = [(course.jpeg_compression(images, q).float() - images.float()).abs().mean() for q in (90, 25, 7)]
    assert errors[0] < errors[1] < errors[2]
