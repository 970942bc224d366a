"""The CPU kernels' hot loops are compiled for AVX-512, AVX2 and the baseline ISA and
picked at run time like ATen's own kernels (csrc/common/isa.h), following
ATEN_CPU_CAPABILITY. Every variant this CPU can run must give ATen's results: each is
checked in a subprocess with that capability forced."""

import os
import subprocess
import sys

import pytest
import torch

SCRIPT = r"""
import torch, torch.nn.functional as F
import fcn_kernels as fk
print("capability", torch.backends.cpu.get_cpu_capability())
torch.manual_seed(0)
def check(ours, ref, tol):
    err = ((ours.double() - ref.double()).abs() / (1 + ref.double().abs())).max().item()
    assert err <= tol, (err, tol)
for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 2e-3)):
    for cl in (False, True):
        # odd sizes and channel counts, so vector loops run their tails
        x = torch.randn(2, 5, 7, 9, dtype=torch.float64)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        xt = x.to(dtype).requires_grad_()
        xr = x.to(dtype).double().requires_grad_()
        for kw in (dict(scale_factor=2), dict(size=(17, 31)), dict(scale_factor=0.6)):
            for ac in (False, True):
                y = fk.bilinear_upsample(xt, **kw, align_corners=ac)
                r = F.interpolate(xr, **kw, mode="bilinear", align_corners=ac)
                check(y, r, tol)
                g = torch.randn_like(r)
                check(torch.autograd.grad(y, xt, g.to(dtype))[0],
                      torch.autograd.grad(r, xr, g.to(dtype).double())[0], tol * 4)
        for k, s, off, size in ((4, 2, 0, None), (16, 8, 5, (41, 50)), (64, 32, 19, (60, 70))):
            w = fk.bilinear_kernel(5, k, dtype=dtype)
            y = fk.conv_transpose2d_crop(xt, w, stride=s, offset=(off, off), size=size)
            r = F.conv_transpose2d(xr, w.double(), stride=s)[..., off:, off:]
            if size:
                r = r[..., :size[0], :size[1]]
            check(y, r, tol)
            g = torch.randn_like(r)
            check(torch.autograd.grad(y, xt, g.to(dtype))[0],
                  torch.autograd.grad(r, xr, g.to(dtype).double())[0], tol * 4)
            # a dense (learned) weight: the phase-GEMM path (own AVX-512 GEMM, else ATen's mm)
            wg = (torch.randn(5, 5, k, k, dtype=torch.float64) / (5 * k)).to(dtype)
            wt, wr = wg.clone().requires_grad_(), wg.double().requires_grad_()
            y = fk.conv_transpose2d_crop(xt, wt, stride=s, offset=(off, off), size=size)
            r = F.conv_transpose2d(xr, wr, stride=s)[..., off:, off:]
            if size:
                r = r[..., :size[0], :size[1]]
            check(y, r, tol)
            g = torch.randn_like(r)
            for a, b in zip(torch.autograd.grad(y, (xt, wt), g.to(dtype)),
                            torch.autograd.grad(r, (xr, wr), g.to(dtype).double())):
                check(a, b, tol * 8)
        v, idx = F.max_pool2d(x.to(dtype), 2, 2, return_indices=True)
        check(fk.max_unpool2d(v, idx, 2, 2, 0, x.shape[2:]),
              F.max_unpool2d(v.double(), idx, 2, 2, 0, x.shape[2:]), 0)
print("ok")
"""


def _supported():
    """Capabilities this CPU can run: torch never picks more than the CPU has."""
    best = torch.backends.cpu.get_cpu_capability()
    order = ["DEFAULT", "AVX2", "AVX512"]
    if best not in order:  # not x86: only the baseline variant exists
        return ["DEFAULT"]
    return order[: order.index(best) + 1]


@pytest.mark.parametrize("capability", ["DEFAULT", "AVX2", "AVX512"])
def test_every_isa_variant_matches_aten(capability):
    if capability not in _supported():
        pytest.skip(f"this CPU cannot run {capability} code")
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability.lower())
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"capability {capability}" in out.stdout and "ok" in out.stdout, out.stdout
