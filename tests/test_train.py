"""fcn.training: loss, checkpoints (atomic, resume == uninterrupted), staged training, DDP."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

import fcn.training as T
import fcn.training.loop
from fcn.training import (
    TrainConfig,
    load_training_checkpoint,
    save_checkpoint,
    segmentation_loss,
    train,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(backbone="tiny", size=24, num_train=8, num_val=2, batch_size=4, quiet=True)


def test_segmentation_loss_by_hand():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # 1 x 2 classes x 1 x 2
    target = torch.tensor([[[0, 255]]])
    # one counted pixel, class 0 with logits (2, 0): -log(e^2 / (e^2 + 1))
    import math

    expect = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert segmentation_loss(logits, target, "mean").item() == pytest.approx(expect)
    target = torch.tensor([[[0, 1]]])
    second = -math.log(math.exp(1) / (math.exp(1) + 1))
    assert segmentation_loss(logits, target, "mean").item() == pytest.approx((expect + second) / 2)
    # sum: per image (divided by the batch size only)
    two = torch.cat([logits, logits])
    assert segmentation_loss(two, torch.cat([target, target]), "sum").item() == pytest.approx(
        expect + second
    )


def test_defaults_and_config_errors():
    assert T.default_lr("vgg16") == 1e-4 and T.default_lr("alexnet") == 1e-3
    assert T.default_lr("googlenet") == 1e-5 and T.default_lr("vgg16", "sum") == 1e-10
    assert T.default_momentum("sum") == 0.99 and T.default_momentum("mean") == 0.9
    assert T.stages_for(TrainConfig(arch="fcn8s", staged=True)) == ["fcn32s", "fcn16s", "fcn8s"]
    assert T.stages_for(TrainConfig(arch="fcn16s")) == ["fcn16s"]
    for bad, msg in [
        (dict(arch="fcn4s"), "arch"),
        (dict(backbone="resnet"), "backbone"),
        (dict(loss="l2"), "loss"),
        (dict(arch="fcn32s", staged=True), "staged"),
        (dict(epochs=0), "epochs"),
        (dict(lr=-1.0), "lr"),
        (dict(momentum=1.0), "momentum"),
    ]:
        with pytest.raises(ValueError, match=msg):
            TrainConfig(**bad).check()


def test_atomic_save_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})

    def crash(fd):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    ck = load_training_checkpoint(path)
    assert ck["epoch"] == 1 and torch.equal(ck["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["last.pt"]  # no temporary file left behind
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_training_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError):
        load_training_checkpoint(tmp_path / "nope.pt")


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_checkpoint_contents_and_logs(tmp_path):
    res = train(TrainConfig(arch="fcn32s", epochs=2, out=str(tmp_path), **TINY))
    ck = load_training_checkpoint(tmp_path / "fcn32s" / "last.pt")
    for k in ("model_state_dict", "optim_state_dict", "epoch", "config", "metrics", "history"):
        assert k in ck
    assert ck["epoch"] == 2 and ck["step"] == 4 and ck["arch"] == "fcn32s"
    assert ck["config"]["backbone"] == "tiny" and ck["num_classes"] == 5
    assert set(ck["metrics"]) >= {"acc", "acc_cls", "mean_iu", "fwavacc", "iu"}
    for k, v in _params(res["fcn32s"]["model"]).items():
        assert torch.equal(ck["model_state_dict"][k], v)
    assert (tmp_path / "fcn32s" / "best.pt").is_file()
    rows = (tmp_path / "fcn32s" / "log.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,train_loss") and len(rows) == 3
    log = json.loads((tmp_path / "fcn32s" / "log.json").read_text())
    assert [r["epoch"] for r in log] == [1, 2] and len(log[1]["iu"]) == 5


def test_resume_equals_uninterrupted(tmp_path):
    # dropout on (random), flips on (random): resuming must replay the same randomness
    cfg = dict(arch="fcn16s", deterministic=True, flip=True, seed=3, **TINY)
    full = train(TrainConfig(epochs=3, out=str(tmp_path / "a"), **cfg))["fcn16s"]["model"]
    train(TrainConfig(epochs=1, out=str(tmp_path / "b"), **cfg))
    res = train(TrainConfig(epochs=3, out=str(tmp_path / "b"), resume=True, **cfg))
    resumed = res["fcn16s"]["model"]
    a, b = _params(full), _params(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ck = load_training_checkpoint(tmp_path / "b" / "fcn16s" / "last.pt")
    assert ck["epoch"] == 3 and [h["epoch"] for h in ck["history"]] == [1, 2, 3]
    # a run that has finished is not trained again
    again = train(TrainConfig(epochs=3, out=str(tmp_path / "b"), resume=True, **cfg))
    for k, v in _params(again["fcn16s"]["model"]).items():
        assert torch.equal(v, a[k])
    # --deterministic is scoped to the run: the caller's global mode is restored
    assert not torch.are_deterministic_algorithms_enabled()


def test_staged_resume_after_crash_in_second_stage(tmp_path, monkeypatch):
    cfg = dict(arch="fcn16s", staged=True, deterministic=True, seed=1, epochs=1, **TINY)
    full = train(TrainConfig(out=str(tmp_path / "a"), **cfg))
    assert list(full) == ["fcn32s", "fcn16s"]
    # crash in the first step of fcn16s: fcn32s is done, fcn16s has no checkpoint yet
    real_loss, calls = T.segmentation_loss, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 3:  # 1 epoch x 2 steps of fcn32s, then boom
            raise RuntimeError("power cut (simulated)")
        return real_loss(*a, **k)

    monkeypatch.setattr(fcn.training.loop, "segmentation_loss", flaky)
    with pytest.raises(RuntimeError, match="simulated"):
        train(TrainConfig(out=str(tmp_path / "b"), **cfg))
    monkeypatch.undo()
    assert (tmp_path / "b" / "fcn32s" / "last.pt").is_file()
    assert not (tmp_path / "b" / "fcn16s").exists()
    res = train(TrainConfig(out=str(tmp_path / "b"), resume=True, **cfg))
    for stage in ("fcn32s", "fcn16s"):
        a, b = _params(full[stage]["model"]), _params(res[stage]["model"])
        for k in a:
            assert torch.equal(a[k], b[k]), (stage, k)


def test_staged_initialisation_copies_lower_stage(tmp_path):
    res = train(TrainConfig(arch="fcn32s", epochs=1, out=str(tmp_path), **TINY))
    m32 = res["fcn32s"]["model"]
    loaded, _ = T.build_from_checkpoint(str(tmp_path / "fcn32s" / "last.pt"))
    for k, v in m32.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    res = train(
        TrainConfig(
            arch="fcn16s",
            epochs=1,
            out=str(tmp_path),
            init_from=str(tmp_path / "fcn32s" / "last.pt"),
            lr=1e-30,
            weight_decay=0.0,
            **TINY,
        )
    )
    s16 = res["fcn16s"]["model"].state_dict()
    shared = [k for k in m32.state_dict() if k in s16]
    assert "fc6.weight" in shared and "score_fr.weight" in shared and "upscore.weight" not in shared
    for k in shared:  # lr ~0: the copied layers stay as copied
        assert torch.allclose(s16[k], m32.state_dict()[k], atol=1e-6), k
    assert s16["score_pool4.weight"].abs().max() < 1e-20  # new score layer: zero-initialised


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes_match_one_process(tmp_path):
    # 2 processes x batch 2 (DDP averages gradients) == 1 process x batch 4 on the same
    # images, with the per-image summed loss and no dropout (no per-rank randomness).
    common = [
        "-m",
        "fcn",
        "train",
        "--arch",
        "fcn32s",
        "--size",
        "32",
        "--num-train",
        "8",
        "--num-val",
        "4",
        "--epochs",
        "2",
        "--loss",
        "sum",
        "--lr",
        "1e-6",
        "--no-dropout",
        "--device",
        "cpu",
        "--quiet",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)

    def run(cmd):
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    master = ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    ddp = run(torchrun + master + common + ["--batch-size", "2", "--out", str(tmp_path / "ddp")])
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = run([sys.executable] + common + ["--batch-size", "4", "--out", str(tmp_path / "one")])
    assert single.returncode == 0, single.stderr[-3000:]
    a = load_training_checkpoint(tmp_path / "ddp" / "fcn32s" / "last.pt")
    b = load_training_checkpoint(tmp_path / "one" / "fcn32s" / "last.pt")
    assert a["step"] == b["step"] == 4
    assert a["config"]["batch_size"] == 2
    for k, v in b["model_state_dict"].items():
        assert torch.allclose(a["model_state_dict"][k], v, rtol=1e-4, atol=1e-6), k
    # the model did move away from its initialisation
    assert torch.count_nonzero(b["model_state_dict"]["score_fr.weight"]) > 0
    # evaluation: each rank scored half of the 4 val images, summed by all_reduce
    for k in ("acc", "mean_iu"):
        assert a["metrics"][k] == pytest.approx(b["metrics"][k], abs=1e-6)


def test_fused_model_under_autocast_matches_aten():
    # Under autocast the score maps are low precision while the frozen bilinear
    # deconvolution weights stay float32: fcn_kernels casts its operands like ATen's
    # conv_transpose2d does, so a fused model runs (and agrees with the ATen one) under
    # AMP without any hooks (checked here with CPU bfloat16 autocast).
    from fcn.models import build_model

    torch.manual_seed(0)
    m = build_model("fcn8s", backbone="tiny", num_classes=5).eval()
    with torch.no_grad():
        for name in ("score_fr", "score_pool4", "score_pool3"):
            getattr(m, name).weight.normal_(0, 0.1)
    x = torch.randn(1, 3, 32, 32)
    import copy

    ref = copy.deepcopy(m).double()(x.double())  # float64: the reference for both
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
        m.set_upsample("aten")
        y_aten = m(x)
    assert y.dtype == y_aten.dtype == torch.bfloat16
    # Each low-precision result against float64, not against each other (ATen's own
    # bf16 path is the less accurate one on some CPUs).
    assert (y.double() - ref).abs().max() <= 0.05 * ref.abs().max()


def test_epoch_log_prints_only_measured_scores(tmp_path):
    lines = []
    cfg = TrainConfig(arch="fcn32s", epochs=2, eval_every=2, out=str(tmp_path), **TINY)
    train(cfg, log=lines.append)
    epochs = [s for s in lines if " epoch " in s]
    assert len(epochs) == 2
    assert "mIoU" not in epochs[0] and "nan" not in epochs[0]  # no evaluation in epoch 1
    assert "mIoU" in epochs[1] and "nan" not in epochs[1]
