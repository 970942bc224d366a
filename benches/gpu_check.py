"""One command for a lent GPU machine: build, CUDA tests, sanitizers, sync check, graph
capture, timings, everything written under OUTDIR; and its rehearsal on a CPU machine.

    make gpu-check OUT=outdir            (or: python3 -m benches.gpu_check outdir)
    python -m benches.gpu_check --rehearse outdir      (CI: the same script, no GPU)

For a machine whose python3 already has torch, pytest and pytest-benchmark and which has
no package index. Steps, in order (a failing step does not stop the later ones):

  build       pip install --no-build-isolation --no-deps -e .  with FCN_KERNELS_CUDA=1
              (setup.py refuses to build without a toolkit), MAX_JOBS = all cores
  cuda_built  the ops have CUDA kernels (fails a CPU-only build when a GPU is visible)
  sass        python -m benches.sass --check --require (the binary just built)
  tests       pytest -m cuda (every CUDA test)
  memcheck    compute-sanitizer --tool memcheck  python -m benches.gpu_smoke ops
  racecheck   compute-sanitizer --tool racecheck python -m benches.gpu_smoke ops
              (rehearsal: both on the emulator, racecheck with its own shared-memory
              race checker and the threads of each phase shuffled)
  sync        python -m benches.gpu_smoke sync (set_sync_debug_mode("error"))
  graph       python -m benches.gpu_smoke graph (FCN-8s training step in a CUDA graph)
  cost        python -m benches.gpu_smoke cost (the every-call diagonal check's share of
              an FCN-8s VGG16 training step, from the CUDA profiler)
  bench       python -m benches.report -k cuda --markdown
  variants    each runtime switch of VARIANTS, each value, its CUDA benchmarks: which wins

The whole run keeps within --budget seconds (default 540: one device call may run 600 s,
and the 15-minute device allowance also pays for the machine's start): a step gets at
most min(its limit, the time left), and a step that no longer fits is recorded as
skipped. OUTDIR gets <step>.log, summary.json (per step: status, exit code, seconds,
log tail) and summary.md (status table, benchmark table, "which wins" table).

--rehearse runs the same steps on a machine without a GPU, in a throwaway venv with the
GPU machine's software (REHEARSE_PACKAGES under REHEARSE_PYTHON, cached under
~/.cache/fcn-kernels/), on a copy of the tree (OUTDIR/tree, so the developer's in-place
build is left alone): every GPU step runs against the emulated device where it can, the
rest is recorded as skipped with the reason. It fails when any step that ran failed.
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runtime switches between alternative implementations, timed against each other by the
# variants step: environment variable, its values (the default first), the gpu_smoke
# cases it changes (name prefix), the CUDA benchmarks it changes (pytest -k).
VARIANTS = [
    ("FCN_KERNELS_DECONV_GRAD_INPUT", ("gather", "tile"), "deconv", "bench_deconv and backward"),
    (
        "FCN_KERNELS_DECONV_LOWP",
        ("gather", "cudnn"),
        "deconv",
        "bench_deconv and forward and (float16 or bfloat16)",
    ),
    (
        "FCN_KERNELS_BILINEAR_BACKWARD",
        ("separable", "direct"),
        "bilinear",
        "bench_bilinear and bwd",
    ),
    ("FCN_KERNELS_UNPOOL", ("gated", "ondemand"), "unpool", "bench_unpool and fwd"),
]

# Per-step time limits (seconds) on the GPU machine (16 cores), from the rehearsal with
# margin; the budget cuts them further when time runs short.
LIMITS = {
    "build": 240,
    "cuda_built": 30,
    "sass": 45,
    "tests": 150,
    "memcheck": 90,
    "racecheck": 90,
    "sync": 45,
    "graph": 45,
    "cost": 45,
    "bench": 120,
    "variants": 150,
}

REHEARSE_LIMIT = 3000  # per step: on 2 shared cores the times are what is measured
REHEARSE_PYTHON = "/root/.pyenv/versions/3.12.1/bin/python3.12"
# The GPU machine's software (torch 2.11 cu130, triton 3.6, python 3.12). Its setuptools'
# version is unknown: rehearse the oldest we support there. Python 3.12's venvs ship none,
# and setuptools < 66.1 cannot even be imported on 3.12 (pkgutil.ImpImporter is gone).
REHEARSE_PACKAGES = [
    "torch==2.11.0",
    "triton==3.6.0",
    "setuptools==66.1.1",
    "wheel",  # setuptools < 70.1 needs it for bdist_wheel; the GPU image has it
    "numpy",
    "pillow",
    "tqdm",
    "ninja",
    "pytest",
    "pytest-benchmark",
]

_CUDA_BUILT = "import torch, fcn_kernels; print(fcn_kernels.cuda_built())"


def probe(python, root=ROOT):
    """(GPU visible?, a line naming torch, CUDA and the GPU) from one start of `python`."""
    out = subprocess.run(
        [
            python,
            "-c",
            "import torch; ok = torch.cuda.is_available(); print(ok); print(torch.__version__, "
            "torch.version.cuda, torch.cuda.get_device_name(0) if ok else 'no GPU')",
        ],
        capture_output=True,
        text=True,
        cwd=root,
    )
    lines = out.stdout.strip().splitlines()
    header = lines[1] if len(lines) > 1 else out.stderr.strip()[-200:]
    return bool(lines) and lines[0] == "True", f"{header}, {os.cpu_count()} CPUs"


def query_cuda_built(python, root):
    out = subprocess.run([python, "-c", _CUDA_BUILT], capture_output=True, text=True, cwd=root)
    return out.stdout.strip().endswith("True"), (out.stdout + out.stderr).strip()[-2000:]


def check_cuda_built(ctx, log):
    """Fails when CUDA kernels are required (a GPU is visible, or the rehearsal built
    with FCN_KERNELS_CUDA=1) and the ops have none: every CUDA test would then skip."""
    built, text = query_cuda_built(ctx["python"], ctx["root"])
    log.write(f"{text}\ncuda_built={built}, GPU visible={ctx['gpu']}\n")
    if not built and (ctx["gpu"] or ctx["rehearse"]):
        log.write("the extension has no CUDA kernels: a CPU-only build (no nvcc, CPU torch?)\n")
        return 1
    return 0


def steps(ctx):
    """(name, command or function(ctx, log) -> exit code, env, skip reason) in run order."""
    python, gpu, emu = ctx["python"], ctx["gpu"], ctx["rehearse"]
    env = dict(os.environ, MAX_JOBS=str(os.cpu_count() or 4), FCN_KERNELS_CUDA="1")
    if gpu:  # built for the visible GPU
        env.pop("TORCH_CUDA_ARCH_LIST", None)
    elif emu:  # what the GPU machine builds: sm_90 only
        env.update(TORCH_CUDA_ARCH_LIST="9.0", CUDA_HOME=env.get("CUDA_HOME", "/usr/local/cuda"))
    build = [python, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", "."]
    yield "build", build, env, "--no-build" if ctx["no_build"] else None
    yield "cuda_built", check_cuda_built, None, None
    yield "sass", [python, "-m", "benches.sass", "--check", "--require"], None, None
    no_gpu = None if gpu or emu else "no CUDA device"
    smoke = [python, "-m", "benches.gpu_smoke"]
    pytest = [python, "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider"]
    # Rehearsal: the emulated twins of the CUDA tests (the `emu` device and test files).
    tests = pytest + (["-m", "emu and not slow", "-x"] if emu else ["-m", "cuda"])
    yield "tests", tests, None, no_gpu
    sanitizer = ctx["sanitizer"]
    for tool in ("memcheck", "racecheck"):
        if emu:  # the script the sanitizers run, on the emulator (its own shared-memory
            # racecheck, threads of each phase shuffled) instead of compute-sanitizer
            race = {"FCN_KERNELS_EMU_RACECHECK": "1", "FCN_KERNELS_EMU_ORDER": "shuffle:1"}
            yield (
                tool,
                smoke + ["ops", "--emulate"],
                None if tool == "memcheck" else dict(os.environ, **race),
                None,
            )
            continue
        cmd = [sanitizer or "compute-sanitizer", "--tool", tool, "--error-exitcode", "3"]
        reason = no_gpu or (None if sanitizer else "compute-sanitizer not found")
        yield tool, cmd + smoke + ["ops"], None, reason
    for what in ("sync", "graph", "cost"):
        yield what, smoke + [what] + (["--emulate"] if emu else []), None, no_gpu
    # Rehearsal: the CUDA benchmarks skip without a GPU; this runs the report's plumbing.
    report = [python, "-m", "benches.report", "-k", "cuda", "--markdown"]
    yield "bench", report + (["--quick"] if emu else []), None, no_gpu
    yield "variants", run_variants, None, no_gpu


def _children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_step(name, cmd, limit, env, ctx):
    log_path = os.path.join(ctx["outdir"], f"{name}.log")
    start, cpu = time.monotonic(), _children_cpu()
    with open(log_path, "w") as log:
        if callable(cmd):
            log.write(f"$ {cmd.__name__}\n")
            log.flush()
            try:
                code = cmd(dict(ctx, limit=limit), log)
            except subprocess.TimeoutExpired:
                code = "timeout"
        else:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            try:
                proc = subprocess.run(
                    cmd,
                    cwd=ctx["root"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=limit,
                )
                code = proc.returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
            except FileNotFoundError as e:
                log.write(f"{e}\n")
                code = "not found"
    seconds = time.monotonic() - start
    with open(log_path) as f:
        tail = f.read()[-3000:]
    return {
        "step": name,
        "status": "passed" if code == 0 else "failed",
        "exit": code,
        "seconds": round(seconds, 1),
        "cpu_seconds": round(_children_cpu() - cpu, 1),  # load-independent, for sizing
        "limit": round(limit),
        "log": os.path.basename(log_path),
        "tail": tail,
    }


# -- variants: time each switch's values in one run ------------------------------------


def run_variants(ctx, log):
    """For each switch and value, its CUDA benchmarks (ours only) through benches.report
    --json; writes variants.json ({switch: {value: {benchmark: median s}}})."""
    timings, deadline = {}, time.monotonic() + ctx["limit"]
    for var, values, _, select in VARIANTS:
        for value in values:
            left = deadline - time.monotonic()
            if left < 15:
                log.write(f"out of time before {var}={value}\n")
                break
            out = os.path.join(ctx["outdir"], "variant.json")
            cmd = [ctx["python"], "-m", "benches.report", "-k", f"cuda and ours and {select}"]
            cmd += ["--json", out] + (["--quick"] if ctx["rehearse"] else [])
            log.write(f"$ {var}={value} {' '.join(cmd)}\n")
            log.flush()
            env = dict(os.environ, **{var: value})
            try:
                proc = subprocess.run(
                    cmd,
                    cwd=ctx["root"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=left,
                )
            except subprocess.TimeoutExpired:  # keep what was timed
                log.write(f"cut by the time limit during {var}={value}\n")
                deadline = 0  # no time left for the rest
                continue
            if proc.returncode != 0:
                return proc.returncode
            with open(out) as f:
                medians = {b["name"]: b["median"] for b in json.load(f)}
            os.remove(out)
            timings.setdefault(var, {})[value] = medians
    with open(os.path.join(ctx["outdir"], "variants.json"), "w") as f:
        json.dump(timings, f, indent=2)
    return 0


def variants_table(timings):
    """Markdown lines: per switch and benchmark, each value's median (ms), the winner and
    its speedup over the default (first) value; per switch, the geometric mean."""
    lines = ["| switch | benchmark | median ms per value | winner | default / winner |"]
    lines.append("|---|---|---|---|---|")
    summary = []
    for var, values, _, _ in VARIANTS:
        by_value = timings.get(var, {})
        present = [v for v in values if v in by_value]
        if len(present) < 2:
            continue
        names = sorted(set.intersection(*(set(by_value[v]) for v in present)))
        ratios = []
        for name in names:
            ms = {v: by_value[v][name] * 1e3 for v in present}
            best = min(ms, key=ms.get)
            ratio = ms[present[0]] / ms[best]
            ratios.append(ratio)
            cells = ", ".join(f"{v} {ms[v]:.3f}" for v in present)
            lines.append(f"| {var} | {name} | {cells} | {best} | {ratio:.2f}x |")
        if ratios:
            geo = statistics.geometric_mean(ratios)
            summary.append(
                f"* {var}: {present[0]} vs {', '.join(present[1:])}: "
                + f"default / best, geometric mean over {len(ratios)} benchmarks: {geo:.2f}x"
            )
    return lines + [""] + summary if summary else ["no timings (no CUDA benchmarks ran)"]


# -- summary ---------------------------------------------------------------------------


def write_summary(outdir, results, header, extra=None):
    with open(os.path.join(outdir, "summary.json"), "w") as f:
        json.dump({"machine": header, **(extra or {}), "steps": results}, f, indent=2)
    lines = [
        f"# gpu-check: {header}",
        "",
        "| step | status | exit | seconds | limit | note |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['step']} | {r['status']} | {r.get('exit', '')} | {r.get('seconds', '')} "
        f"| {r.get('limit', '')} | {r.get('reason', '')} |"
        for r in results
    ]
    bench = next((r for r in results if r["step"] == "bench" and r["status"] == "passed"), None)
    if bench:
        with open(os.path.join(outdir, bench["log"])) as f:
            table = [line for line in f.read().splitlines() if line.startswith("|")]
        lines += ["", "## CUDA benchmarks (ours vs ATen, same run)", ""] + table
    variants = os.path.join(outdir, "variants.json")
    if any(r["step"] == "variants" and r["status"] == "passed" for r in results):
        with open(variants) as f:
            lines += ["", "## Alternatives: which wins (same run)", ""]
            lines += variants_table(json.load(f))
    with open(os.path.join(outdir, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def run_all(ctx, only=None, budget=540.0):
    deadline = time.monotonic() + budget
    os.makedirs(ctx["outdir"], exist_ok=True)
    results = []
    for name, cmd, env, skip in steps(ctx):
        if only and name not in only:
            continue
        left = deadline - time.monotonic()
        if not skip and left < 10:
            skip = "out of time (--budget)"
        if skip:
            results.append({"step": name, "status": "skipped", "reason": skip})
        else:
            limit = REHEARSE_LIMIT if ctx["rehearse"] else LIMITS[name]
            results.append(run_step(name, cmd, min(limit, left), env, ctx))
        r = results[-1]
        print(f"gpu-check {name:10s} {r['status']:8s} {r.get('seconds', '')}", flush=True)
        # after every step: a cut-off run keeps its results
        write_summary(ctx["outdir"], results, ctx["header"], {"rehearsal": ctx["rehearse"]})
    failed = [r["step"] for r in results if r["status"] == "failed"]
    print(
        f"gpu-check: {ctx['header']}; failed: {', '.join(failed) or 'none'}; "
        f"see {ctx['outdir']}/summary.md"
    )
    return 1 if failed else 0


# -- rehearsal -------------------------------------------------------------------------


def rehearse_venv(base_python, log=print):
    """A venv with REHEARSE_PACKAGES, made once per (python, package list) and reused."""
    ver = subprocess.run(
        [base_python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    pins = "-".join(p.replace("==", "") for p in REHEARSE_PACKAGES if "==" in p)
    path = os.path.expanduser(f"~/.cache/fcn-kernels/rehearse-venv-py{ver}-{pins}")
    python, stamp = os.path.join(path, "bin", "python"), os.path.join(path, ".complete")
    if os.path.exists(stamp):
        with open(stamp) as f:
            if f.read() == "\n".join(REHEARSE_PACKAGES):
                return python
    log(f"rehearse: creating {path}")
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run([base_python, "-m", "venv", path], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", *REHEARSE_PACKAGES], check=True)
    with open(stamp, "w") as f:
        f.write("\n".join(REHEARSE_PACKAGES))
    return python


def copy_tree(dest, root=ROOT):
    """The files git would check out (tracked and untracked-not-ignored) into dest. Other
    files there are removed, except build outputs (build/, *.so): a rerun builds
    incrementally, and --rehearse --no-build reuses the extension."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for dirpath, dirs, names in os.walk(dest):
        if dirpath == dest and "build" in dirs:
            dirs.remove("build")
        for name in names:
            if not name.endswith(".so"):
                os.remove(os.path.join(dirpath, name))
    for rel in filter(None, files.split("\0")):
        src = os.path.join(root, rel)
        if not os.path.isfile(src):
            continue  # deleted but still tracked
        os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(dest, rel))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--no-build", action="store_true", help="use the extension as built")
    ap.add_argument("--only", help="comma-separated steps to run")
    ap.add_argument(
        "--budget",
        type=float,
        default=540,
        help="seconds for the whole run; a step gets at most what is left, and steps "
        "that no longer fit are recorded as skipped (default 540)",
    )
    ap.add_argument(
        "--rehearse",
        action="store_true",
        help="no GPU: run the GPU machine's script in a venv of its software on a copy "
        "of the tree (OUTDIR/tree), against the emulated device",
    )
    ap.add_argument("--rehearse-python", default=REHEARSE_PYTHON)
    args = ap.parse_args(argv)
    outdir = os.path.abspath(args.outdir)
    os.makedirs(outdir, exist_ok=True)
    ctx = dict(outdir=outdir, root=ROOT, python=args.python, rehearse=args.rehearse)
    ctx["no_build"] = args.no_build
    budget = args.budget
    if args.rehearse:
        start = time.monotonic()
        ctx["python"] = rehearse_venv(args.rehearse_python)
        ctx["root"] = os.path.join(outdir, "tree")
        copy_tree(ctx["root"])
        print(f"rehearse: venv and tree ready in {time.monotonic() - start:.0f} s", flush=True)
        budget = max(budget, 4 * 3600)  # 2 shared cores: the steps' time is the measurement
    ctx["gpu"], ctx["header"] = probe(ctx["python"], ctx["root"])
    if args.rehearse:
        ctx["header"] += " (rehearsal: emulated device)"
        if ctx["gpu"]:
            sys.exit("--rehearse is for machines without a GPU")
    ctx["sanitizer"] = shutil.which("compute-sanitizer") or next(
        (p for p in ("/usr/local/cuda/bin/compute-sanitizer",) if os.path.exists(p)), None
    )
    only = set(args.only.split(",")) if args.only else None
    return run_all(ctx, only, budget)


if __name__ == "__main__":
    sys.exit(main())
