"""Shared benchmark helpers. FCN_BENCH_QUICK=1 switches every suite to tiny shapes
(CI runs them that way with --benchmark-disable so they cannot rot)."""

import os

import pytest
import torch

QUICK = os.environ.get("FCN_BENCH_QUICK", "") not in ("", "0")
HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no GPU"))]


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def run(benchmark, fn, device, rounds=None):
    """Time fn() (synchronised on CUDA); returns its last result."""

    def timed():
        out = fn()
        synchronize(device)
        return out

    if rounds is None:
        rounds = 2 if QUICK else (20 if torch.device(device).type == "cpu" else 100)
    return benchmark.pedantic(timed, rounds=rounds, warmup_rounds=1, iterations=1)


def op_matrix(cases, impls):
    """The parameter grid every operator suite runs: device x case x dtype x layout x
    direction x implementation (ours / aten)."""

    def decorate(test):
        for name, values in (
            ("impl", list(impls)),
            ("direction", ["fwd", "bwd", "fwd+bwd"]),
            ("layout", ["nchw", "cl"]),
            ("dtype", ["float32", "bfloat16"]),
            ("case", list(cases)),
            ("device", DEVICES),
        ):
            test = pytest.mark.parametrize(name, values)(test)
        return test

    return decorate
