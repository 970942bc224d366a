"""Read the GPU binary without a GPU: per-kernel SASS statistics of the built extension.

    python -m benches.sass [--so PATH] [--arch sm_90] [--markdown] [--check]

For every kernel in the extension's cubin for `--arch` it prints: SASS instructions,
FP64 instructions, CALLs (slow-path subroutines such as 64-bit or FP64 division),
registers, stack frame and local-memory loads/stores (spills). Tools: `cuobjdump`
(shipped with triton in the venv: site-packages/triton/backends/nvidia/bin), or the
CUDA toolkit's.

--check exits non-zero when a kernel spills (LDL/STL in its SASS, or local memory in
its resource usage), when a float32/float16/bfloat16 kernel (any kernel not
instantiated for double) holds an FP64 instruction, or when such a kernel's 32-bit-index
variant holds a CALL (the 64-bit-index variants, for tensors past 2^31 elements, may
call the 64-bit division routine in their per-thread setup). Without CUDA code in the
extension (a CPU-only build) it says so and exits 0, or 1 with --require.
"""

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

# FP64 SASS opcodes, and any instruction operating on .F64 values (conversions).
FP64_OPS = {"DADD", "DMUL", "DFMA", "DSETP", "DMNMX", "DMMA", "DSET"}


@dataclass
class Kernel:
    name: str
    instructions: int = 0
    fp64: int = 0
    calls: int = 0
    spill_ops: int = 0  # LDL / STL
    registers: int = 0
    stack: int = 0
    local: int = 0
    opcodes: dict = field(default_factory=dict)

    @property
    def is_double(self) -> bool:
        return "double" in self.name

    @property
    def is_wide(self) -> bool:
        """Instantiated for 64-bit indices (tensors past 2^31 elements): their per-thread
        setup may call the 64-bit division routine."""
        return self.name.endswith("int64>")  # the index type is the last template argument

    def problems(self):
        out = []
        if self.spill_ops or self.local:
            out.append(f"spills ({self.spill_ops} LDL/STL, {self.local} B local)")
        if not self.is_double and self.fp64:
            out.append(f"{self.fp64} FP64 instructions in a non-double kernel")
        if not self.is_double and not self.is_wide and self.calls:
            out.append(f"{self.calls} CALLs in a 32-bit-index float kernel")
        return out


def tool(name):
    candidates = []
    try:
        import triton  # noqa: F401  (ships cuobjdump/nvdisasm)

        candidates.append(
            os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
        )
    except ImportError:
        pass
    candidates += [
        os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", name),
        shutil.which(name) or "",
    ]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    raise SystemExit(f"sass: {name} not found (looked in {candidates})")


def default_so():
    import fcn_kernels

    pkg = os.path.dirname(fcn_kernels.__file__)
    found = glob.glob(os.path.join(pkg, "_C*.so"))
    if not found:
        raise SystemExit(f"sass: no built extension in {pkg}")
    return found[0]


def demangle(names):
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return names
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True)
    lines = out.stdout.splitlines()
    return lines if len(lines) == len(names) else names


def short_name(demangled):
    """`fcn_kernels::fk_kernel<fcn_kernels::bilinear_gpu::Forward<float, int> >(...)` ->
    `bilinear_gpu::Forward<float, int>`."""
    m = re.match(r"(?:void )?fcn_kernels::fk_kernel<(.*)>\(.*\)$", demangled)
    name = m.group(1).strip() if m else demangled
    name = name.replace("fcn_kernels::", "").replace("c10::", "")
    name = re.sub(r"\(anonymous namespace\)::", "", name)
    return name.replace("long", "int64").replace("unsigned int64", "uint64")


def parse(so, arch):
    cuobjdump = tool("cuobjdump")
    sass = subprocess.run([cuobjdump, "-sass", "-arch", arch, so], capture_output=True, text=True)
    if sass.returncode != 0:
        if "does not contain" in sass.stderr or "no device code" in sass.stderr.lower():
            return None
        raise SystemExit(f"sass: cuobjdump failed: {sass.stderr.strip()}")
    kernels, current = {}, None
    for line in sass.stdout.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            current = kernels.setdefault(m.group(1), Kernel(m.group(1)))
            continue
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if not m or current is None:
            continue
        op = m.group(1)
        base = op.split(".")[0]
        if base in ("NOP",):
            continue
        current.instructions += 1
        current.opcodes[base] = current.opcodes.get(base, 0) + 1
        if base in FP64_OPS or ".F64" in op or "RCP64" in op:
            current.fp64 += 1
        if base == "CALL":
            current.calls += 1
        if base in ("LDL", "STL"):
            current.spill_ops += 1
    if not kernels:
        return None
    res = subprocess.run(
        [cuobjdump, "-res-usage", "-arch", arch, so], capture_output=True, text=True
    ).stdout
    name = None
    for line in res.splitlines():
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            name = m.group(1)
            continue
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", line)
        if m and name in kernels:
            k = kernels[name]
            k.registers, k.stack, k.local = (int(v) for v in m.groups())
    mangled = list(kernels)
    for raw, pretty in zip(mangled, demangle(mangled)):
        kernels[raw].name = short_name(pretty)
    return sorted(kernels.values(), key=lambda k: k.name)


def table(kernels, markdown):
    head = ["kernel", "SASS", "FP64", "CALL", "regs", "stack B", "LDL/STL"]
    rows = [
        [k.name, k.instructions, k.fp64, k.calls, k.registers, k.stack, k.spill_ops]
        for k in kernels
    ]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
        return "\n".join(lines)
    width = max(len(r[0]) for r in rows + [head])
    fmt = f"{{:<{width}}}" + " {:>6}" * (len(head) - 1)
    return "\n".join([fmt.format(*head)] + [fmt.format(*r) for r in rows])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--so", help="the extension (default: the importable fcn_kernels/_C*.so)")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument(
        "--check",
        action="store_true",
        help="fail on spills, and on FP64/CALL in non-double kernels",
    )
    ap.add_argument("--require", action="store_true", help="fail if there is no CUDA code")
    args = ap.parse_args(argv)
    so = args.so or default_so()
    kernels = parse(so, args.arch)
    if kernels is None:
        print(f"sass: {os.path.basename(so)} holds no {args.arch} code (CPU-only build?)")
        return 1 if args.require else 0
    print(table(kernels, args.markdown))
    total_fp64 = sum(k.fp64 for k in kernels if not k.is_double)
    print(
        f"\n{len(kernels)} kernels, {sum(k.instructions for k in kernels)} SASS instructions; "
        f"FP64 instructions in non-double kernels: {total_fp64}; "
        f"kernels with spills: {sum(1 for k in kernels if k.spill_ops or k.local)}"
    )
    problems = [(k.name, p) for k in kernels for p in k.problems()]
    for name, p in problems:
        print(f"PROBLEM {name}: {p}", file=sys.stderr)
    return 1 if (args.check and problems) else 0


if __name__ == "__main__":
    sys.exit(main())
