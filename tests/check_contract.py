"""What every exercise check promises, asserted once for the tests/test_checks*.py files.

A check (segedu.checks.check_*) takes the learner's function or class (some take two):
- on a correct solution it prints exactly one line, "<name> passed: ...", and leaves the caller's global torch RNG as it
  was (the checks run on their own seeds);
- on a planted mistake it raises an AssertionError that names the mistake;
- on an unsolved exercise (a stub raising NotImplementedError, as nbgrader's student version does) it lets that very
  error through unchanged.
"""
import pytest
import torch
from torch import nn

STUB_MESSAGE = "unsolved exercise (check_contract stub)"


def stub(*args, **kwargs):
    """An unsolved function exercise."""
    raise NotImplementedError(STUB_MESSAGE)


class Stub(nn.Module):
    """An unsolved module exercise: constructing it raises."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        raise NotImplementedError(STUB_MESSAGE)


def fails(check, *args_and_match):
    """``fails(check, arg, ..., match)``: check(arg, ...) raises an AssertionError whose message matches ``match``."""
    *args, match = args_and_match
    with pytest.raises(AssertionError, match=match):
        check(*args)


def assert_passes_quietly(capsys, name, check, *args):
    """check(*args) prints one line, "<name> passed: ...", and leaves the global torch RNG state as it was."""
    capsys.readouterr()  # drop whatever was printed before
    state = torch.get_rng_state()
    check(*args)
    out = capsys.readouterr().out
    assert out.startswith(f"{name} passed:") and out.count("\n") == 1, out
    assert torch.equal(torch.get_rng_state(), state), f"{name} changed the global RNG state"  # the learner's stream


def assert_stub_passes_through(check, *args):
    """check(*args), given a stub among args, lets the stub's NotImplementedError through unchanged."""
    with pytest.raises(NotImplementedError) as raised:
        check(*args)
    assert type(raised.value) is NotImplementedError and raised.value.args == (STUB_MESSAGE,), repr(raised.value)
