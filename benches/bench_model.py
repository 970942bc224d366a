"""Whole FCN-8s forward+backward, upsample="fused" (ours) vs "aten", same weights."""
import pytest
import torch

from benches.conftest import DEVICES, QUICK, run
from fcn.models import build_model

# (backbone, input size): VGG16 at FCN's 500x500 on GPU; smaller on CPU (2 cores).
CASES = {"cpu": [("tiny", 256), ("vgg16", 128)], "cuda": [("vgg16", 500)]}
if QUICK:
    CASES = {"cpu": [("tiny", 32)], "cuda": [("tiny", 32)]}


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(backbone, device):
        if (backbone, device) not in cache:
            torch.manual_seed(0)
            m = build_model("fcn8s", backbone, 21, upsample="aten")
            with torch.no_grad():  # non-zero score layers: a realistic, trained-like head
                for name, p in m.named_parameters():
                    if name.startswith("score") and p.dim() == 4:
                        p.normal_(0, 0.01)
            cache[(backbone, device)] = m.to(device).eval()
        return cache[(backbone, device)]
    return get


@pytest.mark.parametrize("impl", ["ours", "aten"])
@pytest.mark.parametrize("case", range(2))
@pytest.mark.parametrize("device", DEVICES)
def test_fcn8s_forward_backward(benchmark, models, device, case, impl):
    cases = CASES[device]
    if case >= len(cases):
        pytest.skip("no such case on this device")
    backbone, size = cases[case]
    model = models(backbone, device)
    model.set_upsample("fused" if impl == "ours" else "aten")
    x = torch.randn(1, 3, size, size, device=device)
    benchmark.extra_info.update(op="fcn8s", case=f"{backbone} 1x3x{size}x{size}")

    def step():
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()

    run(benchmark, step, device, rounds=2 if QUICK else 3)
