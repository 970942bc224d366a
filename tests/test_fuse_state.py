"""A fused module follows its model, whatever is changed after fuse() and however.

The captured graph is a cache of the model's forward: it may change speed, never a
result. Each test fuses, changes the model the way users do (a replaced parameter,
buffer or layer, load_state_dict(assign=True), a layer's hyper-parameter, ``.data``
given another shape or dtype), then compares the fused module with the model itself
(ATen), with torch.export's capture and with torch.fx's.
"""

import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fcn_kernels as fk

fuse_module = sys.modules["fcn_kernels.fuse"]  # fcn_kernels.fuse is also the function

CAPTURES = ["export", "fx"]


class Small(nn.Module):
    """conv-BN-ReLU-dropout, a transposed convolution cropped (rewritten to
    conv_transpose2d_crop) and a bilinear resize (rewritten to bilinear_upsample)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.0)
        self.up = nn.ConvTranspose2d(4, 4, 4, stride=2, bias=False)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        h = self.drop(F.relu(self.bn(self.conv(x))))
        h = self.up(h)[:, :, 1 : 1 + 2 * h.shape[2], 1 : 1 + 2 * h.shape[3]]
        return F.interpolate(self.head(h), scale_factor=1.5, mode="bilinear")


def fused(capture, mode="eval"):
    torch.manual_seed(0)
    model = Small().double()
    getattr(model, mode)()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    fast = fk.fuse(model, (x,), capture=capture)
    assert len(fast.rewrites) == 2
    assert_follows(fast, model, x)
    return fast, model, x


def count_captures(monkeypatch):
    """A list that gets one entry per capture fuse makes from now on."""
    calls, real = [], fuse_module._capture
    monkeypatch.setattr(fuse_module, "_capture", lambda *a: calls.append(1) or real(*a))
    return calls


def assert_follows(fast, model, x):
    with torch.no_grad():
        got, want = fast(x), model(x)
    assert got.shape == want.shape
    tol = 1e-9 if x.dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def replace_parameter(model, fast):
    model.conv.weight = nn.Parameter(torch.randn_like(model.conv.weight))


def replace_parameter_through_fused(model, fast):
    fast.up.weight = nn.Parameter(torch.randn_like(model.up.weight))


def load_state_dict_assign(model, fast):
    g = torch.Generator().manual_seed(5)
    sd = {
        k: torch.rand(v.shape, generator=g, dtype=v.dtype) + 0.5 if v.is_floating_point() else v
        for k, v in fast.state_dict().items()
    }
    fast.load_state_dict(sd, assign=True)
    assert model.bn.running_var is sd["bn.running_var"]


def replace_buffer(model, fast):
    model.bn.running_mean = torch.randn(4, dtype=torch.float64)


def replace_layer(model, fast):
    model.conv = nn.Conv2d(3, 4, 5, padding=2).double()


def change_hyperparameter(model, fast):
    model.conv.padding = (2, 2)  # a larger map: the crop and the resize follow it


def change_eps(model, fast):
    model.bn.eps = 0.75


def data_of_another_shape(model, fast):
    model.conv.weight.data = torch.randn(4, 3, 1, 1, dtype=torch.float64)
    model.conv.padding = (0, 0)


CHANGES = [
    replace_parameter,
    replace_parameter_through_fused,
    load_state_dict_assign,
    replace_buffer,
    replace_layer,
    change_hyperparameter,
    change_eps,
    data_of_another_shape,
]


@pytest.mark.parametrize("capture", CAPTURES)
@pytest.mark.parametrize("change", CHANGES, ids=lambda f: f.__name__)
def test_fused_follows_the_model(capture, change):
    fast, model, x = fused(capture)
    change(model, fast)
    assert_follows(fast, model, x)
    ours, theirs = fast.state_dict(keep_vars=True), model.state_dict(keep_vars=True)
    assert ours.keys() == theirs.keys()
    assert all(ours[k] is theirs[k] for k in ours)
    assert list(fast.parameters()) == list(model.parameters())  # the same objects


@pytest.mark.parametrize("capture", CAPTURES)
def test_data_of_another_dtype(capture):
    """``.data`` converted on the original (not through the fused module's .to())."""
    fast, model, x = fused(capture)
    for p in model.parameters():
        p.data = p.data.float()
    for name, b in model.named_buffers():
        if b.is_floating_point():
            b.data = b.data.float()
    assert_follows(fast, model, x.float())


@pytest.mark.parametrize("capture", CAPTURES)
def test_training_step_after_replacing_a_parameter(capture):
    """An optimizer built after the replacement trains what the fused graph uses."""
    fast, model, x = fused(capture, mode="train")
    model.head.weight = nn.Parameter(torch.randn_like(model.head.weight))
    opt = torch.optim.SGD(fast.parameters(), lr=0.1)
    before = model.head.weight.detach().clone()
    fast(x).square().sum().backward()
    opt.step()
    assert model.head.weight.grad is not None
    assert not torch.equal(model.head.weight, before)


def test_mode_switches_reuse_the_graphs(monkeypatch):
    """Checking on every call costs no capture: train/eval flips reuse their graphs, and
    an unchanged model is never captured again."""
    fast, model, x = fused("export")
    calls = count_captures(monkeypatch)
    for _ in range(3):
        fast.train()
        fast(x)
        fast.eval()
        fast(x)
    assert len(calls) == 1  # the training mode, once
    model.bn.momentum = 0.5
    fast(x)
    assert len(calls) == 2  # the attribute changed: eval captured again


class Opaque:
    """An attribute value that cannot be compared (as a tensor of several elements)."""

    def __eq__(self, other):
        raise RuntimeError("ambiguous")


def test_uncomparable_attribute_counts_as_a_change(monkeypatch):
    fast, model, x = fused("export")
    model.bn.extra = torch.zeros(3)
    fast(x)
    calls = count_captures(monkeypatch)
    model.bn.extra = torch.ones(3)  # comparing would raise: captured again
    assert_follows(fast, model, x)
    model.bn.note = Opaque()
    assert_follows(fast, model, x)
    assert len(calls) == 2


class RemembersItsInput(Small):
    """A forward that stores an attribute (as models that keep their last feature map
    for visualisation do): tracing sets it, the graph does not."""

    def forward(self, x):
        self.last_input = x
        return super().forward(x)


@pytest.mark.filterwarnings("ignore:The tensor attribute self.last_input was assigned")
@pytest.mark.parametrize("capture", CAPTURES)
def test_attributes_set_by_the_traced_forward_are_not_changes(capture, monkeypatch, caplog):
    torch.manual_seed(0)
    model = RemembersItsInput().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    fast = fk.fuse(model, (x,), capture=capture)
    calls = count_captures(monkeypatch)
    for _ in range(3):
        fast(x)
    assert calls == []
    model.drop.p = 0.25  # a real change: captured again once, and the log says why
    with caplog.at_level("INFO", logger="fcn_kernels.fuse"):
        for _ in range(3):
            fast(x)
    assert calls == [1]
    assert "capturing again: attribute 'p' of a Dropout changed" in caplog.text
