"""`fcn demo`: the main job. On the embedded data set, train FCN-32s, then FCN-16s and
FCN-8s from it (tiny backbone, staged), evaluate each, time a training step with the
fused operators and with ATen, and write pictures, learning curves and metrics.json."""

import json
import math
import os
import statistics
import time

import torch

from . import __version__
from .data import SyntheticSegmentation, colorize, pad_collate
from .metrics import SUMMARY_METRICS as SUMMARY
from .timing import time_calls
from .training import STAGE_ORDER as STAGES
from .training import TrainConfig, atomic_write_text, segmentation_loss, train


def _time_step(model, x, y, repeat):
    """Median wall time of one SGD training step (forward, loss, backward, update)."""
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)

    def step():
        loss = segmentation_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return statistics.median(time_calls(step, repeat, x.device))


def _agreement(model, x):
    """Largest relative difference of logits and input gradients, fused vs ATen."""
    outs = []
    for mode in ("fused", "aten"):
        model.set_upsample(mode)
        xi = x.clone().requires_grad_(True)
        y = model(xi)
        (g,) = torch.autograd.grad(y.square().sum(), xi)
        outs.append((y.detach(), g))
    model.set_upsample("fused")
    (y0, g0), (y1, g1) = outs
    rel = lambda a, b: ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()  # noqa: E731
    return max(rel(y0, y1), rel(g0, g1))


def run_demo(
    out="out/demo",
    steps=600,
    size=64,
    num_train=256,
    num_val=64,
    batch_size=8,
    lr=None,
    seed=0,
    data_seed=0,
    device="auto",
    timing_repeat=5,
    num_pictures=4,
    quiet=False,
    print_fn=print,
):
    t_start = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    steps_per_epoch = math.ceil(num_train / batch_size)
    # Dropout off: the tiny backbone's fc6/fc7 have 64 channels, and Dropout2d on them
    # only slows a few-minute run down. ~8 evaluation points per stage for the learning curves
    eval_every = max(1, math.ceil(steps / steps_per_epoch / 8))
    cfg = TrainConfig(
        arch="fcn8s",
        backbone="tiny",
        staged=True,
        upsample="fused",
        data="synthetic",
        size=size,
        num_train=num_train,
        num_val=num_val,
        data_seed=data_seed,
        epochs=math.ceil(steps / steps_per_epoch),
        max_steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
        out=os.path.join(out, "checkpoints"),
        quiet=quiet,
        eval_every=eval_every,
        dropout=False,
    )
    print_fn(
        f"fcn {__version__} demo: FCN-32s -> FCN-16s -> FCN-8s (tiny backbone, staged) on "
        f"the embedded data set ({num_train} train / {num_val} val images, {size}x{size}, "
        f"5 classes), {steps} steps per stage, batch {batch_size}, seed {seed}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    t0 = time.perf_counter()
    results = train(cfg, log=(lambda m: None) if quiet else print_fn)
    train_time = time.perf_counter() - t0

    val = SyntheticSegmentation(num_val, size, data_seed, "val")
    dev = next(results["fcn8s"]["model"].parameters()).device
    x, y = pad_collate([val[i] for i in range(min(batch_size, len(val)))])
    x, y = x.to(dev), y.to(dev)
    timing = {}
    for arch in STAGES:
        model = results[arch]["model"]
        t = {}
        for mode in ("fused", "aten"):
            model.set_upsample(mode)
            t[mode] = _time_step(model, x, y, timing_repeat)
        model.set_upsample("fused")
        model.eval()
        timing[arch] = t
    agree = _agreement(results["fcn8s"]["model"].eval(), x[:2])

    metrics = {arch: {k: results[arch]["metrics"][k] for k in SUMMARY} for arch in STAGES}
    per_class = {arch: results[arch]["metrics"]["iu"] for arch in STAGES}
    header = (
        f"{'model':8s} {'pixel acc':>9s} {'mean acc':>9s} {'mean IoU':>9s} {'fw IoU':>9s}"
        f" {'step fused':>11s} {'step aten':>10s} {'speed-up':>8s}"
    )
    lines = ["", header, "-" * len(header)]
    for arch in STAGES:
        m, t = metrics[arch], timing[arch]
        lines.append(
            f"{arch:8s} "
            + " ".join(f"{100 * m[k]:8.2f}%" for k in SUMMARY)
            + f" {1e3 * t['fused']:9.1f}ms {1e3 * t['aten']:8.1f}ms {t['aten'] / t['fused']:7.2f}x"
        )
    names = list(val.class_names)
    lines += ["", "per-class IoU (%)  " + "  ".join(f"{n:>10s}" for n in names)]
    for arch in STAGES:
        lines.append(
            f"{arch:18s} "
            + "  ".join(
                f"{'n/a':>10s}" if v is None or math.isnan(v) else f"{100 * v:10.2f}"
                for v in per_class[arch]
            )
        )
    order_ok = (
        metrics["fcn8s"]["mean_iu"] >= metrics["fcn16s"]["mean_iu"] >= metrics["fcn32s"]["mean_iu"]
    )
    lines.append("")
    lines.append(
        "mean IoU: FCN-8s %s FCN-16s %s FCN-32s"
        % (
            ">=" if metrics["fcn8s"]["mean_iu"] >= metrics["fcn16s"]["mean_iu"] else "<",
            ">=" if metrics["fcn16s"]["mean_iu"] >= metrics["fcn32s"]["mean_iu"] else "<",
        )
    )
    lines.append(
        f"operators: fused vs ATen on FCN-8s, largest relative difference (logits and "
        f"input gradient) {agree:.1e} -> {'OK' if agree < 1e-4 else 'MISMATCH'}"
    )
    lines.append(
        f"step time: median of {timing_repeat} training steps (forward+backward+update), "
        f"batch {x.shape[0]}x3x{size}x{size}, on {dev}"
    )

    # pictures
    from .viz import grid, learning_curves

    rows = []
    preds = {}
    with torch.no_grad():
        xs, _ = pad_collate([val[i] for i in range(min(num_pictures, len(val)))])
        for arch in STAGES:
            preds[arch] = results[arch]["model"].eval()(xs.to(dev)).argmax(1).cpu().numpy()
    for i in range(xs.shape[0]):
        img, lab = val.raw(i)
        rows.append([img, colorize(lab)] + [colorize(preds[a][i]) for a in STAGES])
    pic = grid(rows, ["input", "truth", "FCN-32s", "FCN-16s", "FCN-8s"], scale=3)
    pic_path = os.path.join(out, "predictions.png")
    pic.save(pic_path)
    curves_path = os.path.join(out, "learning_curves.png")
    learning_curves({a: results[a]["history"] for a in STAGES}).save(curves_path)
    record = {arch: dict(metrics[arch]) for arch in STAGES}
    json_path = os.path.join(out, "metrics.json")
    atomic_write_text(json_path, json.dumps(record, indent=1))
    details = {
        "seed": seed,
        "data_seed": data_seed,
        "steps_per_stage": steps,
        "size": size,
        "num_train": num_train,
        "num_val": num_val,
        "batch_size": batch_size,
        "lr": cfg.effective_lr,
        "momentum": cfg.effective_momentum,
        "per_class_iu": per_class,
        "class_names": names,
        "step_time_s": timing,
        "fused_vs_aten_max_rel_diff": agree,
        "train_time_s": train_time,
        "total_time_s": time.perf_counter() - t_start,
    }
    atomic_write_text(os.path.join(out, "details.json"), json.dumps(details, indent=1))
    lines.append(
        f"\nwrote {pic_path} (input | truth | FCN-32s | FCN-16s | FCN-8s), {curves_path}, "
        f"{json_path}; checkpoints in {cfg.out}"
    )
    lines.append(f"total time {time.perf_counter() - t_start:.0f}s (training {train_time:.0f}s)")
    print_fn("\n".join(lines))
    return {
        "metrics": metrics,
        "timing": timing,
        "agreement": agree,
        "order_ok": order_ok,
        "files": [pic_path, curves_path, json_path],
    }
