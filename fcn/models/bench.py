"""Time a whole FCN forward+backward, fused vs aten:

    python -m fcn.models.bench --arch fcn8s --backbone vgg16 --size 128 --upsample aten fused

Same weights and input for every mode; prints the best of `--repeat` runs (after one
warm-up) and the largest output difference against the first mode.
"""
import argparse
import time

import torch

from . import build_model


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_model(model, x, repeat, device):
    def step():
        model.zero_grad(set_to_none=True)
        y = model(x)
        y.float().sum().backward()
        return y
    y = step()  # warm-up
    _sync(device)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        step()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, y.detach()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="fcn8s")
    p.add_argument("--backbone", default="vgg16")
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--size", type=int, nargs="+", default=[128], help="H [W]")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--upsample", nargs="+", default=["aten", "fused"])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = p.parse_args(argv)
    device = torch.device(args.device)
    h, w = (args.size * 2)[:2]
    torch.manual_seed(0)
    model = build_model(args.arch, args.backbone, args.num_classes, upsample="aten")
    model = model.to(device=device, dtype=getattr(torch, args.dtype)).eval()
    x = torch.randn(args.batch, 3, h, w, device=device, dtype=getattr(torch, args.dtype))
    print(f"{args.arch} {args.backbone} {args.batch}x3x{h}x{w} {args.dtype} on {device} "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads), forward+backward:")
    ref = None
    for mode in args.upsample:
        model.set_upsample(mode)
        t, y = time_model(model, x, args.repeat, device)
        diff = "" if ref is None else f"   max|diff| vs {args.upsample[0]}: {(y - ref).abs().max().item():.2e}"
        ref = y if ref is None else ref
        print(f"  {mode:6s} {t * 1e3:10.1f} ms{diff}")


if __name__ == "__main__":
    main()
