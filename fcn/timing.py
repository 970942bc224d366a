"""Wall-clock timing of a repeated step (the demo's training-step times; the model
benchmark in benches/bench_model.py)."""

import time

import torch

__all__ = ["time_calls"]


def time_calls(fn, repeat, device, warmup=1):
    """Seconds taken by each of `repeat` calls of ``fn()``, after `warmup` untimed calls;
    CUDA work is waited for inside each timed call."""
    cuda = torch.device(device).type == "cuda"
    times = []
    for i in range(warmup + repeat):
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times
