"""Third-party segmentation models in small configurations with random weights (no
downloads), for tests/test_fuse_thirdparty.py and benches/bench_fuse_models.py.

``MODELS`` maps a name to (package, builder); a builder takes the class count and returns
the model. Missing packages: ``available(name)`` is False and ``missing(name)`` says why.
"""

import importlib.util

from torch import nn


def _resnet18_features():
    from torchvision.models import resnet18
    from torchvision.models._utils import IntermediateLayerGetter

    # torchvision's FCN/DeepLabV3 use a dilated ResNet-50; ResNet-18's basic blocks take
    # no dilation, so this backbone has output stride 32 (FCN's own).
    return IntermediateLayerGetter(resnet18(weights=None), {"layer4": "out"})


def tv_fcn(n):
    from torchvision.models.segmentation.fcn import FCN, FCNHead

    return FCN(_resnet18_features(), FCNHead(512, n))


def tv_deeplabv3(n):
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3

    return DeepLabV3(_resnet18_features(), DeepLabHead(512, n))


def tv_lraspp(n):
    from torchvision.models import mobilenet_v3_small
    from torchvision.models.segmentation.lraspp import _lraspp_mobilenetv3

    # lraspp_mobilenet_v3_large's construction on the small MobileNetV3 (quicker capture)
    return _lraspp_mobilenetv3(mobilenet_v3_small(weights=None, dilated=True), n)


def _smp(arch):
    def build(n):
        import segmentation_models_pytorch as smp

        return getattr(smp, arch)("resnet18", encoder_weights=None, classes=n)

    return build


MODELS = {
    "torchvision FCN (ResNet-18)": ("torchvision", tv_fcn),
    "torchvision DeepLabV3 (ResNet-18)": ("torchvision", tv_deeplabv3),
    "torchvision LR-ASPP (MobileNetV3-S)": ("torchvision", tv_lraspp),
    "smp Unet (ResNet-18)": ("segmentation_models_pytorch", _smp("Unet")),
    "smp FPN (ResNet-18)": ("segmentation_models_pytorch", _smp("FPN")),
    "smp PAN (ResNet-18)": ("segmentation_models_pytorch", _smp("PAN")),
}


def missing(package):
    """Why a package's models cannot run here (None if they can)."""
    if importlib.util.find_spec(package) is None:
        return f"{package} is not installed (pip install -r requirements.txt)"
    return None


def build(name, n_class=3) -> nn.Module:
    return MODELS[name][1](n_class)


def outputs(out):
    """A model's outputs as a list of tensors (torchvision returns a dict)."""
    return list(out.values()) if isinstance(out, dict) else [out]
