"""The variants of conv_transpose2d_crop's GPU code chosen by environment variables
(csrc/deconv/variant.h): FCN_KERNELS_DECONV_GRAD_INPUT=gather|tile (the input gradient
by the gather kernel or the shared-memory tile kernel) and FCN_KERNELS_DECONV_LOWP=
gather|cudnn (float16/bfloat16 by the gather kernels or ATen's convolution). Every
variant against a float64 ATen reference (test_deconv_gpu.check), emulated and on CUDA."""

import pytest
import torch

import fcn_kernels as fk
from fcn_kernels.testing import emulated_cuda, index32_limit

import test_deconv_gpu
from test_deconv_gpu import OPS, check, full_size, rand, square_weight

gdev = test_deconv_gpu.gdev  # the fixture: emulated, and CUDA where a GPU is visible

# ---- variants behind environment switches (csrc/deconv/variant.h) --------------------

GRAD_INPUT, LOWP = "FCN_KERNELS_DECONV_GRAD_INPUT", "FCN_KERNELS_DECONV_LOWP"
VARIANTS = {
    "default": {},
    "tile": {GRAD_INPUT: "tile"},
    "cudnn": {LOWP: "cudnn"},
    "tile_cudnn": {GRAD_INPUT: "tile", LOWP: "cudnn"},
}


@pytest.fixture(params=list(VARIANTS))
def variant(request, monkeypatch):
    monkeypatch.delenv(GRAD_INPUT, raising=False)
    monkeypatch.delenv(LOWP, raising=False)
    for name, value in VARIANTS[request.param].items():
        monkeypatch.setenv(name, value)
    return request.param


def fcn_case(k, s, off, hw, c=3):
    full = full_size(hw, (k, k), dict(stride=s))
    return dict(
        x=rand(2, c, *hw),
        w=fk.bilinear_kernel(c, k, dtype=torch.float64),
        offset=(off, off + 1),
        size=(full[0] - off - 1, full[1] - off - 3),
        kw=dict(stride=s),
    )


# Frozen weights (the gather path; trained square weights take the dense one).
VARIANT_CASES = {
    # FCN-8s's upscore8 and upscore2; FCN-32s's upscore, whose tile does not fit in
    # shared memory (the gather kernel runs)
    "upscore8": lambda: fcn_case(16, 8, 31, (6, 7)),
    "upscore2": lambda: fcn_case(4, 2, 1, (19, 18)),
    "upscore32": lambda: fcn_case(64, 32, 19, (3, 2), c=2),
    # more than one tile along both axes, odd sizes, padding
    "tiles": lambda: dict(
        x=rand(1, 2, 11, 45),
        w=fk.bilinear_kernel(2, 3, dtype=torch.float64),
        offset=(0, 1),
        size=(21, 86),
        kw=dict(stride=2, padding=1),
    ),
    # dilation > stride (a tap step crosses a phase), groups, output_padding, bias
    "groups_dilation": lambda: dict(
        x=rand(2, 6, 5, 7),
        w=square_weight(6, (3, 5), groups=2),
        b=rand(6),
        offset=(2, 1),
        size=(9, 15),
        kw=dict(stride=(2, 3), padding=(1, 2), dilation=(3, 4), output_padding=(1, 0), groups=2),
    ),
    # gcd(stride, dilation) > 1
    "stride4_dilation2": lambda: dict(
        x=rand(1, 3, 5, 6),
        w=square_weight(3, (3, 4)),
        offset=(1, 0),
        size=None,
        kw=dict(stride=4, dilation=2),
    ),
    # stride 1 along x (no phases), 2 along y; two tiles along x
    "stride1": lambda: dict(
        x=rand(1, 3, 5, 40),
        w=square_weight(3, (3, 3)),
        offset=(1, 1),
        size=None,
        kw=dict(stride=(2, 1), padding=(0, 1)),
    ),
    "depthwise": lambda: dict(
        x=rand(2, 4, 6, 5),
        w=rand(4, 1, 5, 3),
        b=rand(4),
        offset=(3, 0),
        size=None,
        kw=dict(stride=(3, 2), dilation=(1, 2), groups=4, padding=(1, 0)),
    ),
    # square blocks, not diagonal: the flags send the tile kernel through the gather loop
    "square_dense": lambda: dict(
        x=rand(2, 6, 7, 5),
        w=square_weight(6, (4, 4), groups=2, diag=False),
        b=rand(6),
        offset=(1, 3),
        size=(12, 7),
        kw=dict(stride=2, groups=2),
    ),
}


def check_case(device, case, **kw):
    c = VARIANT_CASES[case]()
    return check(
        device,
        c["x"],
        c["w"],
        c.get("b"),
        offset=c["offset"],
        size=c["size"],
        frozen=True,
        **c["kw"],
        **kw,
    )


@pytest.mark.parametrize("case", list(VARIANT_CASES))
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "noncontig"])
def test_variants_match_aten(gdev, variant, case, layout):
    check_case(gdev, case, layout=layout)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", ["upscore8", "groups_dilation", "square_dense", "depthwise"])
def test_variants_dtypes(gdev, variant, case, dtype):
    check_case(gdev, case, dtype=dtype, scale=2 if dtype == torch.bfloat16 else 1)
    check_case(gdev, case, dtype=dtype, scale=2, layout="channels_last")


@pytest.mark.parametrize("case", ["upscore8", "tiles", "square_dense", "depthwise"])
def test_variants_int64_and_expanded_gradient(gdev, variant, case):
    with index32_limit(16):
        check_case(gdev, case, layout="channels_last")
        check_case(gdev, case)
    check_case(gdev, case, grad="sum")


def backward_input(gdev, case, dtype=torch.float32):
    c = VARIANT_CASES[case]()
    out = fk.conv_transpose2d_crop(
        c["x"], c["w"], offset=c["offset"], size=c["size"], **c["kw"]
    )  # CPU kernels: only the output size
    g = torch.randn(out.shape, dtype=torch.float64).to(gdev, dtype)
    kw = c["kw"]
    pair = lambda v: list(v) if isinstance(v, tuple) else [v, v]  # noqa: E731
    return OPS.conv_transpose2d_crop_backward_input(
        g,
        c["w"].to(gdev, dtype),
        list(c["x"].shape),
        pair(kw.get("stride", 1)),
        pair(kw.get("padding", 0)),
        kw.get("groups", 1),
        pair(kw.get("dilation", 1)),
        list(c["offset"]),
    )


@pytest.mark.parametrize("case", ["upscore8", "upscore2", "groups_dilation", "stride4_dilation2"])
def test_tile_same_bits_as_gather(gdev, monkeypatch, case):
    """The tile kernel sums each input pixel's taps in the gather kernel's order."""
    results = []
    for value in ("gather", "tile"):
        monkeypatch.setenv(GRAD_INPUT, value)
        torch.manual_seed(2)
        results.append(backward_input(gdev, case))
    assert torch.equal(results[0], results[1])


def paths_run(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events() if e.name.startswith("fcn_kernels::deconv_")}


@pytest.mark.parametrize(
    "env,dtype,want",
    [
        ({}, torch.float32, {"forward_gather", "backward_input_gather"}),
        ({GRAD_INPUT: "gather"}, torch.float32, {"forward_gather", "backward_input_gather"}),
        ({GRAD_INPUT: "tile"}, torch.float32, {"forward_gather", "backward_input_tile"}),
        ({LOWP: "cudnn"}, torch.float32, {"forward_gather", "backward_input_gather"}),
        ({LOWP: "cudnn"}, torch.bfloat16, {"forward_dense", "backward_input_dense"}),
        (
            {LOWP: "cudnn", GRAD_INPUT: "tile"},
            torch.float16,
            {"forward_dense", "backward_input_dense"},
        ),
        (
            {LOWP: "gather", GRAD_INPUT: "tile"},
            torch.float16,
            {"forward_gather", "backward_input_tile"},
        ),
    ],
)
def test_switch_picks_the_path(monkeypatch, env, dtype, want):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    x = rand(1, 3, 4, 5).to(dtype).requires_grad_()
    w = fk.bilinear_kernel(3, 16, dtype=dtype)
    with emulated_cuda():
        got = paths_run(
            lambda: (
                fk.conv_transpose2d_crop(x, w, stride=8, offset=(3, 3), size=(20, 30))
                .sum()
                .backward()
            )
        )
    assert got == {"fcn_kernels::deconv_" + p for p in want}


@pytest.mark.parametrize("name", [GRAD_INPUT, LOWP])
@pytest.mark.parametrize("value", ["Tile", "cuDNN", "1", " gather"])
def test_switch_rejects_bad_values(gdev, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    x = rand(1, 3, 4, 5).to(gdev)
    w = fk.bilinear_kernel(3, 4, dtype=torch.float64, device=gdev)
    with pytest.raises(ValueError, match=name):
        fk.conv_transpose2d_crop(x, w, stride=2)
