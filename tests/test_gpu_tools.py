"""The GPU tooling that must work without a GPU: the emulated launcher's own rules,
the sass report and the fuzz CLI (gpu-check: tests/test_gpu_check.py)."""

import os
import subprocess
import sys

import pytest
import torch

import fcn_kernels as fk
from fcn_kernels.testing import emulated_cuda

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_emulated_ops_exist_for_every_schema():
    from fcn_kernels.testing import OPS

    # every fcn_kernels schema has its emulated twin, with the same signature
    names = {
        n.split("::")[1]
        for n in torch._C._dispatch_get_all_op_names()
        if n.startswith("fcn_kernels::")
    }
    assert names == set(OPS) and len(names) == 7
    for name in OPS:
        emu = getattr(torch.ops.fcn_kernels_emu, name).default
        ref = getattr(torch.ops.fcn_kernels, name).default
        assert str(emu._schema).replace("fcn_kernels_emu", "fcn_kernels") == str(ref._schema)
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fcn_kernels_emu::{name}", "CPU")


def _cpu_kernel(name):
    dump = torch._C._dispatch_dump(f"fcn_kernels::{name}")
    return next(line for line in dump.splitlines() if line.startswith("CPU:"))


def test_emulated_cuda_routes_and_restores_the_cpu_kernels():
    from fcn_kernels.testing import OPS

    before = {name: _cpu_kernel(name) for name in OPS}
    assert all("csrc/" in k and "cpu" in k for k in before.values()), before
    with emulated_cuda():
        assert all("testing.py" in _cpu_kernel(name) for name in OPS)
    assert {name: _cpu_kernel(name) for name in OPS} == before


def test_index32_limit_is_restored():
    from fcn_kernels.testing import index32_limit

    default = torch.ops.fcn_kernels_emu._set_index32_limit(0)
    with index32_limit(10):
        assert torch.ops.fcn_kernels_emu._set_index32_limit(10) == 10
    assert torch.ops.fcn_kernels_emu._set_index32_limit(0) == default


def test_fuzz_cli_runs_and_reports(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz",
            "--cases",
            "3",
            "--ops",
            "bilinear",
            "--devices",
            "cpu,emu",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "bilinear  cpu        3 cases     0 failed" in out.stdout
    assert "bilinear  emu        3 cases     0 failed" in out.stdout


def test_sass_report_parses_or_says_cpu_only():
    out = subprocess.run(
        [sys.executable, "-m", "benches.sass", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    if fk.cuda_built():
        # CI builds the CUDA sources: the report must list our kernels and pass --check.
        assert out.returncode == 0, out.stdout + out.stderr
        assert "bilinear_gpu::Forward<float, int>" in out.stdout
        assert "FP64 instructions in non-double kernels: 0" in out.stdout
    else:
        assert out.returncode == 0 and "holds no sm_90 code" in out.stdout


def test_emulated_launcher_phases_shared_memory_and_limits():
    emu = torch.ops.fcn_kernels_emu
    out = emu._launch_self_test(5, 64, 64 * 8)
    idx = torch.arange(5 * 64).view(5, 64)
    assert torch.equal(out, idx.sum(1))  # phase 1 saw every thread's phase-0 write
    # CUDA's launch limits are enforced, so an invalid launch fails here as on a GPU.
    with pytest.raises(RuntimeError, match="invalid grid"):
        emu._launch_self_test(0, 64, 512)
    with pytest.raises(RuntimeError, match="invalid block"):
        emu._launch_self_test(1, 2048, 2048 * 8)
    with pytest.raises(RuntimeError, match="shared memory"):
        emu._launch_self_test(1, 64, 64 * 1024)
