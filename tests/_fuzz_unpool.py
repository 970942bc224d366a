"""max_unpool2d cases for tests/test_fuzz.py: random max-pooling geometries (padding,
ceil mode, stride above and below the kernel, batch 0), unpooled back to the pooled
map's size, against F.max_unpool2d in float64."""

import torch
import torch.nn.functional as F

import fcn_kernels as fk
from helpers import to_layout


def draw_unpool(rng):
    while True:
        k = (rng.randint(1, 4), rng.randint(1, 4))
        s = (rng.randint(1, 5), rng.randint(1, 5))
        p = (rng.randint(0, k[0] // 2), rng.randint(0, k[1] // 2))
        hw = (rng.randint(max(1, k[0] - 2 * p[0]), 13), rng.randint(max(1, k[1] - 2 * p[1]), 13))
        ceil = rng.random() < 0.5
        pooled = [_pooled_size(n, kk, ss, pp, ceil) for n, kk, ss, pp in zip(hw, k, s, p)]
        default = [(n - 1) * ss + kk - 2 * pp for n, kk, ss, pp in zip(pooled, k, s, p)]
        if all(d - ss < n < d + ss for d, n, ss in zip(default, hw, s)):
            break  # unpooling can give back the pooled map's size
    size = rng.choice([hw, (0, 0) + hw])  # output_size as 2 or 4 numbers
    n, c = rng.choice([0, 1, 2]), rng.choice([1, 2, 3, 5])
    return dict(n=n, c=c, hw=hw, k=k, s=s, p=p, ceil=ceil, size=size)


def _pooled_size(n, k, s, p, ceil):
    out = (n + 2 * p - k + ((s - 1) if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= n + p:
        out -= 1
    return out


def check_unpool(case, dtype, how, device):
    c = case
    x64 = torch.randn(c["n"], c["c"], *c["hw"], dtype=torch.float64, device=device)
    # Values: the pooled maxima (so repeated indices, from overlapping windows, carry
    # equal values and ATen's unordered result is well defined), rounded to dtype.
    v, idx = F.max_pool2d(
        x64.to(dtype).double(), c["k"], c["s"], c["p"], ceil_mode=c["ceil"], return_indices=True
    )
    x = to_layout(v.to(dtype), how).requires_grad_()
    idx = to_layout(idx, how)
    ref_in = x.detach().double().requires_grad_()
    args = (c["k"], c["s"], c["p"], c["size"])
    y = fk.max_unpool2d(x, idx, *args)
    ref = F.max_unpool2d(ref_in, idx, *args)
    g = torch.randn_like(ref).to(dtype)
    (gx,) = torch.autograd.grad(y, x, g)
    (gref,) = torch.autograd.grad(ref, ref_in, g.double())
    return y, ref, gx, gref, gref.abs()
