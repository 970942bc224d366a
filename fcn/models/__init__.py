"""FCN models on fcn_kernels' upsampling operators.

    from fcn.models import FCN8s, build_model
    model = FCN8s(num_classes=21, backbone="vgg16", upsample="fused")
    model = build_model("fcn8s", backbone="tiny", num_classes=5, upsample="aten")

``upsample="fused"`` (default) runs every upsampling/crop through ``fcn_kernels``,
``"aten"`` through the plain ATen composition; outputs agree to rounding.
"""

from .backbones import BACKBONES, Coord, build_backbone, crop_offset
from .fcn import FCN8s, FCN8sAtOnce, FCN16s, FCN32s, MODELS as _FCN_MODELS, UPSCORES
from .unpool import FCNUnpool, UNPOOL_BACKBONES
from .upsample import MODES as UPSAMPLE_MODES, bilinear_kernel
from .weights import extract_state_dict, load_backbone_weights, load_checkpoint

MODELS = dict(_FCN_MODELS, unpool=FCNUnpool)


def build_model(
    arch="fcn8s", backbone="vgg16", num_classes=21, upsample="fused", pretrained=None, **kw
):
    """Build `arch` (one of MODELS: fcn32s, fcn16s, fcn8s, fcn8s-atonce, unpool).
    `pretrained`: path (or state_dict) of torchvision-format backbone weights.
    Extra keywords (upscore, fixed_final_upsample) go to the FCN constructors."""
    if arch not in MODELS:
        raise ValueError(f"unknown model {arch!r}; choose one of {sorted(MODELS)}")
    return MODELS[arch](
        num_classes=num_classes, backbone=backbone, upsample=upsample, pretrained=pretrained, **kw
    )


__all__ = [
    "FCN32s",
    "FCN16s",
    "FCN8s",
    "FCN8sAtOnce",
    "FCNUnpool",
    "MODELS",
    "BACKBONES",
    "UNPOOL_BACKBONES",
    "UPSCORES",
    "UPSAMPLE_MODES",
    "build_model",
    "bilinear_kernel",
    "load_checkpoint",
    "load_backbone_weights",
    "extract_state_dict",
    "build_backbone",
    "Coord",
    "crop_offset",
]
