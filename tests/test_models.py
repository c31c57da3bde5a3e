"""The battery every registered model passes (after segmentation_models.pytorch's).

Forward + backward, any input size, save/load, eval determinism, torch.compile, bad input.
Models are built with their registered configs; inputs are small so the whole battery stays fast.
"""
import io

import pytest
import torch

import segedu
from segedu.registry import get_spec

MODELS = segedu.list_models()
SMALL = 64


def _smallest_per_family() -> list[str]:
    best: dict[str, tuple[int, str]] = {}
    for name in MODELS:
        with torch.device("meta"):  # counting needs shapes only
            n = sum(p.numel() for p in segedu.build_model(name).parameters())
        family = get_spec(name).family
        best[family] = min(best.get(family, (n, name)), (n, name))
    return sorted(name for _, name in best.values())


# Tracing with torch.compile and a full backward pass cost seconds per block: they run on the
# smallest variant of each family (the blocks are the same in the bigger ones).
LIGHT = _smallest_per_family()


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    torch.manual_seed(0)
    return segedu.build_model(request.param, num_classes=7)


def test_forward_backward(model):
    if model.name not in LIGHT:
        pytest.skip("backward is checked on the smallest variant of the family")
    model.train()
    x = torch.randn(2, 3, SMALL, SMALL)
    logits = model(x)
    assert logits.shape == (2, 7, SMALL, SMALL)
    logits.logsumexp(1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("size", [(97, 131), (75, 64)])
def test_any_input_size(model, size):
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 7, *size)


def test_encoder_decoder_contract(model):
    model.eval()
    with torch.no_grad():
        feats = model.encoder(torch.randn(1, 3, SMALL, SMALL))
        assert isinstance(feats, (list, tuple)) and all(f.ndim == 4 for f in feats)
        assert model.decoder(feats).shape[:2] == (1, 7)


def test_save_load_round_trip(model):
    model.eval()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    clone = segedu.build_model(model.name, num_classes=7).eval()
    clone.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    x = torch.randn(1, 3, SMALL, SMALL)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), model(x))


def test_eval_is_deterministic(model):
    model.eval()
    x = torch.randn(1, 3, SMALL, SMALL)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


def test_compile_gives_the_same_output(model):
    if model.name not in LIGHT:
        pytest.skip("compile is checked on the smallest variant of the family")
    model.eval()
    x = torch.randn(1, 3, SMALL, SMALL)
    compiled = torch.compile(model, backend="eager", fullgraph=False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)


def test_bad_input_gives_a_clear_error(model):
    with pytest.raises(ValueError, match="expected 3 input channels, got 1"):
        model(torch.randn(1, 1, SMALL, SMALL))
    with pytest.raises(ValueError, match="smaller than the minimum"):
        model(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="expected an image batch"):
        model(torch.randn(3, SMALL, SMALL))


def test_unknown_names_and_overrides():
    with pytest.raises(ValueError, match=r"unknown model 'segformer-b9'.*Did you mean.*Known models: .*segformer-b0"):
        segedu.build_model("segformer-b9")
    with pytest.raises(TypeError, match="unknown override"):
        segedu.build_model("segformer-b0", window_size=7)
    assert segedu.list_models("segformer-*") == [f"segformer-b{i}" for i in range(6)]
