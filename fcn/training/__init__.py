"""Training FCNs: SGD with momentum, staged 32s -> 16s -> 8s or at once, atomic
checkpoints with resume, reproducible seeding, AMP on CUDA, DDP through torchrun.

    from fcn.training import TrainConfig, train
    result = train(TrainConfig(arch="fcn8s", backbone="tiny", staged=True, epochs=5))

Modules: config (TrainConfig, default learning rates), distributed (device selection,
process group), checkpoint (atomic writes, checkpoints), seeding, loss, evaluation
(confusion matrix on a data set, logs), loop (the loop).
"""

from .checkpoint import (
    CHECKPOINT_FORMAT,
    atomic_write_bytes,
    atomic_write_text,
    build_from_checkpoint,
    load_training_checkpoint,
    save_checkpoint,
)
from .config import STAGE_ORDER, TrainConfig, default_lr, default_momentum, stages_for
from .distributed import DistContext, resolve_device
from .evaluation import evaluate
from .loop import train
from .loss import segmentation_loss
from .seeding import seed_for

__all__ = [
    "TrainConfig",
    "train",
    "default_lr",
    "default_momentum",
    "stages_for",
    "STAGE_ORDER",
    "save_checkpoint",
    "load_training_checkpoint",
    "build_from_checkpoint",
    "evaluate",
    "DistContext",
    "resolve_device",
    "CHECKPOINT_FORMAT",
    "segmentation_loss",
    "atomic_write_bytes",
    "atomic_write_text",
    "seed_for",
]
