"""Bad-input battery for every public function and module, run in a subprocess by
tests/test_hardening.py so that a crash (segfault, abort, device-side assert) would be
caught as a failure rather than killing the test run.

Each case must raise the given exception type with a message matching the regex (which
names the offending argument). On CUDA, the context must stay usable after each error.
Prints a JSON summary; exit status 0 only when every case behaved.
"""

import json
import re
import sys

import torch

import fcn_kernels as fk

CUDA = torch.cuda.is_available() and fk.cuda_built()


def t(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, device=device).to(dtype)


def bilinear_cases(dev):
    x = t(1, 2, 4, 4, device=dev)
    f = fk.bilinear_upsample
    # (F.interpolate's own errors for bilinear on 3-D / 5-D input)
    yield "rank 3", lambda: f(t(2, 4, 4, device=dev), size=3), NotImplementedError, "needs 4D input"
    yield (
        "rank 5",
        lambda: f(t(1, 1, 2, 4, 4, device=dev), size=3),
        NotImplementedError,
        "needs 4D input",
    )
    yield "rank 2", lambda: f(t(4, 4, device=dev), size=3), ValueError, "input must be a 4-D"
    yield "not a tensor", lambda: f(3.0, size=3), TypeError, "input must be a torch.Tensor"
    yield "int dtype", lambda: f(x.long(), size=3), TypeError, "input must be float"
    yield "bool dtype", lambda: f(x > 0, size=3), TypeError, "input must be float"
    yield (
        "both size and scale",
        lambda: f(x, size=3, scale_factor=2),
        ValueError,
        "only one of size",
    )
    yield "neither", lambda: f(x), ValueError, "either size or scale_factor"
    yield "zero size", lambda: f(x, size=0), ValueError, "size must be positive"
    yield "negative size", lambda: f(x, size=(-1, 3)), ValueError, "size must be positive"
    yield (
        "huge size",
        lambda: f(x, size=(1 << 40, 1 << 40)),
        (RuntimeError, ValueError),
        "size|memory|alloc|overflow",
    )
    yield "float size", lambda: f(x, size=2.5), TypeError, "size must be integers"
    yield "3 sizes", lambda: f(x, size=(2, 3, 4)), ValueError, "size must be a number or a pair"
    yield (
        "nan scale",
        lambda: f(x, scale_factor=float("nan")),
        ValueError,
        "scale_factor must be finite",
    )
    yield (
        "inf scale",
        lambda: f(x, scale_factor=float("inf")),
        ValueError,
        "scale_factor must be finite",
    )
    yield (
        "negative scale",
        lambda: f(x, scale_factor=-1.0),
        ValueError,
        "scale_factor must be finite and positive",
    )
    yield "tiny scale", lambda: f(x, scale_factor=0.01), ValueError, "scale_factor .*empty output"
    yield "string scale", lambda: f(x, scale_factor="2"), TypeError, "scale_factor must be numbers"
    yield (
        "empty spatial",
        lambda: f(t(1, 1, 0, 4, device=dev), size=3),
        ValueError,
        "non-empty spatial",
    )
    yield (
        "align_corners int",
        lambda: f(x, size=3, align_corners=1),
        TypeError,
        "align_corners must be a bool",
    )
    yield "module neither", lambda: fk.nn.BilinearUpsample(), ValueError, "size or scale_factor"
    ops = torch.ops.fcn_kernels
    yield (
        "op: zero output",
        lambda: ops.bilinear_upsample(x, [0, 3], False, None, None),
        ValueError,
        "output_size must be positive",
    )
    yield (
        "op: backward shape",
        lambda: ops.bilinear_upsample_backward(
            t(1, 3, 6, 6, device=dev), [1, 2, 4, 4], False, None, None
        ),
        ValueError,
        "do not match input_size",
    )


def deconv_cases(dev):
    x, w = t(1, 2, 4, 4, device=dev), t(2, 3, 4, 4, device=dev)
    f = fk.conv_transpose2d_crop
    yield "rank 2 input", lambda: f(t(4, 4, device=dev), w), ValueError, "input must be a 3-D"
    yield "rank 3 weight", lambda: f(x, t(2, 3, 4, device=dev)), ValueError, "weight must be a 4-D"
    yield "int input", lambda: f(x.long(), w), TypeError, "input must be float"
    yield (
        "dtype mismatch",
        lambda: f(x, w.double()),
        TypeError,
        "weight must have the input's dtype",
    )
    yield (
        "channel mismatch",
        lambda: f(t(1, 3, 4, 4, device=dev), w),
        ValueError,
        r"weight.shape\[0\]",
    )
    yield "groups not dividing", lambda: f(x, w, groups=3), ValueError, "groups|weight.shape"
    yield "groups zero", lambda: f(x, w, groups=0), ValueError, "groups must be positive"
    yield "stride zero", lambda: f(x, w, stride=0), ValueError, "stride must be positive"
    yield "negative padding", lambda: f(x, w, padding=-1), ValueError, "padding must be"
    yield "dilation zero", lambda: f(x, w, dilation=0), ValueError, "dilation must be positive"
    yield (
        "output_padding too big",
        lambda: f(x, w, stride=2, output_padding=2),
        ValueError,
        "output_padding",
    )
    yield "negative offset", lambda: f(x, w, offset=(-1, 0)), ValueError, "offset must be"
    yield (
        "crop outside map",
        lambda: f(x, w, offset=(5, 5), size=(10, 10)),
        ValueError,
        "offset|size|crop",
    )
    yield "zero crop", lambda: f(x, w, size=(0, 3)), ValueError, "size"
    yield "bias shape", lambda: f(x, w, bias=t(5, device=dev)), ValueError, "bias must have shape"
    yield (
        "bias dtype",
        lambda: f(x, w, bias=t(3, device=dev).double()),
        TypeError,
        "bias must have the input's dtype",
    )
    yield (
        "bias not tensor",
        lambda: f(x, w, bias=[1.0, 2.0, 3.0]),
        TypeError,
        "bias must be a torch.Tensor",
    )
    yield "kernel_size helper", lambda: fk.bilinear_kernel(0, 4), ValueError, "channels"
    yield "float stride", lambda: f(x, w, stride=1.5), TypeError, "stride must be integers"


def unpool_cases(dev):
    if not hasattr(fk, "max_unpool2d"):
        return
    x = t(1, 2, 4, 4, device=dev)
    y, idx = torch.nn.functional.max_pool2d(x, 2, return_indices=True)
    f = fk.max_unpool2d
    yield "rank 2", lambda: f(y[0, 0], idx[0, 0], 2), ValueError, "input"
    yield "rank 5", lambda: f(y[None], idx[None], 2), ValueError, "input"
    yield (
        "index out of range",
        lambda: f(y, idx + 100, 2),
        (ValueError, IndexError, RuntimeError),
        "indices",
    )
    yield (
        "negative index",
        lambda: f(y, idx - 100, 2),
        (ValueError, IndexError, RuntimeError),
        "indices",
    )
    yield "float indices", lambda: f(y, idx.float(), 2), TypeError, "indices"
    yield "shape mismatch", lambda: f(y, idx[:, :1], 2), ValueError, "indices"
    yield "bad output_size", lambda: f(y, idx, 2, output_size=(100, 100)), ValueError, "output_size"
    yield "zero kernel", lambda: f(y, idx, 0), ValueError, "kernel_size"
    yield "int input", lambda: f(y.long(), idx, 2), TypeError, "input"


def device_cases():
    if not CUDA:
        return
    x, w = t(1, 2, 4, 4), t(2, 2, 4, 4, device="cuda")
    yield (
        "deconv cpu input, cuda weight",
        lambda: fk.conv_transpose2d_crop(x, w),
        (TypeError, ValueError, RuntimeError),
        "device",
    )
    if hasattr(fk, "max_unpool2d"):
        y, idx = torch.nn.functional.max_pool2d(t(1, 2, 4, 4), 2, return_indices=True)
        yield (
            "unpool cpu input, cuda indices",
            lambda: fk.max_unpool2d(y, idx.cuda(), 2),
            (TypeError, ValueError, RuntimeError),
            "device",
        )


def all_cases():
    devices = ["cpu"] + (["cuda"] if CUDA else [])
    for dev in devices:
        for group in (bilinear_cases, deconv_cases, unpool_cases):
            for name, fn, exc, pattern in group(dev):
                yield f"{dev}/{group.__name__[:-6]}/{name}", fn, exc, pattern
    yield from ((f"cuda/devices/{n}", fn, e, p) for n, fn, e, p in device_cases())


def main():
    tried, failures = 0, []
    for name, fn, exc, pattern in all_cases():
        tried += 1
        try:
            fn()
            failures.append(f"{name}: no exception")
        except exc as e:
            if not re.search(pattern, str(e)):
                failures.append(f"{name}: message {str(e)[:200]!r} does not match {pattern!r}")
        except Exception as e:  # wrong exception type
            failures.append(f"{name}: {type(e).__name__}: {str(e)[:200]}")
        if CUDA:  # the context must survive every error
            torch.cuda.synchronize()
            assert (torch.ones(4, device="cuda") * 2).sum().item() == 8
    print(json.dumps({"tried": tried, "failures": failures}))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
