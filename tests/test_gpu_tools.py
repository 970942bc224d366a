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


def test_oversized_grids_raise_instead_of_wrapping():
    emu = torch.ops.fcn_kernels_emu
    emu._launch_self_test(1000, 256, 0, "elements")  # a valid launch of empty threads
    # Grids are computed and checked in 64 bits: 2^32 + 1 blocks must not wrap to 1.
    with pytest.raises(RuntimeError, match=r"invalid grid \(4294967297, 1, 1\)"):
        emu._launch_self_test((2**32 + 1) * 256, 256, 0, "elements")
    with pytest.raises(RuntimeError, match=r"invalid grid \(2147483648, 1, 1\)"):
        emu._launch_self_test(2**31 * 64, 64, 0, "elements")
    with pytest.raises(RuntimeError, match="invalid block"):
        emu._launch_self_test(1, 2**32 + 64, 0, "elements")


# ---- the emulated launcher's racecheck and thread orders -----------------------------

RACY = {
    # a sum without its barrier (in an order where the summing thread runs first, it
    # reads words nobody has written yet)
    "raw": "read after write|write after read|no thread of this block has written",
    "war": "write after read|read after write",  # s[i] += s[i + 1] in place
    "waw": "write after write",  # every thread stores s[0]
}


@pytest.mark.parametrize("order", ["forward", "reverse", "shuffle"])
@pytest.mark.parametrize("kernel", list(RACY))
def test_racecheck_reports_a_racy_kernel(kernel, order):
    from fcn_kernels.testing import racecheck, thread_order

    emu = torch.ops.fcn_kernels_emu
    with thread_order(order, seed=3), racecheck():
        with pytest.raises(RuntimeError, match=RACY[kernel]) as err:
            emu._launch_self_test(2, 64, 64 * 8, kernel)
    # Where: kernel, block, thread, phase, byte offset, the other thread.
    msg = str(err.value)
    assert "racecheck: launch_self_test: block (0, 0, 0) thread (" in msg
    assert f"phase {1 if kernel == 'war' else 0}:" in msg
    assert "shared-memory byte" in msg
    if "no thread of this block has written" not in msg:  # else there is no other thread
        assert "accessed by thread (" in msg
    emu._launch_self_test(2, 64, 64 * 8, kernel)  # off again: no check, no error


@pytest.mark.parametrize("order", ["forward", "reverse", "shuffle"])
def test_racecheck_passes_a_correct_kernel(order):
    from fcn_kernels.testing import racecheck, thread_order

    with thread_order(order, seed=5), racecheck():
        out = torch.ops.fcn_kernels_emu._launch_self_test(3, 96, 96 * 8)
    assert torch.equal(out, torch.arange(3 * 96).view(3, 96).sum(1))


def test_shared_memory_starts_poisoned_and_unwritten_reads_are_reported():
    # A GPU's shared memory holds whatever the previous block left; the emulator fills
    # it with 0xFF bytes (an int64 -1, a float NaN) so a read of an unwritten word never
    # passes by luck, and the racecheck names it.
    from fcn_kernels.testing import racecheck

    emu = torch.ops.fcn_kernels_emu
    n = 64
    written = torch.arange(3 * n).view(3, n)[:, : n - 1].sum(1)
    assert torch.equal(emu._launch_self_test(3, n, n * 8, "uninit"), written - 1)
    with racecheck(), pytest.raises(RuntimeError, match="no thread of this block has written"):
        emu._launch_self_test(3, n, n * 8, "uninit")


def test_racecheck_reports_shared_memory_out_of_bounds():
    from fcn_kernels.testing import racecheck

    with racecheck(), pytest.raises(RuntimeError, match="offset 504 outside the launch's 504"):
        torch.ops.fcn_kernels_emu._launch_self_test(1, 64, 64 * 8 - 8)


def test_thread_orders():
    from fcn_kernels.testing import thread_order

    emu = torch.ops.fcn_kernels_emu
    ranks = {}
    for order, seed in [
        ("forward", 0),
        ("reverse", 0),
        ("shuffle", 1),
        ("shuffle", 1),
        ("shuffle", 2),
    ]:
        with thread_order(order, seed):
            ranks[order, seed] = r = emu._launch_self_test(2, 32, 0, "order")
        assert torch.equal(r.sort(1).values, torch.arange(32).expand(2, 32))  # each thread once
    assert torch.equal(ranks["forward", 0], torch.arange(32).expand(2, 32))
    assert torch.equal(ranks["reverse", 0], torch.arange(31, -1, -1).expand(2, 32))
    shuffled = ranks["shuffle", 1]
    assert not torch.equal(shuffled[0], torch.arange(32)) and not torch.equal(
        shuffled[0], shuffled[1]
    )
    assert not torch.equal(shuffled, ranks["shuffle", 2])
    assert torch.equal(emu._launch_self_test(2, 32, 0, "order"), ranks["forward", 0])  # restored
    # A forgotten barrier passes in forward order and shows as a wrong sum in another.
    want = torch.arange(64).view(2, 32).sum(1)
    assert torch.equal(emu._launch_self_test(2, 32, 32 * 8, "raw"), want)
    with thread_order("reverse"):
        assert not torch.equal(emu._launch_self_test(2, 32, 32 * 8, "raw"), want)
    with pytest.raises(ValueError, match="order must be one of"):
        with thread_order("backwards"):
            pass


def test_emulation_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("FCN_KERNELS_EMU_RACECHECK", "1")
    monkeypatch.setenv("FCN_KERNELS_EMU_ORDER", "reverse")
    emu = torch.ops.fcn_kernels_emu
    with emulated_cuda():
        ranks = emu._launch_self_test(1, 8, 0, "order")
        with pytest.raises(RuntimeError, match="racecheck"):
            emu._launch_self_test(1, 8, 64, "waw")
    assert torch.equal(ranks[0], torch.arange(7, -1, -1))
    emu._launch_self_test(1, 8, 64, "waw")  # both off again after the block


@pytest.mark.parametrize("order", ["forward", "reverse", "shuffle"])
@pytest.mark.parametrize("index", ["int32", "int64"])
def test_shared_memory_kernels_pass_racecheck_in_every_order(order, index):
    """The deconv weight-gradient kernel (depthwise weights; the one shared-memory kernel) under the
    racecheck, in each thread order, one slice and several, against ATen in float64;
    unpool's general path (atomics: the result must not depend on the order) too."""
    import torch.nn.functional as F

    from fcn_kernels.testing import index32_limit, racecheck, thread_order

    torch.manual_seed(0)
    cases = [
        ((2, 3, 6, 5), (3, 1, 4, 4), 2, (1, 2), (9, 8)),
        ((2, 2, 40, 30), (2, 1, 2, 2), 2, (1, 1), (70, 50)),
    ]
    with (
        emulated_cuda(),
        thread_order(order, seed=7),
        racecheck(),
        index32_limit(64 if index == "int64" else 0),
    ):
        for xs, ws, s, (oy, ox), (h, w) in cases:
            groups = xs[1] // ws[1]
            x = torch.randn(xs, dtype=torch.float64, requires_grad=True)
            wt = torch.randn(ws, dtype=torch.float64, requires_grad=True)
            out = fk.conv_transpose2d_crop(
                x, wt, stride=s, groups=groups, offset=(oy, ox), size=(h, w)
            )
            ref = F.conv_transpose2d(x, wt, stride=s, groups=groups)[..., oy : oy + h, ox : ox + w]
            g = torch.randn_like(ref)
            got, want = (torch.autograd.grad(o, (x, wt), g) for o in (out, ref))
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
        # Overlapping 3x3/2 windows with repeated maxima: the last input naming an output wins.
        v = torch.randn(2, 3, 4, 4)
        idx = torch.randint(0, 9 * 9, (2, 3, 4, 4))
        got = fk.max_unpool2d(v, idx, 3, 2, output_size=(9, 9))
    want = torch.zeros(2, 3, 81)
    for p in range(6):
        for j in range(16):  # row-major: later inputs overwrite earlier ones
            want.view(6, 81)[p, idx.view(6, 16)[p, j]] = v.view(6, 16)[p, j]
    assert torch.equal(got, want.view(2, 3, 9, 9))
