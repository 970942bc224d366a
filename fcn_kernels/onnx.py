"""ONNX export of models on fcn_kernels' operators, to standard ONNX operators.

``torch.onnx.export(..., dynamo=True)`` captures the model with torch.export and
translates every ATen operator with onnxscript's torch library; our operators need a
translation of their own. ``TRANSLATIONS`` gives them:

* ``conv_transpose2d_crop`` -> ``ConvTranspose`` + ``Slice`` (the full map, then the crop:
  an ONNX runtime has no fused operator, the result is the same);
* ``bilinear_upsample``     -> ``Resize`` (mode linear; ``scales`` where a scale factor
  defines the source positions, as in ATen: given and align_corners=False, else ``sizes``);
* ``max_unpool2d``          -> ``MaxUnpool`` (our per-plane indices, as max_pool2d returns
  them, made flat over the whole tensor as ONNX's MaxPool/MaxUnpool use them).

Use ``fcn_kernels.onnx.export(model, args, path)``, or pass the table yourself:
``torch.onnx.export(model, args, path, dynamo=True,
custom_translation_table=fcn_kernels.onnx.TRANSLATIONS)``.
Needs the ``onnxscript`` package (imported on first use).
"""

import torch

__all__ = ["TRANSLATIONS", "export", "translations"]  # noqa: F822 (module __getattr__)

_TABLE = None


def translations():
    """The custom_translation_table entries for our operators (needs onnxscript)."""
    global _TABLE
    if _TABLE is None:
        _TABLE = _build()
    return dict(_TABLE)


def export(model, args, path=None, *, dynamic_shapes=None, **kwargs):
    """``torch.onnx.export(model, args, path, dynamo=True, ...)`` with our operators'
    translations added to any ``custom_translation_table`` given. Returns the
    ``torch.onnx.ONNXProgram``. A ``fuse()``d module takes the ``dynamic_shapes`` its
    model takes (one entry per forward argument)."""
    table = translations()
    table.update(kwargs.pop("custom_translation_table", None) or {})
    return torch.onnx.export(
        model,
        args,
        path,
        dynamo=True,
        dynamic_shapes=dynamic_shapes,
        custom_translation_table=table,
        **kwargs,
    )


def __getattr__(name):
    if name == "TRANSLATIONS":
        return translations()
    raise AttributeError(name)


def _build():
    from onnxscript import opset18 as op

    def pads(padding):
        return [padding[0], padding[1], padding[0], padding[1]]

    def vector(values):
        """A list of ints and (symbolic, dynamic-shape) scalars as a 1-D INT64 tensor."""
        if all(isinstance(v, int) for v in values):
            return op.Constant(value_ints=list(values))
        return op.Concat(
            *[
                op.Constant(value_ints=[v])
                if isinstance(v, int)
                else op.Reshape(v, op.Constant(value_ints=[1]))
                for v in values
            ],
            axis=0,
        )

    def conv_transpose2d_crop(
        x, weight, bias, stride, padding, output_padding, groups, dilation, offset, size
    ):
        y = op.ConvTranspose(
            x,
            weight,
            bias,
            strides=list(stride),
            pads=pads(padding),
            dilations=list(dilation),
            group=groups,
            output_padding=list(output_padding),
        )
        starts = op.Constant(value_ints=list(offset))
        return op.Slice(y, starts, op.Add(starts, vector(size)), op.Constant(value_ints=[2, 3]))

    def bilinear_upsample(x, output_size, align_corners, scale_h=None, scale_w=None):
        mode = "align_corners" if align_corners else "pytorch_half_pixel"
        # A given scale defines the source positions only without align_corners (ATen's
        # rule); with it the sizes do (and ONNX's Resize would use the unfloored
        # in * scale as the resized length).
        if scale_h is not None and scale_w is not None and not align_corners:
            scales = op.Constant(value_floats=[1.0, 1.0, float(scale_h), float(scale_w)])
            return op.Resize(x, None, scales, mode="linear", coordinate_transformation_mode=mode)
        sizes = op.Concat(op.Shape(x, start=0, end=2), vector(output_size), axis=0)
        return op.Resize(x, None, None, sizes, mode="linear", coordinate_transformation_mode=mode)

    def max_unpool2d(x, indices, kernel_size, stride, padding, output_size):
        output_size = vector(output_size)
        nc = op.Shape(x, start=0, end=2)
        plane = op.ReduceProd(output_size, keepdims=1)  # OH * OW
        first = op.Mul(
            op.Range(
                op.Constant(value_int=0), op.ReduceProd(nc, keepdims=0), op.Constant(value_int=1)
            ),
            plane,
        )  # each plane's start
        first = op.Reshape(first, op.Concat(nc, op.Constant(value_ints=[1, 1]), axis=0))
        out_shape = op.Concat(nc, output_size, axis=0)
        return op.MaxUnpool(
            x,
            op.Add(indices, first),
            out_shape,
            kernel_shape=list(kernel_size),
            strides=list(stride),
            pads=pads(padding),
        )

    ops = torch.ops.fcn_kernels
    return {
        ops.conv_transpose2d_crop.default: conv_transpose2d_crop,
        ops.bilinear_upsample.default: bilinear_upsample,
        ops.max_unpool2d.default: max_unpool2d,
    }
