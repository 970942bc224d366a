"""Training FCNs: SGD with momentum, staged 32s -> 16s -> 8s or at once, atomic
checkpoints with resume, reproducible seeding, AMP on CUDA, DDP through torchrun.

    from fcn.train import TrainConfig, train
    result = train(TrainConfig(arch="fcn8s", backbone="tiny", staged=True, epochs=5))

Learning rates (see docs/training.md). With the pixel-averaged loss (``loss="mean"``,
the default) and momentum 0.9 the defaults are the paper's fixed rates: AlexNet 1e-3,
VGG16 1e-4, GoogLeNet 1e-5 (tiny, trained from scratch: 0.1). With ``loss="sum"``
(the per-image sum of pixel losses, as the Caffe models and the classic PyTorch port
use) the defaults are the port's: lr 1e-10, momentum 0.99, batch 1. The two agree
when ``lr_mean ~= lr_sum * pixels_per_image * (1 - 0.9) / (1 - 0.99)``: a 500x375 VOC
image has ~1.9e5 pixels, so 1e-10 on the sum ~ 1.9e-4 on the mean with momentum 0.9.
"""
import csv
import dataclasses
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from . import metrics as M
from .data import IGNORE_INDEX, build_dataset, pad_collate

__all__ = ["TrainConfig", "train", "default_lr", "default_momentum", "stages_for",
           "save_checkpoint", "load_training_checkpoint", "build_from_checkpoint", "evaluate",
           "DistContext", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "fcn-kernels-checkpoint-1"

# pixel-averaged loss, momentum 0.9 (FCN paper, section 4.1; tiny: tuned for the demo)
MEAN_LOSS_LR = {"alexnet": 1e-3, "vgg16": 1e-4, "googlenet": 1e-5, "tiny": 0.1}
SUM_LOSS_LR = 1e-10          # classic port: summed loss, batch 1
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
    arch: str = "fcn8s"             # fcn32s | fcn16s | fcn8s | fcn8s-atonce | unpool
    backbone: str = "tiny"          # vgg16 | alexnet | googlenet | tiny
    upsample: str = "fused"         # fused (fcn_kernels) | aten
    staged: bool = False            # train fcn32s -> fcn16s -> ... -> arch, each from the last
    init_from: str = None           # checkpoint to initialise from (copy_params_from)
    pretrained: str = None          # torchvision-format backbone weights (vgg16/alexnet)
    data: str = "synthetic"         # "synthetic" or a VOC-layout folder
    train_split: str = "train"
    val_split: str = "val"
    size: int = 64                  # synthetic image size
    num_train: int = None           # synthetic: number of train images (default 256)
    num_val: int = None             # synthetic: number of val images (default 64)
    data_seed: int = 0              # synthetic: which images
    num_classes: int = None         # VOC folder: number of classes (default 21)
    norm: str = "torchvision"       # input normalisation: torchvision | caffe
    epochs: int = 10                # per stage
    max_steps: int = None           # per stage: stop after this many optimizer steps
    batch_size: int = 8             # per process
    lr: float = None                # default: default_lr(backbone, loss)
    momentum: float = None          # default: 0.9 (mean loss) / 0.99 (sum loss)
    weight_decay: float = 5e-4
    loss: str = "mean"              # mean: averaged over labelled pixels; sum: summed per image
    dropout: bool = True            # keep the backbone's fc6/fc7 dropout
    flip: bool = False              # random horizontal flips
    seed: int = 0
    deterministic: bool = False
    amp: bool = None                # default: on for CUDA
    device: str = "auto"
    out: str = "runs/fcn"
    resume: bool = False
    quiet: bool = False
    num_workers: int = 0
    eval_every: int = 1             # evaluate every N epochs (and always after the last)

    def check(self):
        from .models import BACKBONES, MODELS, UPSAMPLE_MODES
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
    return list(STAGE_ORDER[:STAGE_ORDER.index(cfg.arch) + 1])


# --------------------------------------------------------------------------------------
# distributed
# --------------------------------------------------------------------------------------
class DistContext:
    """Process group set up from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK):
    gloo on CPU, nccl on CUDA. A single process when WORLD_SIZE is unset or 1."""

    def __init__(self, device="auto"):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dev = torch.device(device)
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("device 'cuda' requested but CUDA is not available")
            if dev.index is None:
                dev = torch.device("cuda", self.local_rank % torch.cuda.device_count())
            torch.cuda.set_device(dev)
        self.device = dev
        self.owns_group = False
        if self.world > 1:
            import torch.distributed as dist
            if not dist.is_initialized():
                dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
                self.owns_group = True

    @property
    def main(self):
        return self.rank == 0

    def all_reduce(self, t):
        if self.world > 1:
            import torch.distributed as dist
            dist.all_reduce(t)
        return t

    def barrier(self):
        if self.world > 1:
            import torch.distributed as dist
            dist.barrier()

    def close(self):
        if self.owns_group:
            import torch.distributed as dist
            dist.destroy_process_group()
            self.owns_group = False


# --------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------
def _atomic_write_bytes(path, data: bytes):
    """Write `data` to `path` so that a crash leaves either the old or the new file:
    write a temporary file in the same folder, fsync, then os.replace."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(path, obj):
    """torch.save(obj) to `path` atomically (the previous file survives any crash)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    _atomic_write_bytes(path, buf.getvalue())


def _atomic_write_text(path, text):
    _atomic_write_bytes(path, text.encode("utf-8"))


def load_training_checkpoint(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read checkpoint {path}: {e}") from e
    if not isinstance(ck, dict):
        raise ValueError(f"{path} is not a checkpoint (got {type(ck).__name__})")
    return ck


def build_from_checkpoint(path_or_ck, arch=None, backbone=None, num_classes=None,
                          upsample=None, device="cpu"):
    """Model from a checkpoint of `fcn train` (architecture read from it) or of the
    classic port / a bare state_dict (give arch, backbone, num_classes). Returns
    ``(model, checkpoint_dict)``."""
    from .models import build_model, load_checkpoint
    ck = load_training_checkpoint(path_or_ck) if isinstance(path_or_ck, (str, os.PathLike)) \
        else path_or_ck
    cfg = ck.get("config") or {}
    arch = arch or ck.get("arch") or None
    backbone = backbone or cfg.get("backbone")
    num_classes = num_classes or ck.get("num_classes")
    if not (arch and backbone and num_classes):
        raise ValueError("the checkpoint does not say which model it holds; give arch, backbone "
                         "and num_classes (--arch, --backbone, --num-classes)")
    model = build_model(arch, backbone=backbone, num_classes=int(num_classes),
                        upsample=upsample or cfg.get("upsample", "fused"))
    load_checkpoint(model, ck)
    return model.to(device), ck


# --------------------------------------------------------------------------------------
# pieces of the loop
# --------------------------------------------------------------------------------------
def _seed_for(*parts):
    """A 63-bit seed from integers (deterministic, well mixed)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0]
               >> np.uint64(1))


def _set_deterministic(on):
    """Switch deterministic mode on for a run; returns the previous global settings so
    `train()` can restore them (an in-process caller must not be left in that mode)."""
    prev = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark)
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return prev


def _restore_deterministic(prev):
    torch.use_deterministic_algorithms(prev[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev[1], prev[2]


def _scratch_init(model):
    """He initialisation of the backbone convolutions (training from scratch without
    batch norm; PyTorch's default init shrinks activations through 7+ layers). Score
    and upsampling layers keep FCN's initialisation (zeros / bilinear)."""
    from torch import nn
    for name, m in model.named_modules():
        top = name.split(".")[0]
        if top.startswith(("score", "upscore")):
            continue
        if isinstance(m, nn.Conv2d) and not isinstance(m, nn.ConvTranspose2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _disable_dropout(model):
    from torch import nn
    for m in model.modules():
        if isinstance(m, (nn.Dropout, nn.Dropout2d)):
            m.p = 0.0


def segmentation_loss(logits, target, kind="mean"):
    """Cross entropy over labelled pixels (255 ignored): averaged over them ("mean") or
    summed per image ("sum": total / batch size, the classic per-image sum)."""
    total = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
    if kind == "sum":
        return total / logits.shape[0]
    n = (target != IGNORE_INDEX).sum().clamp(min=1)
    return total / n


@torch.no_grad()
def evaluate(model, dataset, device="cpu", batch_size=8, dist=None, amp=False, progress=False):
    """Confusion matrix of `model` on `dataset` (all ranks together under DDP; each
    rank takes every world-th image, none twice)."""
    was_training = model.training
    model.eval()
    rank, world = (dist.rank, dist.world) if dist else (0, 1)
    idx = list(range(rank, len(dataset), world))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, idx),
                                         batch_size=batch_size, collate_fn=pad_collate)
    n = dataset.num_classes
    hist = torch.zeros(n, n, dtype=torch.int64)
    device = torch.device(device)
    bar = _bar(loader, progress, desc="eval")
    for x, y in bar:
        x = x.to(device)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp and device.type == "cuda"):
            pred = model(x).argmax(1).cpu()
        hist += torch.from_numpy(M.confusion_matrix(y, pred, n))
    if dist is not None and dist.world > 1:
        hist = dist.all_reduce(hist.to(dist.device)).cpu()
    model.train(was_training)
    return hist.numpy()


def _bar(it, enabled, **kw):
    if not enabled:
        return it
    from tqdm import tqdm
    return tqdm(it, leave=False, dynamic_ncols=True, **kw)


def _progress_enabled(cfg, dist):
    return not cfg.quiet and dist.main and sys.stderr.isatty()


def _jsonable_metrics(s):
    out = {k: float(s[k]) for k in ("acc", "acc_cls", "mean_iu", "fwavacc")}
    out["iu"] = [float(v) for v in s["iu"]]
    return out


CSV_FIELDS = ["epoch", "step", "train_loss", "lr", "acc", "acc_cls", "mean_iu", "fwavacc",
              "epoch_time_s", "img_per_s"]


def _write_logs(stage_dir, history):
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for rec in history:
        w.writerow({k: rec.get(k, "") for k in CSV_FIELDS})
    _atomic_write_text(os.path.join(stage_dir, "log.csv"), buf.getvalue())
    _atomic_write_text(os.path.join(stage_dir, "log.json"),
                       json.dumps(history, indent=1, allow_nan=True))


# --------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------
def _train_stage(cfg, arch, stage_index, init_model, train_set, val_set, dist, log):
    from .models import build_model
    device = dist.device
    stage_dir = os.path.join(cfg.out, arch)
    last_path = os.path.join(stage_dir, "last.pt")
    amp = (cfg.amp if cfg.amp is not None else device.type == "cuda") and device.type == "cuda"
    num_classes = train_set.num_classes

    torch.manual_seed(_seed_for(cfg.seed, stage_index, 0xF00D))
    model = build_model(arch, backbone=cfg.backbone, num_classes=num_classes,
                        upsample=cfg.upsample, pretrained=cfg.pretrained)
    if cfg.pretrained is None:
        _scratch_init(model)
    if init_model is not None:
        if not hasattr(model, "copy_params_from"):
            raise ValueError(f"{arch} cannot be initialised from another model (no copy_params_from); "
                             "drop --init-from")
        copied = model.copy_params_from(init_model)
        log(f"{arch}: initialised from {type(init_model).__name__} ({len(copied)} layers copied)")
    if not cfg.dropout:
        _disable_dropout(model)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.effective_lr, momentum=cfg.effective_momentum,
                          weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    start_epoch, step, history, best = 0, 0, [], -math.inf
    if cfg.resume and os.path.isfile(last_path):
        ck = load_training_checkpoint(last_path)
        if ck.get("arch") != arch or ck.get("num_classes") != num_classes or \
                (ck.get("config") or {}).get("backbone") != cfg.backbone:
            raise ValueError(f"--resume: {last_path} holds {ck.get('arch')}/"
                             f"{(ck.get('config') or {}).get('backbone')} with {ck.get('num_classes')} "
                             f"classes, not {arch}/{cfg.backbone} with {num_classes}")
        model.load_state_dict(ck["model_state_dict"])
        opt.load_state_dict(ck["optim_state_dict"])
        if ck.get("scaler_state_dict"):
            scaler.load_state_dict(ck["scaler_state_dict"])
        start_epoch, step = int(ck["epoch"]), int(ck.get("step", 0))
        history = list(ck.get("history", []))
        best = max([h["mean_iu"] for h in history if not math.isnan(h.get("mean_iu", math.nan))],
                   default=-math.inf)
        log(f"{arch}: resumed from {last_path} at epoch {start_epoch}, step {step}")

    train_model = model
    if dist.world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    sampler = torch.utils.data.DistributedSampler(
        train_set, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=cfg.seed)
    loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler,
                                         collate_fn=pad_collate, num_workers=cfg.num_workers)
    steps_per_epoch = len(loader)
    epochs = cfg.epochs
    if cfg.max_steps is not None:
        epochs = min(epochs, math.ceil(cfg.max_steps / steps_per_epoch))
    progress = _progress_enabled(cfg, dist)
    stopped = cfg.max_steps is not None and step >= cfg.max_steps

    for epoch in range(start_epoch, epochs):
        if stopped:
            break
        # Everything random in an epoch derives from (seed, stage, epoch, rank): resuming
        # at an epoch boundary replays exactly what an uninterrupted run does.
        torch.manual_seed(_seed_for(cfg.seed, stage_index, epoch, dist.rank))
        sampler.set_epoch(epoch)
        train_model.train()
        t0 = time.perf_counter()
        loss_sum, loss_n, images = 0.0, 0, 0
        bar = _bar(loader, progress, desc=f"{arch} {epoch + 1}/{epochs}")
        for x, y in bar:
            if cfg.flip:
                flip = torch.rand(x.shape[0]) < 0.5
                x[flip] = x[flip].flip(-1)
                y[flip] = y[flip].flip(-1)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                logits = train_model(x)
            loss = segmentation_loss(logits, y, cfg.loss)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"{arch}: loss is {loss.item()} at step {step + 1}; lower the learning rate "
                    f"(--lr, now {cfg.effective_lr:g})")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            step += 1
            loss_sum += loss.item()
            loss_n += 1
            images += x.shape[0] * dist.world
            if progress:
                el = time.perf_counter() - t0
                bar.set_postfix(loss=f"{loss_sum / loss_n:.4f}", img_s=f"{images / max(el, 1e-9):.1f}")
            if cfg.max_steps is not None and step >= cfg.max_steps:
                stopped = True
                break
        elapsed = time.perf_counter() - t0
        mean_loss = torch.tensor([loss_sum, loss_n], dtype=torch.float64, device=device)
        mean_loss = dist.all_reduce(mean_loss)
        rec = {"epoch": epoch + 1, "step": step, "train_loss": float(mean_loss[0] / max(mean_loss[1], 1)),
               "lr": cfg.effective_lr, "epoch_time_s": round(elapsed, 4),
               "img_per_s": round(images / max(elapsed, 1e-9), 3)}
        last = epoch + 1 == epochs or stopped
        if val_set is not None and ((epoch + 1) % cfg.eval_every == 0 or last):
            s = M.scores(evaluate(model, val_set, device, cfg.batch_size, dist, amp))
            rec.update(_jsonable_metrics(s))
        else:
            rec.update({k: math.nan for k in ("acc", "acc_cls", "mean_iu", "fwavacc")})
        history.append(rec)
        log(f"{arch} epoch {epoch + 1}/{epochs}  step {step}  loss {rec['train_loss']:.4f}  "
            f"mIoU {100 * rec['mean_iu']:.2f}  acc {100 * rec['acc']:.2f}  "
            f"{rec['img_per_s']:.1f} img/s")
        if dist.main:
            ck = {
                "format": CHECKPOINT_FORMAT, "arch": arch, "num_classes": num_classes,
                "class_names": list(train_set.class_names), "epoch": epoch + 1, "step": step,
                "config": dataclasses.asdict(cfg),
                "metrics": {k: rec[k] for k in ("acc", "acc_cls", "mean_iu", "fwavacc", "iu")
                            if k in rec},
                "history": history,
                "model_state_dict": model.state_dict(),
                "optim_state_dict": opt.state_dict(),
                "scaler_state_dict": scaler.state_dict() if amp else None,
            }
            save_checkpoint(last_path, ck)
            if not math.isnan(rec["mean_iu"]) and rec["mean_iu"] > best:
                best = rec["mean_iu"]
                save_checkpoint(os.path.join(stage_dir, "best.pt"), ck)
            _write_logs(stage_dir, history)
        dist.barrier()
    if start_epoch >= epochs or (stopped and not history):
        log(f"{arch}: already trained ({start_epoch} epochs in {last_path})")
    final = history[-1] if history else {}
    return model, {"arch": arch, "checkpoint": last_path, "class_names": list(train_set.class_names), "history": history,
                   "metrics": {k: final.get(k) for k in ("acc", "acc_cls", "mean_iu", "fwavacc", "iu")},
                   "steps": step}


def train(cfg: TrainConfig, log=None):
    """Train per `cfg`; returns ``{stage: {"model", "checkpoint", "history", "metrics"}}``
    (on every rank; only rank 0 writes files)."""
    cfg.check()
    dist = DistContext(cfg.device)
    if log is None:
        log = (lambda msg: print(msg, flush=True)) if (dist.main and not cfg.quiet) else (lambda msg: None)
    prev_modes = _set_deterministic(cfg.deterministic)
    try:
        if dist.main:
            os.makedirs(cfg.out, exist_ok=True)
        train_set = build_dataset(cfg.data, cfg.train_split, cfg.norm, cfg.size, cfg.num_train,
                                  cfg.data_seed, cfg.num_classes or 21)
        val_set = build_dataset(cfg.data, cfg.val_split, cfg.norm, cfg.size, cfg.num_val,
                                cfg.data_seed, cfg.num_classes or 21) if cfg.val_split else None
        log(f"training {' -> '.join(stages_for(cfg))} ({cfg.backbone}, upsample={cfg.upsample}) on "
            f"{cfg.data} ({len(train_set)} train / {len(val_set) if val_set else 0} val images), "
            f"{dist.world} process(es) on {dist.device}; lr {cfg.effective_lr:g}, momentum "
            f"{cfg.effective_momentum:g}, weight decay {cfg.weight_decay:g}, {cfg.loss} loss, "
            f"batch {cfg.batch_size}/process")
        init = None
        if cfg.init_from:
            init, _ = build_from_checkpoint(cfg.init_from)
        results = {}
        for i, arch in enumerate(stages_for(cfg)):
            model, res = _train_stage(cfg, arch, i, init, train_set, val_set, dist, log)
            res["model"] = model
            results[arch] = res
            init = model
        # all ranks leave together (a peer tearing its connections down while another is
        # still inside a collective makes gloo abort); not on the error path, where a
        # barrier could wait for a rank that is gone
        dist.barrier()
        return results
    finally:
        _restore_deterministic(prev_modes)
        dist.close()
