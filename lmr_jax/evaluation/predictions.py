"""Model outputs -> QVHighlights submission records (seconds, sorted by score, per-clip saliency)."""

from __future__ import annotations

import numpy as np

from lmr_jax.data.annotations import QueryAnnotation


def to_submission_records(
    outputs: dict[str, np.ndarray],
    batch: dict[str, np.ndarray],
    annotations_by_qid: dict[int, QueryAnnotation],
) -> list[dict]:
  """One record per real (unpadded) row: windows in seconds within [0, duration], best first."""
  records = []
  for row in np.flatnonzero(batch["example_mask"]):
    ann = annotations_by_qid[int(batch["qid"][row])]
    duration = float(batch["duration"][row])
    center, width = outputs["spans"][row, :, 0], outputs["spans"][row, :, 1]
    starts = np.clip(center - width / 2, 0.0, 1.0) * duration
    ends = np.clip(center + width / 2, 0.0, 1.0) * duration
    scores = outputs["scores"][row]
    order = np.argsort(-scores, kind="stable")
    num_clips = int(batch["video_mask"][row].sum())
    records.append(
        {
            "qid": ann.qid,
            "query": ann.query,
            "vid": ann.vid,
            "pred_relevant_windows": [
                [round(float(starts[i]), 4), round(float(ends[i]), 4), round(float(scores[i]), 4)]
                for i in order
            ],
            "pred_saliency_scores": [
                round(float(s), 4) for s in outputs["saliency"][row, :num_clips]
            ],
        }
    )
  return records
