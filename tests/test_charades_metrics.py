"""Charades-STA R@k / mIoU / mAP on hand-computed cases, mAP against the QVHighlights evaluator, and
the CLI's --evaluator charades_sta."""

import json
import re

import numpy as np
import pytest

from lmr_jax.commands.score import main
from lmr_jax.evaluation import qvh_metrics
from lmr_jax.evaluation.charades_metrics import eval_charades, top_k_ious
from lmr_jax.evaluation.submission import SubmissionError
from lmr_jax.fileio import write_jsonl


def _pred(qid, windows):
  return {"qid": qid, "query": "q", "vid": "v", "pred_relevant_windows": windows}


def _gt(qid, windows):
  return {"qid": qid, "query": "q", "vid": "v", "duration": 30.96, "relevant_windows": windows}


# qid 1: exact top-1. qid 2: top-1 misses, ranks 2-3 hit at IoU 0.8 / 0.6, rank 6 (exact) is past R@5.
# qid 3: a single window at IoU 0.5 (a hit at 0.5: thresholds are inclusive).
SUBMISSION = [
    _pred(1, [[0, 10, 0.9], [20, 30, 0.1]]),
    _pred(
        2, [[0, 10, 0.9], [12, 20, 0.8], [10, 16, 0.7], [30, 40, 0.6], [50, 60, 0.5], [10, 20, 0.4]]
    ),
    _pred(3, [[5, 10, 0.9]]),
]
GROUND_TRUTH = [_gt(1, [[0, 10]]), _gt(2, [[10, 20]]), _gt(3, [[0, 10]])]


def test_top_k_ious_pads_missing_ranks():
  np.testing.assert_allclose(
      top_k_ious(SUBMISSION, GROUND_TRUTH),
      [
          [1, 0, -1, -1, -1],
          [0, 0.8, 0.6, 0, 0],
          [0.5, -1, -1, -1, -1],
      ],
  )


# AP per query over the ten thresholds 0.5, 0.55, ..., 0.95 (the first 10 windows, in score order):
#   qid 1: rank 1 is exact -> 1 at every threshold.
#   qid 2: rank 2 (IoU 0.8) is the first hit up to 0.8 -> precision 1/2 at full recall, AP 1/2;
#          above 0.8 only rank 6 (exact) hits -> AP 1/6.
#   qid 3: IoU 0.5 -> AP 1 at 0.5, 0 above.
# mAP@0.5 = (1 + 1/2 + 1) / 3; mAP@0.75 = (1 + 1/2 + 0) / 3;
# mAP = mean over thresholds of [5/6, 1/2 (x6: 0.55..0.8), 7/18 (x3: 0.85..0.95)] = 1/2.
def test_recall_at_k_miou_and_map_by_hand():
  assert eval_charades(SUBMISSION, GROUND_TRUTH) == {
      "brief": {
          "R1@0.3": 66.67,
          "R1@0.5": 66.67,
          "R1@0.7": 33.33,
          "R5@0.3": 100.0,
          "R5@0.5": 100.0,
          "R5@0.7": 66.67,
          "mIoU": 50.0,
          "mAP@0.5": 83.33,
          "mAP@0.75": 50.0,
          "mAP": 50.0,
      }
  }


def _random_single_window_data(seed, num_queries=40):
  """Charades-like records: one GT window per query, 1-12 predicted windows sorted by score."""
  rng = np.random.default_rng(seed)
  submission, ground_truth = [], []
  for qid in range(num_queries):
    duration = float(rng.uniform(10, 40))
    start = float(rng.uniform(0, duration - 2))
    end = float(rng.uniform(start + 1, duration))
    ground_truth.append(_gt(qid, [[round(start, 2), round(end, 2)]]))
    starts = rng.uniform(0, duration, size=int(rng.integers(1, 13)))
    ends = np.minimum(starts + rng.uniform(0.5, 15, size=starts.shape), duration)
    scores = np.sort(rng.uniform(size=starts.shape))[::-1]
    windows = [[round(a, 2), round(b, 2), round(c, 4)] for a, b, c in zip(starts, ends, scores)]
    submission.append(_pred(qid, windows))
  return submission, ground_truth


@pytest.mark.parametrize("seed", [None, 0, 1])
def test_map_equals_the_qvh_evaluators_full_map(seed):
  """seed None: the hand-made case; otherwise random single-window data."""
  if seed is None:
    submission, ground_truth = SUBMISSION, GROUND_TRUTH
  else:
    submission, ground_truth = _random_single_window_data(seed)
  charades = eval_charades(submission, ground_truth)["brief"]
  qvh = qvh_metrics.eval_submission(submission, ground_truth)["brief"]
  assert charades["mAP"] > 0
  assert (charades["mAP@0.5"], charades["mAP@0.75"], charades["mAP"]) == (
      qvh["MR-full-mAP@0.5"],
      qvh["MR-full-mAP@0.75"],
      qvh["MR-full-mAP"],
  )


def test_more_than_one_gt_window_is_rejected():
  with pytest.raises(SubmissionError, match="qid 3: .*exactly one window"):
    eval_charades(SUBMISSION, GROUND_TRUTH[:2] + [_gt(3, [[0, 10], [20, 30]])])


def test_cli_charades(tmp_path, capsys):
  write_jsonl(str(tmp_path / "preds.jsonl"), SUBMISSION)
  write_jsonl(str(tmp_path / "gt.jsonl"), GROUND_TRUTH)
  argv = [
      "--submission",
      str(tmp_path / "preds.jsonl"),
      "--gt",
      str(tmp_path / "gt.jsonl"),
      "--evaluator",
      "charades_sta",
  ]
  assert main(argv) == 0
  out = capsys.readouterr().out
  table = dict(re.findall(r"^\| (\S+) \| (\S+) \|$", out, re.M))
  assert table.pop("metric") == "value"
  assert table == {
      "R1@0.3": "66.67",
      "R1@0.5": "66.67",
      "R1@0.7": "33.33",
      "R5@0.3": "100.00",
      "R5@0.5": "100.00",
      "R5@0.7": "66.67",
      "mIoU": "50.00",
      "mAP@0.5": "83.33",
      "mAP@0.75": "50.00",
      "mAP": "50.00",
  }
  with open(tmp_path / "preds_metrics.json") as f:
    assert json.load(f)["brief"]["mIoU"] == 50.0
