"""The machinery every check shares: seeded weights, weight copying, diagnosis of classic mistakes."""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable

import torch
import torch.nn as nn

RTOL, ATOL = 1e-4, 1e-5  # float32, and room for equivalent orderings of the same arithmetic

Candidates = Iterable[tuple[str, Callable[[], torch.Tensor]]]


# ----------------------------------------------------------------------------------------------
# Shared machinery
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _seeded(seed: int):
    """Run a block on its own seed and give the caller's RNG state back afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = RTOL, atol: float = ATOL) -> bool:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape:
        return False
    return bool(torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol, equal_nan=True))


def _fail(where: str, message: str):
    raise AssertionError(f"{where}: {message}")


def _diagnose(where: str, out: torch.Tensor, expected: torch.Tensor, candidates: Candidates,
              generic: str, rtol: float = RTOL, atol: float = ATOL) -> None:
    """Raise if ``out`` is not ``expected``, naming the first classic mistake that reproduces it."""
    if _close(out, expected, rtol, atol):
        return
    for message, make in candidates:
        try:
            wrong = make()
        except Exception:  # a mistake that cannot even run on this input cannot be the one
            continue
        if _close(out, wrong, rtol, atol):
            _fail(where, message)
    diff = (out.double() - expected.double()).abs()
    diff = diff[~diff.isnan()]
    worst = f"{diff.max().item():.3g}" if diff.numel() else "nan"
    _fail(where, f"the values differ from segedu's (largest difference {worst}). {generic}")


def _randomize_(module: nn.Module, seed: int) -> nn.Module:
    """Weights with std 1/sqrt(fan_in), biases and norm affines away from their trivial values.

    The default initialisations (std 0.02, zero biases, unit norms) make attention almost uniform
    and hide bugs such as a missing scale; these weights keep every layer's effect visible.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(noise / math.sqrt(fan_in))
            elif name.endswith("weight"):  # LayerNorm / BatchNorm scale
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.2 * noise)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.2 * torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))
    return module


def _build(cls, args: tuple, where: str) -> nn.Module:
    try:
        module = cls(*args)
    except NotImplementedError:  # an unsolved exercise: let it through unchanged (nbgrader, CI)
        raise
    except Exception as err:
        _fail(where, f"constructing {getattr(cls, '__name__', cls)}{args} raised {type(err).__name__}: {err}. "
                     f"The check calls the constructor with segedu's arguments, in segedu's order.")
    if not isinstance(module, nn.Module):
        _fail(where, f"expected a torch.nn.Module subclass, got {type(module).__name__}")
    return module


def _copy_weights(student: nn.Module, reference: nn.Module, where: str, hints: dict[str, str]) -> None:
    """``load_state_dict`` with a readable account of every missing, extra or mis-shaped entry."""
    ref, mine = reference.state_dict(), student.state_dict()
    problems = []
    for key, value in ref.items():
        if key not in mine:
            problems.append(f"missing {key} {list(value.shape)}")
        elif mine[key].shape != value.shape:
            problems.append(f"{key} has shape {list(mine[key].shape)}, expected {list(value.shape)}")
    problems += [f"unexpected {key} {list(mine[key].shape)}" for key in mine if key not in ref]
    if problems:
        advice = [hint for pattern, hint in hints.items() if any(pattern in p for p in problems)]
        expected = ", ".join(f"{k} {list(v.shape)}" for k, v in ref.items())
        _fail(where, "the parameters do not match segedu's, so its weights cannot be copied in:\n  - "
              + "\n  - ".join(problems)
              + ("\nHint: " + " ".join(advice) if advice else "")
              + f"\nExpected exactly: {expected}")
    student.load_state_dict(ref)


def _reference_and_yours(reference_cls, cls, args: tuple, seed: int, where: str,
                         hints: dict[str, str]) -> tuple[nn.Module, nn.Module]:
    """segedu's module with seeded random weights, and the learner's built with the same arguments and given
    the same weights (both in eval mode). Call it inside ``_seeded``: building modules draws random numbers."""
    reference = _randomize_(reference_cls(*args), seed).eval()
    yours = _build(cls, args, where).eval()
    _copy_weights(yours, reference, where, hints)
    return reference, yours


def _run(where: str, fn: Callable, *args):
    try:
        with torch.no_grad():
            return fn(*args)
    except (AssertionError, NotImplementedError):
        raise
    except Exception as err:
        shapes = ", ".join(str(tuple(a.shape)) if isinstance(a, torch.Tensor) else repr(a) for a in args)
        _fail(where, f"calling it with ({shapes}) raised {type(err).__name__}: {err}")


def _expect_tensor(where: str, out, shape: tuple, hint: str = "") -> torch.Tensor:
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor) and tuple(out[0].shape) == shape:
        _fail(where, f"returned a {type(out).__name__} of {len(out)} items; return only the output tensor "
                     f"of shape {list(shape)}")
    if not isinstance(out, torch.Tensor):
        _fail(where, f"expected a tensor, got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape):
        _fail(where, f"output shape {list(out.shape)}, expected {list(shape)}. {hint}".rstrip())
    return out


def _passed(name: str, n: int, reference: str) -> None:
    print(f"{name} passed: {n} cases match {reference}")


def _to_map(tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """[B, N, C] -> [B, C, H, W] (the right way)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *hw)


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, N, C] (the right way)."""
    return x.flatten(2).transpose(1, 2)


