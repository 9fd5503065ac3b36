"""Charades-STA moment retrieval metrics: R@{1,5} at IoU {0.3, 0.5, 0.7}, mIoU of the top window,
and mAP at IoU 0.5, 0.75 and averaged over 0.5:0.05:0.95.

Charades-STA has one GT window per query and is conventionally scored without NMS: R@k asks whether
any of the first k predicted windows (submissions are sorted by score, best first) reaches the IoU
threshold; mIoU averages the IoU of the first window. mAP is the QVHighlights / Moment-DETR
detection mAP (the paper reports mAP on Charades-STA "similar to prior works [6], [32]"), computed
by ``qvh_metrics``' own code: the first ``MAX_PRED_WINDOWS`` windows, greedy matching,
VOC-interpolated AP per query, averaged over queries. It therefore equals the QVHighlights
evaluator's MR-full-mAP, -mAP@0.5 and -mAP@0.75 on the same records. Values are percentages with 2
decimals, like the QVHighlights metrics, under
{"brief": {"R1@0.3", ..., "R5@0.7", "mIoU", "mAP@0.5", "mAP@0.75", "mAP"}}.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lmr_jax.evaluation import qvh_metrics
from lmr_jax.evaluation.submission import (
    SubmissionError,
    check_qids_match,
    validate_ground_truth,
    validate_submission,
)

RANKS = (1, 5)
IOU_THRESHOLDS = (0.3, 0.5, 0.7)
MAP_THRESHOLDS = ("0.5", "0.75")  # reported on their own, as QVHighlights' MR-full-mAP@0.5 / @0.75


def top_k_ious(
    submission: Sequence[dict], ground_truth: Sequence[dict], k: int = max(RANKS)
) -> np.ndarray:
  """(Q, k) IoU of each query's first k windows with its GT window, in ground-truth order; -1 where
  a query has fewer than k windows, so a missing window never counts as a hit."""
  qid2pred = {d["qid"]: d["pred_relevant_windows"][:k] for d in submission}
  ious = np.full((len(ground_truth), k), -1.0)
  for i, gt in enumerate(ground_truth):
    if len(gt["relevant_windows"]) != 1:
      raise SubmissionError(
          f"qid {gt['qid']}: Charades-STA ground truth must have exactly one window, "
          f"got {len(gt['relevant_windows'])}"
      )
    windows = np.asarray(qid2pred[gt["qid"]], float)[:, :2]
    gt_window = np.asarray(gt["relevant_windows"], float)
    ious[i, : len(windows)] = qvh_metrics.iou_cross(windows, gt_window)[:, 0]
  return ious


def mean_average_precision(submission: Sequence[dict], ground_truth: Sequence[dict]) -> dict:
  """{"mAP@0.5", "mAP@0.75", "mAP"}: the QVHighlights MR AP at those IoU thresholds, averaged over
  queries, and its mean over the ten thresholds 0.5:0.05:0.95."""
  qid2pred = {d["qid"]: np.asarray(d["pred_relevant_windows"], float) for d in submission}
  preds = [qid2pred[gt["qid"]][: qvh_metrics.MAX_PRED_WINDOWS] for gt in ground_truth]
  gts = [np.asarray(gt["relevant_windows"], float) for gt in ground_truth]
  ap = qvh_metrics.average_precision_per_query(preds, gts).mean(0)  # (thresholds,)
  by_threshold = dict(zip((str(t) for t in qvh_metrics.IOU_THRESHOLDS), ap))
  metrics = {f"mAP@{t}": qvh_metrics.percent(by_threshold[t]) for t in MAP_THRESHOLDS}
  metrics["mAP"] = qvh_metrics.percent(np.mean(ap))
  return metrics


def eval_charades(submission: Sequence[dict], ground_truth: Sequence[dict]) -> dict:
  validate_submission(submission)
  validate_ground_truth(ground_truth)
  check_qids_match(submission, ground_truth)
  ious = top_k_ious(submission, ground_truth)
  brief = {
      f"R{k}@{t}": qvh_metrics.percent(np.mean((ious[:, :k] >= t).any(1)))
      for k in RANKS
      for t in IOU_THRESHOLDS
  }
  brief["mIoU"] = qvh_metrics.percent(np.mean(ious[:, 0]))
  brief.update(mean_average_precision(submission, ground_truth))
  return {"brief": brief}
