"""The `fcn` command (also `python -m fcn`): demo, train, eval, predict."""

import argparse
import os
import sys

from . import __version__

UPSAMPLE = ("fused", "aten")  # fcn_kernels operators, or the ATen reference


def _positive_int(s):
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _positive_float(s):
    v = float(s)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {s}")
    return v


def _progress(args):
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


# -- demo -------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    from .demo import run_demo

    names = (
        "out",
        "steps",
        "size",
        "num_train",
        "num_val",
        "batch_size",
        "lr",
        "seed",
        "data_seed",
        "device",
        "timing_repeat",
        "quiet",
    )
    res = run_demo(**{name: getattr(args, name) for name in names})
    return 0 if res["agreement"] < 1e-4 else 1


# -- train ------------------------------------------------------------------------------
def cmd_train(args) -> int:
    from .training import TrainConfig, train

    cfg = TrainConfig(
        arch=args.arch,
        backbone=args.backbone,
        upsample=args.upsample,
        staged=args.staged,
        init_from=args.init_from,
        pretrained=args.pretrained,
        data=args.data,
        train_split=args.train_split,
        val_split=args.val_split or None,
        size=args.size,
        num_train=args.num_train,
        num_val=args.num_val,
        data_seed=args.data_seed,
        num_classes=args.num_classes,
        norm=args.norm,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        loss=args.loss,
        dropout=not args.no_dropout,
        flip=args.flip,
        seed=args.seed,
        deterministic=args.deterministic,
        amp=args.amp,
        device=args.device,
        out=args.out,
        resume=args.resume,
        quiet=args.quiet,
        num_workers=args.workers,
        eval_every=args.eval_every,
    )
    results = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0 and not args.quiet:
        from .metrics import format_scores

        for arch, res in results.items():
            m = res["metrics"]
            if m.get("iu") is not None:
                import numpy as np

                s = dict(m, iu=np.asarray(m["iu"], dtype=float))
                print(
                    format_scores(
                        s, res.get("class_names"), title=f"\n{arch} ({res['checkpoint']}):"
                    )
                )
    return 0


# -- eval -------------------------------------------------------------------------------
def cmd_eval(args) -> int:
    from .evaluate import evaluate_checkpoint, write_scores_json
    from .metrics import format_scores

    s, names, n = evaluate_checkpoint(
        args.checkpoint,
        data=args.data,
        split=args.split,
        size=args.size,
        num_images=args.num_images,
        data_seed=args.data_seed,
        norm=args.norm,
        batch_size=args.batch_size,
        device=args.device,
        upsample=args.upsample,
        arch=args.arch,
        backbone=args.backbone,
        num_classes=args.num_classes,
        progress=_progress(args),
    )
    print(
        format_scores(
            s,
            names,
            title=f"{args.checkpoint} on {args.data or 'its training data'}"
            f" ({args.split}, {n} images):",
        )
    )
    if args.json:
        print(f"\nwrote {write_scores_json(args.json, s)}")
    return 0


# -- predict ----------------------------------------------------------------------------
def cmd_predict(args) -> int:
    from .predict import predict_files
    from .training import build_from_checkpoint, resolve_device

    dev = resolve_device(args.device)
    model, ck = build_from_checkpoint(
        args.checkpoint, args.arch, args.backbone, args.num_classes, args.upsample, dev
    )
    norm = args.norm or (ck.get("config") or {}).get("norm", "torchvision")
    written = predict_files(
        model,
        args.inputs,
        args.out,
        norm=norm,
        overwrite=args.overwrite,
        alpha=args.alpha,
        device=dev,
        progress=_progress(args),
    )
    if not args.quiet:
        print(f"wrote {len(written) // 2} label map(s) and overlay(s) to {args.out}")
    return 0


def _model_override_args(p):
    g = p.add_argument_group(
        "model (only for checkpoints that do not record it, e.g. the classic port's)"
    )
    g.add_argument("--arch", default=None, help="fcn32s, fcn16s, fcn8s, fcn8s-atonce, unpool")
    g.add_argument("--backbone", default=None, help="vgg16, alexnet, googlenet, tiny")
    g.add_argument("--num-classes", type=_positive_int, default=None)


def build_parser() -> argparse.ArgumentParser:
    from .data import Normalize

    parser = argparse.ArgumentParser(
        prog="fcn",
        description="Fully Convolutional Networks for semantic segmentation, "
        "on the fused fcn_kernels operators.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    # demo
    demo = sub.add_parser(
        "demo",
        help="train FCN-32s -> 16s -> 8s on the embedded data, compare",
        description="Main job: on the embedded data set train FCN-32s, then "
        "FCN-16s and FCN-8s from it (tiny backbone, staged), evaluate each, print "
        "a table (metrics, training-step time fused vs ATen) and write "
        "predictions.png, learning_curves.png and metrics.json to --out.",
    )
    demo.add_argument(
        "--out", default=os.path.join("out", "demo"), help="output folder (default out/demo)"
    )
    demo.add_argument(
        "--steps", type=_positive_int, default=600, help="training steps per stage (default 600)"
    )
    demo.add_argument("--size", type=_positive_int, default=64, help="image size (default 64)")
    demo.add_argument(
        "--num-train", type=_positive_int, default=256, help="training images (default 256)"
    )
    demo.add_argument(
        "--num-val", type=_positive_int, default=64, help="validation images (default 64)"
    )
    demo.add_argument("--batch-size", type=_positive_int, default=8)
    demo.add_argument(
        "--lr", type=_positive_float, default=None, help="learning rate (default: tiny's, 0.1)"
    )
    demo.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    demo.add_argument("--data-seed", type=int, default=0, help="which generated images (default 0)")
    demo.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1 ...")
    demo.add_argument(
        "--timing-repeat", type=_positive_int, default=5, help="timed steps per model and mode"
    )
    demo.add_argument("--quiet", action="store_true", help="only the final table")
    demo.set_defaults(func=cmd_demo)

    # train
    tr = sub.add_parser(
        "train",
        help="train an FCN (staged or at once), with checkpoints",
        description="Train with SGD + momentum. Multi-process: "
        "torchrun --nproc_per_node N -m fcn train ... (DistributedDataParallel; "
        "gloo on CPU, nccl on CUDA; --batch-size is per process).",
    )
    m = tr.add_argument_group("model")
    m.add_argument(
        "--arch", default="fcn8s", help="fcn32s, fcn16s, fcn8s (default), fcn8s-atonce, unpool"
    )
    m.add_argument("--backbone", default="tiny", help="vgg16, alexnet, googlenet, tiny (default)")
    upsample_help = "fcn_kernels operators (default) or the ATen reference"
    m.add_argument("--upsample", default="fused", choices=UPSAMPLE, help=upsample_help)
    m.add_argument(
        "--staged",
        action="store_true",
        help="train fcn32s, then fcn16s from it, then fcn8s (up to --arch)",
    )
    m.add_argument(
        "--init-from",
        default=None,
        metavar="CKPT",
        help="initialise from a checkpoint (e.g. fcn32s for fcn16s: copy_params_from)",
    )
    m.add_argument(
        "--pretrained",
        default=None,
        metavar="PATH",
        help="local torchvision-format vgg16/alexnet state_dict for the backbone",
    )
    d = tr.add_argument_group("data")
    d.add_argument(
        "--data", default="synthetic", help="'synthetic' (default) or a VOC-layout folder"
    )
    d.add_argument("--train-split", default="train")
    d.add_argument("--val-split", default="val", help="'' to skip validation")
    d.add_argument(
        "--size", type=_positive_int, default=64, help="synthetic image size (default 64)"
    )
    d.add_argument(
        "--num-train", type=_positive_int, default=None, help="synthetic train images (256)"
    )
    d.add_argument("--num-val", type=_positive_int, default=None, help="synthetic val images (64)")
    d.add_argument("--data-seed", type=int, default=0, help="synthetic: which images")
    d.add_argument(
        "--num-classes", type=_positive_int, default=None, help="VOC folder: classes (21)"
    )
    d.add_argument(
        "--norm",
        default="torchvision",
        choices=Normalize.MODES,
        help="input normalisation (default torchvision; caffe = BGR minus mean)",
    )
    d.add_argument("--flip", action="store_true", help="random horizontal flips")
    d.add_argument("--workers", type=int, default=0, help="data loader processes (default 0)")
    o = tr.add_argument_group("optimisation")
    o.add_argument("--epochs", type=_positive_int, default=10, help="epochs per stage (default 10)")
    o.add_argument(
        "--max-steps", type=_positive_int, default=None, help="stop a stage after N steps"
    )
    o.add_argument("--batch-size", type=_positive_int, default=8, help="per process (default 8)")
    loss_help = "mean over labelled pixels (default) or per-image sum (classic port)"
    o.add_argument("--loss", default="mean", choices=("mean", "sum"), help=loss_help)
    o.add_argument(
        "--lr",
        type=_positive_float,
        default=None,
        help="default: mean loss vgg16 1e-4, alexnet 1e-3, googlenet 1e-5, tiny 0.1; "
        "sum loss 1e-10",
    )
    o.add_argument("--momentum", type=float, default=None, help="default 0.9 (mean) / 0.99 (sum)")
    o.add_argument("--weight-decay", type=float, default=5e-4)
    o.add_argument("--no-dropout", action="store_true", help="disable fc6/fc7 dropout")
    o.add_argument("--eval-every", type=_positive_int, default=1, help="validate every N epochs")
    r = tr.add_argument_group("run")
    r.add_argument(
        "--out",
        default=os.path.join("runs", "fcn"),
        help="folder for <arch>/last.pt, best.pt, log.csv, log.json (default runs/fcn)",
    )
    r.add_argument("--resume", action="store_true", help="continue from <out>/<arch>/last.pt")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument(
        "--deterministic",
        action="store_true",
        help="torch.use_deterministic_algorithms(True): bit-identical reruns",
    )
    r.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    amp = r.add_mutually_exclusive_group()
    amp.add_argument(
        "--amp",
        dest="amp",
        action="store_true",
        default=None,
        help="mixed precision (default on CUDA; ignored on CPU)",
    )
    amp.add_argument("--no-amp", dest="amp", action="store_false")
    r.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    tr.set_defaults(func=cmd_train)

    # eval
    ev = sub.add_parser("eval", help="metrics table and per-class IoU of a checkpoint")
    ev.add_argument("checkpoint")
    ev.add_argument(
        "--data",
        default=None,
        help="'synthetic' or a VOC folder (default: the checkpoint's training data)",
    )
    ev.add_argument("--split", default="val")
    ev.add_argument("--size", type=_positive_int, default=None, help="synthetic image size")
    ev.add_argument("--num-images", type=_positive_int, default=None, help="synthetic: images (64)")
    ev.add_argument("--data-seed", type=int, default=None)
    ev.add_argument("--norm", default=None, choices=Normalize.MODES)
    ev.add_argument("--batch-size", type=_positive_int, default=8)
    ev.add_argument("--device", default="auto")
    ev.add_argument("--upsample", default=None, choices=UPSAMPLE)
    ev.add_argument("--json", default=None, metavar="PATH", help="also write the scores as JSON")
    ev.add_argument("--quiet", action="store_true")
    _model_override_args(ev)
    ev.set_defaults(func=cmd_eval)

    # predict
    pr = sub.add_parser("predict", help="images -> palette PNG label maps and colour overlays")
    pr.add_argument("checkpoint")
    pr.add_argument("inputs", nargs="+", help="image files or folders")
    pr.add_argument("--out", default="predictions", help="output folder (default predictions)")
    pr.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    pr.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (default 0.5)")
    pr.add_argument("--norm", default=None, choices=Normalize.MODES)
    pr.add_argument("--device", default="auto")
    pr.add_argument("--upsample", default=None, choices=UPSAMPLE)
    pr.add_argument("--quiet", action="store_true")
    _model_override_args(pr)
    pr.set_defaults(func=cmd_predict)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "predict" and not 0 <= args.alpha <= 1:
        parser.error("--alpha must be in [0, 1]")
    from .data import DataError

    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, NotADirectoryError, DataError, ValueError) as e:
        print(f"fcn {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fcn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
