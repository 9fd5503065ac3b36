"""Model outputs -> QVHighlights submission records (seconds, sorted by score, per-clip saliency).

With ``config.eval_round_to_clip`` the windows get QD-DETR's post-processing (its
``PostProcessorDETR(process_func_names=("clip_ts", "round_multiple"))``, run on every prediction
before scoring): clipped to the video, then each end rounded to the nearest multiple of the clip
length. The peers' published numbers are scored on windows rounded this way.

``config.eval_protocol="qd_detr"`` writes the records as QD-DETR's own evaluation does instead
(``qd_detr_records``), for checkpoints ported from it: every step in its float32 arithmetic and
its rounding, so a ported checkpoint scores what QD-DETR printed (docs/evaluation.md).
"""

from __future__ import annotations

import ml_collections
import numpy as np

from lmr_jax.data.annotations import QueryAnnotation


def clip_rounding(config: ml_collections.ConfigDict) -> float | None:
  """Seconds that windows are rounded to: ``config.data.clip_len`` if ``config.eval_round_to_clip``,
  else None (the model's windows as they are)."""
  # get(): the config.json of a workdir trained before the switch existed lacks the key; such runs
  # were scored unrounded.
  return config.data.clip_len if config.get("eval_round_to_clip", False) else None


def round_to_clips(windows: np.ndarray, clip_len: float) -> np.ndarray:
  """(..., 2) windows in seconds, each end moved to the nearest multiple of ``clip_len``.

  As QD-DETR: it rounds the seconds to 4 decimals when it writes a prediction and rounds to
  multiples after that, with ties to even (torch.round, like np.round): an end at 3.0 s goes to 4 s
  and one at 2.99996 s does too, because it was 3.0 by then. Start and end may meet (a zero-length
  window, which QD-DETR keeps), and a duration that is not a multiple of ``clip_len`` can be passed
  by less than half a clip, as in QD-DETR and CG-DETR, which do not clip again afterwards.
  """
  return np.round(np.round(windows, 4) / clip_len) * clip_len


def spans_to_seconds(spans_Nx2: np.ndarray, offset: float, length: float) -> np.ndarray:
  """The model's (center, width) spans, relative to ``length`` seconds starting at ``offset``, as
  (start, end) seconds, cut to that time."""
  center, width = spans_Nx2[:, 0], spans_Nx2[:, 1]
  relative = np.stack(
      [np.clip(center - width / 2, 0.0, 1.0), np.clip(center + width / 2, 0.0, 1.0)], axis=1
  )
  return offset + relative * length


def to_submission_records(
    outputs: dict[str, np.ndarray],
    batch: dict[str, np.ndarray],
    annotations_by_qid: dict[int, QueryAnnotation],
    round_to: float | None,
) -> list[dict]:
  """One record per real (unpadded) row: windows in seconds within [0, duration], best first, and
  with ``round_to`` (``clip_rounding(config)``) rounded to multiples of that many seconds."""
  records = []
  for row in np.flatnonzero(batch["example_mask"]):
    ann = annotations_by_qid[int(batch["qid"][row])]
    duration = float(batch["duration"][row])
    windows = spans_to_seconds(outputs["spans"][row], 0.0, duration)
    if round_to:
      windows = round_to_clips(windows, round_to)
    scores = outputs["scores"][row]
    order = np.argsort(-scores, kind="stable")
    num_clips = int(batch["video_mask"][row].sum())
    records.append(
        {
            "qid": ann.qid,
            "query": ann.query,
            "vid": ann.vid,
            "pred_relevant_windows": [
                [
                    round(float(windows[i, 0]), 4),
                    round(float(windows[i, 1]), 4),
                    round(float(scores[i]), 4),
                ]
                for i in order
            ],
            "pred_saliency_scores": [
                round(float(s), 4) for s in outputs["saliency"][row, :num_clips]
            ],
        }
    )
  return records


# QD-DETR's inference.py post-processes every prediction with PostProcessorDETR(clip_length=2,
# max_ts_val=150, process_func_names=("clip_ts", "round_multiple")), whatever the dataset.
QD_DETR_CLIP_SECONDS = np.float32(2)
QD_DETR_MAX_SECONDS = np.float32(150)


def _four_decimals(x) -> float:
  """A number as QD-DETR writes it: ``float(f"{x:.4f}")`` of its double value."""
  return float(f"{float(x):.4f}")


def qd_detr_records(
    outputs: dict[str, np.ndarray],
    batch: dict[str, np.ndarray],
    annotations_by_qid: dict[int, QueryAnnotation],
) -> list[dict]:
  """One record per real row, as QD-DETR's ``compute_mr_results`` and ``PostProcessorDETR`` write it.

  In its order and float32 arithmetic: (center, width) -> (start, end) times the annotation's
  duration, not cut to the video; rows sorted by the full-precision score (stable); every number
  written with 4 decimals; then the windows read back as float32, clamped to [0, 150] s (not to
  the duration) and rounded to multiples of 2 s (ties to even); saliency as float16 (its
  ``.half()``), which rounds and can tie clips.
  """
  f32 = np.float32
  records = []
  for row in np.flatnonzero(batch["example_mask"]):
    ann = annotations_by_qid[int(batch["qid"][row])]
    center, width = outputs["spans"][row, :, 0].astype(f32), outputs["spans"][row, :, 1].astype(f32)
    windows = np.stack([center - f32(0.5) * width, center + f32(0.5) * width], 1) * f32(
        ann.duration
    )
    scores = outputs["scores"][row].astype(f32)
    order = np.argsort(-scores, kind="stable")
    written = np.asarray(
        [[_four_decimals(x) for x in (*windows[i], scores[i])] for i in order], f32
    )
    ends = np.clip(written[:, :2], f32(0), QD_DETR_MAX_SECONDS)
    ends = np.round(ends / QD_DETR_CLIP_SECONDS) * QD_DETR_CLIP_SECONDS
    num_clips = int(batch["video_mask"][row].sum())
    saliency = outputs["saliency"][row, :num_clips].astype(f32).astype(np.float16)
    records.append(
        {
            "qid": ann.qid,
            "query": ann.query,
            "vid": ann.vid,
            "pred_relevant_windows": [
                [float(start), float(end), _four_decimals(score)]
                for (start, end), score in zip(ends, written[:, 2])
            ],
            "pred_saliency_scores": [float(s) for s in saliency],
        }
    )
  return records


def records_for(config: ml_collections.ConfigDict):
  """``(outputs, batch, annotations_by_qid) -> records`` as ``config.eval_protocol`` says."""
  if config.get("eval_protocol", "lmr") == "qd_detr":
    return qd_detr_records
  round_to = clip_rounding(config)
  return lambda outputs, batch, by_qid: to_submission_records(outputs, batch, by_qid, round_to)
