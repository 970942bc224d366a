"""fcn.metrics against cases worked out by hand."""

import math

import numpy as np
import pytest
import torch

from fcn.metrics import confusion_matrix, format_scores, scores

# 3 classes, one ignored pixel. (truth, pred) pairs, row by row:
# (0,0) (0,1) (1,1) | (1,1) (2,2) (2,0) | (255,2)->ignored (0,0) (1,2)
TRUTH = [[0, 0, 1], [1, 2, 2], [255, 0, 1]]
PRED = [[0, 1, 1], [1, 2, 0], [2, 0, 2]]
# counted by hand: row = truth, column = prediction
HIST = [[2, 1, 0], [0, 2, 1], [1, 0, 1]]


def test_confusion_matrix_hand_computed():
    h = confusion_matrix(np.array(TRUTH), np.array(PRED), 3)
    assert h.dtype == np.int64
    np.testing.assert_array_equal(h, HIST)
    assert h.sum() == 8  # the 255 pixel is not counted


def test_scores_hand_computed():
    s = scores(np.array(HIST))
    # 5 of 8 counted pixels right
    assert s["acc"] == pytest.approx(5 / 8)
    # per-class recall 2/3, 2/3, 1/2
    assert s["acc_cls"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 2) / 3)
    # IoU: 2/(3+3-2), 2/(3+3-2), 1/(2+2-1)
    np.testing.assert_allclose(s["iu"], [0.5, 0.5, 1 / 3])
    assert s["mean_iu"] == pytest.approx((0.5 + 0.5 + 1 / 3) / 3)
    # frequencies 3/8, 3/8, 2/8
    assert s["fwavacc"] == pytest.approx(3 / 8 * 0.5 + 3 / 8 * 0.5 + 2 / 8 / 3)
    for k in ("acc", "acc_cls", "mean_iu", "fwavacc"):
        assert type(s[k]) is float


def test_tensors_any_shape_and_accumulation():
    t = torch.tensor(TRUTH)
    p = torch.tensor(PRED)
    np.testing.assert_array_equal(confusion_matrix(t, p, 3), HIST)
    # 1-D, 4-D, mixed numpy/tensor: same counts
    np.testing.assert_array_equal(confusion_matrix(t.flatten(), p.numpy().ravel(), 3), HIST)
    np.testing.assert_array_equal(confusion_matrix(t.view(1, 1, 3, 3), p.view(1, 1, 3, 3), 3), HIST)
    # a batch is the sum of its images
    tb, pb = torch.stack([t, t.flip(0)]), torch.stack([p, p.flip(0)])
    np.testing.assert_array_equal(confusion_matrix(tb, pb, 3), 2 * np.array(HIST))


def test_absent_class_is_nan_and_skipped():
    # class 3 never appears: IoU NaN, means over classes 0..2 only
    s = scores(confusion_matrix(np.array(TRUTH), np.array(PRED), 4))
    assert math.isnan(s["iu"][3])
    assert s["mean_iu"] == pytest.approx((0.5 + 0.5 + 1 / 3) / 3)
    assert s["acc_cls"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 2) / 3)


def test_class_only_predicted_counts_as_zero_iou():
    # truth [0,0,1,1], pred [0,3,1,1]: class 3 predicted once, never true -> IoU 0
    s = scores(confusion_matrix([0, 0, 1, 1], [0, 3, 1, 1], 4))
    np.testing.assert_allclose(s["iu"][:2], [1 / 2, 1.0])
    assert s["iu"][3] == 0.0 and math.isnan(s["iu"][2])
    assert s["mean_iu"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert s["acc_cls"] == pytest.approx((0.5 + 1) / 2)  # class 3 has no truth pixels
    assert s["acc"] == pytest.approx(3 / 4)


def test_perfect_and_empty():
    y = np.random.default_rng(0).integers(0, 5, size=(7, 9))
    s = scores(confusion_matrix(y, y, 5))
    for k in ("acc", "acc_cls", "mean_iu", "fwavacc"):
        assert s[k] == pytest.approx(1.0)
    s = scores(confusion_matrix(np.full((2, 2), 255), np.zeros((2, 2), int), 3))
    assert all(math.isnan(s[k]) for k in ("acc", "acc_cls", "mean_iu", "fwavacc"))


def test_errors():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), 3)
    with pytest.raises(ValueError, match="label_pred has values outside"):
        confusion_matrix([0, 1], [0, 5], 3)
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix([0], [0], 0)
    with pytest.raises(ValueError, match="square"):
        scores(np.zeros((2, 3)))


def test_format_scores_lists_classes():
    text = format_scores(scores(np.array(HIST)), ["bg", "a", "b"])
    assert "mean IoU" in text and "44.44%" in text and "33.33%" in text and "bg" in text
