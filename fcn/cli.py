"""The `fcn` command (also `python -m fcn`)."""
import argparse
import sys
import time

from . import __version__


def _time(fn, repeat):
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def cmd_demo(args) -> int:
    """Run FCN's upsampling through fcn_kernels and through ATen; print agreement and speed."""
    import torch
    import torch.nn.functional as F

    import fcn_kernels as fk

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    cases = [
        ("FCN-32s x32 score upsampling", (1, 21, 16, 16), dict(size=(512, 512))),
        ("FCN-8s x8 score upsampling", (1, 21, 63, 63), dict(scale_factor=8)),
        ("VGG feature map x2", (8, 64, 64, 64), dict(scale_factor=2)),
        ("non-integer x2.5, align_corners", (2, 21, 37, 41), dict(scale_factor=2.5, align_corners=True)),
    ]
    print(f"fcn-kernels {__version__} demo: bilinear upsampling, fcn_kernels vs ATen "
          f"(torch {torch.__version__}, {device}, {torch.get_num_threads()} threads)")
    header = f"{'case':34s} {'shape':>24s} {'max rel.diff':>12s} {'fwd ours':>9s} {'fwd aten':>9s} {'bwd ours':>9s} {'bwd aten':>9s}"
    print(header)
    print("-" * len(header))
    worst = 0.0
    for name, shape, kw in cases:
        x = torch.randn(shape, device=device, requires_grad=True)
        ours = lambda: fk.bilinear_upsample(x, **kw)  # noqa: E731
        ref = lambda: F.interpolate(x, mode="bilinear", **kw)  # noqa: E731
        y, y_ref = ours(), ref()
        g = torch.randn_like(y)
        # Relative to the largest reference magnitude: float32 gradients of a x32
        # upsampling sum ~4k terms, so absolute differences scale with that.
        diff = ((y - y_ref).abs().max() / y_ref.abs().max()).item()
        gx, gx_ref = torch.autograd.grad(y, x, g)[0], torch.autograd.grad(y_ref, x, g)[0]
        gdiff = ((gx - gx_ref).abs().max() / gx_ref.abs().max()).item()
        worst = max(worst, diff, gdiff)

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize()

        def timed(f):
            return _time(lambda: (f(), sync()), args.repeat) * 1e3

        def timed_bwd(f):
            out = f()
            return _time(lambda: (torch.autograd.grad(out, x, g, retain_graph=True), sync()), args.repeat) * 1e3

        out_shape = "x".join(map(str, y.shape))
        print(f"{name:34s} {out_shape:>24s} {max(diff, gdiff):12.2e} {timed(ours):7.2f}ms "
              f"{timed(ref):7.2f}ms {timed_bwd(ours):7.2f}ms {timed_bwd(ref):7.2f}ms")
    ok = worst < 1e-5
    print(f"\nlargest relative difference (forward and gradient): {worst:.2e} -> "
          f"{'OK' if ok else 'MISMATCH'}")
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fcn", description="Fully Convolutional Networks for semantic segmentation, "
        "on the fused fcn_kernels operators.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="run the operators against ATen: agreement and timing")
    demo.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    demo.add_argument("--repeat", type=int, default=5, help="timed repetitions (best of)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "demo" and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
