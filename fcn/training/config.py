"""Training configuration: :class:`TrainConfig`, the default learning rates and the
stage order.

    from fcn.training import TrainConfig, train
    result = train(TrainConfig(arch="fcn8s", backbone="tiny", staged=True, epochs=5))

Learning rates (see docs/training.md). With the pixel-averaged loss (``loss="mean"``,
the default) and momentum 0.9 the defaults are the paper's fixed rates: AlexNet 1e-3,
VGG16 1e-4, GoogLeNet 1e-5 (tiny, trained from scratch: 0.1). With ``loss="sum"``
(the per-image sum of pixel losses, as the Caffe models and the classic PyTorch port
use) the defaults are the port's: lr 1e-10, momentum 0.99, batch 1. The two agree
when ``lr_mean ~= lr_sum * pixels_per_image * (1 - 0.9) / (1 - 0.99)``: a 500x375 VOC
image has ~1.9e5 pixels, so 1e-10 on the sum ~ 1.9e-4 on the mean with momentum 0.9.
"""

from dataclasses import dataclass

__all__ = ["TrainConfig", "default_lr", "default_momentum", "stages_for", "STAGE_ORDER"]

# pixel-averaged loss, momentum 0.9 (FCN paper, section 4.1; tiny: tuned for the demo)
MEAN_LOSS_LR = {"alexnet": 1e-3, "vgg16": 1e-4, "googlenet": 1e-5, "tiny": 0.1}
SUM_LOSS_LR = 1e-10  # classic port: summed loss, batch 1
SUM_LOSS_MOMENTUM = 0.99
MEAN_LOSS_MOMENTUM = 0.9
STAGE_ORDER = ("fcn32s", "fcn16s", "fcn8s")


def default_lr(backbone, loss="mean"):
    if loss == "sum":
        return SUM_LOSS_LR
    return MEAN_LOSS_LR.get(backbone, 1e-4)


def default_momentum(loss="mean"):
    return SUM_LOSS_MOMENTUM if loss == "sum" else MEAN_LOSS_MOMENTUM


@dataclass
class TrainConfig:
    arch: str = "fcn8s"  # fcn32s | fcn16s | fcn8s | fcn8s-atonce | unpool
    backbone: str = "tiny"  # vgg16 | alexnet | googlenet | tiny
    upsample: str = "fused"  # fused (fcn_kernels) | aten
    staged: bool = False  # train fcn32s -> fcn16s -> ... -> arch, each from the last
    init_from: str = None  # checkpoint to initialise from (copy_params_from)
    pretrained: str = None  # torchvision-format backbone weights (vgg16/alexnet)
    data: str = "synthetic"  # "synthetic" or a VOC-layout folder
    train_split: str = "train"
    val_split: str = "val"
    size: int = 64  # synthetic image size
    num_train: int = None  # synthetic: number of train images (default 256)
    num_val: int = None  # synthetic: number of val images (default 64)
    data_seed: int = 0  # synthetic: which images
    num_classes: int = None  # VOC folder: number of classes (default 21)
    norm: str = "torchvision"  # input normalisation: torchvision | caffe
    epochs: int = 10  # per stage
    max_steps: int = None  # per stage: stop after this many optimizer steps
    batch_size: int = 8  # per process
    lr: float = None  # default: default_lr(backbone, loss)
    momentum: float = None  # default: 0.9 (mean loss) / 0.99 (sum loss)
    weight_decay: float = 5e-4
    loss: str = "mean"  # mean: averaged over labelled pixels; sum: summed per image
    dropout: bool = True  # keep the backbone's fc6/fc7 dropout
    flip: bool = False  # random horizontal flips
    seed: int = 0
    deterministic: bool = False
    amp: bool = None  # default: on for CUDA
    device: str = "auto"
    out: str = "runs/fcn"
    resume: bool = False
    quiet: bool = False
    num_workers: int = 0
    eval_every: int = 1  # evaluate every N epochs (and always after the last)

    def check(self):
        from ..models import BACKBONES, MODELS, UPSAMPLE_MODES

        if self.arch not in MODELS:
            raise ValueError(f"arch must be one of {sorted(MODELS)}, got {self.arch!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {self.upsample!r}")
        if self.loss not in ("mean", "sum"):
            raise ValueError(f"loss must be 'mean' or 'sum', got {self.loss!r}")
        if self.staged and self.arch not in ("fcn16s", "fcn8s"):
            raise ValueError(f"staged training ends at fcn16s or fcn8s, not {self.arch!r}")
        if self.staged and self.init_from:
            raise ValueError("give either staged or init_from, not both")
        for name in ("epochs", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.momentum is not None and not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        return self

    @property
    def effective_lr(self):
        return self.lr if self.lr is not None else default_lr(self.backbone, self.loss)

    @property
    def effective_momentum(self):
        return self.momentum if self.momentum is not None else default_momentum(self.loss)


def stages_for(cfg):
    """Model names trained in order."""
    if not cfg.staged:
        return [cfg.arch]
    return list(STAGE_ORDER[: STAGE_ORDER.index(cfg.arch) + 1])
