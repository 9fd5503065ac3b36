"""Reads the numpy feature files of docs/data_layout.md, validated, normalised and cut to one length.

Visual streams follow the peers' (Moment-DETR / QD-DETR) convention: each stream L2-normalised per clip, all
streams (and the caption context) cut to the shortest length, concatenated, then the two temporal-endpoint
dims [i/L, (i+1)/L] appended. Videos longer than ``max_clips`` are truncated to their first ``max_clips``
clips (the peers' policy); the caller logs it and shortens the duration accordingly.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile

import numpy as np

from lmr_jax import fileio
from lmr_jax.data.annotations import DataError

TEF_DIM = 2  # the temporal endpoints [i/L, (i+1)/L] appended to each clip's visual features


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
  """Where the features live and what shapes they must have (built from ``config.data``)."""

  feat_root: str
  visual_streams: tuple[str, ...]  # sub-directories, e.g. ("slowfast_features", "clip_features")
  visual_dims: tuple[int, ...]
  query_feat_dir: str  # query tokens for the visual VQF, e.g. "clip_text_features"
  query_dim: int
  caption_feat_dir: str  # per-clip caption vectors (LMR's caption context)
  caption_query_feat_dir: str  # query tokens from the caption text encoder
  caption_dim: int
  clip_len: float  # seconds per clip
  caption_clip_len: float  # seconds per caption (2 s for VideoChat captions)
  max_clips: int
  max_query_tokens: int
  use_tef: bool = True

  def __post_init__(self):
    if len(self.visual_streams) != len(self.visual_dims):
      raise DataError(
          f"data.visual_streams {self.visual_streams} and data.visual_dims "
          f"{self.visual_dims} differ in length"
      )

  @classmethod
  def from_config(cls, data) -> FeatureSpec:
    """The spec that ``config.data`` describes."""
    return cls(
        feat_root=data.feat_root,
        visual_streams=tuple(data.visual_streams),
        visual_dims=tuple(data.visual_dims),
        query_feat_dir=data.query_feat_dir,
        query_dim=data.query_dim,
        caption_feat_dir=data.caption_feat_dir,
        caption_query_feat_dir=data.caption_query_feat_dir,
        caption_dim=data.caption_dim,
        clip_len=data.clip_len,
        caption_clip_len=data.caption_clip_len,
        max_clips=data.max_clips,
        max_query_tokens=data.max_query_tokens,
        use_tef=data.use_tef,
    )

  @property
  def same_query_files(self) -> bool:
    """Whether both query encoders read one folder (Charades-STA: Llama tokens for both VQFs)."""
    return (self.query_feat_dir, self.query_dim) == (self.caption_query_feat_dir, self.caption_dim)

  @property
  def video_dim(self) -> int:
    return sum(self.visual_dims) + (TEF_DIM if self.use_tef else 0)


def write_npz(path: str, **arrays: np.ndarray) -> None:
  """Writes ``path`` whole or not at all (a temporary file renamed into place)."""
  with fileio.atomic_file(path) as f:
    np.savez(f, **arrays)


def read_npz_array(path: str, key: str, dim: int, context: str) -> np.ndarray:
  """Loads ``key`` from ``path`` as float32 (N, dim); every failure is a one-line DataError."""
  if not os.path.exists(path):
    raise DataError(f"{path}: missing feature file ({context})")
  try:
    with np.load(path, allow_pickle=False) as npz:
      if key not in npz.files:
        raise DataError(f"{path}: no key '{key}' (has {sorted(npz.files)}) ({context})")
      array = npz[key]
  except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
    if isinstance(e, DataError):
      raise
    raise DataError(f"{path}: unreadable npz ({type(e).__name__}: {e}) ({context})") from None
  if array.ndim != 2 or array.shape[1] != dim:
    raise DataError(f"{path}: key '{key}' has shape {array.shape}, expected (N, {dim}) ({context})")
  if array.shape[0] == 0:
    raise DataError(f"{path}: key '{key}' is empty ({context})")
  array = array.astype(np.float32)
  if not np.isfinite(array).all():
    bad_row = int(np.argwhere(~np.isfinite(array))[0, 0])
    raise DataError(f"{path}: key '{key}' has NaN/inf values (first in row {bad_row}) ({context})")
  return array


def l2_normalize(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def temporal_endpoints(num_clips: int) -> np.ndarray:
  """The peers' TEF: clip i of L gets [i/L, (i+1)/L]."""
  starts = np.arange(num_clips, dtype=np.float32) / num_clips
  return np.stack([starts, starts + 1.0 / num_clips], axis=1)


def captions_per_clip(
    caption_CxD: np.ndarray, caption_clip_len: float, clip_len: float
) -> np.ndarray:
  """Maps per-caption rows onto visual clips: clip i takes the caption covering its midpoint.

  Identity when both use the same clip length (QVHighlights); for Charades-STA's 1/6 s VGG clips each
  2 s caption serves 12 clips. The result covers the captioned time only.
  """
  if np.isclose(caption_clip_len, clip_len):
    return caption_CxD
  num_clips = int(np.floor(caption_CxD.shape[0] * caption_clip_len / clip_len + 1e-6))
  midpoints = (np.arange(num_clips) + 0.5) * clip_len
  rows = np.minimum((midpoints / caption_clip_len).astype(int), caption_CxD.shape[0] - 1)
  return caption_CxD[rows]


@dataclasses.dataclass(frozen=True)
class VideoFeatures:
  visual: np.ndarray  # (L, video_dim)
  caption: np.ndarray | None  # (L, caption_dim)
  num_clips_on_disk: int  # before truncation to max_clips


def load_video(spec: FeatureSpec, vid: str, with_captions: bool) -> VideoFeatures:
  context = f"vid {vid}"
  streams = [
      l2_normalize(
          read_npz_array(os.path.join(spec.feat_root, d, f"{vid}.npz"), "features", dim, context)
      )
      for d, dim in zip(spec.visual_streams, spec.visual_dims)
  ]
  num_clips_on_disk = min(s.shape[0] for s in streams)
  caption = None
  if with_captions:
    caption = read_npz_array(
        os.path.join(spec.feat_root, spec.caption_feat_dir, f"{vid}.npz"),
        "features",
        spec.caption_dim,
        context,
    )
    caption = captions_per_clip(caption, spec.caption_clip_len, spec.clip_len)
    num_clips_on_disk = min(num_clips_on_disk, caption.shape[0])
  num_clips = min(num_clips_on_disk, spec.max_clips)
  visual = np.concatenate([s[:num_clips] for s in streams], axis=1)
  if spec.use_tef:
    visual = np.concatenate([visual, temporal_endpoints(num_clips)], axis=1)
  if caption is not None:
    caption = caption[:num_clips]
  return VideoFeatures(visual=visual, caption=caption, num_clips_on_disk=num_clips_on_disk)


def load_query_tokens(spec: FeatureSpec, qid: int, caption_encoder: bool) -> np.ndarray:
  """Token features of one query, cut to ``max_query_tokens`` (the peers keep the first 32)."""
  if caption_encoder:
    directory, dim = spec.caption_query_feat_dir, spec.caption_dim
  else:
    directory, dim = spec.query_feat_dir, spec.query_dim
  path = os.path.join(spec.feat_root, directory, f"qid{qid}.npz")
  tokens = read_npz_array(path, "last_hidden_state", dim, f"qid {qid}")
  return tokens[: spec.max_query_tokens]


class NpzStore:
  """The feature store of ``.npz`` files (docs/data_layout.md), each file read once and kept.

  A feature store serves ``ExampleSource``: ``video(vid)``, ``query_tokens(qid, caption_encoder)``,
  ``clip_counts(vid)`` ((clips kept, clips on disk), or None while unknown) and ``preload``.
  """

  def __init__(self, spec: FeatureSpec, with_captions: bool):
    self.spec = spec
    self.with_captions = with_captions
    self._videos: dict[str, VideoFeatures] = {}
    self._tokens: dict[tuple[int, bool], np.ndarray] = {}

  def preload(self, annotations) -> None:
    """Reads and validates every file the annotations need, so a bad one fails before training."""
    for ann in annotations:
      self.video(ann.vid)
      self.query_tokens(ann.qid, False)
      if self.with_captions:
        self.query_tokens(ann.qid, True)

  def video(self, vid: str) -> VideoFeatures:
    if vid not in self._videos:
      self._videos[vid] = load_video(self.spec, vid, self.with_captions)
    return self._videos[vid]

  def query_tokens(self, qid: int, caption_encoder: bool) -> np.ndarray:
    # Keyed by the folder read, so that a query's tokens are held once when both encoders are one.
    key = (qid, caption_encoder and not self.spec.same_query_files)
    if key not in self._tokens:
      self._tokens[key] = load_query_tokens(self.spec, qid, caption_encoder)
    return self._tokens[key]

  def clip_counts(self, vid: str) -> tuple[int, int] | None:
    video = self._videos.get(vid)
    return None if video is None else (video.visual.shape[0], video.num_clips_on_disk)
