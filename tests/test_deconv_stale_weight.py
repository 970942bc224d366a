"""A frozen weight written in place without a version bump (issue 19).

FCN code (re)initialises its upsampling weights through `.data`, and NumPy or DLPack
aliases write a tensor's memory behind autograd's back: none of these bump `_version`.
The op must compute with the weight's values at the time of the call, whatever was
computed with it before (the GPU code once cached the weight's channel-diagonal check
keyed on the version and went stale). Each route: one forward + input gradient with
FCN's bilinear weight (channel-diagonal, the gather path), the write, then both again,
against F.conv_transpose2d + slice on the new values."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fcn_kernels as fk

from helpers import assert_close

C, K, S = 5, 4, 2
KW = dict(stride=S, offset=(1, 2), size=(11, 12))


def frozen_weight(device):
    """FCN's bilinear weight, each diagonal filter scaled by a ramp along ky so that
    transposing the kernel axes changes it; still channel-diagonal."""
    ramp = 1 + 0.25 * torch.arange(K, dtype=torch.float64)
    w = fk.bilinear_kernel(C, K, dtype=torch.float64) * ramp[:, None]
    return w.to(device)


def dense_weight(device):
    g = torch.Generator().manual_seed(3)
    return (torch.randn(C, C, K, K, generator=g, dtype=torch.float64) / 4).to(device)


def write_mul(w):
    w.data.mul_(2)


def write_copy(w):
    w.data.copy_(dense_weight(w.device))


def write_index(w):
    w.data[1] = dense_weight(w.device)[1]  # off the diagonal: the weight is now dense


def write_transpose(w):
    w.data = w.data.transpose(2, 3)  # same storage and data pointer, another weight


def write_numpy(w):
    if w.device.type != "cpu":
        pytest.skip("a NumPy array aliases CPU memory only")
    a = w.numpy()
    a[2, 0] = 0.5
    a *= np.float64(1.5)


def write_dlpack(w):
    a = torch.from_dlpack(w)  # another tensor (own version counter) on the same memory
    assert a.data_ptr() == w.data_ptr()
    a[:, :, 1, :] = 0.3
    a[3].mul_(-1)


ROUTES = {
    "data_mul": write_mul,
    "data_copy": write_copy,
    "data_index": write_index,
    "data_transpose": write_transpose,
    "numpy_alias": write_numpy,
    "dlpack_alias": write_dlpack,
}


def run_and_check(x, w, grad):
    """Forward and input gradient of the op against ATen on w's current values."""
    xl = x.detach().requires_grad_()
    y = fk.conv_transpose2d_crop(xl, w, **KW)
    (gx,) = torch.autograd.grad(y, xl, grad)
    xr = x.detach().cpu().requires_grad_()
    (oy, ox), (h, wd) = KW["offset"], KW["size"]
    ref = F.conv_transpose2d(xr, w.detach().cpu(), stride=S)[..., oy : oy + h, ox : ox + wd]
    (gref,) = torch.autograd.grad(ref, xr, grad.cpu())
    assert_close(y, ref)
    assert_close(gx, gref)


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_write_without_version_bump(device, route, layout):
    x = torch.randn(2, C, 6, 7, dtype=torch.float64, device=device)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(2, C, *KW["size"], dtype=torch.float64, device=device)
    w = frozen_weight(device)
    for _ in range(2):  # what a cache would have kept
        run_and_check(x, w, grad)
    version = w._version
    ROUTES[route](w)
    assert w._version == version  # the write is invisible to autograd's version counter
    run_and_check(x, w, grad)
    # and back to a channel-diagonal weight
    w.data = frozen_weight(device) * 3
    run_and_check(x, w, grad)


def test_module_weight_reinitialised_through_data(device):
    """The common FCN idiom: a frozen ConvTranspose2dCrop's weight set via .data."""
    m = fk.nn.ConvTranspose2dCrop(C, C, K, stride=S, bias=False).to(device).double()
    m.weight.requires_grad_(False)
    m.weight.data.copy_(frozen_weight(device))
    x = torch.randn(1, C, 5, 5, dtype=torch.float64, device=device)
    with torch.no_grad():
        first = m(x)
        m.weight.data.mul_(-0.5)
        second = m(x)
    assert_close(second, first * -0.5)


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "autocast"])
def test_launches_per_call_cuda(autocast, monkeypatch):
    """The check costs one launch per call and nothing more: a frozen bilinear weight
    runs DiagCheckKernel and ForwardKernel; under autocast (the cast weight is a new
    tensor every call) only the two casts are added."""
    if not torch.cuda.is_available() or not fk.cuda_built():
        pytest.skip("needs a CUDA GPU and a CUDA build")
    from torch.profiler import ProfilerActivity, profile

    for name in ("FCN_KERNELS_DECONV_LOWP", "FCN_KERNELS_DECONV_GRAD_INPUT"):
        monkeypatch.delenv(name, raising=False)  # the default variants

    x = torch.randn(1, 21, 16, 16, device="cuda")
    w = fk.bilinear_kernel(21, 4, device="cuda")
    kw = dict(stride=2, offset=(1, 1), size=(30, 30))
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=autocast):
        fk.conv_transpose2d_crop(x, w, **kw)  # warm-up
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fk.conv_transpose2d_crop(x, w, **kw)
            torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert sum("DiagCheckKernel" in k for k in kernels) == 1, kernels
    assert sum("ForwardKernel" in k for k in kernels) == 1, kernels
    assert len(kernels) == (4 if autocast else 2), kernels
