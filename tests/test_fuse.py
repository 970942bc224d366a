"""fcn_kernels.fuse: existing models rewritten onto our operators.

The models are written as their authors write them: the classic PyTorch FCN port
(wkentaro/pytorch-fcn: nn.ConvTranspose2d upscore layers, crops like
``h[:, :, 19:19 + x.size()[2], 19:19 + x.size()[3]]``) on a small VGG-shaped backbone,
a torchvision-style head ending in F.interpolate, a SegNet-style encoder/decoder with
F.max_unpool2d. The reference is always the unfused model itself (ATen).
"""

import copy
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.export import Dim

import fcn_kernels as fk
from helpers import ClassicFCN as PortFCN

FK = torch.ops.fcn_kernels


def ClassicFCN(arch="fcn8s", n_class=5, width=4):  # noqa: N802 (stands for the class)
    """The classic port's FCN-32s/16s/8s (helpers.ClassicFCN: its layer names, offsets and
    forward) on a VGG-shaped backbone with few channels and non-zero scores, so that every
    path carries gradient."""
    blocks = [(2, width), (2, 2 * width), (3, 4 * width), (3, 8 * width), (3, 8 * width)]
    model = PortFCN(arch, n_class, blocks, fc=16 * width)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0, 0.1)
    return model


class TorchvisionStyle(nn.Module):
    """A torchvision-style segmentation model: backbone, FCNHead (conv-BN-ReLU-dropout-
    conv), F.interpolate(size=input_shape, mode="bilinear", align_corners=False)."""

    def __init__(self, n_class=5):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=4, padding=1),
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Conv2d(16, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Conv2d(8, n_class, 1),
        )
        self.aux = nn.Conv2d(16, n_class, 1)

    def forward(self, x):
        input_shape = x.shape[-2:]
        features = self.backbone(x)
        out = self.classifier(features)
        out = F.interpolate(out, size=input_shape, mode="bilinear", align_corners=False)
        aux = F.interpolate(
            self.aux(features), scale_factor=4.0, mode="bilinear", align_corners=True
        )
        return {"out": out, "aux": aux}


class SegNetStyle(nn.Module):
    """SegNet-style: pooling indices of the encoder reused by the decoder's unpooling."""

    def __init__(self, n_class=5):
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.dec2 = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.dec1 = nn.Conv2d(8, n_class, 3, padding=1)
        self.unpool = nn.MaxUnpool2d(2, 2)

    def forward(self, x):
        h = self.enc1(x)
        size1 = h.size()
        h, ind1 = F.max_pool2d(h, 2, 2, ceil_mode=True, return_indices=True)
        h = self.enc2(h)
        size2 = h.size()
        h, ind2 = F.max_pool2d(h, 2, 2, return_indices=True)
        h = F.max_unpool2d(h, ind2, 2, 2, output_size=size2)
        h = self.dec2(h)
        h = self.unpool(h, ind1, output_size=size1)
        return self.dec1(h)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _flat(out):
    return list(out.values()) if isinstance(out, dict) else [out]


def _check_same(model, x, mode, **fuse_kw):
    """fuse(model) and model give the same outputs, parameter gradients and buffers."""
    model.train(mode)
    ref = copy.deepcopy(model)
    fused = fk.fuse(model, (x,), **fuse_kw)
    assert fused.training == mode
    outs = []
    for m in (ref, fused):
        torch.manual_seed(1)  # the same dropout masks
        m.zero_grad(set_to_none=True)
        out = _flat(m(x))
        sum(o.square().sum() for o in out).backward()
        outs.append(out)
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    ref_grads, grads = _grads(ref), _grads(model)  # gradients reach model.parameters()
    assert ref_grads.keys() == grads.keys() and grads
    # (one scale for all: a conv bias before batch norm has a gradient that is pure
    # cancellation noise of the others' size)
    scale = max(1.0, max(g.abs().max().item() for g in ref_grads.values()))
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], atol=1e-4 * scale, rtol=1e-4, msg=n)
    for (n, a), (_, b) in zip(ref.named_buffers(), model.named_buffers()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5, msg=n)  # running stats
    return fused


@pytest.mark.parametrize("mode", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize(
    "arch,fused_layers",
    [("fcn32s", ["upscore"]), ("fcn16s", ["upscore16"]), ("fcn8s", ["upscore8"])],
)
def test_classic_fcn(arch, fused_layers, mode):
    model = ClassicFCN(arch)
    fused = _check_same(model, torch.randn(2, 3, 37, 45), mode)
    # The upscore2 / upscore_pool4 outputs are used whole (added to a crop): left as is.
    assert [r.split(":")[0] for r in fused.rewrites] == fused_layers
    assert fused.capture == "export"


def test_classic_fcn_graph():
    model = ClassicFCN("fcn8s").eval()
    fused = fk.fuse(model, (torch.randn(1, 3, 32, 32),))
    targets = [n.target for g in fused._graphs.values() for n in g.graph.nodes]
    assert targets.count(FK.conv_transpose2d_crop.default) == 1
    assert targets.count(torch.ops.aten.conv_transpose2d.input) == 2  # upscore2, upscore_pool4


def test_parameters_shared_and_state_dict():
    model = ClassicFCN("fcn32s").eval()
    fused = fk.fuse(model, (torch.randn(1, 3, 32, 32),))
    assert [id(p) for p in fused.parameters()] == [id(p) for p in model.parameters()]
    assert fused.state_dict().keys() == model.state_dict().keys()
    with torch.no_grad():  # an in-place update of the original is seen by the fused module
        model.upscore.weight.mul_(2)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(fused(x), model(x), atol=1e-4, rtol=1e-4)


def test_train_eval_switch():
    model = ClassicFCN("fcn16s").eval()
    fused = fk.fuse(model, (torch.randn(1, 3, 32, 32),))
    x = torch.randn(1, 3, 32, 32)
    y_eval = fused(x)
    fused.train()
    assert model.drop6.training  # shared submodules follow
    torch.manual_seed(3)
    y_train = fused(x)
    model.train()
    torch.manual_seed(3)
    torch.testing.assert_close(y_train, model(x), atol=1e-4, rtol=1e-4)
    fused.eval()
    torch.testing.assert_close(fused(x), y_eval)
    assert len(fused._graphs) == 2  # one graph per mode, each captured once


@pytest.mark.parametrize("arch", ["fcn32s", "fcn8s"])
def test_dynamic_shapes(arch):
    model = ClassicFCN(arch).eval()
    dyn = ({0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC},)
    fused = fk.fuse(model, (torch.randn(2, 3, 64, 64),), dynamic_shapes=dyn)
    assert fused.rewrites
    for shape in [(2, 3, 45, 29), (3, 3, 64, 71)]:
        x = torch.randn(shape)
        torch.testing.assert_close(fused(x), model(x), atol=1e-4, rtol=1e-4)


def test_static_shapes_refuse_other_sizes():
    model = ClassicFCN("fcn32s").eval()
    fused = fk.fuse(model, (torch.randn(1, 3, 32, 32),))
    with pytest.raises(Exception, match="(?i)shape|size|expected"):
        fused(torch.randn(1, 3, 40, 32))


@pytest.mark.parametrize("mode", [False, True], ids=["eval", "train"])
def test_torchvision_style(mode):
    fused = _check_same(TorchvisionStyle(), torch.randn(2, 3, 29, 35), mode)
    assert len(fused.rewrites) == 2
    assert all("bilinear_upsample" in r for r in fused.rewrites)


def test_torchvision_style_dynamic():
    model = TorchvisionStyle().eval()
    dyn = ({2: Dim.DYNAMIC, 3: Dim.DYNAMIC},)
    fused = fk.fuse(model, (torch.randn(1, 3, 32, 32),), dynamic_shapes=dyn)
    x = torch.randn(1, 3, 41, 27)
    for a, b in zip(_flat(fused(x)), _flat(model(x))):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", [False, True], ids=["eval", "train"])
def test_segnet_style(mode):
    fused = _check_same(SegNetStyle(), torch.randn(2, 3, 23, 30), mode)
    assert len(fused.rewrites) == 2
    assert all("max_unpool2d" in r for r in fused.rewrites)


class NotRewritten(nn.Module):
    """Patterns that must stay: a deconvolution used sliced and unsliced, a batch crop,
    antialiased and nearest interpolation, unpooling of indices from elsewhere."""

    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(3, 3, 4, stride=2)
        self.up2 = nn.ConvTranspose2d(3, 3, 4, stride=2)

    def forward(self, x, ind):
        h = self.up(x)
        a = h[:, :, 1 : 1 + x.size(2), 1 : 1 + x.size(3)] + h.mean()
        b = self.up2(x)[:1, :, 1:5, 1:5]
        c = F.interpolate(x, scale_factor=2, mode="bilinear", antialias=True)
        d = F.interpolate(x, scale_factor=2, mode="nearest")
        e = F.max_unpool2d(x, ind, 2)
        return a, b, c, d, e


def test_unrecognised_patterns_left_alone():
    x = torch.randn(2, 3, 6, 6)
    _, ind = F.max_pool2d(torch.randn(2, 3, 12, 12), 2, return_indices=True)
    model = NotRewritten()
    fused = fk.fuse(model, (x, ind))
    assert fused.rewrites == []
    targets = {n.target for g in fused._graphs.values() for n in g.graph.nodes}
    assert not any(getattr(t, "namespace", None) == "fcn_kernels" for t in targets)
    for a, b in zip(fused(x, ind), model(x, ind)):
        torch.testing.assert_close(a, b)


def test_log_line(caplog):
    with caplog.at_level("INFO", logger="fcn_kernels.fuse"):
        fk.fuse(ClassicFCN("fcn32s").eval(), (torch.randn(1, 3, 32, 32),))
    lines = [r.getMessage() for r in caplog.records if r.name == "fcn_kernels.fuse"]
    assert len(lines) == 1 and "upscore" in lines[0] and "1 rewrite" in lines[0]


@pytest.mark.parametrize(
    "model_fn,n", [(lambda: ClassicFCN("fcn8s"), 1), (TorchvisionStyle, 2), (SegNetStyle, 2)]
)
def test_fx_capture(model_fn, n):
    # torch.fx symbolic tracing (used where torch.export fails): torch-level patterns;
    # the graph calls the submodules, so one graph serves both modes.
    model = model_fn()
    x = torch.randn(2, 3, 33, 30)
    fused = _check_same(model, x, True, capture="fx")
    assert fused.capture == "fx" and len(fused.rewrites) == n
    fused.eval()
    model.eval()
    for a, b in zip(_flat(fused(x)), _flat(model(x))):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_to_dtype_rebinds():
    model = TorchvisionStyle().eval()
    fused = fk.fuse(
        model, (torch.randn(1, 3, 32, 32),), dynamic_shapes=({2: Dim.DYNAMIC, 3: Dim.DYNAMIC},)
    )
    fused.double()
    assert model.backbone[1].running_mean.dtype == torch.float64
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(fused(x)["out"], model(x)["out"])


def test_bad_arguments():
    with pytest.raises(TypeError, match="model"):
        fk.fuse(lambda x: x, (torch.randn(1),))
    with pytest.raises(TypeError, match="example_inputs"):
        fk.fuse(ClassicFCN(), [torch.randn(1, 3, 8, 8)])
    with pytest.raises(ValueError, match="capture"):
        fk.fuse(ClassicFCN(), (torch.randn(1, 3, 8, 8),), capture="jit")


def test_decomposed_convolution_pattern():
    # After run_decompositions a transposed convolution is aten.convolution(...,
    # transposed=True, ...): the same rewrite applies.
    from fcn_kernels.fuse import _rewrite_aten

    model = ClassicFCN("fcn32s").eval()
    x = torch.randn(1, 3, 32, 32)
    gm = torch.export.export(model, (x,)).run_decompositions().module()
    assert torch.ops.aten.convolution.default in {n.target for n in gm.graph.nodes}
    assert [r.split(":")[0] for r in _rewrite_aten(gm)] == ["upscore"]
    torch.testing.assert_close(gm(x), model(x), atol=1e-4, rtol=1e-4)


def test_modes_of_shared_modules_follow():
    # .train()/.eval() of the fused module set the original's modules too (they are
    # shared), and a capture leaves them as they were: the original run directly after
    # fused.eval() must not update batch-norm statistics.
    model = TorchvisionStyle().train()
    x = torch.randn(2, 3, 32, 32)
    fused = fk.fuse(model, (x,))
    fused.eval()
    fused(x)  # captures the eval graph
    assert not model.training and not any(m.training for m in model.modules())
    stats = model.backbone[1].running_mean.clone()
    model(x)
    assert torch.equal(model.backbone[1].running_mean, stats)
    fused.train()
    fused(x)
    assert all(m.training for m in model.modules())
    fused.eval()
    fused(x)  # the cached eval graph
    assert not any(m.training for m in model.modules())


def test_frozen_batch_norm_in_training():
    # A common fine-tuning set-up: the model trains, its batch norms stay in eval mode.
    # The graph runs each module in its own mode; the capture does not change modes.
    model = TorchvisionStyle().train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    ref = copy.deepcopy(model)
    x = torch.randn(2, 3, 32, 32)
    fused = fk.fuse(model, (x,))
    assert model.training and not model.backbone[1].training
    torch.manual_seed(0)
    out = fused(x)["out"]
    torch.manual_seed(0)
    torch.testing.assert_close(out, ref(x)["out"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.backbone[1].running_mean, ref.backbone[1].running_mean)


class CastsInput(nn.Module):
    """Casts its input to its weight's dtype (as timm's ViT does): torch.export records a
    dtype assert."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x.to(self.conv.weight.dtype))
        return F.interpolate(y, scale_factor=2, mode="bilinear")


def test_dtype_change_recaptures():
    model = CastsInput().eval()
    x = torch.randn(1, 3, 8, 8)
    fused = fk.fuse(model, (x,))
    fused.double()
    xd = x.double()
    out = fused(xd)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, model(xd))
    targets = [n.target for g in fused._graphs.values() for n in g.graph.nodes]
    assert FK.bilinear_upsample.default in targets  # the new graph is rewritten too
    fused.float()
    torch.testing.assert_close(fused(x), model(x))


@torch.fx.wrap
def _data_dependent(x):
    return x * 2 if x.sum() > 0 else x  # torch.export cannot capture this; torch.fx wraps it


class NeedsFx(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return F.interpolate(_data_dependent(self.conv(x)), scale_factor=2, mode="bilinear")


def test_fx_fallback_logs_why(caplog):
    model = NeedsFx().eval()
    x = torch.randn(1, 3, 8, 8)
    with caplog.at_level("WARNING", logger="fcn_kernels.fuse"):
        fused = fk.fuse(model, (x,))  # no dynamic_shapes: still said, at fuse time
    assert fused.capture == "fx"
    msgs = [r.getMessage() for r in caplog.records if r.name == "fcn_kernels.fuse"]
    assert len(msgs) == 1 and "torch.export failed" in msgs[0] and "torch.fx" in msgs[0]
    torch.testing.assert_close(fused(x), model(x))


class SpecialisesWidth(nn.Module):
    def forward(self, x):
        if x.shape[3] == 32:  # export specialises W under Dim.AUTO
            x = x * 2
        return F.interpolate(x, scale_factor=2, mode="bilinear")


def test_narrowed_dynamic_dims_warn():
    auto = ({2: Dim.AUTO, 3: Dim.AUTO},)
    with pytest.warns(UserWarning, match=r"input 0 dim 3 \(example 32\) refuses 16"):
        fused = fk.fuse(SpecialisesWidth(), (torch.randn(1, 3, 32, 32),), dynamic_shapes=auto)
    with pytest.raises(Exception, match="(?i)guard"):
        fused(torch.randn(1, 3, 32, 48))


def test_dynamic_shapes_in_the_models_form():
    # The fused module's forward has the original's signature, so dynamic_shapes written
    # for the model (one entry per input) apply to it, e.g. in torch.export and ONNX export.
    import inspect

    model = TorchvisionStyle().eval()
    d = {2: Dim.DYNAMIC, 3: Dim.DYNAMIC}
    fused = fk.fuse(model, (torch.randn(1, 3, 32, 32),), dynamic_shapes=(d,))
    assert inspect.signature(fused.forward) == inspect.signature(model.forward)
    ep = torch.export.export(fused, (torch.randn(1, 3, 32, 32),), dynamic_shapes=(d,))
    x = torch.randn(1, 3, 40, 24)
    torch.testing.assert_close(ep.module()(x)["out"], model(x)["out"], atol=1e-5, rtol=1e-5)


def _fuse_module():
    return sys.modules["fcn_kernels.fuse"]  # fk.fuse is the function


class _RefusesOdd:
    """A captured graph's guard function that refuses odd heights, as torch 2.11's export
    of ceil_mode max-pooling does ('Guard failed: (197 + x.size()[2]) % 2 != 0')."""

    def _guards_fn(self, x):
        assert x.shape[2] % 2 == 0, "Guard failed: x.size()[2] % 2 == 0"


def test_check_dynamic_finds_parity_guards():
    dyn = ({2: Dim.DYNAMIC, 3: Dim.DYNAMIC},)
    problems, near = _fuse_module()._check_dynamic(_RefusesOdd(), (torch.randn(1, 3, 32, 32),), dyn)
    assert near and len(problems) == 1
    assert "dim 2 (example 32) refuses 33" in problems[0] and "35" in problems[0]


class _AcceptsMultiplesOf8(torch.nn.Module):
    """A model whose own forward refuses heights that are not multiples of 8 (as
    segmentation_models_pytorch's encoders ask for multiples of 32)."""

    def forward(self, x):
        if x.shape[2] % 8:
            raise RuntimeError("height must be a multiple of 8")
        return x * 2


def test_check_dynamic_ignores_sizes_the_model_refuses():
    # Guards refusing odd heights are a narrowing only where the model runs the size:
    # with a model that itself asks for multiples of 8 there is nothing to report
    # (its 16, 48 and 64 pass the guard); with one that runs every size, 33 and 35 are.
    dyn = ({2: Dim.DYNAMIC, 3: Dim.DYNAMIC},)
    x = (torch.randn(1, 3, 32, 32),)
    check = _fuse_module()._check_dynamic
    assert check(_RefusesOdd(), x, dyn, _AcceptsMultiplesOf8()) == ([], False)
    problems, near = check(_RefusesOdd(), x, dyn, torch.nn.Identity())
    assert near and "refuses 33" in problems[0] and "35" in problems[0]


def test_check_dynamic_probe_leaves_training_mode_to_the_caller():
    # The eager probe runs in eval mode with no grad: BatchNorm statistics do not move.
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(3))
    before = model[0].running_mean.clone()
    dyn = ({2: Dim.DYNAMIC},)
    _fuse_module()._check_dynamic(_RefusesOdd(), (torch.randn(1, 3, 32, 32) + 5,), dyn, model)
    torch.testing.assert_close(model[0].running_mean, before, atol=0, rtol=0)


def test_near_size_guards_fall_back_to_fx(monkeypatch, caplog):
    # When export's graph refuses sizes next to the example, fuse captures with torch.fx
    # (which runs every size) and says why; the result is right at other sizes.
    monkeypatch.setattr(
        _fuse_module(),
        "_check_dynamic",
        lambda *a: (["input 0 dim 2 (example 64) refuses 65"], True),
    )
    model = ClassicFCN("fcn32s").eval()
    dyn = ({2: Dim.DYNAMIC, 3: Dim.DYNAMIC},)
    with caplog.at_level("WARNING", logger="fcn_kernels.fuse"):
        fused = fk.fuse(model, (torch.randn(1, 3, 64, 64),), dynamic_shapes=dyn)
    assert fused.capture == "fx" and fused.rewrites
    msgs = [r.getMessage() for r in caplog.records if r.name == "fcn_kernels.fuse"]
    assert any("refuses 65" in m and "torch.fx" in m for m in msgs)
    x = torch.randn(1, 3, 45, 29)
    torch.testing.assert_close(fused(x), model(x), atol=1e-4, rtol=1e-4)
