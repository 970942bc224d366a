"""The training loop: one stage (model, optimizer, resume, epochs, checkpoints) and
:func:`train`, which runs the stages in order, each initialised from the last."""

import dataclasses
import math
import os
import sys
import time

import torch
from torch import nn

from .. import metrics as M
from ..data import build_dataset, pad_collate
from .checkpoint import (
    CHECKPOINT_FORMAT,
    build_from_checkpoint,
    load_training_checkpoint,
    save_checkpoint,
)
from .config import TrainConfig, stages_for
from .distributed import DistContext
from .evaluation import evaluate, progress_bar, write_logs
from .loss import segmentation_loss
from .seeding import restore_deterministic, seed_for, set_deterministic

__all__ = ["train"]


def _scratch_init(model):
    """He initialisation of the backbone convolutions (training from scratch without
    batch norm; PyTorch's default init shrinks activations through 7+ layers). Score
    and upsampling layers keep FCN's initialisation (zeros / bilinear)."""
    for name, m in model.named_modules():
        top = name.split(".")[0]
        if top.startswith(("score", "upscore")):
            continue
        if isinstance(m, nn.Conv2d) and not isinstance(m, nn.ConvTranspose2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _disable_dropout(model):
    for m in model.modules():
        if isinstance(m, (nn.Dropout, nn.Dropout2d)):
            m.p = 0.0


def _build_stage_model(cfg, arch, stage_index, init_model, num_classes, log):
    """The stage's model, initialised (seeded) and copied from the previous stage."""
    from ..models import build_model

    torch.manual_seed(seed_for(cfg.seed, stage_index, 0xF00D))
    model = build_model(
        arch,
        backbone=cfg.backbone,
        num_classes=num_classes,
        upsample=cfg.upsample,
        pretrained=cfg.pretrained,
    )
    if cfg.pretrained is None:
        _scratch_init(model)
    if init_model is not None:
        if not hasattr(model, "copy_params_from"):
            raise ValueError(
                f"{arch} cannot be initialised from another model (no copy_params_from); "
                "drop --init-from"
            )
        copied = model.copy_params_from(init_model)
        log(f"{arch}: initialised from {type(init_model).__name__} ({len(copied)} layers copied)")
    if not cfg.dropout:
        _disable_dropout(model)
    return model


def _resume(cfg, arch, num_classes, last_path, model, opt, scaler, log):
    """(start_epoch, step, history, best mean IoU) from the stage's last checkpoint, or
    a fresh start."""
    if not (cfg.resume and os.path.isfile(last_path)):
        return 0, 0, [], -math.inf
    ck = load_training_checkpoint(last_path)
    if (
        ck.get("arch") != arch
        or ck.get("num_classes") != num_classes
        or (ck.get("config") or {}).get("backbone") != cfg.backbone
    ):
        raise ValueError(
            f"--resume: {last_path} holds {ck.get('arch')}/"
            f"{(ck.get('config') or {}).get('backbone')} with {ck.get('num_classes')} "
            f"classes, not {arch}/{cfg.backbone} with {num_classes}"
        )
    model.load_state_dict(ck["model_state_dict"])
    opt.load_state_dict(ck["optim_state_dict"])
    if ck.get("scaler_state_dict"):
        scaler.load_state_dict(ck["scaler_state_dict"])
    start_epoch, step = int(ck["epoch"]), int(ck.get("step", 0))
    history = list(ck.get("history", []))
    best = max(
        [h["mean_iu"] for h in history if not math.isnan(h.get("mean_iu", math.nan))],
        default=-math.inf,
    )
    log(f"{arch}: resumed from {last_path} at epoch {start_epoch}, step {step}")
    return start_epoch, step, history, best


@dataclasses.dataclass
class _Stage:
    """What one stage's epochs share."""

    cfg: TrainConfig
    arch: str
    model: nn.Module
    train_model: nn.Module  # model, or its DDP wrapper
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp: bool
    dist: DistContext
    progress: bool
    step: int = 0


def _train_epoch(st, loader, desc):
    """One pass over `loader`; returns (loss sum, batches, images, stopped by max_steps)."""
    cfg, device = st.cfg, st.dist.device
    st.train_model.train()
    t0 = time.perf_counter()
    loss_sum, loss_n, images = 0.0, 0, 0
    bar = progress_bar(loader, st.progress, desc=desc)
    for x, y in bar:
        if cfg.flip:
            flip = torch.rand(x.shape[0]) < 0.5
            x[flip] = x[flip].flip(-1)
            y[flip] = y[flip].flip(-1)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=st.amp):
            logits = st.train_model(x)
        loss = segmentation_loss(logits, y, cfg.loss)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{st.arch}: loss is {loss.item()} at step {st.step + 1}; lower the learning rate "
                f"(--lr, now {cfg.effective_lr:g})"
            )
        st.opt.zero_grad(set_to_none=True)
        st.scaler.scale(loss).backward()
        st.scaler.step(st.opt)
        st.scaler.update()
        st.step += 1
        loss_sum += loss.item()
        loss_n += 1
        images += x.shape[0] * st.dist.world
        if st.progress:
            el = time.perf_counter() - t0
            bar.set_postfix(loss=f"{loss_sum / loss_n:.4f}", img_s=f"{images / max(el, 1e-9):.1f}")
        if cfg.max_steps is not None and st.step >= cfg.max_steps:
            return loss_sum, loss_n, images, True
    return loss_sum, loss_n, images, False


def _checkpoint(st, num_classes, class_names, epoch, rec, history):
    return {
        "format": CHECKPOINT_FORMAT,
        "arch": st.arch,
        "num_classes": num_classes,
        "class_names": list(class_names),
        "epoch": epoch,
        "step": st.step,
        "config": dataclasses.asdict(st.cfg),
        "metrics": {k: rec[k] for k in M.METRICS if k in rec},
        "history": history,
        "model_state_dict": st.model.state_dict(),
        "optim_state_dict": st.opt.state_dict(),
        "scaler_state_dict": st.scaler.state_dict() if st.amp else None,
    }


def _train_stage(cfg, arch, stage_index, init_model, train_set, val_set, dist, log):
    device = dist.device
    stage_dir = os.path.join(cfg.out, arch)
    last_path = os.path.join(stage_dir, "last.pt")
    amp = (cfg.amp if cfg.amp is not None else device.type == "cuda") and device.type == "cuda"
    num_classes = train_set.num_classes

    model = _build_stage_model(cfg, arch, stage_index, init_model, num_classes, log).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(
        params, lr=cfg.effective_lr, momentum=cfg.effective_momentum, weight_decay=cfg.weight_decay
    )
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    start_epoch, step, history, best = _resume(
        cfg, arch, num_classes, last_path, model, opt, scaler, log
    )
    train_model = model
    if dist.world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    progress = not cfg.quiet and dist.main and sys.stderr.isatty()
    st = _Stage(cfg, arch, model, train_model, opt, scaler, amp, dist, progress, step)

    sampler = torch.utils.data.DistributedSampler(
        train_set, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=cfg.seed
    )
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        sampler=sampler,
        collate_fn=pad_collate,
        num_workers=cfg.num_workers,
    )
    epochs = cfg.epochs
    if cfg.max_steps is not None:
        epochs = min(epochs, math.ceil(cfg.max_steps / len(loader)))
    stopped = cfg.max_steps is not None and st.step >= cfg.max_steps

    for epoch in range(start_epoch, epochs):
        if stopped:
            break
        # Everything random in an epoch derives from (seed, stage, epoch, rank): resuming
        # at an epoch boundary replays exactly what an uninterrupted run does.
        torch.manual_seed(seed_for(cfg.seed, stage_index, epoch, dist.rank))
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        loss_sum, loss_n, images, stopped = _train_epoch(st, loader, f"{arch} {epoch + 1}/{epochs}")
        elapsed = time.perf_counter() - t0
        mean_loss = dist.all_reduce(
            torch.tensor([loss_sum, loss_n], dtype=torch.float64, device=device)
        )
        rec = {
            "epoch": epoch + 1,
            "step": st.step,
            "train_loss": float(mean_loss[0] / max(mean_loss[1], 1)),
            "lr": cfg.effective_lr,
            "epoch_time_s": round(elapsed, 4),
            "img_per_s": round(images / max(elapsed, 1e-9), 3),
        }
        last = epoch + 1 == epochs or stopped
        if val_set is not None and ((epoch + 1) % cfg.eval_every == 0 or last):
            rec.update(
                M.jsonable_scores(
                    M.scores(evaluate(model, val_set, device, cfg.batch_size, dist, amp))
                )
            )
        else:
            rec.update(dict.fromkeys(M.SUMMARY_METRICS, math.nan))
        history.append(rec)
        evaluated = not math.isnan(rec["mean_iu"])  # print only what was measured
        scores = f"mIoU {100 * rec['mean_iu']:.2f}  acc {100 * rec['acc']:.2f}  "
        scores = scores if evaluated else ""
        log(
            f"{arch} epoch {epoch + 1}/{epochs}  step {st.step}  loss {rec['train_loss']:.4f}  "
            f"{scores}{rec['img_per_s']:.1f} img/s"
        )
        if dist.main:
            ck = _checkpoint(st, num_classes, train_set.class_names, epoch + 1, rec, history)
            save_checkpoint(last_path, ck)
            if not math.isnan(rec["mean_iu"]) and rec["mean_iu"] > best:
                best = rec["mean_iu"]
                save_checkpoint(os.path.join(stage_dir, "best.pt"), ck)
            write_logs(stage_dir, history)
        dist.barrier()
    if start_epoch >= epochs or (stopped and not history):
        log(f"{arch}: already trained ({start_epoch} epochs in {last_path})")
    final = history[-1] if history else {}
    return model, {
        "arch": arch,
        "checkpoint": last_path,
        "class_names": list(train_set.class_names),
        "history": history,
        "metrics": {k: final.get(k) for k in M.METRICS},
        "steps": st.step,
    }


def train(cfg: TrainConfig, log=None):
    """Train per `cfg`; returns ``{stage: {"model", "checkpoint", "history", "metrics"}}``
    (on every rank; only rank 0 writes files)."""
    cfg.check()
    dist = DistContext(cfg.device)
    if log is None:
        log = (
            (lambda msg: print(msg, flush=True))
            if (dist.main and not cfg.quiet)
            else (lambda msg: None)
        )
    prev_modes = set_deterministic(cfg.deterministic)
    try:
        if dist.main:
            os.makedirs(cfg.out, exist_ok=True)
        train_set = build_dataset(
            cfg.data,
            cfg.train_split,
            cfg.norm,
            cfg.size,
            cfg.num_train,
            cfg.data_seed,
            cfg.num_classes or 21,
        )
        val_set = (
            build_dataset(
                cfg.data,
                cfg.val_split,
                cfg.norm,
                cfg.size,
                cfg.num_val,
                cfg.data_seed,
                cfg.num_classes or 21,
            )
            if cfg.val_split
            else None
        )
        log(
            f"training {' -> '.join(stages_for(cfg))} ({cfg.backbone}, upsample={cfg.upsample}) on "
            f"{cfg.data} ({len(train_set)} train / {len(val_set) if val_set else 0} val images), "
            f"{dist.world} process(es) on {dist.device}; lr {cfg.effective_lr:g}, momentum "
            f"{cfg.effective_momentum:g}, weight decay {cfg.weight_decay:g}, {cfg.loss} loss, "
            f"batch {cfg.batch_size}/process"
        )
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
        restore_deterministic(prev_modes)
        dist.close()
