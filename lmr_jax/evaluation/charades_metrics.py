"""Charades-STA moment retrieval metrics: R@{1,5} at IoU {0.3, 0.5, 0.7} and mIoU of the top window.

Charades-STA has one GT window per query and is conventionally scored without NMS: R@k asks whether
any of the first k predicted windows (submissions are sorted by score, best first) reaches the IoU
threshold; mIoU averages the IoU of the first window. Values are percentages with 2 decimals, like the
QVHighlights metrics, under {"brief": {"R1@0.3", ..., "R5@0.7", "mIoU"}}.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lmr_jax.evaluation.qvh_metrics import iou_cross
from lmr_jax.evaluation.submission import SubmissionError, check_qids_match, validate_ground_truth, validate_submission

RANKS = (1, 5)
IOU_THRESHOLDS = (0.3, 0.5, 0.7)


def _pct(x) -> float:
  return float(f"{100 * x:.2f}")


def top_k_ious(
    submission: Sequence[dict], ground_truth: Sequence[dict], k: int = max(RANKS)
) -> np.ndarray:
  """(Q, k) IoU of each query's first k windows with its GT window, in ground-truth order; -1 where a
  query has fewer than k windows, so a missing window never counts as a hit."""
  qid2pred = {d["qid"]: d["pred_relevant_windows"][:k] for d in submission}
  ious = np.full((len(ground_truth), k), -1.0)
  for i, gt in enumerate(ground_truth):
    if len(gt["relevant_windows"]) != 1:
      raise SubmissionError(
          f"qid {gt['qid']}: Charades-STA ground truth must have exactly one window, "
          f"got {len(gt['relevant_windows'])}"
      )
    windows = np.asarray(qid2pred[gt["qid"]], float)[:, :2]
    ious[i, : len(windows)] = iou_cross(windows, np.asarray(gt["relevant_windows"], float))[:, 0]
  return ious


def eval_charades(submission: Sequence[dict], ground_truth: Sequence[dict]) -> dict:
  validate_submission(submission)
  validate_ground_truth(ground_truth)
  check_qids_match(submission, ground_truth)
  ious = top_k_ious(submission, ground_truth)
  brief = {
      f"R{k}@{t}": _pct(np.mean((ious[:, :k] >= t).any(1))) for k in RANKS for t in IOU_THRESHOLDS
  }
  brief["mIoU"] = _pct(np.mean(ious[:, 0]))
  return {"brief": brief}
