"""ONNX export of models on our operators (fcn_kernels.onnx): standard ONNX operators
only, run with onnx's reference interpreter (independent of torch) and compared with
PyTorch."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
import numpy as np  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

import fcn_kernels as fk  # noqa: E402
import fcn_kernels.onnx as fk_onnx  # noqa: E402

Dim = torch.export.Dim


def _run(program, *inputs):
    sess = ReferenceEvaluator(program.model_proto)
    return sess.run(None, {name: t.numpy() for name, t in zip(sess.input_names, inputs)})


def _op_types(program):
    nodes = program.model_proto.graph.node
    assert all(n.domain in ("", "ai.onnx") for n in nodes), "non-standard ONNX operators"
    return {n.op_type for n in nodes}


class Ops(torch.nn.Module):
    """Each operator in the argument forms that map to different ONNX graphs."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(3, 4, 4, 4))
        self.b = torch.nn.Parameter(torch.randn(4))
        self.up = fk.nn.ConvTranspose2dCrop(
            4, 4, 3, stride=2, padding=1, output_padding=1, bias=False, offset=(0, 1)
        )

    def forward(self, x, v, idx):
        y = fk.conv_transpose2d_crop(x, self.w, self.b, stride=2, offset=(1, 2), size=x.shape[2:])
        z = self.up(y, size=(x.shape[2] + 3, x.shape[3] + 2))
        u = fk.max_unpool2d(v, idx, 2, output_size=(2 * v.shape[2], 2 * v.shape[3]))
        return (
            y,
            z,
            u,
            fk.bilinear_upsample(y, scale_factor=2.5),
            fk.bilinear_upsample(y, size=(7, 9), align_corners=True),
            fk.bilinear_upsample(y, scale_factor=(1.5, 2), align_corners=True),
        )


def _inputs(h, w):
    x = torch.randn(2, 3, h, w)
    v, idx = F.max_pool2d(torch.randn(2, 3, 2 * h, 2 * w), 2, return_indices=True)
    return x, v, idx


@pytest.mark.parametrize("dynamic", [False, True])
def test_operators(dynamic):
    model = Ops().eval()
    shapes = None
    if dynamic:
        hw = {2: Dim.DYNAMIC, 3: Dim.DYNAMIC}
        shapes = (hw, hw, hw)
    program = fk_onnx.export(model, _inputs(6, 8), dynamic_shapes=shapes)
    assert {"ConvTranspose", "Slice", "Resize", "MaxUnpool"} <= _op_types(program)
    # (the pooling indices are a model input here: onnx's reference MaxPool returns
    # indices in another convention than torch's ONNX translation of max_pool2d expects)
    for hw in [(6, 8)] + ([(5, 11)] if dynamic else []):
        inputs = _inputs(*hw)
        with torch.no_grad():
            ref = model(*inputs)
        for got, want in zip(_run(program, *inputs), ref):
            np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-4)


def test_custom_translation_table(tmp_path):
    # The plain torch.onnx.export call with our table.
    model = Ops().eval()
    path = tmp_path / "ops.onnx"
    torch.onnx.export(
        model, _inputs(4, 4), str(path), dynamo=True, custom_translation_table=fk_onnx.TRANSLATIONS
    )
    import onnx

    m = onnx.load(str(path))
    assert {n.op_type for n in m.graph.node} >= {"ConvTranspose", "Resize", "MaxUnpool"}


def test_fcn_model():
    from fcn.models import build_model

    torch.manual_seed(0)
    model = build_model("fcn8s", "tiny", 5, upsample="fused").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("score"):
                p.normal_(0, 0.1)
    x = torch.randn(1, 3, 24, 20)
    program = fk_onnx.export(model, (x,))
    assert "ConvTranspose" in _op_types(program)
    with torch.no_grad():
        want = model(x)
    np.testing.assert_allclose(_run(program, x)[0], want.numpy(), atol=1e-4, rtol=1e-4)


def test_fused_model():
    from helpers import TINY_BLOCKS, ClassicFCN

    model = ClassicFCN("fcn32s", n_class=4, blocks=TINY_BLOCKS, fc=32).eval()
    x = torch.randn(1, 3, 20, 24)
    fused = fk.fuse(model, (x,))
    program = fk_onnx.export(fused, (x,))
    assert "ConvTranspose" in _op_types(program)
    with torch.no_grad():
        want = model(x)
    np.testing.assert_allclose(_run(program, x)[0], want.numpy(), atol=1e-4, rtol=1e-4)


def test_fused_model_dynamic_onnxruntime():
    # The natural form: the same dynamic_shapes for fuse and for the export; the graph
    # runs in onnxruntime (what deployments use) at other sizes, equal to PyTorch.
    ort = pytest.importorskip("onnxruntime")
    from helpers import TINY_BLOCKS, ClassicFCN

    torch.manual_seed(0)
    model = ClassicFCN("fcn8s", n_class=4, blocks=TINY_BLOCKS, fc=32).eval()
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            torch.nn.init.normal_(m.weight, 0, 0.1)
    x = torch.randn(1, 3, 64, 64)
    d = {2: Dim.DYNAMIC, 3: Dim.DYNAMIC}
    fused = fk.fuse(model, (x,), dynamic_shapes=(d,))
    program = fk_onnx.export(fused, (x,), dynamic_shapes=(d,))
    assert "ConvTranspose" in _op_types(program)
    sess = ort.InferenceSession(
        program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    for hw in [(64, 64), (45, 29), (61, 70)]:
        x = torch.randn(1, 3, *hw)
        with torch.no_grad():
            want = model(x)
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-4)
