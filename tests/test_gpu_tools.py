"""The GPU tooling that must work without a GPU: the emulated launcher's own rules,
the sass report, the fuzz CLI and gpu-check's skip paths and summary writer."""

import json
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


def test_gpu_check_without_gpu_skips_gpu_steps_and_writes_summary(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: gpu-check would run for real")
    out = subprocess.run(
        [sys.executable, "-m", "benches.gpu_check", str(tmp_path), "--no-build"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    status = {s["step"]: s["status"] for s in summary["steps"]}
    assert status["build"] == "skipped"
    for step in ("tests", "memcheck", "racecheck", "sync", "graph", "bench"):
        assert status[step] == "skipped", status
    assert status["sass"] == ("passed" if fk.cuda_built() else "failed")
    assert out.returncode == (0 if fk.cuda_built() else 1)
    md = (tmp_path / "summary.md").read_text()
    assert "| tests | skipped |" in md and "no GPU" in md


def test_gpu_check_summary_includes_the_bench_table(tmp_path):
    from benches import gpu_check

    (tmp_path / "bench.log").write_text("noise\n| op | case |\n|---|---|\n| bilinear | x8 |\n")
    results = [
        {
            "step": "bench",
            "status": "passed",
            "exit": 0,
            "seconds": 1.0,
            "log": "bench.log",
            "tail": "",
        },
        {
            "step": "graph",
            "status": "failed",
            "exit": 1,
            "seconds": 2.0,
            "log": "graph.log",
            "tail": "boom",
        },
    ]
    gpu_check.write_summary(str(tmp_path), results, "test machine")
    md = (tmp_path / "summary.md").read_text()
    assert "| bilinear | x8 |" in md and "| graph | failed | 1 | 2.0 |" in md
    assert json.loads((tmp_path / "summary.json").read_text())["steps"][1]["tail"] == "boom"


def test_gpu_smoke_skips_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    for what in ("ops", "sync", "graph"):
        out = subprocess.run(
            [sys.executable, "-m", "benches.gpu_smoke", what],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0 and "skipped: no CUDA device" in out.stdout


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


def test_oversized_grids_raise_instead_of_wrapping():
    emu = torch.ops.fcn_kernels_emu
    emu._launch_self_test(1000, 256, 0, "elements")  # a valid launch of empty threads
    # Grids are computed and checked in 64 bits: 2^32 + 1 blocks must not wrap to 1.
    with pytest.raises(RuntimeError, match=r"invalid grid \(4294967297, 1, 1\)"):
        emu._launch_self_test((2**32 + 1) * 256, 256, 0, "elements")
    with pytest.raises(RuntimeError, match=r"invalid grid \(2147483648, 1, 1\)"):
        emu._launch_self_test(2**31 * 64, 64, 0, "elements")
    with pytest.raises(RuntimeError, match="invalid grid"):
        emu._launch_self_test(2**32 + 1, 64, 0)  # the block-sum kernel's grid, given directly
    with pytest.raises(RuntimeError, match="invalid block"):
        emu._launch_self_test(1, 2**32 + 64, 0, "elements")


def test_gpu_check_keeps_within_its_budget(tmp_path):
    # With no time left every step is recorded as skipped, none is started.
    out = subprocess.run(
        [sys.executable, "-m", "benches.gpu_check", str(tmp_path), "--no-build", "--budget", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    steps = json.loads((tmp_path / "summary.json").read_text())["steps"]
    assert [s["step"] for s in steps][:3] == ["build", "sass", "tests"]
    assert all(s["status"] == "skipped" for s in steps)
    assert any(s.get("reason") == "out of time (--budget)" for s in steps)
    assert not any(tmp_path.glob("*.log"))
