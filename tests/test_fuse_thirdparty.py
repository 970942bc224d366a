"""fuse() on third-party segmentation models (torchvision, segmentation_models_pytorch;
small configurations, random weights): outputs and parameter gradients equal the
unfused model's in train and eval mode, the modes of the shared modules follow the fused
module, and a dynamic-shape capture exports to ONNX and runs in onnxruntime at other
sizes. Skipped with the reason when a package is missing (CI installs them)."""

import copy
import warnings

import pytest
import torch
from torch.export import Dim

import fcn_kernels as fk
from thirdparty import MODELS, build, missing, outputs

FK = "fcn_kernels"
# (model, input size, rewrites expected) - PAN's pyramid pooling needs >= 113 pixels.
CASES = [
    ("torchvision FCN (ResNet-18)", 64, 1),
    ("torchvision DeepLabV3 (ResNet-18)", 64, 2),
    ("torchvision LR-ASPP (MobileNetV3-S)", 64, 2),
    ("smp FPN (ResNet-18)", 64, 7),
    ("smp PAN (ResNet-18)", 128, 8),
]


def _model(name):
    reason = missing(MODELS[name][0])
    if reason:
        pytest.skip(reason)
    torch.manual_seed(0)
    return build(name)


def _step(m, x):
    torch.manual_seed(1)  # the same dropout masks
    m.zero_grad(set_to_none=True)
    out = outputs(m(x))
    sum(o.square().mean() for o in out).backward()
    return [o.detach() for o in out]


@pytest.mark.parametrize("name,size,n", CASES, ids=[c[0].split(" (")[0] for c in CASES])
def test_train_and_eval_equal_unfused(name, size, n):
    model = _model(name).train()
    ref = copy.deepcopy(model)
    x = torch.randn(2, 3, size, size)
    fused = fk.fuse(model, (x,))
    assert len(fused.rewrites) == n, fused.rewrites
    for a, b in zip(_step(ref, x), _step(fused, x)):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    # (one scale for all: a batch norm's gradient on a 2-sample 4x4 map is cancellation
    # noise of the others' size)
    grads = [(k, p.grad, q.grad) for (k, p), q in zip(ref.named_parameters(), model.parameters())]
    scale = max(g.abs().max().item() for _, g, _ in grads if g is not None)
    for k, want, got in grads:
        if want is not None:
            torch.testing.assert_close(got, want, atol=1e-4 * scale, rtol=1e-3, msg=k)
    for (k, a), b in zip(ref.named_buffers(), model.buffers()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5, msg=k)  # batch-norm stats
    fused.eval()
    assert not any(m.training for m in model.modules())  # shared modules follow
    ref.eval()
    with torch.no_grad():
        for a, b in zip(outputs(ref(x)), outputs(fused(x))):
            torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    assert not any(m.training for m in model.modules())


def test_onnxruntime_dynamic_sizes():
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import fcn_kernels.onnx as fk_onnx

    model = _model("torchvision DeepLabV3 (ResNet-18)").eval()
    x = torch.randn(1, 3, 128, 128)
    d = {2: Dim.DYNAMIC, 3: Dim.DYNAMIC}
    fast = fk.fuse(model, (x,), dynamic_shapes=(d,))
    program = fk_onnx.export(fast, (x,), dynamic_shapes=(d,))  # as for the unfused model
    assert {"Resize"} <= {n.op_type for n in program.model_proto.graph.node}
    sess = ort.InferenceSession(
        program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    name = sess.get_inputs()[0].name
    for hw in [(64, 64), (96, 80), (57, 71)]:
        x = torch.randn(1, 3, *hw)
        with torch.no_grad():
            want = outputs(model(x))
        got = sess.run(None, {name: x.numpy()})
        for g, w in zip(got, want):
            torch.testing.assert_close(torch.from_numpy(g), w, atol=1e-4, rtol=1e-4)


def test_pan_narrowed_sizes_warn():
    # PAN's pyramid attention pins the sizes export accepts around the example (guards
    # on its pooled map sizes): fuse says so when it captures, not at the next size.
    model = _model("smp PAN (ResNet-18)").eval()
    d = {2: Dim.DYNAMIC, 3: Dim.DYNAMIC}
    with pytest.warns(UserWarning, match="fewer input sizes than dynamic_shapes asks"):
        fast = fk.fuse(model, (torch.randn(1, 3, 128, 128),), dynamic_shapes=(d,))
    with pytest.raises(Exception, match="(?i)guard"):
        fast(torch.randn(1, 3, 256, 256))  # a size the warning named


def test_fpn_dynamic_no_warning():
    model = _model("smp FPN (ResNet-18)").eval()
    d = {2: Dim.DYNAMIC, 3: Dim.DYNAMIC}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fast = fk.fuse(model, (torch.randn(1, 3, 128, 128),), dynamic_shapes=(d,))
    assert not [w for w in caught if "fcn_kernels.fuse" in str(w.message)]
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), atol=1e-4, rtol=1e-4)


def test_timm_vit_double_after_fuse():
    # timm's ViT casts with .to(dtype): export records dtype asserts, so the float32
    # graph refuses float64; fuse recaptures after .double().
    pytest.importorskip("timm", reason="timm is not installed (pip install -r requirements.txt)")
    import timm

    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        depth=1,
        num_classes=3,
        dynamic_img_size=True,
    ).eval()
    x = torch.randn(1, 3, 32, 32)
    fast = fk.fuse(model, (x,))
    fast.double()
    xd = x.double()
    out = fast(xd)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, model(xd))
