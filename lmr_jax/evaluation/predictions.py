"""Model outputs -> QVHighlights submission records (seconds, sorted by score, per-clip saliency).

With ``config.eval_round_to_clip`` the windows get QD-DETR's post-processing (its
``PostProcessorDETR(process_func_names=("clip_ts", "round_multiple"))``, run on every prediction
before scoring): clipped to the video, then each end rounded to the nearest multiple of the clip
length. The peers' published numbers are scored on windows rounded this way.
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
