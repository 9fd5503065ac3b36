"""QVHighlights metrics: the official sample submission reproduced, plus tiny hand-computed cases."""

import json
import os

import numpy as np
import pytest

from lmr_jax.evaluation.qvh_metrics import (
    IOU_THRESHOLDS,
    average_precision_per_query,
    eval_highlight,
    eval_moment_retrieval,
    eval_submission,
    gt_saliency,
    iou_cross,
    saliency_average_precision,
)
from lmr_jax.evaluation.submission import read_ground_truth, read_submission

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "qvh_eval")
THR = [str(t) for t in IOU_THRESHOLDS]


def _pred(qid, windows, saliency=None):
  record = {"qid": qid, "query": "q", "vid": "v", "pred_relevant_windows": windows}
  if saliency is not None:
    record["pred_saliency_scores"] = saliency
  return record


def _gt(qid, windows, duration=150, clip_ids=None, scores=None):
  record = {"qid": qid, "query": "q", "vid": "v", "duration": duration, "relevant_windows": windows}
  if scores is not None:
    record.update(relevant_clip_ids=clip_ids, saliency_scores=scores)
  return record


def _ap(preds, gt):
  return average_precision_per_query([np.array(preds, float)], [np.array(gt, float)])[0]


def _assert_same_tree(got, want, path=""):
  """Same keys in the same order and the same numbers, exactly: both sides are percentages rounded to
  2 decimals the same way (float(f"{100 * x:.2f}")), so a last-digit difference is a real one."""
  assert list(got) == list(want), path
  for key, value in want.items():
    if isinstance(value, dict):
      _assert_same_tree(got[key], value, f"{path}/{key}")
    else:
      assert type(got[key]) is float and got[key] == value, (f"{path}/{key}", got[key], value)


def test_reproduces_official_sample_metrics():
  submission = read_submission(os.path.join(FIXTURES, "sample_val_preds.jsonl.gz"))
  ground_truth = read_ground_truth(os.path.join(FIXTURES, "highlight_val_release.jsonl.gz"))
  with open(os.path.join(FIXTURES, "sample_val_preds_metrics_raw.json")) as f:
    official = json.load(f)
  _assert_same_tree(eval_submission(submission, ground_truth), official)


def test_iou_cross():
  got = iou_cross(np.array([[0.0, 10.0]]), np.array([[5, 15], [20, 30], [0, 10], [5, 5]], float))
  np.testing.assert_allclose(got, [[5 / 15, 0.0, 1.0, 0.0]])
  assert iou_cross(np.array([[3.0, 3.0]]), np.array([[3.0, 3.0]]))[0, 0] == 0.0  # 0/0 -> 0


def test_ap_multiple_gt_windows():
  # TP (1st GT), FP (same GT taken), TP (2nd GT): P = 1, 1/2, 2/3 at R = 1/2, 1/2, 1 -> 1/2 + 1/2 * 2/3.
  ap = _ap([[0, 10, 0.9], [0, 10, 0.8], [20, 30, 0.7]], [[0, 10], [20, 30]])
  np.testing.assert_allclose(ap, 5 / 6)


def test_ap_fewer_predictions_than_gt_counts_recall_over_all_gt():
  np.testing.assert_allclose(_ap([[0, 10, 0.9]], [[0, 10], [20, 30]]), 0.5)


def test_ap_depends_on_iou_threshold():
  ap = _ap([[0, 6, 0.9]], [[0, 10]])  # IoU 0.6: a hit up to the 0.6 threshold
  np.testing.assert_allclose(ap, [1, 1, 1, 0, 0, 0, 0, 0, 0, 0])


def test_ap_taken_gt_falls_back_to_next_best_gt():
  # Both predictions prefer A (IoU 1); the second gets B at IoU 10/12 = 0.833 instead, a hit up to 0.8.
  ap = _ap([[0, 10, 0.9], [0, 10, 0.8]], [[0, 10], [0, 12]])
  np.testing.assert_allclose(ap, [1] * 7 + [0.5] * 3)


def test_ap_gt_iou_tie_goes_to_later_gt_window():
  # [1, 11] overlaps A=[0, 10] and B=[2, 12] equally (9/11); as the official argsort()[::-1] it takes B,
  # leaving A (IoU 1) to [0, 10]. Above 0.818 only the second prediction hits: P = 0, 1/2 -> AP 1/4.
  ap = _ap([[1, 11, 0.9], [0, 10, 0.8]], [[0, 10], [2, 12]])
  np.testing.assert_allclose(ap, [1] * 7 + [0.25] * 3)


def test_ap_score_ties_keep_input_order():
  np.testing.assert_allclose(_ap([[0, 10, 0.5], [20, 30, 0.5]], [[0, 10]]), 1.0)
  np.testing.assert_allclose(_ap([[20, 30, 0.5], [0, 10, 0.5]], [[0, 10]]), 0.5)


def test_map_uses_only_first_ten_windows():
  misses = [[40 + 2 * i, 41 + 2 * i, 0.9 - 0.01 * i] for i in range(10)]
  late = eval_moment_retrieval([_pred(1, misses + [[0, 10, 0.05]])], [_gt(1, [[0, 10]])])
  assert late["full"]["MR-mAP"]["average"] == 0.0
  tenth = eval_moment_retrieval([_pred(1, misses[:9] + [[0, 10, 0.05]])], [_gt(1, [[0, 10]])])
  assert tenth["full"]["MR-mAP"]["average"] == 10.0  # precision 1/10 at full recall


def test_zero_length_windows_never_match():
  metrics = eval_moment_retrieval(
      [_pred(1, [[5, 5, 0.9]]), _pred(2, [[5, 5, 0.9]])], [_gt(1, [[0, 10]]), _gt(2, [[5, 5]])]
  )
  assert metrics["full"]["MR-mAP"]["average"] == 0.0
  assert set(metrics["full"]["MR-R1"].values()) == {0.0}
  assert metrics["short"]["MR-mAP"]["average"] == 0.0  # qid 2's 0 s window is in no bucket


def test_r1_uses_first_window_against_best_overlapping_gt():
  metrics = eval_moment_retrieval(
      [_pred(1, [[18, 30, 0.9], [0, 10, 0.1]])], [_gt(1, [[0, 10], [20, 30]])]
  )
  r1 = metrics["full"]["MR-R1"]  # IoU 10/12 with [20, 30]
  assert [r1[t] for t in THR] == [100.0] * 7 + [0.0] * 3


def test_length_buckets_filter_gt_windows_and_queries():
  submission = [_pred(1, [[10, 30, 0.9], [0, 4, 0.8]]), _pred(2, [[0, 40, 0.9]])]
  ground_truth = [_gt(1, [[0, 4], [10, 30]]), _gt(2, [[0, 40]])]
  metrics = eval_moment_retrieval(submission, ground_truth)
  assert metrics["full"]["MR-mAP"]["average"] == 100.0
  assert metrics["short"]["MR-mAP"]["average"] == 50.0  # qid 1 vs [0, 4] only: FP then TP
  assert metrics["short"]["MR-R1"]["0.5"] == 0.0  # first window [10, 30] vs [0, 4]
  assert metrics["middle"]["MR-mAP"]["average"] == 100.0
  assert metrics["middle"]["MR-R1"]["0.5"] == 100.0
  assert metrics["long"]["MR-mAP"]["average"] == 100.0  # qid 2 alone


def test_empty_bucket_reports_none():
  metrics = eval_submission([_pred(1, [[0, 20, 0.9]])], [_gt(1, [[0, 20]])])
  assert metrics["short"]["MR-mAP"] == dict.fromkeys(THR + ["average"])
  assert metrics["long"]["MR-R1"] == dict.fromkeys(THR)
  assert metrics["brief"]["MR-short-mAP"] is None and metrics["brief"]["MR-middle-mAP"] == 100.0


def test_gt_saliency_fills_unlisted_clips_with_zero():
  got = gt_saliency(_gt(1, [[2, 8]], duration=10, clip_ids=[1, 3], scores=[[4, 2, 0], [2, 3, 4]]))
  np.testing.assert_array_equal(got, [[0, 0, 0], [4, 2, 0], [0, 0, 0], [2, 3, 4], [0, 0, 0]])


@pytest.mark.parametrize(
    "scores, labels, want",
    [
        ([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0], (1 + 2 / 3) / 2),
        ([0.9, 0.8, 0.7], [0, 1, 1], 2 / 3),  # interpolated: P(1st positive) = max(1/2, 2/3)
        ([0.5, 0.5, 0.1], [0, 1, 0], 0.5),  # tied scores form one operating point
        ([0.3, 0.2], [0, 0], 0.0),
        ([0.3, 0.2], [1, 1], 1.0),
    ],
)
def test_saliency_average_precision(scores, labels, want):
  got = saliency_average_precision(np.array(scores), np.array(labels, float)[:, None])
  np.testing.assert_allclose(got, [want])


def test_highlight_hit1_and_map_by_hand():
  # qid 1: 4 clips; clip 1 = [4, 4, 1], clip 2 = [2, 1, 3]; prediction padded with 0 for clip 3.
  # qid 2: 2 clips; clip 0 = [4, 4, 4]; prediction truncated for AP, argmax (clip 2) past the video.
  submission = [
      _pred(1, [[0, 2, 1]], saliency=[0.1, 0.9, 0.3]),
      _pred(2, [[0, 2, 1]], saliency=[0.1, 0.2, 0.9]),
  ]
  ground_truth = [
      _gt(1, [[2, 6]], duration=8, clip_ids=[1, 2], scores=[[4, 4, 1], [2, 1, 3]]),
      _gt(2, [[0, 2]], duration=4, clip_ids=[0], scores=[[4, 4, 4]]),
  ]
  metrics = eval_highlight(submission, ground_truth)
  # Per annotator AP, qid 1: Fair 1, 1, 1/2; Good 1, 1, 1/2; VeryGood 1, 1, 0. qid 2: 1/2 everywhere.
  assert metrics == {
      "HL-min-Fair": {"HL-mAP": 66.67, "HL-Hit1": 50.0},
      "HL-min-Good": {"HL-mAP": 66.67, "HL-Hit1": 50.0},
      "HL-min-VeryGood": {"HL-mAP": 58.33, "HL-Hit1": 50.0},
  }


def test_highlight_skipped_without_saliency():
  with_scores = [_pred(1, [[0, 10, 0.9]], saliency=[0.1, 0.2])]
  no_scores = [_pred(1, [[0, 10, 0.9]])]
  labelled = [_gt(1, [[0, 10]], duration=4, clip_ids=[0], scores=[[1, 2, 3]])]
  unlabelled = [_gt(1, [[0, 10]], duration=4)]
  for submission, ground_truth in [(with_scores, unlabelled), (no_scores, labelled)]:
    metrics = eval_submission(submission, ground_truth)
    assert list(metrics) == ["brief", "full", "long", "middle", "short"]
    assert not any(k.startswith("HL") for k in metrics["brief"])
  assert "HL-min-Fair-Hit1" in eval_submission(with_scores, labelled)["brief"]
