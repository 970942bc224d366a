"""fuse(classic FCN-8s) (ours) vs the unmodified model (aten): forward + backward of the
classic PyTorch port's FCN-8s (nn.ConvTranspose2d + slicing, tests/test_fuse.py), same
weights, same run. fuse rewrites upscore8 (the only transposed convolution used through
a crop; upscore2 / upscore_pool4 are added whole and stay ATen's)."""

import os
import sys

import pytest
import torch

import fcn_kernels as fk
from benches.conftest import QUICK, run

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tests"))
from helpers import ClassicFCN  # noqa: E402  (the classic port's model, as the tests use)

# (backbone, channel width, fc width, input size): as bench_model.py on CPU.
CASES = [("tiny", 8, 128, 256), ("vgg16", 64, 4096, 128)]
if QUICK:
    CASES = [("tiny", 4, 32, 32)]


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(case):
        if case not in cache:
            backbone, width, fc, size = CASES[case]
            torch.manual_seed(0)
            w = width  # VGG16's channel counts over 64
            blocks = [(2, w), (2, 2 * w), (3, 4 * w), (3, 8 * w), (3, 8 * w)]
            model = ClassicFCN("fcn8s", n_class=21, blocks=blocks, fc=fc).eval()
            with torch.no_grad():  # FCN's fixed bilinear upsampling weights
                for name in ("upscore2", "upscore_pool4", "upscore8"):
                    m = getattr(model, name)
                    m.weight.copy_(fk.bilinear_kernel(21, m.kernel_size[0]))
            x = torch.randn(1, 3, size, size)
            cache[case] = (model, fk.fuse(model, (x,)), x)
        return cache[case]

    return get


@pytest.mark.parametrize("impl", ["ours", "aten"])
@pytest.mark.parametrize("case", range(2))
def test_fuse_classic_fcn8s(benchmark, models, case, impl):
    if case >= len(CASES):
        pytest.skip("no such case")
    model, fused, x = models(case)
    backbone, _, _, size = CASES[case]
    net = fused if impl == "ours" else model
    benchmark.extra_info.update(op="fuse(classic fcn8s)", case=f"{backbone} 1x3x{size}x{size}")

    def step():
        model.zero_grad(set_to_none=True)
        net(x).sum().backward()

    run(benchmark, step, "cpu", rounds=2 if QUICK else 3)


# forward + y.sum().backward() per operator (the expanded gradient `sum` hands the
# backward), ours vs ATen, on FCN's shapes.
def _unpool(impl):
    import torch.nn.functional as F

    v, idx = F.max_pool2d(
        torch.randn((1, 2, 8, 8) if QUICK else (4, 128, 180, 244)), 2, return_indices=True
    )
    v.requires_grad_(True)
    f = fk.max_unpool2d if impl == "ours" else F.max_unpool2d
    return "unpool 2x2 4x128x90x122", lambda: f(v, idx, 2).sum().backward()


def _bilinear(impl):
    import torch.nn.functional as F

    x = torch.randn(1, 21, 3 if QUICK else 63, 63, requires_grad=True)
    if impl == "ours":
        return (
            "bilinear x8 1x21x63x63",
            lambda: fk.bilinear_upsample(x, scale_factor=8).sum().backward(),
        )
    return (
        "bilinear x8 1x21x63x63",
        lambda: F.interpolate(x, scale_factor=8, mode="bilinear").sum().backward(),
    )


def _deconv(impl):
    import torch.nn.functional as F

    x = torch.randn(1, 2 if QUICK else 21, 66, 66, requires_grad=True)  # full map 536x536
    w = fk.bilinear_kernel(x.shape[1], 16)
    if impl == "ours":
        return (
            "upscore8 k16 s8 1x21x66x66 -> 500x500",
            lambda: (
                fk.conv_transpose2d_crop(x, w, stride=8, offset=(31, 31), size=(500, 500))
                .sum()
                .backward()
            ),
        )
    return (
        "upscore8 k16 s8 1x21x66x66 -> 500x500",
        lambda: F.conv_transpose2d(x, w, stride=8)[:, :, 31:531, 31:531].sum().backward(),
    )


@pytest.mark.parametrize("impl", ["ours", "aten"])
@pytest.mark.parametrize("op", [_unpool, _bilinear, _deconv], ids=["unpool", "bilinear", "deconv"])
def test_forward_sum_backward(benchmark, op, impl):
    case, step = op(impl)
    benchmark.extra_info.update(op=f"{op.__name__[1:]} fwd+sum().backward()", case=case)
    run(benchmark, step, "cpu", rounds=2 if QUICK else 10)


def check_cost(size=64, calls=200):
    """What the fused module's every-call check of the model (fuse.py, FusedModule._graph)
    costs: the check and graph lookup alone, against the whole fused forward (eval,
    no_grad) of torchvision's fcn_resnet50, same run; medians in ms."""
    import statistics

    import torchvision

    from fcn.timing import time_calls

    torch.manual_seed(0)
    model = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None)
    model.eval()
    x = torch.randn(1, 3, size, size)
    fast = fk.fuse(model, (x,))
    with torch.no_grad():
        check = statistics.median(time_calls(lambda: fast._graph((x,)), calls, "cpu", 10))
        forward = statistics.median(time_calls(lambda: fast(x), 20, "cpu", 2))
    modules = sum(1 for _ in model.modules())
    print(
        f"fcn_resnet50 ({modules} modules) 1x3x{size}x{size}: check {check * 1e3:.3f} ms, "
        f"fused forward {forward * 1e3:.1f} ms, check / forward {100 * check / forward:.2f} %"
    )
    return check, forward


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=check_cost.__doc__)
    p.add_argument("--check-cost", action="store_true", required=True)
    p.add_argument("--size", type=int, default=64, help="input H = W")
    check_cost(p.parse_args().size)
