"""FCN-32s, FCN-16s, FCN-8s and FCN-8s at-once (Long, Shelhamer & Darrell, 2015).

With the VGG16 backbone the module names, shapes and crop offsets are those of the
classic PyTorch port (wkentaro/pytorch-fcn), so its checkpoints load with
``load_state_dict(strict=True)`` and give the same outputs.
"""

import torch
from torch import nn

from . import upsample as up
from .backbones import Coord, build_backbone, crop_offset

UPSCORES = ("deconv", "bilinear")


class _FCN(nn.Module):
    """Shared machinery: backbone layers registered on the model itself, score layers,
    upsampling modules that all dispatch on ``upsample`` ("fused" | "aten")."""

    skip_names = ()  # skip layers used, deepest first: ("pool4", "pool3")
    skip_scales = ()  # input scaling of each skip (FCN-8s at-once)
    arch = "fcn"

    def __init__(
        self,
        num_classes=21,
        backbone="vgg16",
        upsample="fused",
        upscore="deconv",
        fixed_final_upsample=True,
        pretrained=None,
    ):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if upscore not in UPSCORES:
            raise ValueError(f"upscore must be one of {UPSCORES}, got {upscore!r}")
        spec = build_backbone(backbone)
        missing = [s for s in self.skip_names if s not in spec.skips]
        if missing:
            have = [n for n, c in MODELS.items() if all(s in spec.skips for s in c.skip_names)]
            raise ValueError(
                f"{type(self).__name__} needs the {'/'.join(missing)} skip layer(s), which backbone "
                f"{backbone!r} does not provide; with {backbone!r} use {', '.join(have)}"
            )
        self.num_classes = num_classes
        self.backbone = backbone
        self.upscore_kind = upscore
        self.fixed_final_upsample = fixed_final_upsample
        self.upsample = up.check_mode(upsample)
        self._layer_names = list(spec.layers)
        self._skip_layers = {spec.skips[s][0]: s for s in self.skip_names}
        for name, m in spec.layers.items():
            self.add_module(name, m)
        self._build_head(spec, spec.coords())
        self.reset_head()
        if pretrained is not None:
            from .weights import load_backbone_weights

            load_backbone_weights(self, pretrained)

    # -- construction ------------------------------------------------------
    def _upscore(self, k, s, offset):
        n = self.num_classes
        if self.upscore_kind == "deconv":
            return up.UpscoreCrop(n, n, k, s, offset, bias=False, upsample=self.upsample)
        return up.BilinearCrop(k, s, offset, upsample=self.upsample)

    def _build_head(self, spec, coords):
        n = self.num_classes
        score_coord = coords[self._layer_names[-1]]
        self.score_fr = nn.Conv2d(spec.out_channels, n, 1)
        if not self.skip_names:  # FCN-32s
            k = spec.final_kernel_32
            off = crop_offset(score_coord.deconv(k, 32), Coord())
            self.upscore = self._upscore(k, 32, off)
            self._final = "upscore"
            self._skip_offsets = []
            self._skip_ups = []
            return
        # h = upscore2(score_fr) (+ crop of score_pool4) -> upscore_pool4 (+ pool3) -> final.
        # Modules are registered in the classic port's order (score_fr, score_pool3,
        # score_pool4, upscore2, upscore8/16, upscore_pool4): same state_dict order.
        skip_up = {"pool4": "upscore2", "pool3": "upscore_pool4"}
        self._skip_ups, self._skip_offsets = [], []
        h = score_coord
        for skip in self.skip_names:
            h = h.deconv(4, 2)
            self._skip_ups.append(skip_up[skip])
            self._skip_offsets.append(crop_offset(coords[spec.skips[skip][0]], h))
        for skip in reversed(self.skip_names):
            setattr(self, f"score_{skip}", nn.Conv2d(spec.skips[skip][1], n, 1))
        self.upscore2 = self._upscore(4, 2, 0)
        stride = int(h.a)
        k = 2 * stride
        self._final = {16: "upscore16", 8: "upscore8"}[stride]
        setattr(
            self, self._final, self._upscore(k, stride, crop_offset(h.deconv(k, stride), Coord()))
        )
        if "pool3" in self.skip_names:
            self.upscore_pool4 = self._upscore(4, 2, 0)

    @torch.no_grad()
    def reset_head(self):
        """FCN initialisation: score layers zero, deconvolutions bilinear, the final
        upsampling frozen (``fixed_final_upsample``)."""
        for name, m in self.named_children():
            if name.startswith("score_"):
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, up.UpscoreCrop):
                m.weight.copy_(up.bilinear_kernel(m.in_channels, m.kernel_size[0], m.weight.dtype))
        final = getattr(self, self._final)
        if isinstance(final, up.UpscoreCrop):
            final.weight.requires_grad_(not self.fixed_final_upsample)

    # -- switches ----------------------------------------------------------
    def set_upsample(self, mode):
        """Switch every upsampling/crop between "fused" (fcn_kernels) and "aten"."""
        self.upsample = up.check_mode(mode)
        for m in self.modules():
            if isinstance(m, (up.UpscoreCrop, up.BilinearCrop)):
                m.upsample = mode
        return self

    @property
    def upsample_modules(self):
        return [getattr(self, n) for n in self._skip_ups + [self._final]]

    # -- forward -----------------------------------------------------------
    def _features(self, x):
        taps = {}
        for name in self._layer_names:
            x = self._modules[name](x)
            if name in self._skip_layers:
                taps[self._skip_layers[name]] = x
        return x, taps

    def forward(self, x):
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"input must be N x 3 x H x W, got shape {tuple(x.shape)}")
        size = x.shape[2:]
        feat, taps = self._features(x)
        h = self.score_fr(feat)
        for skip, up_name, off, scale in zip(
            self.skip_names, self._skip_ups, self._skip_offsets, self.skip_scales
        ):
            h = self._modules[up_name](h)
            # Cropping the pool map before the 1x1 score conv equals cropping its output
            # (the classic port's order) and is cheaper.
            pool = up.crop(taps[skip], off, h.shape[2:])
            if scale != 1:
                pool = pool * scale
            h = h + self._modules[f"score_{skip}"](pool)
        return self._modules[self._final](h, size)

    # -- staged training ----------------------------------------------------
    @torch.no_grad()
    def copy_params_from(self, other: nn.Module):
        """Staged initialisation (FCN-16s from a trained FCN-32s, FCN-8s from FCN-16s):
        copy the parameters of every direct child of `other` that this model has under
        the same name with the same shapes. Returns the copied child names."""
        mine = dict(self.named_children())
        copied, bad = [], []
        for name, m in other.named_children():
            target = mine.get(name)
            params = dict(m.named_parameters(recurse=True))
            if target is None or not params:
                continue
            tparams = dict(target.named_parameters(recurse=True))
            if set(tparams) != set(params) or any(
                tparams[k].shape != params[k].shape for k in params
            ):
                bad.append(
                    f"{name}: {[tuple(p.shape) for p in params.values()]} vs "
                    f"{[tuple(p.shape) for p in tparams.values()]}"
                )
                continue
            for k, p in params.items():
                tparams[k].copy_(p)
            copied.append(name)
        if bad:
            raise ValueError(
                "copy_params_from: parameter shapes differ (different backbone or "
                "num_classes?): " + "; ".join(bad)
            )
        if not copied:
            raise ValueError(
                f"copy_params_from: {type(other).__name__} shares no layer with "
                f"{type(self).__name__}"
            )
        return copied


class FCN32s(_FCN):
    """FCN-32s: score_fr upsampled x32 in one step (``upscore``, crop 19 for VGG16)."""

    arch = "fcn32s"


class FCN16s(_FCN):
    """FCN-16s: x2 (``upscore2``) + ``score_pool4`` (crop 5), then x16 (``upscore16``, crop 27)."""

    arch = "fcn16s"
    skip_names = ("pool4",)
    skip_scales = (1,)


class FCN8s(_FCN):
    """FCN-8s: as FCN-16s, then x2 (``upscore_pool4``) + ``score_pool3`` (crop 9), then x8
    (``upscore8``, crop 31)."""

    arch = "fcn8s"
    skip_names = ("pool4", "pool3")
    skip_scales = (1, 1)


class FCN8sAtOnce(FCN8s):
    """FCN-8s trained in one stage: pool4 scaled by 0.01 and pool3 by 0.0001 before scoring."""

    arch = "fcn8s-atonce"
    skip_scales = (0.01, 0.0001)


MODELS = {"fcn32s": FCN32s, "fcn16s": FCN16s, "fcn8s": FCN8s, "fcn8s-atonce": FCN8sAtOnce}
