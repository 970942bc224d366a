"""Small CUDA checks for a lent GPU, run by benches/gpu_check.py (also under
compute-sanitizer, so they stay small):

    python -m benches.gpu_smoke ops        every op and path, forward + backward, vs CPU
    python -m benches.gpu_smoke sync       no host sync in any forward/backward
                                           (torch.cuda.set_sync_debug_mode("error"))
    python -m benches.gpu_smoke graph      a whole FCN-8s training step captured in a CUDA
                                           graph and replayed, equal to eager steps

Each prints one line per check and exits non-zero on the first failure. Without a GPU
it prints "skipped: no CUDA device" and exits 0.
"""

import sys

import torch
import torch.nn.functional as F

import fcn_kernels as fk


def _cases(device):
    """(name, fn) pairs; fn(device) -> list of tensors (outputs and gradients)."""

    def bilinear(dtype, cl, **kw):
        def run(dev):
            torch.manual_seed(0)
            x = torch.randn(2, 5, 9, 7, dtype=dtype)
            x = (x.contiguous(memory_format=torch.channels_last) if cl else x).to(dev)
            x.requires_grad_()
            y = fk.bilinear_upsample(x, **kw)
            (gx,) = torch.autograd.grad(y.sum(), x)  # expanded gradient
            return [y, gx]

        return run

    def deconv(weight, k, s, off, size, **kw):
        def run(dev):
            torch.manual_seed(0)
            cin, cout = 6, kw.get("cout", 6)
            args = {key: v for key, v in kw.items() if key != "cout"}
            x = torch.randn(2, cin, 8, 9).to(dev).requires_grad_()
            w = (
                fk.bilinear_kernel(cin, k)
                if weight == "bilinear"
                else torch.randn(cin, cout // args.get("groups", 1), k, k)
            ).to(dev)
            w.requires_grad_()
            y = fk.conv_transpose2d_crop(x, w, stride=s, offset=off, size=size, **args)
            g = torch.randn(y.shape).to(dev)
            return [y, *torch.autograd.grad(y, (x, w), g)]

        return run

    def unpool(k, s, pad):
        def run(dev):
            torch.manual_seed(0)
            x = torch.randn(2, 3, 12, 10).to(dev)
            v, idx = F.max_pool2d(x, k, s, pad, return_indices=True)
            v.requires_grad_()
            y = fk.max_unpool2d(v, idx, k, s, pad, output_size=x.shape[-2:])
            (gv,) = torch.autograd.grad(y, v, torch.randn(y.shape).to(dev))
            return [y, gv]

        return run

    yield "bilinear x2.5 f32", bilinear(torch.float32, False, scale_factor=2.5)
    yield "bilinear x8 bf16 channels_last", bilinear(torch.bfloat16, True, scale_factor=8)
    yield (
        "bilinear size align_corners f16",
        bilinear(torch.float16, False, size=(20, 3), align_corners=True),
    )
    yield "deconv bilinear k4 s2", deconv("bilinear", 4, 2, (1, 2), (15, 16))
    yield "deconv bilinear k16 s8", deconv("bilinear", 16, 8, (5, 7), (60, 70))
    yield "deconv dense k4 s2", deconv("dense", 4, 2, (1, 0), (14, 17))
    yield "deconv dense groups", deconv("dense", 3, 2, (0, 1), (13, 15), groups=2, cout=4)
    yield "unpool 2x2/2 (fast path)", unpool(2, 2, 0)
    yield "unpool 3x3/2 pad 1 (general path)", unpool(3, 2, 1)


def check_ops():
    for name, run in _cases("cuda"):
        got = run("cuda")
        want = run("cpu")
        for a, b in zip(got, want):
            tol = 1e-2 if a.dtype in (torch.float16, torch.bfloat16) else 1e-4
            torch.testing.assert_close(a.cpu().double(), b.double(), atol=tol, rtol=tol)
        print(f"ok   ops   {name}", flush=True)


def check_sync():
    for name, run in _cases("cuda"):
        if name.startswith("unpool"):
            continue  # unpool syncs once in eager mode to raise IndexError (documented)
        run("cuda")  # warm-up: lazy init, cuDNN/cuBLAS handles
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            run("cuda")
        finally:
            torch.cuda.set_sync_debug_mode(0)
        print(f"ok   sync  {name}", flush=True)


def check_graph():
    from fcn.models import FCN8s

    torch.manual_seed(0)
    model = FCN8s(num_classes=5, backbone="tiny").cuda()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(2, 3, 64, 64, device="cuda")
    t = torch.randint(0, 5, (2, 64, 64), device="cuda")

    def step():
        opt.zero_grad(set_to_none=False)
        loss = F.cross_entropy(model(x), t)
        loss.backward()
        opt.step()
        return loss

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):  # warm-up on a side stream, as torch.cuda.graphs requires
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = step()
    before = [p.detach().clone() for p in model.parameters()]
    graph.replay()
    torch.cuda.synchronize()
    changed = any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert changed and torch.isfinite(static_loss).item(), "graph replay did not train"
    print(f"ok   graph FCN-8s training step captured and replayed (loss {static_loss.item():.4f})")


def main(argv=None):
    what = (argv or sys.argv[1:] or ["ops"])[0]
    if not torch.cuda.is_available():
        print("skipped: no CUDA device")
        return 0
    {"ops": check_ops, "sync": check_sync, "graph": check_graph}[what]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
