"""Run the benchmark suites and print one table: ours vs ATen, same run.

    python -m benches.report                 # all suites, CPU (+ CUDA when visible)
    python -m benches.report -k bilinear     # a subset (pytest -k expression)
    python -m benches.report --quick         # tiny shapes, a smoke test
    python -m benches.report --markdown      # a table for benches/RESULTS.md
    python -m benches.report --plot r.png    # also a bar chart of the speedups
    python -m benches.report --json t.json   # also every benchmark's median (s), by name

Speedup = ATen median time / ours median time (> 1: ours faster). On CUDA the table
also gives the achieved bandwidth of our kernel under an ideal byte model: every input
tensor read once and every output written once (extra_info["bytes"] of each bench),
as a fraction of the device's peak memory bandwidth.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

import torch


def peak_bandwidth(device_index=0):
    """Peak DRAM bandwidth in bytes/s from the device properties (DDR: 2 transfers/clock)."""
    props = torch.cuda.get_device_properties(device_index)
    clock_khz = getattr(props, "memory_clock_rate", 0)
    bus_bits = getattr(props, "memory_bus_width", 0)
    if clock_khz and bus_bits:
        return 2 * clock_khz * 1e3 * bus_bits / 8
    known = {
        "H100 SXM": 3.35e12,
        "H100 PCIe": 2.0e12,
        "H100": 3.35e12,
        "H200": 4.8e12,
        "A100": 2.0e12,
    }
    return next((v for k, v in known.items() if k in props.name), float("nan"))


def machine_line():
    cpu = platform.processor() or platform.machine()
    line = f"torch {torch.__version__}, {cpu}, {torch.get_num_threads()} CPU threads"
    if torch.cuda.is_available():
        line += f", GPU {torch.cuda.get_device_name(0)} (peak {peak_bandwidth() / 1e9:.0f} GB/s)"
    return line


def collect(pytest_args):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bench.json")
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "benches",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--benchmark-json={out}",
            *pytest_args,
        ]
        proc = subprocess.run(cmd, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        if proc.returncode not in (0, 5):
            sys.exit(f"benchmark run failed (exit {proc.returncode})")
        if not os.path.exists(out):  # pytest-benchmark writes none when none ran
            return []
        with open(out) as f:
            return json.load(f)["benchmarks"]


def pair(benchmarks):
    rows = {}
    for b in benchmarks:
        params = {
            k: str(v).replace("UNSERIALIZABLE[", "").rstrip("]").replace("torch.", "")
            for k, v in (b.get("params") or {}).items()
        }
        impl = {"ref": "aten"}.get(params.get("impl"), params.get("impl"))
        params.pop("impl", None)
        if impl not in ("ours", "aten"):
            continue
        key = (b["name"].split("[")[0],) + tuple(sorted((k, str(v)) for k, v in params.items()))
        row = rows.setdefault(key, {"params": params, "extra": b.get("extra_info", {})})
        row[impl] = b["stats"]["median"]
    return [r for r in rows.values() if "ours" in r and "aten" in r]


def table(rows, markdown):
    peak = peak_bandwidth() if torch.cuda.is_available() else None
    head = [
        "op",
        "case",
        "dtype",
        "layout/variant",
        "dir",
        "device",
        "ours ms",
        "ATen ms",
        "speedup",
        "GB/s",
        "% peak",
    ]
    lines = []
    for r in rows:
        p, e = r["params"], r["extra"]
        dev = str(p.get("device", "cpu"))
        gbs = pct = ""
        if dev == "cuda" and e.get("bytes"):
            bw = e["bytes"] / r["ours"]
            gbs, pct = f"{bw / 1e9:.0f}", f"{100 * bw / peak:.0f}%"
        variant = "/".join(
            str(p[k])
            for k in sorted(p)
            if k not in ("device", "case", "dtype", "direction", "shape", "batch")
        )
        lines.append(
            [
                e.get("op", "?"),
                str(e.get("case", p.get("case", ""))),
                str(p.get("dtype", "")).replace("torch.", ""),
                variant,
                str(e.get("direction", p.get("direction", ""))),
                dev,
                f"{r['ours'] * 1e3:.3f}",
                f"{r['aten'] * 1e3:.3f}",
                f"{r['aten'] / r['ours']:.2f}x",
                gbs,
                pct,
            ]
        )
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [
        max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
        for i, h in enumerate(head)
    ]
    fmt = "  ".join(f"{{:{'<' if i < 6 else '>'}{w}}}" for i, w in enumerate(widths))
    return "\n".join(
        [fmt.format(*head), "-" * (sum(widths) + 2 * len(widths))]
        + [fmt.format(*row) for row in lines]
    )


def label(r):
    p, e = r["params"], r["extra"]
    parts = [
        e.get("op", ""),
        e.get("direction", p.get("direction", "")),
        p.get("dtype", ""),
        p.get("layout", ""),
        str(e.get("case", p.get("case", ""))),
        p.get("device", ""),
    ]
    return " ".join(str(x) for x in parts if x)


def plot(rows, path, title):
    """Horizontal bars of log2(speedup) around 1x (green: ours faster), with Pillow only."""
    import math

    from PIL import Image, ImageDraw

    bar_h, left, width = 16, 420, 360
    img = Image.new("RGB", (left + width + 90, 40 + bar_h * max(1, len(rows))), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 8), title[:150], fill="black")
    span = max([abs(math.log2(r["aten"] / r["ours"])) for r in rows] + [1.0])
    mid = left + width // 2
    d.line([(mid, 28), (mid, img.height)], fill="gray")
    for i, r in enumerate(rows):
        y = 32 + i * bar_h
        ratio = r["aten"] / r["ours"]
        x = mid + int(math.log2(ratio) / span * (width // 2 - 4))
        d.rectangle(
            [min(mid, x), y + 2, max(mid, x), y + bar_h - 3],
            fill=(60, 160, 60) if ratio >= 1 else (200, 70, 60),
        )
        d.text((6, y + 2), label(r)[:62], fill="black")
        d.text((left + width + 6, y + 2), f"{ratio:.2f}x", fill="black")
    img.save(path)


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-k", default=None, help="pytest -k expression selecting benchmarks")
    ap.add_argument("--quick", action="store_true", help="tiny shapes (FCN_BENCH_QUICK=1)")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    ap.add_argument("--plot", metavar="PNG", help="write a bar chart of the speedups")
    ap.add_argument("--json", metavar="PATH", help="write [{name, median}] of every benchmark")
    args = ap.parse_args(argv)
    if args.quick:
        os.environ["FCN_BENCH_QUICK"] = "1"
    benchmarks = collect(["-k", args.k] if args.k else [])
    if args.json:  # benches/gpu_check.py's variants step reads these
        with open(args.json, "w") as f:
            json.dump([{"name": b["name"], "median": b["stats"]["median"]} for b in benchmarks], f)
    rows = pair(benchmarks)
    print(f"\n{machine_line()}")
    print(table(rows, args.markdown))
    if args.plot:
        plot(rows, args.plot, "speedup vs ATen (log scale, right = ours faster): " + machine_line())
        print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
