"""Small helpers: seeding, device choice, DataLoader clean-up."""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (all devices); optionally ask for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def default_device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def stop_workers(batches) -> None:
    """Stop the worker processes of a DataLoader iterator now, however its loop ended.

    After an error the iterator lives on in the traceback, and its workers with it, until the interpreter's exit;
    that exit terminates child processes with SIGTERM and then waits for them, forever if a worker does not die
    of SIGTERM (training's workers ignore it; others inherit training's handler while it is installed).
    """
    shutdown = getattr(batches, "_shutdown_workers", None)  # torch's own clean-up, also run by its __del__
    if shutdown is not None:
        shutdown()
