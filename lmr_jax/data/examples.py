"""Turns one annotated query plus its features into fixed-shape arrays with explicit masks.

Everything is padded to the config's maxima (clips, query tokens, windows) so that batches have static
shapes under ``jax.jit``; masks, never sentinel values, mark what is real.
"""

from __future__ import annotations

import logging

import numpy as np

from lmr_jax.data import features as features_lib
from lmr_jax.data.queries import DataError, QueryAnnotation, check_clip_ids


def clip_windows(ann: QueryAnnotation, num_clips: int, clip_len: float) -> tuple[np.ndarray, float]:
  """The query's windows (seconds) restricted to the kept clips, and the duration they cover."""
  duration = min(ann.duration, num_clips * clip_len)
  windows = np.asarray(ann.windows, dtype=np.float32).reshape(-1, 2)
  windows = windows[windows[:, 0] < duration]
  windows[:, 1] = np.minimum(windows[:, 1], duration)
  return windows, duration


def _draw(pool: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """2 clips of ``pool``: distinct where the pool has 2, else with replacement."""
  return rng.choice(pool, 2, replace=len(pool) < 2)


def saliency_pairs(
    ann: QueryAnnotation, num_clips: int, clip_len: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
  """QD-DETR's sampled (positive, negative) clip pairs of one query for its saliency hinge loss:
  int32 (2,) ``pos`` and ``neg``, indices into the ``num_clips`` kept clips.

  With annotator scores (QVHighlights), summed per relevant clip: pair 0 is hard, [the highest
  scoring relevant clip (last of a stable argsort), the lowest scoring one (first)]; pair 1 is easy,
  [a random relevant clip, a random clip outside the relevant ones], or a copy of pair 0 when every
  kept clip is relevant.

  Without scores (Charades-STA): the first window inside the kept clips gives the clip range
  [st, ed] = [int(start / clip_len), min(int(end / clip_len), num_clips) - 1] (st at most ed);
  ``pos`` is 2 distinct random clips of it ([st, st] for a one-clip range), ``neg`` 2 distinct
  random clips outside it (with replacement when only 1 is outside; a copy of ``pos`` when none is,
  a pair whose hinge terms cancel). An unlabelled query (test splits) gets zeros.
  """
  if ann.saliency_scores:
    clip_ids = np.asarray(ann.relevant_clip_ids)
    summed = np.asarray([sum(s) for s in ann.saliency_scores])
    # QD-DETR clamps relevant clips past a truncated video to its last clip, which can make a clip
    # that is not relevant a positive; the relevant clips inside it are used instead when any is.
    inside = clip_ids < num_clips
    if inside.any():
      clip_ids, summed = clip_ids[inside], summed[inside]
    order = np.argsort(summed, kind="stable")
    pos, neg = [clip_ids[order[-1]]], [clip_ids[order[0]]]
    outside = np.setdiff1d(np.arange(num_clips), ann.relevant_clip_ids)
    if len(outside):
      pos.append(rng.choice(clip_ids))
      neg.append(rng.choice(outside))
    else:
      pos.append(pos[0])
      neg.append(neg[0])
    pos, neg = np.minimum(pos, num_clips - 1), np.minimum(neg, num_clips - 1)
  elif ann.windows:
    # Training keeps only queries with a window inside the kept clips; an evaluation query without
    # one falls back to its first window, clamped to the last clip as QD-DETR does.
    inside = [w for w in ann.windows if w[0] < num_clips * clip_len]
    start, end = (inside or ann.windows)[0]
    ed = max(0, min(int(end / clip_len), num_clips) - 1)
    st = min(int(start / clip_len), ed)
    pos = _draw(np.arange(st, ed + 1), rng) if st != ed else np.array([st, st])
    outside = np.concatenate([np.arange(st), np.arange(ed + 1, num_clips)])
    neg = _draw(outside, rng) if len(outside) else pos
  else:
    pos = neg = np.zeros(2)
  return np.asarray(pos, np.int32), np.asarray(neg, np.int32)


def log_truncation(num_queries: int, max_clips: int) -> None:
  """The documented policy for long videos, said once per split."""
  if num_queries:
    logging.warning(
        "%d queries have videos longer than max_clips=%d: truncated to the first %d clips",
        num_queries,
        max_clips,
        max_clips,
    )


def _pad(x: np.ndarray, length: int) -> np.ndarray:
  out = np.zeros((length,) + x.shape[1:], dtype=x.dtype)
  out[: x.shape[0]] = x
  return out


def _mask(n: int, length: int) -> np.ndarray:
  return np.arange(length) < n


def element_spec(example: dict[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """{key: (shape, dtype)} of one example: what tf.data and the abstract train state are built from."""
  return {k: (v.shape, v.dtype) for k, v in example.items()}


def stack_examples(examples: list[dict[str, np.ndarray]], rows: int) -> dict[str, np.ndarray]:
  """One batch of ``rows`` rows: the examples, then copies of the first as padding (a fixed batch
  shape serves every call; the caller drops the padding rows' outputs)."""
  padded = examples + [examples[0]] * (rows - len(examples))
  return {k: np.stack([e[k] for e in padded]) for k in examples[0]}


def model_inputs(
    visual_LxDv: np.ndarray,
    tokens_TxDq: np.ndarray,
    caption_LxDc: np.ndarray | None,
    caption_tokens_TxDc: np.ndarray | None,
    *,
    max_clips: int,
    max_tokens: int,
) -> dict[str, np.ndarray]:
  """What the model reads of one (video, query) pair, padded to the maxima with masks; the caption
  entries only when ``caption_LxDc`` is given. Training, evaluation and predict all build it here.
  """
  inputs = {
      "video_feats": _pad(visual_LxDv, max_clips),
      "video_mask": _mask(len(visual_LxDv), max_clips),
      "query_feats": _pad(tokens_TxDq, max_tokens),
      "query_mask": _mask(len(tokens_TxDq), max_tokens),
  }
  if caption_LxDc is not None:
    inputs["caption_feats"] = _pad(caption_LxDc, max_clips)
    inputs["caption_query_feats"] = _pad(caption_tokens_TxDc, max_tokens)
    inputs["caption_query_mask"] = _mask(len(caption_tokens_TxDc), max_tokens)
  return inputs


class ExampleSource:
  """Random access to padded examples of one split (``len`` and ``example(i, rng)``).

  The features come from a feature store (``features.NpzStore`` for ``.npz`` files,
  ``packed.PackedStore`` for TFDS shards); everything else (labels, the training filter, window
  subsets, saliency pairs, padding) is this class's, so both stores give bit-identical examples.

  The whole split is checked here, before anything trains or writes: the labels against the clips
  (``queries.check_clip_ids``), and every feature file the split needs against its annotation
  (each video's streams against one another and its duration against their clips). With ``preload``
  the store reads every feature file (values included: NaN/inf) and epochs read from memory; without,
  it reads every file's npz header only (existence, key, shape, dimension, clip counts: milliseconds
  per file) and the values are checked when an example first reads them. Packed data was checked
  when it was packed.
  """

  def __init__(
      self,
      annotations: list[QueryAnnotation],
      store,
      spec: features_lib.FeatureSpec,
      *,
      with_captions: bool,
      max_windows: int,
      training: bool,
      preload: bool = True,
  ):
    self.spec = spec
    self.store = store
    self.with_captions = with_captions
    self.max_windows = max_windows
    self.training = training
    check_clip_ids(annotations, spec.clip_len)
    if preload:
      store.preload(annotations)
    else:
      store.scan(annotations)
    self.annotations = self._usable(annotations)

  def _usable(self, annotations: list[QueryAnnotation]) -> list[QueryAnnotation]:
    """The queries this split serves: in training, those with a window inside the kept clips (the
    store knows every video's clip count once it preloaded or scanned the split)."""
    max_clips = self.spec.max_clips
    kept, truncated = [], 0
    for ann in annotations:
      counts = self.store.clip_counts(ann.vid)
      num_clips = max_clips if counts is None else counts[0]
      truncated += counts is not None and counts[1] > max_clips
      if not self.training or len(clip_windows(ann, num_clips, self.spec.clip_len)[0]):
        kept.append(ann)
    log_truncation(truncated, max_clips)
    if len(kept) < len(annotations):
      logging.warning(
          "%d training queries dropped: no labelled window (or none left after "
          "truncation to max_clips=%d)",
          len(annotations) - len(kept),
          max_clips,
      )
    if not kept:
      where = annotations[0].source.rsplit(":", 1)[0] if annotations else "this split"
      raise DataError(
          f"{where}: no usable queries (a training query needs a window inside the first "
          f"config.data.max_clips={max_clips} clips)"
      )
    return kept

  def __len__(self) -> int:
    return len(self.annotations)

  def example(self, index: int, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Padded arrays of query ``index``: its model inputs and its ``labels``."""
    ann, spec = self.annotations[index], self.spec
    video = self.store.video(ann.vid)
    out = model_inputs(
        video.visual,
        self.store.query_tokens(ann.qid, False),
        video.caption if self.with_captions else None,
        self.store.query_tokens(ann.qid, True) if self.with_captions else None,
        max_clips=spec.max_clips,
        max_tokens=spec.max_query_tokens,
    )
    out.update(self.labels(index, rng))
    return out

  def labels(self, index: int, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Everything of query ``index`` but its features: the targets and bookkeeping arrays, with a
    random window subset and the saliency pairs drawn from ``rng`` in training. The device-resident
    feed (``resident.py``) sends only these per step, so they are built in this one place."""
    ann, spec = self.annotations[index], self.spec
    counts = self.store.clip_counts(ann.vid)  # known without decoding the video once it was read
    num_clips = counts[0] if counts is not None else self.store.video(ann.vid).visual.shape[0]
    windows, duration = clip_windows(ann, num_clips, spec.clip_len)
    if self.training and not len(windows):
      raise DataError(f"{ann.source}: qid {ann.qid}: no window inside the first {num_clips} clips")
    if len(windows) > self.max_windows:
      keep = (
          rng.choice(len(windows), self.max_windows, replace=False)
          if rng is not None
          else np.arange(self.max_windows)
      )
      windows = windows[np.sort(keep)]
    # Drawn after the window subset, so that a seed still picks the subset it picked before the
    # pairs existed. Evaluation (no rng) draws from the qid: the same pairs in every run.
    pos, neg = saliency_pairs(
        ann,
        num_clips,
        spec.clip_len,
        rng if rng is not None else np.random.default_rng(ann.qid % 2**63),
    )
    return dict(
        windows=_pad(windows / duration, self.max_windows).astype(np.float32),
        window_mask=_mask(len(windows), self.max_windows),
        saliency=_pad(self._saliency(ann, windows, num_clips), spec.max_clips),
        saliency_pos=pos,
        saliency_neg=neg,
        duration=np.float32(duration),
        qid=np.int32(ann.qid),
        example_mask=np.bool_(True),
    )

  def _saliency(self, ann: QueryAnnotation, windows_sec: np.ndarray, num_clips: int) -> np.ndarray:
    """Per-clip saliency label: QVH's annotator scores summed (0..12); without scores
    (Charades-STA) clips overlapping a window are 1 and the rest 0."""
    saliency = np.zeros(num_clips, np.float32)
    if ann.saliency_scores:
      for cid, scores in zip(ann.relevant_clip_ids, ann.saliency_scores):
        if cid < num_clips:
          saliency[cid] = sum(scores)
    else:
      starts = np.arange(num_clips) * self.spec.clip_len
      for st, ed in windows_sec:
        saliency[(starts + self.spec.clip_len > st) & (starts < ed)] = 1.0
    return saliency

  def element_spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shapes and dtypes of ``example``'s arrays, for tf.data."""
    return element_spec(self.example(0))
