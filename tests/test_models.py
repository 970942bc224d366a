"""FCN models: shapes, init rules, classic-port compatibility, torchvision weight
conversion, upsampling variants, fused == aten, torch.compile, ONNX, errors.

References are written independently here: the classic port's layout (wkentaro/
pytorch-fcn: module names, hard-coded crop offsets, crop *after* the 1x1 score convs),
torchvision's Linear fc6, the deconvolution a bilinear interpolation must equal.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

import fcn_kernels as fk
from fcn.models import (
    FCN8s,
    FCN8sAtOnce,
    FCN16s,
    FCN32s,
    FCNUnpool,
    MODELS,
    build_model,
    bilinear_kernel,
    extract_state_dict,
    load_backbone_weights,
    load_checkpoint,
)
from fcn.models import upsample as up
from helpers import TINY_BLOCKS, ClassicFCN

FCN_ARCHS = ["fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce"]
SIZES = [(1, 1), (2, 3), (7, 5), (17, 31), (32, 32), (33, 64)]
TOL = dict(atol=1e-5, rtol=1e-4)


def assert_close_scaled(actual, expected, msg=None):
    """Float32 results of different summation orders: tolerance relative to the largest
    magnitude of the tensor (gradients sum many terms that partly cancel)."""
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, atol=1e-5 * scale, rtol=1e-4, msg=msg)


def randomize_(model, seed=0):
    """Non-trivial values everywhere (score layers included), so that comparisons test
    every layer and not only the zero-initialised head."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            fan = p[0].numel() if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) / fan**0.5)
    return model


def tiny(arch, n=5, **kw):
    kw.setdefault("upsample", "aten")
    return build_model(arch, backbone="tiny", num_classes=n, **kw)


@pytest.fixture(scope="module")
def vgg_pair():
    """ONE VGG16 FCN-8s in the classic layout (random weights) and ours, for the suite."""
    torch.manual_seed(0)
    ref = randomize_(ClassicFCN("fcn8s", n_class=3), seed=1).eval()
    ours = FCN8s(num_classes=3, backbone="vgg16", upsample="aten").eval()
    return ref, ours


# ---------------------------------------------------------------------------------------
# Output shapes
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", FCN_ARCHS + ["unpool"])
def test_output_shape_any_size_tiny(arch):
    model = tiny(arch, n=4).eval()
    with torch.no_grad():
        for h, w in SIZES:
            y = model(torch.randn(2, 3, h, w))
            assert isinstance(y, torch.Tensor) and y.shape == (2, 4, h, w), (arch, h, w, y.shape)


@pytest.mark.parametrize("arch", FCN_ARCHS)
def test_output_shape_bilinear_upscore(arch):
    model = tiny(arch, n=3, upscore="bilinear").eval()
    assert not any(n.startswith("upscore") for n, _ in model.named_parameters())
    with torch.no_grad():
        for h, w in SIZES:
            assert model(torch.randn(1, 3, h, w)).shape == (1, 3, h, w)


@pytest.mark.parametrize("backbone", ["alexnet", "googlenet"])
def test_output_shape_alexnet_googlenet(backbone):
    model = FCN32s(num_classes=2, backbone=backbone, upsample="aten").eval()
    with torch.no_grad():
        for h, w in [(1, 1), (7, 30), (33, 35)]:
            assert model(torch.randn(1, 3, h, w)).shape == (1, 2, h, w)


def test_crop_offsets_are_the_classic_ones():
    # computed from the layer geometry, must equal the port's constants
    assert tiny("fcn32s").upscore.offset == (19, 19)
    m16 = tiny("fcn16s")
    assert (m16._skip_offsets, m16.upscore16.offset, m16.upscore2.offset) == ([5], (27, 27), (0, 0))
    m8 = tiny("fcn8s")
    assert (m8._skip_offsets, m8.upscore8.offset) == ([5, 9], (31, 31))
    alex = FCN32s(backbone="alexnet", upsample="aten")
    assert alex.upscore.offset == (18, 18)
    assert alex.upscore.kernel_size == (63, 63) and alex.upscore.stride == (32, 32)
    assert alex.conv1.padding == (100, 100) and alex.conv1.stride == (4, 4)


# ---------------------------------------------------------------------------------------
# Initialisation rules
# ---------------------------------------------------------------------------------------
def test_bilinear_kernel_values():
    # known filters of the classic upsample_filt
    t4 = torch.tensor([0.25, 0.75, 0.75, 0.25])
    t3 = torch.tensor([0.5, 1.0, 0.5])
    w = bilinear_kernel(2, 4)
    assert w.shape == (2, 2, 4, 4)
    torch.testing.assert_close(w[0, 0], torch.outer(t4, t4))
    torch.testing.assert_close(w[1, 1], torch.outer(t4, t4))
    assert w[0, 1].abs().sum() == 0 and w[1, 0].abs().sum() == 0
    torch.testing.assert_close(bilinear_kernel(1, 3)[0, 0], torch.outer(t3, t3))
    # x32 kernel: interior of the upsampled constant map is the constant
    y = F.conv_transpose2d(torch.ones(1, 1, 4, 4), bilinear_kernel(1, 64), stride=32)
    torch.testing.assert_close(
        y[0, 0, 32:-32, 32:-32], torch.ones(y.shape[2] - 64, y.shape[3] - 64)
    )


@pytest.mark.parametrize("arch", FCN_ARCHS)
def test_init_rules(arch):
    model = tiny(arch, n=3)
    finals = {"fcn32s": "upscore", "fcn16s": "upscore16"}
    final = finals.get(arch, "upscore8")
    for name, m in model.named_children():
        if name.startswith("score_"):
            assert m.weight.abs().sum() == 0 and m.bias.abs().sum() == 0, name
        if name.startswith("upscore"):
            assert m.bias is None
            torch.testing.assert_close(m.weight, bilinear_kernel(3, m.kernel_size[0]))
            assert m.weight.requires_grad == (name != final), name
    assert f"{final}.weight" in model.state_dict()  # frozen, yet checkpointed
    assert model.conv1_1.weight.abs().sum() > 0  # convolutions keep their default init
    learn = tiny(arch, n=3, fixed_final_upsample=False)
    assert getattr(learn, final).weight.requires_grad
    # the frozen upsampling gets no gradient, the learnable ones do
    model.train()
    randomize_(model)
    getattr(model, final).weight.requires_grad_(False)
    model(torch.randn(1, 3, 12, 12)).sum().backward()
    assert getattr(model, final).weight.grad is None
    if arch != "fcn32s":
        assert model.upscore2.weight.grad is not None


# ---------------------------------------------------------------------------------------
# Classic port compatibility
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", FCN_ARCHS)
def test_classic_state_dict_tiny(arch, tmp_path):
    ref = randomize_(ClassicFCN(arch, n_class=4, blocks=TINY_BLOCKS, fc=64), seed=3)
    ours = tiny(arch, n=4)
    assert set(ours.state_dict()) == set(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 23, 40)
    ref.eval(), ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), **TOL)
    # train mode: same dropout draws with the same seed
    ref.train(), ours.train()
    torch.manual_seed(5)
    y_ref = ref(x)
    torch.manual_seed(5)
    y = ours(x)
    torch.testing.assert_close(y, y_ref, **TOL)
    # checkpoint file in the port's format
    path = tmp_path / "ckpt.pth.tar"
    torch.save(
        {
            "epoch": 3,
            "iteration": 100,
            "arch": "FCN",
            "optim_state_dict": {},
            "model_state_dict": ref.state_dict(),
            "best_mean_iu": 0.5,
        },
        path,
    )
    fresh = tiny(arch, n=4).eval()
    load_checkpoint(fresh, str(path))
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), ref.eval()(x), **TOL)


def test_classic_vgg16_fcn8s_loads_strictly_and_matches(vgg_pair):
    ref, ours = vgg_pair
    sd = ref.state_dict()
    assert list(ours.state_dict()) == list(sd)  # same names, same order
    load_checkpoint(ours, sd)  # a plain state_dict (files: see the tiny test)
    ours.load_state_dict(sd, strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        y = ours(x)
        torch.testing.assert_close(y, ref(x), **TOL)
    assert y.shape == (1, 3, 32, 32)


def test_checkpoint_with_numpy_entries(tmp_path):
    # the port saves best_mean_iu as a numpy float: not loadable with weights_only=True
    np = pytest.importorskip("numpy")
    ref = randomize_(ClassicFCN("fcn32s", n_class=4, blocks=TINY_BLOCKS, fc=64))
    path = tmp_path / "model_best.pth.tar"
    torch.save({"model_state_dict": ref.state_dict(), "best_mean_iu": np.float64(0.6)}, path)
    model = tiny("fcn32s", n=4)
    with pytest.raises(ValueError, match="weights_only=False"):
        load_checkpoint(model, str(path))
    load_checkpoint(model, str(path), weights_only=False)
    torch.testing.assert_close(model.score_fr.weight, ref.score_fr.weight)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(model, str(tmp_path / "nope.pth"))


def test_checkpoint_mismatch_lists_keys():
    model = tiny("fcn16s", n=4)
    sd = ClassicFCN("fcn8s", n_class=5, blocks=TINY_BLOCKS, fc=64).state_dict()
    with pytest.raises(ValueError) as e:
        load_checkpoint(model, {"model_state_dict": sd})
    msg = str(e.value)
    assert "unexpected keys" in msg and "score_pool3.weight" in msg and "upscore8.weight" in msg
    assert "missing keys" in msg and "upscore16.weight" in msg
    assert (
        "mis-shaped keys" in msg
        and "score_fr.weight: expected (4, 64, 1, 1), got (5, 64, 1, 1)" in msg
    )
    # DataParallel prefix is accepted
    ref = ClassicFCN("fcn16s", n_class=4, blocks=TINY_BLOCKS, fc=64)
    wrapped = {"module." + k: v for k, v in ref.state_dict().items()}
    load_checkpoint(model, wrapped)
    torch.testing.assert_close(model.fc6.weight, ref.fc6.weight)
    with pytest.raises(TypeError):
        extract_state_dict([1, 2])


# ---------------------------------------------------------------------------------------
# Backbone weights in torchvision format
# ---------------------------------------------------------------------------------------
def _tv_vgg16_from(ref):
    """torchvision vgg16 state_dict holding the weights of a classic-layout model."""
    convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    names = "1_1 1_2 2_1 2_2 3_1 3_2 3_3 4_1 4_2 4_3 5_1 5_2 5_3".split()
    sd = {}
    for i, n in zip(convs, names):
        m = getattr(ref, f"conv{n}")
        sd[f"features.{i}.weight"], sd[f"features.{i}.bias"] = m.weight.detach(), m.bias.detach()
    sd["classifier.0.weight"] = ref.fc6.weight.detach().reshape(4096, 25088)
    sd["classifier.0.bias"] = ref.fc6.bias.detach()
    sd["classifier.3.weight"] = ref.fc7.weight.detach().reshape(4096, 4096)
    sd["classifier.3.bias"] = ref.fc7.bias.detach()
    sd["classifier.6.weight"] = torch.zeros(1000, 4096)
    sd["classifier.6.bias"] = torch.zeros(1000)
    return sd


def test_pretrained_vgg16_conversion(vgg_pair):
    ref, ours = vgg_pair
    with torch.no_grad():
        for p in ours.parameters():
            p.zero_()
    sd = _tv_vgg16_from(ref)
    assert sd["classifier.0.weight"].shape == (4096, 25088)
    loaded = load_backbone_weights(ours, sd)
    assert "classifier.0.weight" in loaded and "features.28.bias" in loaded
    for name in ["conv1_1", "conv3_2", "conv5_3", "fc6", "fc7"]:
        torch.testing.assert_close(getattr(ours, name).weight, getattr(ref, name).weight)
        torch.testing.assert_close(getattr(ours, name).bias, getattr(ref, name).bias)
    assert ours.score_fr.weight.abs().sum() == 0  # the head is not touched
    # fc6 as a 7x7 conv computes torchvision's Linear on the flattened pool5
    pool5 = torch.randn(2, 512, 7, 7)
    with torch.no_grad():
        lin = F.linear(pool5.flatten(1), sd["classifier.0.weight"], sd["classifier.0.bias"])
        torch.testing.assert_close(ours.fc6(pool5).flatten(1), lin, atol=1e-4, rtol=1e-4)
    ours.load_state_dict(ref.state_dict())  # restore for other users of the fixture


@pytest.fixture(scope="module")
def alexnet_tv():
    g = torch.Generator().manual_seed(7)
    shapes = {
        "features.0": (64, 3, 11, 11),
        "features.3": (192, 64, 5, 5),
        "features.6": (384, 192, 3, 3),
        "features.8": (256, 384, 3, 3),
        "features.10": (256, 256, 3, 3),
        "classifier.1": (4096, 9216),
        "classifier.4": (4096, 4096),
        "classifier.6": (1000, 4096),
    }
    sd = {}
    for k, s in shapes.items():
        sd[k + ".weight"] = torch.randn(s, generator=g) * 0.01
        sd[k + ".bias"] = torch.randn(s[0], generator=g)
    return sd


def test_pretrained_alexnet_conversion(alexnet_tv):
    model = FCN32s(num_classes=2, backbone="alexnet", upsample="aten", pretrained=alexnet_tv)
    for ours, tv in [("conv1", "features.0"), ("conv2", "features.3"), ("conv5", "features.10")]:
        torch.testing.assert_close(getattr(model, ours).weight, alexnet_tv[tv + ".weight"])
        torch.testing.assert_close(getattr(model, ours).bias, alexnet_tv[tv + ".bias"])
    assert model.fc6.weight.shape == (4096, 256, 6, 6)
    pool5 = torch.randn(1, 256, 6, 6)
    with torch.no_grad():
        lin = F.linear(
            pool5.flatten(1), alexnet_tv["classifier.1.weight"], alexnet_tv["classifier.1.bias"]
        )
        torch.testing.assert_close(model.fc6(pool5).flatten(1), lin, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model.fc7.weight.flatten(1), alexnet_tv["classifier.4.weight"])
    # a wrong file: names every mismatched key
    bad = dict(alexnet_tv)
    bad["classifier.1.weight"] = torch.zeros(4096, 100)
    del bad["features.3.bias"]
    bad["features.99.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as e:
        load_backbone_weights(model, bad)
    msg = str(e.value)
    assert "features.3.bias" in msg and "features.99.weight" in msg
    assert "classifier.1.weight: expected (4096, 9216), got (4096, 100)" in msg


def test_pretrained_errors_and_unpool(alexnet_tv, tmp_path):
    with pytest.raises(ValueError, match="backbones"):
        tiny("fcn32s", pretrained={"features.0.weight": torch.zeros(1)})
    # a vgg16-shaped unpool model takes the convs and ignores the classifier
    convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    chans = [
        (3, 64),
        (64, 64),
        (64, 128),
        (128, 128),
        (128, 256),
        (256, 256),
        (256, 256),
        (256, 512),
        (512, 512),
        (512, 512),
        (512, 512),
        (512, 512),
        (512, 512),
    ]
    sd = {}
    for i, (ci, co) in zip(convs, chans):
        sd[f"features.{i}.weight"] = torch.randn(co, ci, 3, 3) * 0.01
        sd[f"features.{i}.bias"] = torch.randn(co)
    sd["classifier.6.weight"] = torch.zeros(1000, 4096)  # the ImageNet classifier: ignored
    path = tmp_path / "vgg16_features.pth"
    torch.save(sd, path)
    model = FCNUnpool(num_classes=3, backbone="vgg16", upsample="aten", pretrained=str(path))
    torch.testing.assert_close(model.conv4_2.weight, sd["features.19.weight"])
    with pytest.raises(ValueError, match="missing keys"):  # alexnet file into a vgg16 model
        load_backbone_weights(model, alexnet_tv)


# ---------------------------------------------------------------------------------------
# Staged initialisation
# ---------------------------------------------------------------------------------------
def test_copy_params_from_staged():
    m32 = randomize_(tiny("fcn32s", n=3), seed=1)
    m16 = tiny("fcn16s", n=3)
    copied = m16.copy_params_from(m32)
    assert set(copied) == {
        "conv1_1",
        "conv2_1",
        "conv3_1",
        "conv4_1",
        "conv5_1",
        "fc6",
        "fc7",
        "score_fr",
    }
    for n in copied:
        torch.testing.assert_close(getattr(m16, n).weight, getattr(m32, n).weight)
    torch.testing.assert_close(m16.upscore16.weight, bilinear_kernel(3, 32))  # own init kept
    randomize_(m16, seed=2)
    m8 = FCN8s(num_classes=3, backbone="tiny", upsample="aten")
    copied = m8.copy_params_from(m16)
    assert {"score_pool4", "upscore2", "fc7"} <= set(copied) and "upscore16" not in copied
    torch.testing.assert_close(m8.upscore2.weight, m16.upscore2.weight)
    torch.testing.assert_close(m8.score_pool4.bias, m16.score_pool4.bias)
    with pytest.raises(ValueError, match="shapes differ"):
        tiny("fcn16s", n=5).copy_params_from(m32)


# ---------------------------------------------------------------------------------------
# Upsampling functions: the bilinear head equals the bilinear deconvolution inside
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "k,s,off",
    [(64, 32, 19), (4, 2, 0), (32, 16, 27), (16, 8, 31), (63, 32, 18), (63, 32, 98), (4, 2, 5)],
)
def test_bilinear_crop_equals_bilinear_deconv_inside(k, s, off):
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    full = [fk.deconv_full_size(n, k, s) for n in x.shape[2:]]
    size = (full[0] - off - 1, full[1] - off)
    ref = F.conv_transpose2d(x, bilinear_kernel(3, k, torch.float64), stride=s)
    ref = ref[:, :, off : off + size[0], off : off + size[1]]
    y = up.bilinear_crop(x, k, s, off, size, mode="aten")
    assert y.shape == ref.shape
    # interior: output o sits at input coordinate (o + off - c) / s, c the kernel centre
    c = (k - 1) / 2
    inside = []
    for n, sz in zip(x.shape[2:], size):
        u = (torch.arange(sz, dtype=torch.float64) + off - c) / s
        inside.append((u >= 0) & (u <= n - 1))
    mask = inside[0][:, None] & inside[1][None, :]
    assert mask.sum() > 10
    torch.testing.assert_close(y[..., mask], ref[..., mask])
    # outside, the interpolation repeats the edge: value within the input's range
    assert y.min() >= x.min() - 1e-12 and y.max() <= x.max() + 1e-12


def test_crop_and_conv_transpose_crop_errors():
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match="does not fit"):
        up.crop(x, 3, 2)
    with pytest.raises(ValueError, match="does not fit"):
        up.conv_transpose_crop(x, bilinear_kernel(2, 4), None, 2, offset=1, size=10, mode="aten")
    with pytest.raises(ValueError, match="upsample must be one of"):
        up.conv_transpose_crop(x, bilinear_kernel(2, 4), None, 2, mode="cuda")
    y = up.conv_transpose_crop(x, bilinear_kernel(2, 4), None, 2, offset=(1, 2), mode="aten")
    torch.testing.assert_close(
        y, F.conv_transpose2d(x, bilinear_kernel(2, 4), stride=2)[:, :, 1:, 2:]
    )


def test_max_unpool_aten_puts_values_at_switches():
    x = torch.randn(2, 3, 7, 9)
    p, idx = F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)
    y = up.max_unpool(p, idx, 2, 2, output_size=(7, 9), mode="aten")
    assert y.shape == x.shape
    flat = y.flatten(2)
    torch.testing.assert_close(flat.gather(2, idx.flatten(2)), p.flatten(2))
    assert (y != 0).sum() == p.numel()


# ---------------------------------------------------------------------------------------
# Max-unpooling decoder
# ---------------------------------------------------------------------------------------
def test_unpool_variant_backward():
    model = tiny("unpool", n=3).train()
    assert isinstance(model, FCNUnpool) and model.conv1_1.padding == (1, 1)
    x = torch.randn(2, 3, 19, 26, requires_grad=True)
    y = model(x)
    assert y.shape == (2, 3, 19, 26)
    F.cross_entropy(y, torch.randint(0, 3, (2, 19, 26))).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_three_upsampling_methods_train_on_same_data():
    """One SGD step each for learnable deconv, fixed bilinear and max-unpooling heads."""
    x = torch.randn(2, 3, 24, 24)
    target = torch.randint(0, 3, (2, 24, 24))
    for model in [tiny("fcn8s", n=3), tiny("fcn8s", n=3, upscore="bilinear"), tiny("unpool", n=3)]:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.1)
        before = [p.detach().clone() for p in params]
        loss = F.cross_entropy(model(x), target)
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
        assert any(not torch.equal(b, p) for b, p in zip(before, params))


# ---------------------------------------------------------------------------------------
# fused == aten (fcn_kernels operators vs the ATen composition)
# ---------------------------------------------------------------------------------------
def _compare_fused_aten(model, x, train):
    """Same weights, same dropout draws: outputs and all gradients agree."""
    model.set_upsample("aten")
    results = []
    for mode in ("aten", "fused"):
        model.set_upsample(mode)
        model.train(train)
        model.zero_grad()
        xi = x.clone().requires_grad_(True)
        torch.manual_seed(11)
        y = model(xi)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((y.detach(), xi.grad, grads))
    (ya, ga, pa), (yf, gf, pf) = results
    assert_close_scaled(yf, ya)
    assert_close_scaled(gf, ga)
    assert pa.keys() == pf.keys()
    for n in pa:
        assert_close_scaled(pf[n], pa[n], msg=n)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("arch", FCN_ARCHS)
def test_fused_equals_aten_deconv(arch, train):
    model = randomize_(tiny(arch, n=4), seed=4)
    _compare_fused_aten(model, torch.randn(2, 3, 21, 30), train)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("arch", FCN_ARCHS)
def test_fused_equals_aten_bilinear_upscore(arch, train):
    model = randomize_(tiny(arch, n=4, upscore="bilinear"), seed=4)
    _compare_fused_aten(model, torch.randn(2, 3, 21, 30), train)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_fused_equals_aten_unpool(train):
    model = tiny("unpool", n=4)
    _compare_fused_aten(model, torch.randn(2, 3, 21, 30), train)


@pytest.mark.parametrize("backbone", ["alexnet", "googlenet"])
def test_fused_equals_aten_other_backbones(backbone):
    model = FCN32s(num_classes=3, backbone=backbone, upsample="aten")
    randomize_(model.score_fr)
    _compare_fused_aten(model, torch.randn(1, 3, 13, 18), train=True)


def test_fused_vgg16_matches_classic(vgg_pair):
    ref, ours = vgg_pair
    ours.load_state_dict(ref.state_dict())
    ours.set_upsample("fused")
    try:
        x = torch.randn(1, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), ref(x), **TOL)
    finally:
        ours.set_upsample("aten")


def test_fused_is_default():
    assert FCN8s(num_classes=2, backbone="tiny").upscore8.upsample == "fused"


# ---------------------------------------------------------------------------------------
# torch.compile, ONNX
# ---------------------------------------------------------------------------------------
def test_torch_compile_fullgraph_all_archs():
    torch._dynamo.reset()
    x = torch.randn(1, 3, 20, 27)
    for arch in FCN_ARCHS + ["unpool"]:
        model = randomize_(tiny(arch, n=3)).eval()
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), **TOL)


def test_torch_compile_fused_fullgraph():
    torch._dynamo.reset()
    model = randomize_(tiny("fcn8s", n=3), seed=2).eval().set_upsample("fused")
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(1, 3, 20, 27)
    with torch.no_grad():
        assert_close_scaled(compiled(x), model.set_upsample("aten")(x))


def test_torch_compile_inductor_backward():
    # inductor (C++ codegen) on the smallest graph: ~10 s on 2 cores
    torch._dynamo.reset()
    model = randomize_(tiny("fcn32s", n=3)).eval()
    ref = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(1, 3, 20, 27)
    y = compiled(x)
    y_ref = ref(x)
    torch.testing.assert_close(y, y_ref, **TOL)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    torch.testing.assert_close(
        model.conv1_1.weight.grad, ref.conv1_1.weight.grad, atol=1e-4, rtol=1e-3
    )


def test_torch_export_aten():
    # torch.export is what torch.onnx.export (dynamo exporter) traces first
    model = randomize_(tiny("fcn8s", n=3)).eval()
    x = torch.randn(1, 3, 20, 27)
    ep = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x), **TOL)


def test_onnx_export_aten(tmp_path):
    pytest.importorskip(
        "onnx", reason="onnx is not installed here; ONNX export is untested (see docs/models.md)"
    )
    pytest.importorskip(
        "onnxscript", reason="onnxscript (torch.onnx's dynamo exporter) is not installed"
    )
    import onnx
    from onnx.reference import ReferenceEvaluator

    model = tiny("fcn8s", n=3).eval()
    with torch.no_grad():  # non-zero score layers, so the comparison is not trivial
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) and m.weight.abs().sum() == 0:
                m.weight.normal_(0, 0.1)
    path = tmp_path / "fcn8s.onnx"
    x = torch.randn(1, 3, 32, 32)
    torch.onnx.export(model, (x,), str(path))
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    # Run the exported graph with ONNX's own reference interpreter (independent of torch).
    (out,) = ReferenceEvaluator(proto).run(None, {proto.graph.input[0].name: x.numpy()})
    with torch.no_grad():
        expected = model(x)
    assert out.shape == tuple(expected.shape)
    torch.testing.assert_close(torch.from_numpy(out), expected, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------
def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown backbone 'resnet'"):
        FCN32s(backbone="resnet", upsample="aten")
    with pytest.raises(ValueError, match="unknown model"):
        build_model("fcn4s", backbone="tiny", upsample="aten")
    for cls in (FCN16s, FCN8s, FCN8sAtOnce):
        for bb in ("alexnet", "googlenet"):
            with pytest.raises(
                ValueError, match=f"backbone '{bb}' does not provide; with '{bb}' use fcn32s"
            ):
                cls(backbone=bb, upsample="aten")
    with pytest.raises(ValueError, match="FCNUnpool supports"):
        FCNUnpool(backbone="alexnet", upsample="aten")
    with pytest.raises(ValueError, match="upsample must be one of"):
        tiny("fcn8s", upsample="cudnn")
    with pytest.raises(ValueError, match="upscore must be one of"):
        tiny("fcn8s", upscore="nearest")
    with pytest.raises(ValueError, match="num_classes"):
        tiny("fcn8s", n=0)
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        tiny("fcn32s")(torch.randn(1, 4, 8, 8))
    assert set(MODELS) == {"fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce", "unpool"}
