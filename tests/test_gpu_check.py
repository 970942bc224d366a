"""benches/gpu_check.py and benches/gpu_smoke.py without a GPU: step order, skip and
budget logic, summaries, the CUDA-kernels requirement, the variants table, the sync
step's ordering and gpu_smoke's kernel coverage (in emulation)."""

import json
import os
import subprocess
import sys

import pytest
import torch

import fcn_kernels as fk
from benches import gpu_check, gpu_smoke
from fcn_kernels.testing import emulated_cuda

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORDER = [
    "build",
    "cuda_built",
    "sass",
    "tests",
    "memcheck",
    "racecheck",
    "sync",
    "graph",
    "cost",
    "bench",
    "variants",
]
no_gpu_here = pytest.mark.skipif(torch.cuda.is_available(), reason="gpu-check would run for real")


def _ctx(tmp_path, gpu=False, rehearse=False, **kw):
    ctx = dict(outdir=str(tmp_path), root=ROOT, python=sys.executable, gpu=gpu)
    ctx.update(rehearse=rehearse, no_build=True, header="test machine", sanitizer=None)
    return {**ctx, **kw}


@pytest.mark.parametrize("gpu,rehearse", [(True, False), (False, False), (False, True)])
def test_step_order_and_build_requires_cuda(tmp_path, gpu, rehearse):
    steps = list(gpu_check.steps(_ctx(tmp_path, gpu, rehearse, sanitizer="/cs")))
    assert [s[0] for s in steps] == ORDER  # build, tests, sanitizers, sync, graph, timing
    name, cmd, env, _ = steps[0]
    assert cmd[-4:] == ["--no-build-isolation", "--no-deps", "-e", "."]
    assert env["FCN_KERNELS_CUDA"] == "1"  # setup.py: no toolkit -> no build, not CPU-only
    assert set(gpu_check.LIMITS) == set(ORDER)
    by_name = {s[0]: s for s in steps}
    if gpu:
        assert "TORCH_CUDA_ARCH_LIST" not in env  # built for the visible GPU
        assert by_name["memcheck"][1][:3] == ["/cs", "--tool", "memcheck"]
        assert by_name["tests"][1][-2:] == ["-m", "cuda"]
        assert all(s[3] is None for s in steps[1:])
    elif rehearse:
        assert env["TORCH_CUDA_ARCH_LIST"] == "9.0"
        assert by_name["memcheck"][1][-2:] == ["ops", "--emulate"]
        assert by_name["racecheck"][1][-2:] == ["ops", "--emulate"]
        assert by_name["racecheck"][2]["FCN_KERNELS_EMU_RACECHECK"] == "1"
        assert by_name["sync"][1][-2:] == ["sync", "--emulate"]
    else:
        assert all(by_name[n][3] == "no CUDA device" for n in ORDER[3:])


@pytest.mark.parametrize(
    "gpu,built,status", [(True, False, "failed"), (True, True, "passed"), (False, False, "passed")]
)
def test_cpu_only_build_fails_when_a_gpu_is_visible(tmp_path, monkeypatch, gpu, built, status):
    monkeypatch.setattr(gpu_check, "probe", lambda python, root=ROOT: (gpu, "fake GPU machine"))
    monkeypatch.setattr(gpu_check, "query_cuda_built", lambda python, root: (built, "probe"))
    code = gpu_check.main([str(tmp_path), "--no-build", "--only", "cuda_built"])
    steps = json.loads((tmp_path / "summary.json").read_text())["steps"]
    assert [(s["step"], s["status"]) for s in steps] == [("cuda_built", status)]
    assert code == (1 if status == "failed" else 0)
    if status == "failed":
        assert "CPU-only build" in (tmp_path / "cuda_built.log").read_text()


def test_query_cuda_built_reads_the_extension():
    built, _ = gpu_check.query_cuda_built(sys.executable, ROOT)
    assert built == fk.cuda_built()


def test_a_failing_step_fails_the_run_and_the_rest_still_run(tmp_path, monkeypatch):
    def fake_steps(ctx):
        yield "build", [sys.executable, "-c", "raise SystemExit(2)"], None, None
        yield "tests", [sys.executable, "-c", "print('fine')"], None, None
        yield "sync", None, None, "some reason"

    monkeypatch.setattr(gpu_check, "steps", fake_steps)
    assert gpu_check.run_all(_ctx(tmp_path)) == 1
    steps = json.loads((tmp_path / "summary.json").read_text())["steps"]
    assert [(s["step"], s["status"]) for s in steps] == [
        ("build", "failed"),
        ("tests", "passed"),
        ("sync", "skipped"),
    ]
    assert steps[0]["exit"] == 2 and steps[0]["limit"] == gpu_check.LIMITS["build"]
    assert "| sync | skipped |  |  |  | some reason |" in (tmp_path / "summary.md").read_text()


@no_gpu_here
def test_without_gpu_skips_gpu_steps_and_writes_summary(tmp_path):
    only = ",".join(n for n in ORDER if n != "sass")
    out = subprocess.run(
        # (sass: tests/test_gpu_tools.py; here it would only add minutes)
        [sys.executable, "-m", "benches.gpu_check", str(tmp_path), "--no-build", "--only", only],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    status = {
        s["step"]: s["status"] for s in json.loads((tmp_path / "summary.json").read_text())["steps"]
    }
    assert status["build"] == "skipped" and status["cuda_built"] == "passed"
    for step in ORDER[3:]:
        assert status[step] == "skipped", status
    assert "sass" not in status and out.returncode == 0, out.stdout + out.stderr
    assert "| tests | skipped |" in (tmp_path / "summary.md").read_text()


def test_keeps_within_its_budget(tmp_path):
    # With no time left every step is recorded as skipped, none is started.
    code = gpu_check.run_all(_ctx(tmp_path, gpu=True, sanitizer="/cs"), budget=0)
    steps = json.loads((tmp_path / "summary.json").read_text())["steps"]
    assert code == 0 and [s["step"] for s in steps] == ORDER
    assert all(s["status"] == "skipped" for s in steps)
    assert steps[0]["reason"] == "--no-build"
    assert all(s["reason"] == "out of time (--budget)" for s in steps[1:])
    assert not any(tmp_path.glob("*.log"))


def test_a_step_gets_at_most_the_time_left(tmp_path, monkeypatch):
    monkeypatch.setattr(
        gpu_check,
        "steps",
        lambda ctx: iter(
            [("tests", [sys.executable, "-c", "import time; time.sleep(30)"], None, None)]
        ),
    )
    assert gpu_check.run_all(_ctx(tmp_path), budget=12) == 1
    (step,) = json.loads((tmp_path / "summary.json").read_text())["steps"]
    assert step["exit"] == "timeout" and step["limit"] <= 12 and step["seconds"] < 20


FAKE = {  # seconds
    "FCN_KERNELS_DECONV_GRAD_INPUT": {
        "gather": {"test_backward[a]": 2e-3, "test_backward[b]": 1e-3},
        "tile": {"test_backward[a]": 1e-3, "test_backward[b]": 2e-3, "only-here": 1.0},
    },
    "FCN_KERNELS_UNPOOL": {"default": {"x": 1e-3}},  # one value: nothing to compare
}


def test_variants_table_from_fake_timings():
    lines = gpu_check.variants_table(FAKE)
    assert (
        "| FCN_KERNELS_DECONV_GRAD_INPUT | test_backward[a] | gather 2.000, tile 1.000 | tile | 2.00x |"
        in lines
    )
    assert (
        "| FCN_KERNELS_DECONV_GRAD_INPUT | test_backward[b] | gather 1.000, tile 2.000 | gather | 1.00x |"
        in lines
    )
    assert not any("only-here" in line or "UNPOOL" in line for line in lines)
    (mean,) = [line for line in lines if line.startswith("* ")]
    assert "geometric mean over 2 benchmarks: 1.41x" in mean
    assert gpu_check.variants_table({}) == ["no timings (no CUDA benchmarks ran)"]


def test_run_variants_sets_each_value_and_collects_medians(tmp_path, monkeypatch):
    seen = []

    def fake_run(cmd, cwd, env, stdout, stderr, timeout):
        var = next(v for v, *_ in gpu_check.VARIANTS if v in env)
        seen.append((var, env[var], cmd[cmd.index("-k") + 1]))
        out = cmd[cmd.index("--json") + 1]
        with open(out, "w") as f:
            json.dump([{"name": "b1", "median": 0.001 * len(seen)}], f)
        return subprocess.CompletedProcess(cmd, 0)

    for var, *_ in gpu_check.VARIANTS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(gpu_check.subprocess, "run", fake_run)
    with open(tmp_path / "variants.log", "w") as log:
        assert gpu_check.run_variants(_ctx(tmp_path, limit=100), log) == 0
    expected = [(v, val) for v, values, *_ in gpu_check.VARIANTS for val in values]
    assert [s[:2] for s in seen] == expected
    assert all(k.startswith("cuda and ours and ") for *_, k in seen)
    timings = json.loads((tmp_path / "variants.json").read_text())
    assert timings["FCN_KERNELS_DECONV_GRAD_INPUT"] == {
        "gather": {"b1": 0.001},
        "tile": {"b1": 0.002},
    }


def test_summary_holds_bench_and_variants_tables(tmp_path):
    (tmp_path / "bench.log").write_text("noise\n| op | case |\n|---|---|\n| bilinear | x8 |\n")
    (tmp_path / "variants.json").write_text(json.dumps(FAKE))
    results = [
        {"step": "bench", "status": "passed", "exit": 0, "seconds": 1.0, "log": "bench.log"},
        {
            "step": "graph",
            "status": "failed",
            "exit": 1,
            "seconds": 2.0,
            "limit": 45,
            "tail": "boom",
        },
        {"step": "variants", "status": "passed", "exit": 0, "seconds": 3.0},
    ]
    gpu_check.write_summary(str(tmp_path), results, "test machine", {"rehearsal": True})
    md = (tmp_path / "summary.md").read_text()
    assert "| bilinear | x8 |" in md and "| graph | failed | 1 | 2.0 | 45 |  |" in md
    assert "## Alternatives: which wins" in md and "| tile | 2.00x |" in md
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rehearsal"] and summary["steps"][1]["tail"] == "boom"


def test_rehearse_venv_is_reused_when_its_stamp_matches(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    ver = "%d.%d" % sys.version_info[:2]
    pins = "-".join(p.replace("==", "") for p in gpu_check.REHEARSE_PACKAGES if "==" in p)
    venv = tmp_path / ".cache" / "fcn-kernels" / f"rehearse-venv-py{ver}-{pins}"
    venv.mkdir(parents=True)
    (venv / ".complete").write_text("\n".join(gpu_check.REHEARSE_PACKAGES))
    monkeypatch.setattr(gpu_check.subprocess, "run", _only_version_query(monkeypatch))
    assert gpu_check.rehearse_venv(sys.executable) == str(venv / "bin" / "python")


def _only_version_query(monkeypatch):
    real = subprocess.run

    def run(cmd, **kw):
        assert cmd[1:3] == ["-c", "import sys; print('%d.%d' % sys.version_info[:2])"], cmd
        return real(cmd, **kw)

    return run


def test_copy_tree_copies_what_git_would_and_keeps_build(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    git = lambda *a: subprocess.run(["git", *a], cwd=src, check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    (src / ".gitignore").write_text("ignored/\n")
    (src / "pkg").mkdir()
    (src / "pkg" / "a.py").write_text("a")
    (src / "new.txt").write_text("untracked")
    (src / "ignored").mkdir()
    (src / "ignored" / "x").write_text("x")
    git("add", ".gitignore", "pkg/a.py")
    (dest / "build").mkdir(parents=True)
    (dest / "build" / "obj.o").write_text("o")
    (dest / "stale.py").write_text("old")
    (dest / "pkg").mkdir()
    (dest / "pkg" / "_C.so").write_text("so")
    gpu_check.copy_tree(str(dest), str(src))
    assert (dest / "pkg" / "a.py").read_text() == "a" and (dest / "new.txt").exists()
    assert not (dest / "ignored").exists() and not (dest / "stale.py").exists()
    assert (dest / "build" / "obj.o").exists()  # incremental rebuilds
    assert (dest / "pkg" / "_C.so").exists()  # --rehearse --no-build


# -- gpu_smoke -------------------------------------------------------------------------


def test_sync_step_makes_inputs_before_the_debug_mode():
    log, mode = [], [0]

    def prepare(dev):
        log.append(("prepare", mode[0]))
        return (lambda: log.append(("call", mode[0]))), None

    def set_mode(m):
        log.append(("set", m))
        mode[0] = m

    case = gpu_smoke.Case("fake", prepare)
    gpu_smoke.check_sync("cpu", set_mode, lambda: log.append(("sync", mode[0])), [case])
    # inputs and the warm-up before the mode; only the op calls under it; then off
    assert log == [
        ("prepare", 0),
        ("call", 0),
        ("sync", 0),
        ("set", "error"),
        ("call", "error"),
        ("set", 0),
    ]


def test_sync_step_turns_the_mode_off_when_a_call_fails():
    modes = []

    def prepare(dev):
        calls = []

        def call():
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("synchronizing")

        return call, None

    with pytest.raises(RuntimeError):
        gpu_smoke.check_sync("cpu", modes.append, lambda: None, [gpu_smoke.Case("c", prepare)])
    assert modes == ["error", 0]


def test_gpu_smoke_skips_without_gpu_unless_emulated():
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    out = subprocess.run(
        [sys.executable, "-m", "benches.gpu_smoke", "graph"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "skipped: no CUDA device" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "benches.gpu_smoke", "graph", "--emulate"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "ok   graph" in out.stdout, out.stdout + out.stderr


def test_gpu_smoke_cost_counts_every_call_of_the_diagonal_check(capsys):
    """The cost step's measurement, emulated: each training step launches the check
    twice (the frozen final upsampling's forward and input gradient), on every step; the
    learned upsamplings take ATen's convolution and launch none."""
    with emulated_cuda():
        for _ in range(2):
            launches, check_us, step_us = gpu_smoke.check_cost("cpu")
            assert launches == 2 and 0 < check_us < step_us
    out = capsys.readouterr().out
    assert (
        out.count("ok   cost  FCN-8s tiny 1x3x64x64 training step: diagonal check 2 launches") == 2
    )


def test_gpu_smoke_cost_fails_without_the_check(monkeypatch):
    """A learned final upsampling takes ATen's convolution: no check in the profile, which
    the cost step reports as a failure naming what it did find."""
    from fcn.models import FCN8s

    class Learned(FCN8s):
        def __init__(self, **kw):
            super().__init__(fixed_final_upsample=False, **kw)

    monkeypatch.setattr("fcn.models.FCN8s", Learned)
    with emulated_cuda(), pytest.raises(AssertionError, match="no deconv_diag_check"):
        gpu_smoke.check_cost("cpu")


def test_gpu_smoke_ops_fails_on_a_wrong_result(monkeypatch):
    def prepare(dev):
        x = torch.ones(3)
        return (lambda: [x + 1e-3]), (lambda: [x.double()])

    with pytest.raises(AssertionError, match="bad: error"):
        gpu_smoke.check_ops("cpu", [gpu_smoke.Case("bad", prepare)])


def _kernel_name(demangled):
    from benches.sass import short_name

    return short_name(demangled)


@pytest.mark.skipif(not fk.cuda_built(), reason="needs the CUDA build (its kernel list)")
def test_gpu_smoke_ops_runs_every_kernel_of_the_binary():
    from benches import sass

    kernels = sass.parse(sass.default_so(), "sm_90")
    assert kernels, "no sm_90 code in the extension"
    in_binary = {k.name for k in kernels}
    emu = torch.ops.fcn_kernels_emu
    emu._record_launches(True)
    try:
        with emulated_cuda():
            gpu_smoke.check_ops("cpu")
    finally:
        launched = {_kernel_name(n) for n in emu._record_launches(False).splitlines()}
    missing = sorted(in_binary - launched)
    assert not missing, f"kernels gpu_smoke ops never runs: {missing}"


def test_report_with_no_benchmarks_run_writes_an_empty_json(tmp_path):
    # What the rehearsal's bench and variants steps see: every CUDA benchmark skipped.
    out = tmp_path / "t.json"
    args = ["-k", "cuda and ours and no_such_benchmark", "--quick", "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "benches.report", *args], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(out.read_text()) == []


def test_run_variants_keeps_the_timings_made_before_a_time_out(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, cwd, env, stdout, stderr, timeout):
        calls.append(1)
        if len(calls) == 3:
            raise subprocess.TimeoutExpired(cmd, timeout)
        with open(cmd[cmd.index("--json") + 1], "w") as f:
            json.dump([{"name": "b1", "median": 0.001 * len(calls)}], f)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(gpu_check.subprocess, "run", fake_run)
    with open(tmp_path / "variants.log", "w") as log:
        assert gpu_check.run_variants(_ctx(tmp_path, limit=100), log) == 0
    timings = json.loads((tmp_path / "variants.json").read_text())
    assert timings == {
        "FCN_KERNELS_DECONV_GRAD_INPUT": {"gather": {"b1": 0.001}, "tile": {"b1": 0.002}}
    }
    assert "cut by the time limit" in (tmp_path / "variants.log").read_text()
