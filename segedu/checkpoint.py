"""Checkpoints: written atomically, read back with ``weights_only=True``.

A checkpoint is a dict of tensors and plain Python values (no pickled objects), so
``torch.load(..., weights_only=True)`` can read it without running code from the file.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch


def save_atomic(obj: dict, path: str | Path) -> Path:
    """Write to a temporary file in the same folder, flush it to disk, then rename over ``path``.

    A crash mid-write leaves the previous checkpoint intact; readers never see a half file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated or foreign files
        raise ValueError(f"could not read checkpoint {path}: {exc}") from exc


def rng_state(cuda_states: list[torch.Tensor] | None = None) -> dict:
    """Every RNG a training step touches, as tensors and plain values.

    ``cuda``: one CUDA generator state per process (rank r's on its own GPU; pass ``cuda_states`` gathered
    from every rank, see segedu.distributed), so that a resume on another number of GPUs restores what
    it can: rank r takes state r, or state 0 where the saving run had fewer processes.
    """
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].copy()), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if cuda_states is None and torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda_states = [torch.cuda.get_rng_state()]
    if cuda_states:
        state["cuda"] = list(cuda_states)
    return state


def cuda_state_for(states: list[torch.Tensor], rank: int) -> torch.Tensor:
    """The saved CUDA state that process ``rank`` restores: its own, or rank 0's when the run that saved had
    fewer processes (its random numbers then differ from an uninterrupted run: dropout, drop-path)."""
    return states[rank] if rank < len(states) else states[0]


def set_rng_state(state: dict, rank: int = 0) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy(), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():  # a CPU run ignores CUDA states
        torch.cuda.set_rng_state(cuda_state_for(state["cuda"], rank))
