"""Import mmsegmentation 1.x on a CPU-only machine with mmcv-lite, for parity tests.

mmcv-lite is mmcv without its compiled extension (``mmcv._ext``), so ``import mmcv.ops`` fails, and
several mmseg modules import names from ``mmcv.ops`` at import time (point_sample, PSAMask,
CrissCrossAttention, sigmoid_focal_loss, DeformConv2d, ...). None of the models the parity tests
build (ViT, Swin, MSCAN, SETR / SegFormer / LightHam heads) use them, so :func:`import_mmseg` puts
a placeholder ``mmcv.ops`` module in ``sys.modules`` whose every name is a dummy that raises when
used, then imports mmseg. Usage in a test::

    from mmseg_stub import import_mmseg

    def test_parity():
        MODELS = import_mmseg()                     # skips the test when mmseg is not installed
        backbone = MODELS.build(dict(type="VisionTransformer", ...))
"""
from __future__ import annotations

import importlib.util
import sys
import types

import pytest


def _placeholder(name: str):
    class Missing:
        """Stands in for ``mmcv.ops.<name>``, which needs mmcv's compiled extension."""

        def __init__(self, *args, **kwargs):
            raise RuntimeError(f"mmcv.ops.{name} needs the full mmcv build (mmcv-lite has no compiled ops)")

    Missing.__name__ = Missing.__qualname__ = name
    return Missing


def _install_mmcv_ops_stub() -> None:
    try:
        import mmcv.ops  # noqa: F401  (the full mmcv build: nothing to do)
        return
    except Exception:  # mmcv-lite: ModuleNotFoundError for mmcv._ext
        for key in [k for k in sys.modules if k == "mmcv.ops" or k.startswith("mmcv.ops.")]:
            del sys.modules[key]  # drop the half-imported package
    stub = types.ModuleType("mmcv.ops")
    stub.__doc__ = "placeholder for mmcv.ops (see tests/mmseg_stub.py)"
    stub.__path__ = []  # a package, so "import mmcv.ops.xyz" fails cleanly instead of oddly

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _placeholder(name)
        setattr(stub, name, value)
        return value

    stub.__getattr__ = __getattr__
    sys.modules["mmcv.ops"] = stub
    import mmcv
    mmcv.ops = stub


def import_mmseg():
    """Install the ``mmcv.ops`` placeholder, import mmseg's models and return mmseg's MODELS registry.

    Skips the calling test (``pytest.importorskip`` style) when mmsegmentation or mmcv is missing.
    """
    for package in ("mmseg", "mmcv", "mmengine"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (pip install -e '.[mmseg]')")
    _install_mmcv_ops_stub()
    import mmseg.models  # noqa: F401  (registers the backbones, necks and heads)
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    return MODELS
