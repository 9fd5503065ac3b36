"""Charades-STA R@k / mIoU on hand-computed cases, and the CLI's --dataset charades."""

import json

import numpy as np
import pytest

from lmr_jax.evaluate import main
from lmr_jax.evaluation.charades_metrics import eval_charades, top_k_ious
from lmr_jax.evaluation.submission import SubmissionError, write_jsonl


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


def test_recall_at_k_and_miou_by_hand():
  assert eval_charades(SUBMISSION, GROUND_TRUTH) == {
      "brief": {
          "R1@0.3": 66.67,
          "R1@0.5": 66.67,
          "R1@0.7": 33.33,
          "R5@0.3": 100.0,
          "R5@0.5": 100.0,
          "R5@0.7": 66.67,
          "mIoU": 50.0,
      }
  }


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
      "--dataset",
      "charades",
  ]
  assert main(argv) == 0
  table = dict(line.split() for line in capsys.readouterr().out.splitlines()[:-1])
  assert table == {
      "R1@0.3": "66.67",
      "R1@0.5": "66.67",
      "R1@0.7": "33.33",
      "R5@0.3": "100.00",
      "R5@0.5": "100.00",
      "R5@0.7": "66.67",
      "mIoU": "50.00",
  }
  with open(tmp_path / "preds_metrics.json") as f:
    assert json.load(f)["brief"]["mIoU"] == 50.0
