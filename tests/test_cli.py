"""The `fcn` command line, end to end on tiny data."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import fcn
from fcn.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--size", "24", "--num-train", "4", "--num-val", "2", "--batch-size", "2"]


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert fcn.__version__ in capsys.readouterr().out
    assert main([]) == 0
    out = capsys.readouterr().out
    for cmd in ("demo", "train", "eval", "predict"):
        assert cmd in out


def test_python_m_fcn_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "fcn", "--version"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert out.strip() == f"fcn {fcn.__version__}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert (
        main(
            ["train", "--arch", "fcn16s", "--staged", "--epochs", "1", "--quiet", "--out", str(out)]
            + TINY
        )
        == 0
    )
    return out


def test_train_writes_checkpoints_and_logs(trained):
    for arch in ("fcn32s", "fcn16s"):
        for f in ("last.pt", "best.pt", "log.csv", "log.json"):
            assert (trained / arch / f).is_file(), (arch, f)


def test_eval_prints_table_and_json(trained, capsys, tmp_path):
    js = tmp_path / "scores.json"
    assert main(["eval", str(trained / "fcn16s" / "last.pt"), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "mean IoU" in out and "(val, 2 images)" in out
    for name in ("background", "ring", "line", "dot", "cross"):
        assert name in out
    s = json.loads(js.read_text())
    assert set(s) == {"acc", "acc_cls", "mean_iu", "fwavacc", "iu"} and len(s["iu"]) == 5
    # same numbers as recorded by training for the same split
    import torch

    ck = torch.load(trained / "fcn16s" / "last.pt", weights_only=True)
    assert s["mean_iu"] == pytest.approx(ck["metrics"]["mean_iu"])
    assert s["acc"] == pytest.approx(ck["metrics"]["acc"])


def test_predict_writes_labels_and_overlays_and_refuses_overwrite(trained, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (30, 41)), ("b.jpg", (24, 24))):
        Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(src / name)
    out = tmp_path / "out"
    ck = str(trained / "fcn16s" / "last.pt")
    assert main(["predict", ck, str(src), "--out", str(out), "--quiet"]) == 0
    assert sorted(os.listdir(out)) == ["a.png", "a_overlay.png", "b.png", "b_overlay.png"]
    with Image.open(out / "a.png") as im:
        assert im.mode == "P" and im.size == (41, 30)
        assert np.asarray(im).max() < 5
    with Image.open(out / "a_overlay.png") as im:
        assert im.mode == "RGB" and im.size == (41, 30)
    before = (out / "a.png").read_bytes()
    mtime = os.stat(out / "a.png").st_mtime_ns
    capsys.readouterr()
    assert main(["predict", ck, str(src / "a.png"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "exist already" in err and "--overwrite" in err
    assert os.stat(out / "a.png").st_mtime_ns == mtime
    assert (
        main(["predict", ck, str(src / "a.png"), "--out", str(out), "--overwrite", "--quiet"]) == 0
    )
    assert (out / "a.png").read_bytes() == before  # same model, same input


def test_bad_inputs_give_clear_errors(tmp_path, capsys, trained):
    assert main(["eval", str(tmp_path / "none.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert (
        main(["train", "--data", str(tmp_path / "novoc"), "--out", str(tmp_path / "r"), "--quiet"])
        == 2
    )
    assert "data folder not found" in capsys.readouterr().err
    assert (
        main(
            [
                "predict",
                str(trained / "fcn16s" / "last.pt"),
                str(tmp_path / "x.png"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "input not found" in capsys.readouterr().err
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"no image")
    assert (
        main(
            ["predict", str(trained / "fcn16s" / "last.pt"), str(bad), "--out", str(tmp_path / "o")]
        )
        == 2
    )
    assert "cannot read image" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["demo", "--steps", "0"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        main(["no-such-command"])
    with pytest.raises(SystemExit):
        main(["train", "--loss", "l1"])


def test_train_on_voc_folder_and_eval(tmp_path, capsys):
    from helpers import make_voc

    make_voc(tmp_path / "voc", {"train": ["a", "b"], "val": ["c"]}, size=(24, 28))
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(tmp_path / "voc"),
                "--arch",
                "fcn32s",
                "--epochs",
                "1",
                "--batch-size",
                "2",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["eval", str(out / "fcn32s" / "last.pt")]) == 0
    text = capsys.readouterr().out
    assert "aeroplane" in text and "(val, 1 images)" in text


def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert (
        main(["demo", "--steps", "2", "--timing-repeat", "1", "--out", str(out), "--quiet"] + TINY)
        == 0
    )
    text = capsys.readouterr().out
    for s in ("fcn32s", "fcn16s", "fcn8s", "mean IoU", "step fused", "-> OK"):
        assert s in text
    m = json.loads((out / "metrics.json").read_text())
    assert set(m) == {"fcn32s", "fcn16s", "fcn8s"}
    for v in m.values():
        assert set(v) == {"acc", "acc_cls", "mean_iu", "fwavacc"}
        assert all(0.0 <= x <= 1.0 for x in v.values())
    with Image.open(out / "predictions.png") as im:
        # 2 rows (2 val images) x 5 columns of 24x24 tiles at 3x
        assert im.size[0] > 5 * 72 and im.size[1] > 2 * 72
    with Image.open(out / "learning_curves.png") as im:
        assert im.size == (900, 360)
    for arch in ("fcn32s", "fcn16s", "fcn8s"):
        assert (out / "checkpoints" / arch / "last.pt").is_file()
