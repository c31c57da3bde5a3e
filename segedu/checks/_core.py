"""The machinery every check shares: seeded weights, weight copying, diagnosis of classic mistakes, hints.

Hints that guide instead of answering. A failed check first names the concept that went wrong and where to read
about it (the paper's section or equation, segedu's reference); the fix stays back. Calling the same check again
with the same failure, or calling it with ``hint=True``, adds the fix as a last line ``Hint: ...``. Every check
gets this from the ``@teaches(where_to_look)`` decorator, which also gives it the ``hint`` keyword.
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Callable, Iterable, Union

import torch
import torch.nn as nn

RTOL, ATOL = 1e-4, 1e-5  # float32, and room for equivalent orderings of the same arithmetic

# A candidate mistake: (message, make) where message is "concept: fix" in one string (split at the first ': ' or
# '; ' that follows the concept) or an explicit (concept, fix) pair; make() recomputes the output with the mistake.
Message = Union[str, tuple[str, str]]
Candidates = Iterable[tuple[Message, Callable[[], torch.Tensor]]]

HINT_OFFER = "For a hint on the fix, run the check again or call it with hint=True."


# ----------------------------------------------------------------------------------------------
# Hints: the concept first, the fix on request
# ----------------------------------------------------------------------------------------------
_ACTIVE: list[tuple[str, bool]] = []  # (check name, hint requested) of the checks running now, innermost last
_LAST_FAILURE: dict[str, str] = {}  # check name -> the last failure it reported (to recognise a repeat)
WHERE_TO_LOOK: dict[str, str] = {}  # check name -> where to read about it


def teaches(where_to_look: str):
    """Decorator for a ``check_*``: adds the ``hint=False`` keyword and records where the concept is explained."""

    def wrap(fn):
        name = fn.__name__
        WHERE_TO_LOOK[name] = where_to_look

        @functools.wraps(fn)
        def check(*args, hint: bool = False, **kwargs):
            _ACTIVE.append((name, bool(hint)))
            try:
                result = fn(*args, **kwargs)
            finally:
                _ACTIVE.pop()
            _LAST_FAILURE.pop(name, None)  # passed: the next failure counts as a first one again
            return result

        return check

    return wrap


_ABBREVIATIONS = ("e.g", "i.e", "Sec", "Eq", "Fig", "vs", "cf", "etc", "approx")


def split_message(message: str) -> tuple[str, str | None]:
    """"concept: fix" -> (concept., fix): split at the first ': ', '; ' or '. ' outside brackets after the first
    dozen characters (so that a label such as "partition: ..." stays with its concept)."""
    depth = 0
    for i, ch in enumerate(message):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(depth - 1, 0)
        elif depth == 0 and i >= 12 and ch in ":;." and message[i + 1:i + 2] == " ":
            if ch == "." and (message[:i].endswith(_ABBREVIATIONS) or message[i - 1] in "0123456789."):
                continue
            fix = message[i + 2:].strip()
            if fix:
                return message[:i].rstrip() + ".", fix
    return message, None


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


def _fail(where: str, message: str, fix: str | None = None):
    """Raise the check's AssertionError: ``where: message`` (the concept), where to look, and the ``fix`` only when
    the learner asked for it (``hint=True``) or hit the same failure on the previous call of this check."""
    text = f"{where}: {message}"
    if not _ACTIVE:  # called outside a decorated check (a helper used on its own)
        raise AssertionError(text + (f"\nHint: {fix}" if fix else ""))
    name, hint = _ACTIVE[-1]
    repeated = _LAST_FAILURE.get(name) == text
    _LAST_FAILURE[name] = text
    lines = [text]
    if WHERE_TO_LOOK.get(name):
        lines.append(f"Where to look: {WHERE_TO_LOOK[name]}.")
    if fix:
        lines.append(f"Hint: {fix}" if hint or repeated else HINT_OFFER)
    raise AssertionError("\n".join(lines))


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
            concept, fix = message if isinstance(message, tuple) else split_message(message)
            _fail(where, concept, fix or generic)
    diff = (out.double() - expected.double()).abs()
    diff = diff[~diff.isnan()]
    worst = f"{diff.max().item():.3g}" if diff.numel() else "nan"
    _fail(where, f"the values differ from segedu's (largest difference {worst}), and none of the classic "
                 f"mistakes this check knows reproduces them.", generic)


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
              + f"\nExpected exactly: {expected}", " ".join(advice) or None)
    student.load_state_dict(ref)
    _check_norm_eps(student, reference, where)


def _check_norm_eps(student: nn.Module, reference: nn.Module, where: str) -> None:
    """Every LayerNorm / GroupNorm / BatchNorm of the learner's module has the eps of segedu's namesake.

    A LayerNorm at PyTorch's default eps 1e-5 where the official code has 1e-6 changes the output by only ~1e-6
    relative, under the checks' tolerance, and then fails later in a notebook with a bare assert_close."""
    norms = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
    mine = dict(student.named_modules())
    for name, ref in reference.named_modules():
        other = mine.get(name)
        if isinstance(ref, norms) and isinstance(other, norms) and getattr(other, "eps", None) != ref.eps:
            kind = type(ref).__name__
            _fail(where, f"`{name}` is a {kind} with eps={other.eps}, but the official code (and segedu) uses "
                         f"eps={ref.eps:g} there: the eps of a norm is part of the trained model (the released "
                         f"weights expect it), and PyTorch's default (1e-5) is not every model's",
                  f"nn.{kind}(..., eps={ref.eps:g}) for `{name}`.")


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




# ----------------------------------------------------------------------------------------------
# Stochastic depth: a training-mode probe (the other comparisons run in eval mode, where DropPath is the identity)
# ----------------------------------------------------------------------------------------------
STOCHASTIC_DEPTH = ("stochastic depth (DropPath; Huang et al. 2016, in every official block: the residual branch of "
                    "a whole sample is dropped with probability p in training and the kept ones scaled by 1 / (1 - p))")


def _branch_outcomes(out: torch.Tensor, x: torch.Tensor, branches: list[Callable], scale: float) -> list:
    """For every sample, which branches were dropped, if ``out[b]`` is x -> y + s_i * f_i(y) (in order) with every
    s_i either 0 (dropped) or ``scale`` (kept); None when no such combination gives the sample's output."""
    import itertools

    combos = []
    with torch.no_grad():
        for dropped in itertools.product((False, True), repeat=len(branches)):
            y = x
            for gone, f in zip(dropped, branches):
                if not gone:
                    y = y + scale * f(y)
            combos.append((dropped, y))
    hits = []
    for b in range(x.shape[0]):
        hits.append(next((d for d, y in combos if _close(out[b], y[b])), None))
    return hits


def _probe_stochastic_depth(where: str, run_train: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                            branches: list[Callable], p: float, seed: int, what: str = "the block",
                            other_rates: Iterable[float] = ()) -> None:
    """Run the learner's block in training mode (``run_train``, on a seed of its own) on a batch of many samples and
    check that each sample's output is one of the patterns stochastic depth at rate ``p`` can give: every residual
    branch (``branches``: segedu's, with the same weights, in eval mode) either dropped or kept and scaled by
    1 / (1 - p), drawn per sample."""
    with _seeded(seed):
        try:
            with torch.no_grad():
                out = run_train(x)
        except (AssertionError, NotImplementedError):
            raise
        except Exception as err:
            _fail(where, f"{what} raised {type(err).__name__} in training mode: {err}")
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        _fail(where, f"{what} returned {type(out).__name__} of another shape in training mode")
    hits = _branch_outcomes(out, x, branches, 1.0 / (1.0 - p))
    rate = f"drop-path rate {p:g}"
    if all(h is not None for h in hits):
        drops = sum(any(h) for h in hits)
        if p == 0.0 or (drops and len(set(hits)) > 1):
            return
        if not drops:
            _fail(where, f"in training mode {what}, built with {rate}, never dropped a residual branch in "
                         f"{len(hits)} samples: no {STOCHASTIC_DEPTH}. Its rate is missing, zero, or not applied",
                  "Wrap each residual branch: x = x + self.drop_path(branch(norm(x))), with "
                  "self.drop_path = DropPath(drop_path) built from the rate the constructor receives.")
        _fail(where, f"in training mode {what} dropped the same branches for every sample of the batch: "
                     f"{STOCHASTIC_DEPTH} draws one coin per sample",
              "Draw a [B, 1, 1] (one per sample) keep mask, as segedu.layers.DropPath does.")
    if p > 0.0:
        unscaled = _branch_outcomes(out, x, branches, 1.0)
        if all(h is not None for h in unscaled):
            if not any(any(h) for h in unscaled):
                _fail(where, f"in training mode {what}, built with {rate}, behaves exactly as in eval mode: no "
                             f"{STOCHASTIC_DEPTH}. DropPath is missing, or its rate is not the one given",
                      "Wrap each residual branch: x = x + self.drop_path(branch(norm(x))), with "
                      "self.drop_path = DropPath(drop_path).")
            _fail(where, f"in training mode {what} drops whole branches but does not rescale the kept ones by "
                         f"1 / (1 - p): {STOCHASTIC_DEPTH} keeps the expected value of each branch",
                  "Divide the kept branches by 1 - p (segedu.layers.DropPath does).")
    for q in other_rates:
        if q not in (0.0, p) and all(h is not None for h in _branch_outcomes(out, x, branches, 1.0 / (1.0 - q))):
            _fail(where, f"in training mode {what} drops its branches with rate {q:g}, but its rate is {p:g}: with "
                         f"{STOCHASTIC_DEPTH}, the rates grow linearly with depth. Are they reversed, or given to "
                         f"the wrong blocks?", "Give block i the rate drop_paths[i].")
    if p == 0.0:
        _fail(where, f"{what} has drop-path rate 0 here, but its output changes in training mode: it drops "
                     f"branches. With {STOCHASTIC_DEPTH}, the rates grow linearly with depth, from 0 for the first "
                     f"block: are they reversed, or given to the wrong blocks?",
              "Give block i the rate drop_paths[i].")
    _fail(where, f"in training mode {what} (built with {rate}) gives outputs that match no pattern of whole residual "
                 f"branches dropped per sample: {STOCHASTIC_DEPTH} zeroes a sample's whole branch, not single "
                 f"elements (nn.Dropout), and nothing else changes in training",
          "Use segedu.layers.DropPath(drop_path) on each residual branch: x = x + self.drop_path(branch(norm(x))).")
