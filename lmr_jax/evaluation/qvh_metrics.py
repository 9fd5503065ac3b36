"""QVHighlights moment retrieval (MR) and highlight detection (HL) metrics.

A vectorised reimplementation of the official standalone evaluator (moment_detr ``standalone_eval/eval.py``
and ``utils.py``, Lei et al. 2021): same definitions, same output names and structure, same rounding
(percentages with 2 decimals), reproduced to the last digit on the dataset's sample submission.

Rules worth knowing, all as in the official code:
  * R1@t uses the first listed window (the top score, submissions being sorted) against the GT window it
    overlaps most; mAP uses the first ``MAX_PRED_WINDOWS`` windows and counts recall over all GT windows.
  * mAP matching: predictions in descending score order, ties in input order (Python's stable sort); each
    takes the untaken GT window of highest IoU, ties between GT windows going to the later-listed one (the
    official ``argsort()[::-1]``); VOC-style interpolated AP per query, averaged over queries.
  * Length buckets keep only GT windows of length in (lo, hi] and drop queries left without any.
  * HL ground truth is one row per 2 s clip, ``int(duration / 2)`` rows, 0 for unlisted clips; predicted
    saliency is truncated or zero-padded to that length for AP, while Hit@1 takes the argmax of the full
    prediction (first maximum) and scores 0 if it lies past the last clip.
Deviations, both unreachable with valid QVHighlights files: IoU 0/0 (two zero-length windows) is 0, where
the official code yields NaN (counted as a match); an empty length bucket reports ``None`` values where the
official code crashes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lmr_jax.evaluation.submission import CLIP_LENGTH, NUM_ANNOTATORS, check_qids_match, validate_ground_truth, validate_submission

IOU_THRESHOLDS = tuple(k / 100 for k in range(50, 100, 5))  # 0.5, 0.55, ..., 0.95 as exact literals
MAX_PRED_WINDOWS = 10
LENGTH_BUCKETS = (("short", 0, 10), ("middle", 10, 30), ("long", 30, 150))
SALIENCY_LEVELS = (
    ("Fair", 2),
    ("Good", 3),
    ("VeryGood", 4),
)  # min annotator score of a positive clip


def percent(x) -> float:
  """A fraction as a percentage with 2 decimals, as the official evaluator prints it."""
  return float(f"{100 * x:.2f}")


def _pad(rows: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """(Q, N, D) zero-padded stack and its (Q, N) validity mask."""
  n = max(len(r) for r in rows)
  out = np.zeros((len(rows), n, rows[0].shape[1]))
  mask = np.zeros((len(rows), n), bool)
  for i, r in enumerate(rows):
    out[i, : len(r)] = r
    mask[i, : len(r)] = True
  return out, mask


def iou_cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU of every window in a (..., N, 2) with every window in b (..., M, 2) -> (..., N, M).

  Same arithmetic as the official ``compute_temporal_iou_batch_cross`` (union = len_a + len_b - inter),
  so threshold comparisons agree bit for bit."""
  left = np.maximum(a[..., :, None, 0], b[..., None, :, 0])
  right = np.minimum(a[..., :, None, 1], b[..., None, :, 1])
  inter = np.clip(right - left, 0, None)
  union = (a[..., 1] - a[..., 0])[..., :, None] + (b[..., 1] - b[..., 0])[..., None, :] - inter
  return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _iou_paired_hull(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Row-wise IoU with the convex hull as union, as the official R1 (``..._batch_paired``) computes it;
  equal to the true IoU whenever the windows overlap, 0 otherwise."""
  inter = np.maximum(0, np.minimum(a[:, 1], b[:, 1]) - np.maximum(a[:, 0], b[:, 0]))
  union = np.maximum(a[:, 1], b[:, 1]) - np.minimum(a[:, 0], b[:, 0])
  return np.divide(inter, union, out=np.zeros_like(inter), where=union != 0)


def average_precision_per_query(
    preds: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> np.ndarray:
  """(Q, T) detection AP, the official ``compute_average_precision_detection`` for every query at once.

  preds[q]: (P, 3) [st, ed, score] (already cut to the windows to score); gts[q]: (G, 2) [st, ed].
  The greedy matching is sequential over the score-ranked predictions, so only that loop (<= P steps)
  stays in Python; queries, thresholds and GT windows are batched."""
  pred, pred_mask = _pad(preds)
  gt, gt_mask = _pad(gts)
  order = np.argsort(np.where(pred_mask, -pred[..., 2], np.inf), axis=1, kind="stable")
  pred = np.take_along_axis(pred, order[..., None], axis=1)
  pred_mask = np.take_along_axis(pred_mask, order, axis=1)
  iou = np.where(
      gt_mask[:, None, :], iou_cross(pred[..., :2], gt), -1.0
  )  # (Q, P, G); padding never matches
  gt_order = np.argsort(iou, axis=-1, kind="stable")[
      ..., ::-1
  ]  # highest IoU first, ties: later GT first
  sorted_iou = np.take_along_axis(iou, gt_order, axis=-1)
  thr = np.asarray(thresholds)[None, :, None]
  num_q, num_p, num_g = iou.shape
  taken = np.zeros((num_q, len(thresholds), num_g), bool)
  tp = np.zeros((num_q, len(thresholds), num_p), bool)
  rows, cols = np.arange(num_q)[:, None], np.arange(len(thresholds))[None, :]
  for p in range(num_p):
    order_p = np.broadcast_to(gt_order[:, None, p], taken.shape)
    free = (sorted_iou[:, None, p] >= thr) & ~np.take_along_axis(taken, order_p, axis=-1)
    hit = free.any(-1) & pred_mask[:, None, p]
    taken[rows, cols, np.take_along_axis(gt_order[:, p], free.argmax(-1), axis=1)] |= hit
    tp[..., p] = hit
  fp = pred_mask[:, None, :] & ~tp
  tp_sum, fp_sum = np.cumsum(tp, -1), np.cumsum(fp, -1)
  precision = np.divide(
      tp_sum, tp_sum + fp_sum, out=np.zeros(tp.shape), where=(tp_sum + fp_sum) > 0
  )
  recall = tp_sum / gt_mask.sum(1)[:, None, None]
  # VOC interpolation; padded predictions repeat the last (precision, recall) and add nothing.
  zeros, ones = np.zeros(tp.shape[:2] + (1,)), np.ones(tp.shape[:2] + (1,))
  mprec = np.concatenate([zeros, precision, zeros], -1)
  mprec = np.maximum.accumulate(mprec[..., ::-1], -1)[..., ::-1]
  mrec = np.concatenate([zeros, recall, ones], -1)
  return np.sum(np.diff(mrec, axis=-1) * mprec[..., 1:], -1)


def recall_at_one(
    preds: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> np.ndarray:
  """(T,) fraction of queries whose first window reaches IoU >= t with its best-overlapping GT window."""
  first = np.stack([p[0, :2] for p in preds])
  gt, gt_mask = _pad(gts)
  iou = np.where(gt_mask, iou_cross(first[:, None, :], gt)[:, 0], -np.inf)
  best = gt[np.arange(len(gt)), iou.argmax(1)]
  hull_iou = _iou_paired_hull(first, best)
  return (hull_iou[None, :] >= np.asarray(thresholds)[:, None]).mean(1)


def _moment_metrics(preds: list[np.ndarray], gts: list[np.ndarray]) -> dict:
  keys = [str(t) for t in IOU_THRESHOLDS]
  if not preds:
    return {"MR-mAP": dict.fromkeys(keys + ["average"]), "MR-R1": dict.fromkeys(keys)}
  ap = average_precision_per_query([p[:MAX_PRED_WINDOWS] for p in preds], gts).mean(0)
  r1 = recall_at_one(preds, gts)
  mr_map = {k: percent(v) for k, v in zip(keys, ap)}
  mr_map["average"] = percent(np.mean(ap))
  return {"MR-mAP": mr_map, "MR-R1": {k: percent(v) for k, v in zip(keys, r1)}}


def eval_moment_retrieval(submission: Sequence[dict], ground_truth: Sequence[dict]) -> dict:
  """{"full"|"long"|"middle"|"short": {"MR-mAP": {thr: .., "average": ..}, "MR-R1": {thr: ..}}}."""
  qid2pred = {d["qid"]: np.asarray(d["pred_relevant_windows"], float) for d in submission}
  preds = [qid2pred[d["qid"]] for d in ground_truth]
  gts = [np.asarray(d["relevant_windows"], float) for d in ground_truth]
  metrics = {"full": _moment_metrics(preds, gts)}
  for name, lo, hi in LENGTH_BUCKETS:
    kept = [
        (p, g[(g[:, 1] - g[:, 0] > lo) & (g[:, 1] - g[:, 0] <= hi)]) for p, g in zip(preds, gts)
    ]
    kept = [(p, g) for p, g in kept if len(g)]
    metrics[name] = _moment_metrics([p for p, _ in kept], [g for _, g in kept])
  return metrics


def gt_saliency(gt: dict) -> np.ndarray:
  """(int(duration / 2), 3) annotator scores in [0, 4] per clip, 0 for clips not in relevant_clip_ids."""
  full = np.zeros((int(gt["duration"] / CLIP_LENGTH), NUM_ANNOTATORS))
  full[np.asarray(gt["relevant_clip_ids"], int)] = np.reshape(
      gt["saliency_scores"], (-1, NUM_ANNOTATORS)
  )
  return full


def saliency_average_precision(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """(K,) AP of one score vector (n,) against K binary label columns (n, K), as the official ``get_ap``.

  That is sklearn's precision_recall_curve (one operating point per distinct score, so tied clips enter
  together), precision made non-increasing in recall, then the plain mean of the interpolated precision
  at the points where recall grows; all-negative columns score 0 and all-positive ones 1."""
  order = np.argsort(-scores, kind="stable")
  s, y = scores[order], labels[order]
  ends = np.flatnonzero(np.append(s[1:] != s[:-1], True))  # last index of each run of equal scores
  tp = np.cumsum(y, 0)[ends]
  precision = tp / (ends + 1)[:, None]
  interp = np.maximum.accumulate(precision[::-1], 0)[::-1]
  grows = np.diff(tp, axis=0, prepend=0) > 0
  return (interp * grows).sum(0) / np.maximum(grows.sum(0), 1)


def eval_highlight(submission: Sequence[dict], ground_truth: Sequence[dict]) -> dict:
  """{"HL-min-Fair"|"HL-min-Good"|"HL-min-VeryGood": {"HL-mAP": .., "HL-Hit1": ..}}."""
  qid2pred = {d["qid"]: np.asarray(d["pred_saliency_scores"], float) for d in submission}
  mins = np.array([m for _, m in SALIENCY_LEVELS])
  ap, hit = [], []
  for gt in ground_truth:
    pred, labels = qid2pred[gt["qid"]], gt_saliency(gt)
    positive = labels[:, None, :] >= mins[None, :, None]  # (clips, levels, annotators)
    top = int(np.argmax(pred))
    hit.append(positive[top].max(-1) if top < len(labels) else np.zeros(len(mins), bool))
    fitted = np.zeros(len(labels))
    fitted[: min(len(pred), len(labels))] = pred[: len(labels)]
    ap.append(
        saliency_average_precision(fitted, positive.reshape(len(labels), -1)).reshape(len(mins), -1)
    )
  ap, hit = np.mean(ap, axis=(0, 2)), np.mean(hit, axis=0)
  return {
      f"HL-min-{name}": {"HL-mAP": percent(a), "HL-Hit1": percent(h)}
      for (name, _), a, h in zip(SALIENCY_LEVELS, ap, hit)
  }


def eval_submission(submission: Sequence[dict], ground_truth: Sequence[dict]) -> dict:
  """Validated records -> the official metrics dict: {"brief": {...}, "HL-min-*": .., "full"/"long"/...}.

  HL is computed only when every prediction has saliency scores and the ground truth has saliency
  annotations (it has neither on Charades-STA or unlabelled splits); its keys are then absent."""
  validate_submission(submission)
  validate_ground_truth(ground_truth)
  check_qids_match(submission, ground_truth)
  metrics = eval_moment_retrieval(submission, ground_truth)
  brief = dict(
      sorted(
          {
              "MR-full-mAP": metrics["full"]["MR-mAP"]["average"],
              "MR-full-mAP@0.5": metrics["full"]["MR-mAP"]["0.5"],
              "MR-full-mAP@0.75": metrics["full"]["MR-mAP"]["0.75"],
              "MR-short-mAP": metrics["short"]["MR-mAP"]["average"],
              "MR-middle-mAP": metrics["middle"]["MR-mAP"]["average"],
              "MR-long-mAP": metrics["long"]["MR-mAP"]["average"],
              "MR-full-R1@0.5": metrics["full"]["MR-R1"]["0.5"],
              "MR-full-R1@0.7": metrics["full"]["MR-R1"]["0.7"],
          }.items()
      )
  )
  if "pred_saliency_scores" in submission[0] and "saliency_scores" in ground_truth[0]:
    highlight = eval_highlight(submission, ground_truth)
    metrics.update(highlight)
    brief.update(
        {
            f"{level}-{key.split('-')[1]}": value
            for level, values in highlight.items()
            for key, value in values.items()
        }
    )
  return {"brief": brief, **dict(sorted(metrics.items()))}
