"""Small CUDA checks for a lent GPU, run by benches/gpu_check.py (also under
compute-sanitizer, so they stay small):

    python -m benches.gpu_smoke ops        every kernel of the binary (each op, path, dtype
                                           and index width), forward + backward, vs ATen
                                           in float64 on the CPU
    python -m benches.gpu_smoke sync       no host sync in any forward/backward
                                           (torch.cuda.set_sync_debug_mode("error"))
    python -m benches.gpu_smoke graph      a whole FCN-8s training step captured in a CUDA
                                           graph and replayed
    python -m benches.gpu_smoke cost       what the diagonal check (run on every call, never
                                           cached) costs in an FCN-8s training step: its
                                           launches and share of the step's GPU time

    --emulate   run on the CPU through the emulated CUDA code (fcn_kernels.testing), for
                the rehearsal and the kernel-coverage test: ops as on the GPU; sync with a
                recording stand-in for the debug mode; graph as eager steps with the
                launcher reporting a capture (the code paths that avoid host syncs); cost
                on a small FCN-8s, with the emulator's launches as the profiler's events
                (counts are a GPU's, times are not).

Each prints one line per check and exits non-zero on the first failure. Without a GPU
(and without --emulate) it prints "skipped: no CUDA device" and exits 0.

Precision: float32 comparisons run with TF32 off (docs/cuda.md, "float32 precision on
CUDA"): the dense deconvolution path is ATen's convolution, which follows
torch.backends.cudnn.allow_tf32 exactly as F.conv_transpose2d does.
"""

import contextlib
import os
import sys

import torch
import torch.nn.functional as F

import fcn_kernels as fk
from fcn_kernels.testing import emulated_capture, emulated_cuda, index32_limit

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# max |ours - float64 reference| / max(1, max |reference|): a few ulps of each dtype
# after sums of up to ~100 terms.
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


class Case:
    """One check: prepare(dev) makes every input on the device (host-to-device copies
    included) and returns call(), which only runs the ops (forward and backward) and
    returns (results, float64 references on the CPU)."""

    def __init__(self, name, prepare, index64=False):
        self.name, self.prepare, self.index64 = name, prepare, index64


def _rand(shape, dtype, dev):
    return torch.randn(shape, dtype=torch.float64).to(dtype).to(dev)


def _bilinear(dtype, cl, **kw):
    def prepare(dev):
        x = _rand((2, 5, 9, 7), dtype, dev)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        y_shape = fk.bilinear_upsample(x.detach(), **kw).shape
        g = _rand(y_shape, dtype, dev)

        def call():
            y = fk.bilinear_upsample(x, **kw)
            (gx,) = torch.autograd.grad(y, x, g)
            return [y, gx]

        def reference():
            xr = x.detach().cpu().double().requires_grad_()
            y = F.interpolate(xr, mode="bilinear", **kw)
            return [y, *torch.autograd.grad(y, xr, g.cpu().double())]

        return call, reference

    return prepare


def _deconv(dtype, weight, k, s, off, size, groups=1, cin=6, cout=6, batch=2, hw=(8, 9)):
    """weight: "bilinear" (frozen FCN filter: gather path, diagonal check says diagonal),
    "square" (frozen random cin == cout weight: gather path, not diagonal), "depthwise"
    (groups == channels, trained: gather kernels and the weight-gradient kernel),
    "dense" (trained: ATen's convolution, i.e. cuDNN)."""

    def prepare(dev):
        x = _rand((batch, cin, *hw), dtype, dev).requires_grad_()
        if weight == "bilinear":
            w = fk.bilinear_kernel(cin, k).to(dtype).to(dev)
        else:
            w = _rand((cin, cout // groups, k, k), dtype, dev)
        w.requires_grad_(weight in ("depthwise", "dense"))
        kw = dict(stride=s, offset=off, size=size, groups=groups)
        y_shape = fk.conv_transpose2d_crop(x.detach(), w.detach(), **kw).shape
        g = _rand(y_shape, dtype, dev)
        inputs = (x, w) if w.requires_grad else (x,)

        def call():
            y = fk.conv_transpose2d_crop(x, w, **kw)
            return [y, *torch.autograd.grad(y, inputs, g)]

        def reference():
            xr = x.detach().cpu().double().requires_grad_()
            wr = w.detach().cpu().double().requires_grad_(w.requires_grad)
            full = F.conv_transpose2d(xr, wr, stride=s, groups=groups)
            y = full[..., off[0] : off[0] + size[0], off[1] : off[1] + size[1]]
            refs = (xr, wr) if w.requires_grad else (xr,)
            return [y, *torch.autograd.grad(y, refs, g.cpu().double())]

        return call, reference

    return prepare


def _unpool(dtype, k, s, pad):
    def prepare(dev):
        x = _rand((2, 3, 12, 10), dtype, dev)
        v, idx = F.max_pool2d(x, k, s, pad, return_indices=True)
        v.requires_grad_()
        size = x.shape[-2:]
        g = _rand(x.shape, dtype, dev)

        def call():
            y = fk.max_unpool2d(v, idx, k, s, pad, output_size=size)
            (gv,) = torch.autograd.grad(y, v, g)
            return [y, gv]

        def reference():
            vr = v.detach().cpu().double().requires_grad_()
            y = F.max_unpool2d(vr, idx.cpu(), k, s, pad, output_size=size)
            return [y, *torch.autograd.grad(y, vr, g.cpu().double())]

        return call, reference

    return prepare


def cases(dtypes=DTYPES):
    """Every kernel: each op and path in every dtype, with 32- and 64-bit indices."""
    for dtype in dtypes:
        dt = str(dtype).replace("torch.", "")
        lowp = dtype in (torch.float16, torch.bfloat16)
        for index64 in (False, True):
            tag = f"{dt}{' int64-index' if index64 else ''}"
            yield Case(f"bilinear x2.5 {tag}", _bilinear(dtype, False, scale_factor=2.5), index64)
            yield Case(
                f"bilinear size align_corners channels_last {tag}",
                _bilinear(dtype, True, size=(20, 3), align_corners=True),
                index64,
            )
            yield Case(
                f"deconv frozen bilinear k4 s2 {tag}",
                _deconv(dtype, "bilinear", 4, 2, (1, 2), (15, 16)),
                index64,
            )
            yield Case(
                f"deconv frozen square (not diagonal) k3 s2 {tag}",
                _deconv(dtype, "square", 3, 2, (0, 1), (13, 15)),
                index64,
            )
            # 2 x 64 x 64 input pixels: the weight gradient splits into slices and runs
            # its finishing kernel too.
            yield Case(
                f"deconv depthwise trained k4 s2 {tag}",
                _deconv(dtype, "depthwise", 4, 2, (1, 1), (120, 126), 4, 4, 4, 2, (64, 64)),
                index64,
            )
            yield Case(f"unpool 2x2/2 (fast path) {tag}", _unpool(dtype, 2, 2, 0), index64)
            yield Case(f"unpool 3x3/2 pad 1 (general) {tag}", _unpool(dtype, 3, 2, 1), index64)
        if not lowp:  # ATen's dense path: cuDNN (our arrangement of its operands)
            yield Case(
                f"deconv dense trained k4 s2 {dt}", _deconv(dtype, "dense", 4, 2, (1, 0), (14, 17))
            )
            yield Case(
                f"deconv dense groups {dt}",
                _deconv(dtype, "dense", 3, 2, (0, 1), (13, 15), groups=2, cout=4),
            )


@contextlib.contextmanager
def no_tf32():
    """float32 at float32 precision (docs/cuda.md); restores the flags."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _index_width(case):
    return index32_limit(1) if case.index64 else contextlib.nullcontext()


@contextlib.contextmanager
def _env(var, value):
    old = os.environ.get(var)
    os.environ[var] = value
    try:
        yield
    finally:
        os.environ.pop(var) if old is None else os.environ.__setitem__(var, old)


def passes(selected=None):
    """(label, env context, cases): the default implementations, then each alternative
    of benches/gpu_check.py's VARIANTS on the cases of the op it switches."""
    from benches.gpu_check import VARIANTS

    all_cases = list(selected or cases())
    yield "", contextlib.nullcontext(), all_cases
    if selected is None:
        for var, values, prefix, _ in VARIANTS:
            for value in values[1:]:
                chosen = [c for c in all_cases if c.name.startswith(prefix)]
                yield f" [{var}={value}]", _env(var, value), chosen


def check_ops(dev="cuda", selected=None):
    with no_tf32():
        for label, env, chosen in passes(selected):
            with env:
                for case in chosen:
                    _check_case(case, dev, label)


def _check_case(case, dev, label):
    torch.manual_seed(0)
    with _index_width(case):
        call, reference = case.prepare(dev)
        got = call()
    want = reference()
    for a, b in zip(got, want):
        a = a.detach().cpu().double()
        err = (a - b).abs().max().item() if b.numel() else 0.0
        scale = max(1.0, b.abs().max().item() if b.numel() else 0.0)
        tol = TOL[got[0].dtype]
        if not (err <= tol * scale):  # NaN fails too
            raise AssertionError(f"{case.name}{label}: error {err:.3g} > {tol * scale:.3g}")
    print(f"ok   ops   {case.name}{label}", flush=True)


def check_sync(dev="cuda", set_mode=None, synchronize=None, selected=None):
    """Inputs and a warm-up run first; only the op calls run under the debug mode, so a
    report can only come from the ops themselves."""
    set_mode = set_mode or torch.cuda.set_sync_debug_mode
    synchronize = synchronize or torch.cuda.synchronize
    for case in selected or cases((torch.float32, torch.float16)):
        if case.name.startswith("unpool"):
            continue  # eager unpool syncs once to raise IndexError (documented)
        with _index_width(case):
            call, _ = case.prepare(dev)
            call()  # warm-up: lazy init, cuDNN handles, caches
            synchronize()
            set_mode("error")
            try:
                call()
            finally:
                set_mode(0)
        print(f"ok   sync  {case.name}", flush=True)


def check_graph(dev="cuda"):
    from fcn.models import FCN8s

    torch.manual_seed(0)
    model = FCN8s(num_classes=5, backbone="tiny").to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(2, 3, 64, 64, device=dev)
    t = torch.randint(0, 5, (2, 64, 64), device=dev)

    def step():
        opt.zero_grad(set_to_none=False)
        loss = F.cross_entropy(model(x), t)
        loss.backward()
        opt.step()
        return loss

    before = [p.detach().clone() for p in model.parameters()]
    if dev != "cuda":  # emulated: eager steps through the capture-mode code paths
        with emulated_capture():
            loss = step()
    else:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):  # warm-up on a side stream, as torch.cuda.graphs requires
                step()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss = step()
        before = [p.detach().clone() for p in model.parameters()]
        graph.replay()
        torch.cuda.synchronize()
    changed = any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert changed and torch.isfinite(loss).item(), "the training step did not train"
    print(
        f"ok   graph FCN-8s training step ({'emulated, eager' if dev != 'cuda' else 'captured and replayed'}, loss {loss.item():.4f})"
    )


# The diagonal check's kernel: its name in a GPU profile (the functor's type inside the
# launcher's kernel template) and in an emulated one (the launch's name).
CHECK_KERNEL = {"cuda": "DiagCheckKernel", "emulated": "deconv_diag_check"}


def check_cost(dev="cuda"):
    """One FCN-8s training step (forward + backward, fused ops) after a warm-up, under
    torch.profiler. The frozen final upsampling runs the gather path, so the check runs
    twice (forward, input gradient); prints its launches, its time and the step's, and
    returns (launches, check time, step time) in microseconds. On a GPU: VGG16, 21
    classes, 1x3x500x500 (FCN's training shape), kernel time. Emulated: the tiny
    backbone at 64x64, CPU time of the emulated launches (not a GPU figure)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    from fcn.models import FCN8s

    gpu = dev == "cuda"
    torch.manual_seed(0)
    backbone, classes, size = ("vgg16", 21, 500) if gpu else ("tiny", 5, 64)
    model = FCN8s(num_classes=classes, backbone=backbone, upsample="fused").to(dev)
    x = torch.randn(1, 3, size, size, device=dev)

    def step():
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()

    step()  # warm-up: cuDNN's choices, allocations
    if gpu:
        torch.cuda.synchronize()
    activities = [ProfilerActivity.CUDA] if gpu else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        with record_function("step"):
            step()
        if gpu:
            torch.cuda.synchronize()
    events = prof.key_averages()
    name = CHECK_KERNEL["cuda" if gpu else "emulated"]
    if gpu:
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        if not kernels:
            raise AssertionError("the profiler recorded no GPU activity (CUPTI missing?)")
        step_us = sum(e.self_device_time_total for e in kernels)
        check = [e for e in kernels if name in e.key]
        check_us = sum(e.self_device_time_total for e in check)
    else:
        step_us = sum(e.cpu_time_total for e in events if e.key == "step")
        check = [e for e in events if e.key == name]
        check_us = sum(e.cpu_time_total for e in check)
    launches = sum(e.count for e in check)
    if launches == 0:
        top = sorted(events, key=lambda e: -e.count)[:10]
        raise AssertionError(f"no {name} in the profile; its most frequent: {[e.key for e in top]}")
    where = "GPU kernel time" if gpu else "emulated, CPU time: not a GPU figure"
    print(
        f"ok   cost  FCN-8s {backbone} 1x3x{size}x{size} training step: diagonal check "
        f"{launches} launches, {check_us:.1f} us of {step_us:.1f} us "
        f"({100 * check_us / step_us:.3f} %, {where})",
        flush=True,
    )
    return launches, check_us, step_us


def main(argv=None):
    args = list(sys.argv[1:] if argv is None else argv)
    emulate = "--emulate" in args
    what = ([a for a in args if not a.startswith("--")] or ["ops"])[0]
    checks = {"ops": check_ops, "sync": check_sync, "graph": check_graph, "cost": check_cost}
    if emulate:
        recorded = []
        kw = {"set_mode": recorded.append, "synchronize": lambda: None} if what == "sync" else {}
        with emulated_cuda():
            checks[what]("cpu", **kw)
        return 0
    if not torch.cuda.is_available():
        print("skipped: no CUDA device")
        return 0
    checks[what]()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
