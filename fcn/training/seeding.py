"""Reproducible runs: seeds derived from (seed, stage, epoch, rank), and deterministic
mode scoped to one run."""

import os

import numpy as np
import torch

__all__ = ["seed_for", "set_deterministic", "restore_deterministic"]


def seed_for(*parts):
    """A 63-bit seed from integers (deterministic, well mixed)."""
    return int(
        np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0]
        >> np.uint64(1)
    )


def set_deterministic(on):
    """Switch deterministic mode on for a run; returns the previous global settings for
    :func:`restore_deterministic` (an in-process caller must not be left in that mode)."""
    prev = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return prev


def restore_deterministic(prev):
    torch.use_deterministic_algorithms(prev[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev[1], prev[2]
