"""One registry for every published model variant.

Each model file (``segedu/models/<family>.py``) registers its variants with :func:`register_model`,
next to the table of hyperparameters taken from the paper and its official code, so a learner
reads a family and its variants in one place. :func:`build_model` and :func:`list_models` are the
public entry points (re-exported as ``segedu.build_model`` / ``segedu.list_models``).
"""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable

import torch.nn as nn


@dataclass(frozen=True)
class ModelSpec:
    """A registered variant: how to build it and the facts the papers publish about it."""

    name: str
    family: str
    builder: Callable[..., nn.Module]
    config: dict[str, Any]
    crop_size: int = 512  # training crop of the ADE20K recipe
    published: dict[str, float] = field(default_factory=dict)  # e.g. {"params_m": 3.8, "gmacs": 8.4}


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    """Look a variant up by name; an unknown name lists the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}.{hint} Known models: {', '.join(sorted(_REGISTRY))}"
        ) from None


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered variants matching a shell-style ``pattern`` (e.g. ``"segformer-*"``)."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def build_model(name: str, num_classes: int = 150, **overrides: Any) -> nn.Module:
    """Build a registered model with randomly initialised weights.

    ``overrides`` replace entries of the variant's config (e.g. ``drop_path_rate=0.0``); an
    override the variant does not have is an error rather than silently ignored.
    """
    spec = get_spec(name)
    unknown = set(overrides) - set(spec.config)
    if unknown:
        raise TypeError(
            f"{name}: unknown override(s) {sorted(unknown)}; this variant accepts {sorted(spec.config)}"
        )
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    model = spec.builder(num_classes=num_classes, **{**spec.config, **overrides})
    model.name = name
    return model
