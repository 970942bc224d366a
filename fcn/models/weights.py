"""Loading weights: checkpoints of the classic PyTorch port, torchvision backbones.

No network access: everything is read from a local file (or an in-memory dict).
"""

import os
from collections import OrderedDict

import torch
from torch import nn

# torchvision layouts: index of each conv in `features`, of fc6/fc7 in `classifier`.
_TV_VGG16_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
_TV_VGG16_NAMES = [
    "conv1_1",
    "conv1_2",
    "conv2_1",
    "conv2_2",
    "conv3_1",
    "conv3_2",
    "conv3_3",
    "conv4_1",
    "conv4_2",
    "conv4_3",
    "conv5_1",
    "conv5_2",
    "conv5_3",
]
_TV = {
    "vgg16": (
        dict(zip(_TV_VGG16_NAMES, (f"features.{i}" for i in _TV_VGG16_CONVS))),
        {"fc6": "classifier.0", "fc7": "classifier.3"},
        "classifier.6",
    ),
    "alexnet": (
        {
            "conv1": "features.0",
            "conv2": "features.3",
            "conv3": "features.6",
            "conv4": "features.8",
            "conv5": "features.10",
        },
        {"fc6": "classifier.1", "fc7": "classifier.4"},
        "classifier.6",
    ),
}


def _read(source, weights_only=True):
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"no weights file at {source!r}")
        try:
            return torch.load(source, map_location="cpu", weights_only=weights_only)
        except Exception as e:  # unpickling a non-tensor object with weights_only
            if weights_only:
                raise ValueError(
                    f"cannot read {source!r} with weights_only=True ({e}); if you trust the "
                    "file, pass weights_only=False"
                ) from e
            raise
    return source


def extract_state_dict(obj):
    """The state_dict in a checkpoint: a plain state_dict, or a dict holding it under
    ``model_state_dict`` (classic port) or ``state_dict``. A ``module.`` prefix
    (DataParallel / DDP) is removed."""
    if not isinstance(obj, dict):
        raise TypeError(f"expected a state_dict or a checkpoint dict, got {type(obj).__name__}")
    for key in ("model_state_dict", "state_dict"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"no tensors found in the checkpoint (keys: {sorted(obj)[:10]})")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return OrderedDict(tensors)


def _mismatch_report(expected: dict, given: dict, ignore=()):
    """missing, unexpected, mis-shaped keys of `given` against `expected` (name -> shape)."""
    missing = sorted(k for k in expected if k not in given)
    unexpected = sorted(k for k in given if k not in expected and k not in ignore)
    misshaped = sorted(
        f"{k}: expected {tuple(expected[k])}, got {tuple(given[k].shape)}"
        for k in expected
        if k in given and tuple(given[k].shape) != tuple(expected[k])
    )
    return missing, unexpected, misshaped


def _format(what, missing, unexpected, misshaped):
    parts = [what]
    if missing:
        parts.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if misshaped:
        parts.append(f"mis-shaped keys ({len(misshaped)}): {'; '.join(misshaped)}")
    return "\n  ".join(parts)


def load_checkpoint(model: nn.Module, checkpoint, strict=True, weights_only=True):
    """Load a checkpoint (path or object) of the classic port, or of this package, into
    `model`: a plain state_dict or a dict with it under ``model_state_dict``.
    With ``strict=True`` any missing, unexpected or mis-shaped key raises a ValueError
    listing them all; ``strict=False`` loads the keys that match and returns the
    ``(missing, unexpected, misshaped)`` lists."""
    sd = extract_state_dict(_read(checkpoint, weights_only))
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing, unexpected, misshaped = _mismatch_report(expected, sd)
    if strict and (missing or unexpected or misshaped):
        raise ValueError(
            _format(
                f"checkpoint does not match {type(model).__name__}:", missing, unexpected, misshaped
            )
        )
    bad = {m.split(":")[0] for m in misshaped}
    load = {k: v for k, v in sd.items() if k in expected and k not in bad}
    model.load_state_dict(load, strict=strict)
    return missing, unexpected, misshaped


def load_backbone_weights(model: nn.Module, source, weights_only=True):
    """Convert a local torchvision-format ``vgg16`` / ``alexnet`` state_dict
    (``features.N.*``, ``classifier.N.*``) into the backbone of `model`, reshaping the
    fully connected fc6/fc7 into convolutions (VGG16 fc6 4096x25088 -> 4096x512x7x7,
    AlexNet 4096x9216 -> 4096x256x6x6; fc7 -> 1x1). The 1000-class classifier is
    ignored. Mismatches raise a ValueError listing the keys. Returns the loaded names."""
    backbone = getattr(model, "backbone", None)
    if backbone not in _TV:
        raise ValueError(
            f"pretrained weights convert only for backbones {sorted(_TV)}; "
            f"this model's backbone is {backbone!r}"
        )
    sd = extract_state_dict(_read(source, weights_only))
    convs, fcs, final = _TV[backbone]
    children = dict(model.named_children())
    # expected torchvision key -> (our module, torchvision shape)
    expected, targets = {}, {}
    fcs_present = {n: t for n, t in fcs.items() if n in children}
    for ours, tv in list(convs.items()) + list(fcs_present.items()):
        m = children[ours]
        wshape = tuple(m.weight.shape)
        if ours in fcs:  # a Linear in torchvision
            wshape = (wshape[0], wshape[1] * wshape[2] * wshape[3])
        expected[f"{tv}.weight"] = wshape
        expected[f"{tv}.bias"] = tuple(m.bias.shape)
        targets[f"{tv}.weight"] = m.weight
        targets[f"{tv}.bias"] = m.bias
    ignore = {f"{final}.weight", f"{final}.bias"}
    if not fcs_present:  # e.g. the unpool model: the classifier is not used
        ignore |= {f"{t}.{p}" for t in fcs.values() for p in ("weight", "bias")}
    missing, unexpected, misshaped = _mismatch_report(expected, sd, ignore)
    if missing or unexpected or misshaped:
        raise ValueError(
            _format(
                f"not a torchvision {backbone} state_dict for this model:",
                missing,
                unexpected,
                misshaped,
            )
        )
    with torch.no_grad():
        for k, p in targets.items():
            p.copy_(sd[k].reshape(p.shape).to(p.dtype))
    return sorted(targets)
