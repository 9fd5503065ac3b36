"""Moments and clip saliency of free-text queries in one video, from a trained workdir.

    predictor = Predictor.from_workdir("workdir/qvh_clip", checkpoint="best")
    video = load_video_inputs(predictor.config, "/data/my_features", "my_video")
    records = predictor.predict(video, [query_a, query_b], top_k=10)

``query_a`` is a QueryInputs: ``load_query_inputs`` reads an annotated query's token files, and
``lmr_jax.inference.encoders.Encoders.query`` encodes free text with the frozen CLIP and Llama of
preprocess/. A video's inputs are built once and serve every query.

The model sees what evaluation gives it: the features go through the same loaders
(``lmr_jax.data.features``), so a video of at most ``config.data.max_clips`` clips is one example with
the very arrays eval builds, and its moments are eval's. Eval truncates longer videos; here they are
predicted in sliding windows (``window_starts``, ``merge_moments``; docs/predict.md): windows of
``max_clips`` clips every ``window_stride`` clips (default ``max_clips // 2``), the last one ending at
the last clip, each a video of its own for the model. Their moments are mapped to seconds of the whole
video and pooled best first, dropping a moment that overlaps a better one *of another window* with a
temporal IoU of ``nms_iou`` or more (the same event, seen by two windows); a clip's saliency is the mean
over the windows that contain it.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np

from lmr_jax.data import examples as examples_lib
from lmr_jax.data import features as features_lib
from lmr_jax.errors import LmrError
from lmr_jax.evaluation import predictions
from lmr_jax.losses import span_ops
from lmr_jax.training import checkpoint as checkpoint_lib
from lmr_jax.training import state as state_lib
from lmr_jax.training import train_step as train_step_lib

# The visual streams preprocess/ computes from a video (preprocess.clip_features, .slowfast_features).
RAW_VIDEO_STREAMS = ("slowfast_features", "clip_features")


class PredictError(LmrError):
  """Inputs that cannot be predicted; the message is one line saying what to do instead."""


@dataclasses.dataclass(frozen=True)
class VideoInputs:
  """One whole video, normalised as the loaders normalise it; windows add their own TEF."""

  vid: str
  visual: np.ndarray  # (L, sum(visual_dims)): every stream L2-normalised, concatenated
  caption: np.ndarray | None  # (L, caption_dim); None for a model without caption context
  duration: float  # seconds, at most L * clip_len

  @property
  def num_clips(self) -> int:
    return self.visual.shape[0]


@dataclasses.dataclass(frozen=True)
class QueryInputs:
  """One query's token features, cut to ``max_query_tokens`` as the loaders cut them."""

  text: str | None  # None for precomputed features (``qid`` names them)
  tokens: np.ndarray  # (Lq, query_dim): for the visual VQF (CLIP text tokens, or Llama's)
  caption_tokens: np.ndarray | None  # (Lq', caption_dim): Llama embedding tokens
  qid: int | None = None


def _whole_video_spec(config: ml_collections.ConfigDict, feat_root: str):
  """config.data's FeatureSpec on ``feat_root``, keeping every clip and leaving TEF to the windows."""
  return dataclasses.replace(
      features_lib.FeatureSpec.from_config(config.data),
      feat_root=feat_root,
      max_clips=sys.maxsize,
      use_tef=False,
  )


def load_video_inputs(
    config: ml_collections.ConfigDict, feat_root: str, vid: str, duration: float | None = None
) -> VideoInputs:
  """The feature files of ``vid`` under ``feat_root`` (docs/data_layout.md); ``duration`` defaults to
  the clips' length (an annotation's duration, when given, is cut to it as eval cuts it)."""
  if duration is not None and not duration > 0:
    raise PredictError(f"the duration must be positive, got {duration}")
  video = features_lib.load_video(
      _whole_video_spec(config, feat_root), vid, with_captions=config.model.use_caption_context
  )
  covered = video.num_clips_on_disk * config.data.clip_len
  return VideoInputs(
      vid, video.visual, video.caption, covered if duration is None else min(duration, covered)
  )


def load_query_inputs(config: ml_collections.ConfigDict, feat_root: str, qid: int) -> QueryInputs:
  """An annotated query's precomputed token files under ``feat_root``."""
  spec = _whole_video_spec(config, feat_root)
  caption_tokens = None
  if config.model.use_caption_context:
    caption_tokens = features_lib.load_query_tokens(spec, qid, caption_encoder=True)
  return QueryInputs(
      None, features_lib.load_query_tokens(spec, qid, caption_encoder=False), caption_tokens, qid
  )


def _checked_tokens(tokens: np.ndarray, dim: int, what: str, max_tokens: int) -> np.ndarray:
  tokens = np.asarray(tokens, np.float32)
  if tokens.ndim != 2 or tokens.shape[1] != dim:
    raise PredictError(f"{what} has shape {tokens.shape}, the model was trained on (N, {dim})")
  if not len(tokens):
    raise PredictError(f"{what} has no tokens")
  if not np.isfinite(tokens).all():
    raise PredictError(f"{what} has NaN/inf values")
  return tokens[:max_tokens]


def query_inputs(
    config: ml_collections.ConfigDict,
    text: str,
    tokens: np.ndarray,
    caption_tokens: np.ndarray | None,
) -> QueryInputs:
  """Encoder outputs for free text, checked against the trained dims and cut like the token files."""
  data = config.data
  tokens = _checked_tokens(
      tokens, data.query_dim, f"the query {text!r} (query tokens)", data.max_query_tokens
  )
  if config.model.use_caption_context:
    caption_tokens = _checked_tokens(
        caption_tokens,
        data.caption_dim,
        f"the query {text!r} (Llama embedding tokens)",
        data.max_query_tokens,
    )
  return QueryInputs(text, tokens, caption_tokens if config.model.use_caption_context else None)


def check_raw_video_config(config: ml_collections.ConfigDict) -> None:
  """preprocess/ computes CLIP visual features only; a model trained on other streams needs them."""
  missing = [s for s in config.data.visual_streams if s not in RAW_VIDEO_STREAMS]
  if missing:
    raise PredictError(
        f"this model reads {', '.join(missing)} (config.data.visual_streams), which preprocess/ "
        "cannot compute from a raw video (docs/preprocess.md): extract them yourself and pass "
        "--features, or train a CLIP-only config (configs/qvh.py:clip_only)"
    )


def window_starts(num_clips: int, max_clips: int, stride: int) -> list[int]:
  """First clip of each window: every ``stride`` clips, the last window ending at the last clip."""
  if num_clips <= max_clips:
    return [0]
  return list(range(0, num_clips - max_clips, stride)) + [num_clips - max_clips]


def merge_moments(moments_per_window: Sequence[np.ndarray], nms_iou: float) -> np.ndarray:
  """(start, end, score) rows of all windows, best first (ties keep window order, as eval's sort).

  Within a window the moments are the model's, as in eval; a moment that overlaps a better one of
  another window with IoU >= ``nms_iou`` is dropped.
  """
  moments = np.concatenate(moments_per_window)
  windows = np.concatenate([np.full(len(m), w) for w, m in enumerate(moments_per_window)])
  iou, _ = span_ops.pairwise_temporal_iou(moments[:, :2], moments[:, :2])
  iou = np.asarray(iou)
  kept: list[int] = []
  for i in np.argsort(-moments[:, 2], kind="stable"):
    if all(windows[j] == windows[i] or iou[i, j] < nms_iou for j in kept):
      kept.append(i)
  return moments[kept]


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The locked config a train.py workdir was trained with."""
  if not os.path.isdir(workdir):
    raise checkpoint_lib.CheckpointError(f"{workdir}: no such workdir")
  return checkpoint_lib.load_config(workdir)


def check_options(config, top_k: int | None, window_stride: int | None, nms_iou: float) -> None:
  """The prediction options, checked before any work (predict.py calls it first)."""
  max_clips = config.data.max_clips
  if window_stride is not None and not 0 < window_stride <= max_clips:
    raise PredictError(f"--window_stride must be in [1, {max_clips}] clips, got {window_stride}")
  if top_k is not None and top_k < 1:
    raise PredictError(f"--top_k must be at least 1, got {top_k}")
  if not 0.0 <= nms_iou <= 1.0:
    raise PredictError(f"--nms_iou must be in [0, 1], got {nms_iou}")


class Predictor:
  """A restored checkpoint and its jitted predict step; ``predict`` runs one video's queries."""

  def __init__(self, config: ml_collections.ConfigDict, params, step: int):
    self.config = config
    self.params = params
    self.step = step
    # Ours whatever the workdir's eval_protocol: a query's prediction never depends on the others
    # predicted with it (QD-DETR's evaluation mixes the batch's rows).
    self._eval_step = train_step_lib.jit_eval_step(
        state_lib.build_model(config, eval_protocol=False)
    )

  @classmethod
  def from_workdir(
      cls, workdir: str, checkpoint: str = "best", config: ml_collections.ConfigDict | None = None
  ) -> Predictor:
    """Restores ``checkpoint`` ('best', 'latest' or a step) of a train.py workdir, whose config.json
    is the config unless ``config`` (already loaded from it) is given."""
    config = config or load_workdir_config(workdir)
    checkpoint = str(checkpoint)
    blank = _example(config, _blank_video(config), 0, _blank_query(config))
    # One device: a call predicts a few windows.
    params, step = state_lib.restore_on_one_device(
        config, workdir, checkpoint, examples_lib.element_spec(blank)
    )
    return cls(config, params, step)

  def predict(
      self,
      video: VideoInputs,
      queries: Sequence[QueryInputs],
      top_k: int | None = 10,
      window_stride: int | None = None,
      *,
      nms_iou: float = 0.5,
  ) -> list[dict]:
    """One record per query: {"query", ("qid",) "vid", "duration", "clip_len",
    "pred_relevant_windows": [[start, end, score], ...] in seconds, best first, at most ``top_k``
    (None: all), rounded to clips as eval rounds them (``config.eval_round_to_clip``),
    "pred_saliency_scores": one per clip}."""
    max_clips, clip_len = self.config.data.max_clips, self.config.data.clip_len
    check_options(self.config, top_k, window_stride, nms_iou)
    stride = window_stride or max(1, max_clips // 2)
    starts = window_starts(video.num_clips, max_clips, stride)
    round_to = predictions.clip_rounding(self.config)
    outputs = self._run([_example(self.config, video, s, q) for q in queries for s in starts])
    records = []
    for q, query in enumerate(queries):
      per_window = outputs[q * len(starts) : (q + 1) * len(starts)]
      moments, saliency = [], np.zeros(video.num_clips)
      coverage = np.zeros(video.num_clips)
      for start, out in zip(starts, per_window):
        end = min(start + max_clips, video.num_clips)
        offset = start * clip_len
        length = min(video.duration, end * clip_len) - offset
        window_moments = np.column_stack(
            [predictions.spans_to_seconds(out["spans"], offset, length), out["scores"]]
        )
        if round_to:  # before the merge, as QD-DETR rounds before its NMS
          window_moments[:, :2] = predictions.round_to_clips(window_moments[:, :2], round_to)
        moments.append(window_moments)
        saliency[start:end] += out["saliency"][: end - start]
        coverage[start:end] += 1
      best = merge_moments(moments, nms_iou)[:top_k]
      records.append(
          {
              "query": query.text,
              **({} if query.qid is None else {"qid": query.qid}),
              "vid": video.vid,
              "duration": round(float(video.duration), 4),
              "clip_len": clip_len,
              "pred_relevant_windows": [[round(float(x), 4) for x in row] for row in best],
              "pred_saliency_scores": [round(float(s), 4) for s in saliency / coverage],
          }
      )
    return records

  def _run(self, examples: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Model outputs per example, in batches of at most eval_batch_size rows; a partial batch is
    padded to a power of two, so a few shapes serve every call."""
    limit = self.config.eval_batch_size
    outputs = []
    for first in range(0, len(examples), limit):
      chunk = examples[first : first + limit]
      rows = min(limit, 1 << (len(chunk) - 1).bit_length())
      out = jax.device_get(self._eval_step(self.params, examples_lib.stack_examples(chunk, rows)))
      outputs += [{k: v[i] for k, v in out.items()} for i in range(len(chunk))]
    return outputs


def _example(
    config: ml_collections.ConfigDict, video: VideoInputs, start: int, query: QueryInputs
) -> dict[str, np.ndarray]:
  """The model inputs of one window and query, built as ExampleSource.example builds them."""
  end = min(start + config.data.max_clips, video.num_clips)
  visual = video.visual[start:end]
  if config.data.use_tef:
    visual = np.concatenate([visual, features_lib.temporal_endpoints(end - start)], axis=1)
  with_captions = config.model.use_caption_context
  return examples_lib.model_inputs(
      visual,
      query.tokens,
      video.caption[start:end] if with_captions else None,
      query.caption_tokens if with_captions else None,
      max_clips=config.data.max_clips,
      max_tokens=config.data.max_query_tokens,
  )


def _blank_video(config: ml_collections.ConfigDict) -> VideoInputs:
  caption = np.zeros((1, config.data.caption_dim), np.float32)
  visual = np.zeros((1, sum(config.data.visual_dims)), np.float32)
  return VideoInputs("", visual, caption, config.data.clip_len)


def _blank_query(config: ml_collections.ConfigDict) -> QueryInputs:
  tokens = np.zeros((1, config.data.query_dim), np.float32)
  return QueryInputs(None, tokens, np.zeros((1, config.data.caption_dim), np.float32))
