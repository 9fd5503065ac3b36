"""Reads the numpy feature files of docs/data_layout.md, validated, normalised and cut to one length.

Visual streams follow the peers' (Moment-DETR / QD-DETR) convention: each stream L2-normalised per clip, all
streams (and the caption context) cut to the shortest length, concatenated, then the two temporal-endpoint
dims [i/L, (i+1)/L] appended. Videos longer than ``max_clips`` are truncated to their first ``max_clips``
clips (the peers' policy); the caller logs it and shortens the duration accordingly.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zipfile
import zlib

import numpy as np

from lmr_jax import fileio
from lmr_jax.data.queries import DataError, QueryAnnotation
from lmr_jax.errors import ConfigError

TEF_DIM = 2  # the temporal endpoints [i/L, (i+1)/L] appended to each clip's visual features
NPY_MAGIC = b"\x93NUMPY"  # how a .npy file starts (an .npz is a zip archive: b"PK")
# The peers' feature releases disagree by one clip at most (Charades-STA SlowFast vs CLIP at 1 s: 195
# vs 194 clips for its longest video), which they cut away; more is features of different videos.
STREAM_SLACK_CLIPS = 1
# Failures numpy and zipfile raise on a file that is not a whole npz archive.
_UNREADABLE = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


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
      raise ConfigError(
          f"config.data.visual_streams {self.visual_streams} and config.data.visual_dims "
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


def _check_file(path: str, key: str, context: str) -> None:
  """``path`` is a file that starts as a zip archive (an .npz) does: not a folder, nor a .npy file
  under an .npz name (numpy would load that as an array), nor anything else."""
  if os.path.isdir(path):
    raise DataError(f"{path}: is a directory, not a feature file ({context})")
  if not os.path.exists(path):
    folder = os.path.dirname(path)
    hint = "" if os.path.isdir(folder) else f"; its folder {folder} does not exist either"
    raise DataError(f"{path}: missing feature file ({context}){hint}")
  with open(path, "rb") as f:
    head = f.read(len(NPY_MAGIC))
  if head == NPY_MAGIC:
    raise DataError(
        f"{path}: a .npy file under an .npz name; write it with np.savez(path, {key}=array) "
        f"({context})"
    )
  if not head.startswith(b"PK"):  # numpy would try to unpickle it
    raise DataError(f"{path}: unreadable npz (not a zip archive) ({context})")


def _check_array(path: str, key: str, shape: tuple, dtype: np.dtype, *, dim: int, context: str):
  """What every feature array must be: numbers, (N, dim), N > 0."""
  if dtype.kind not in "fiu":
    raise DataError(f"{path}: key '{key}' holds {dtype}, not numbers ({context})")
  if len(shape) != 2 or shape[1] != dim:
    raise DataError(f"{path}: key '{key}' has shape {shape}, expected (N, {dim}) ({context})")
  if shape[0] == 0:
    raise DataError(f"{path}: key '{key}' is empty ({context})")


def _unreadable(path: str, error: Exception, context: str) -> DataError:
  return DataError(f"{path}: unreadable npz ({type(error).__name__}: {error}) ({context})")


def read_npz_array(
    path: str, key: str, dim: int, context: str, *, zero_rows: str = "none"
) -> np.ndarray:
  """Loads ``key`` from ``path`` as float32 (N, dim); every failure is a one-line DataError.

  ``zero_rows``: "none" (a clip's or caption's features: an all-zero row is a failed extraction or
  an empty caption, which training would read as a real clip) or "some" (query tokens, where zero
  rows may be padding but not every row may be)."""
  _check_file(path, key, context)
  try:
    with np.load(path, allow_pickle=False) as npz:
      if key not in npz.files:
        raise DataError(f"{path}: no key '{key}' (has {sorted(npz.files)}) ({context})")
      array = npz[key]
  except DataError:
    raise
  except _UNREADABLE as e:
    raise _unreadable(path, e, context) from None
  if zero_rows not in ("none", "some"):
    raise ValueError(f"zero_rows={zero_rows!r}: 'none' or 'some'")
  _check_array(path, key, array.shape, array.dtype, dim=dim, context=context)
  array = array.astype(np.float32)
  if not np.isfinite(array).all():
    bad_row = int(np.argwhere(~np.isfinite(array))[0, 0])
    raise DataError(f"{path}: key '{key}' has NaN/inf values (first in row {bad_row}) ({context})")
  zero_N = ~array.any(axis=1)
  if zero_rows == "none" and zero_N.any():
    raise DataError(
        f"{path}: key '{key}' row {int(np.argmax(zero_N))} is all zeros (a failed extraction or "
        f"an empty caption; {int(zero_N.sum())} such rows) ({context})"
    )
  if zero_N.all():
    raise DataError(f"{path}: key '{key}' is all zeros (a query of only padding) ({context})")
  return array


def npz_rows(path: str, key: str, dim: int, context: str) -> int:
  """The row count of ``key`` in ``path``, checked as ``read_npz_array`` checks it but from the
  array's header alone (values, NaN/inf included, are not read): what a lazy source checks up front.
  """
  _check_file(path, key, context)
  try:
    with zipfile.ZipFile(path) as archive:
      names = archive.namelist()
      if f"{key}.npy" not in names:
        keys = sorted(n[: -len(".npy")] if n.endswith(".npy") else n for n in names)
        raise DataError(f"{path}: no key '{key}' (has {keys}) ({context})")
      with archive.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
          shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
          shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:  # a header layout without a public reader: read the array itself
          return read_npz_array(path, key, dim, context).shape[0]
  except DataError:
    raise
  except _UNREADABLE as e:
    raise _unreadable(path, e, context) from None
  _check_array(path, key, shape, dtype, dim=dim, context=context)
  return shape[0]


def l2_normalize(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def temporal_endpoints(num_clips: int) -> np.ndarray:
  """The peers' TEF: clip i of L gets [i/L, (i+1)/L]."""
  starts = np.arange(num_clips, dtype=np.float32) / num_clips
  return np.stack([starts, starts + 1.0 / num_clips], axis=1)


def caption_clips(num_captions: int, caption_clip_len: float, clip_len: float) -> int:
  """The visual clips that ``num_captions`` captions cover (``captions_per_clip``'s row count)."""
  if np.isclose(caption_clip_len, clip_len):
    return num_captions
  return int(np.floor(num_captions * caption_clip_len / clip_len + 1e-6))


def captions_per_clip(
    caption_CxD: np.ndarray, caption_clip_len: float, clip_len: float
) -> np.ndarray:
  """Maps per-caption rows onto visual clips: clip i takes the caption covering its midpoint.

  Identity when both use the same clip length (QVHighlights); for Charades-STA's 1/6 s VGG clips each
  2 s caption serves 12 clips. The result covers the captioned time only.
  """
  if np.isclose(caption_clip_len, clip_len):
    return caption_CxD
  num_clips = caption_clips(caption_CxD.shape[0], caption_clip_len, clip_len)
  midpoints = (np.arange(num_clips) + 0.5) * clip_len
  rows = np.minimum((midpoints / caption_clip_len).astype(int), caption_CxD.shape[0] - 1)
  return caption_CxD[rows]


def visual_path(spec: FeatureSpec, vid: str, stream: int) -> str:
  return os.path.join(spec.feat_root, spec.visual_streams[stream], f"{vid}.npz")


def caption_path(spec: FeatureSpec, vid: str) -> str:
  return os.path.join(spec.feat_root, spec.caption_feat_dir, f"{vid}.npz")


def query_path(spec: FeatureSpec, qid: int, caption_encoder: bool) -> tuple[str, int]:
  """(the token file of query ``qid`` for the caption or the visual VQF, its feature width)."""
  if caption_encoder:
    directory, dim = spec.caption_query_feat_dir, spec.caption_dim
  else:
    directory, dim = spec.query_feat_dir, spec.query_dim
  return os.path.join(spec.feat_root, directory, f"qid{qid}.npz"), dim


def check_streams(spec: FeatureSpec, vid: str, visual_rows: list[int], caption_rows: int | None):
  """The streams of one video must cover one stretch of time: the visual ones the same clips, at most
  ``STREAM_SLACK_CLIPS`` apart (then cut to the shortest, as the peers do), and the captions the
  visual clips' time within one caption or clip. More is a file of another video, or one cut short.
  """
  first = visual_path(spec, vid, 0)
  for stream, rows in enumerate(visual_rows[1:], 1):
    if abs(rows - visual_rows[0]) > STREAM_SLACK_CLIPS:
      raise DataError(
          f"{visual_path(spec, vid, stream)}: {rows} clips, but {first} has {visual_rows[0]} "
          f"(vid {vid}): the visual streams of a video must cover the same clips, at most "
          f"{STREAM_SLACK_CLIPS} apart"
      )
  if caption_rows is not None:
    visual_s = min(visual_rows) * spec.clip_len
    caption_s = caption_rows * spec.caption_clip_len
    if abs(caption_s - visual_s) > max(spec.clip_len, spec.caption_clip_len) + 1e-6:
      raise DataError(
          f"{caption_path(spec, vid)}: {caption_rows} captions of {spec.caption_clip_len:g} s "
          f"cover {caption_s:g} s, but the clips of {first} cover {visual_s:g} s (vid {vid}): "
          f"more than one caption apart"
      )


def clips_on_disk(spec: FeatureSpec, visual_rows: list[int], caption_rows: int | None) -> int:
  """The clips every stream covers (before truncation to ``max_clips``)."""
  clips = min(visual_rows)
  if caption_rows is not None:
    clips = min(clips, caption_clips(caption_rows, spec.caption_clip_len, spec.clip_len))
  return clips


def duration_slack_clips(clip_len: float) -> int:
  """How far a video's clip count may be from its duration's: one clip (feature extractors round a
  trailing partial clip either way), and at least 1 s for sub-second clips, whose count also moves
  with the frame rate the features were extracted at (Charades-STA VGG: 6 clips per second)."""
  return max(1, math.ceil(1.0 / clip_len - 1e-6))


def check_duration(ann: QueryAnnotation, visual_clips: int, spec: FeatureSpec) -> None:
  """An annotation's duration must match its video's visual clips on disk within
  ``duration_slack_clips``: QVHighlights' 150 s videos have 75 clips of 2 s. Anything further off is
  the features of another video, or a ``config.data.clip_len`` that is not theirs."""
  exact = ann.duration / spec.clip_len
  slack = duration_slack_clips(spec.clip_len)
  if not math.floor(exact + 1e-6) - slack <= visual_clips <= math.ceil(exact - 1e-6) + slack:
    raise DataError(
        f"{ann.source}: qid {ann.qid}: duration {ann.duration:g} s is {exact:.4g} clips of "
        f"{spec.clip_len:g} s, but {visual_path(spec, ann.vid, 0)} has {visual_clips} (more than "
        f"{slack} off): features of another video, or a config.data.clip_len that is not theirs"
    )


@dataclasses.dataclass(frozen=True)
class VideoFeatures:
  visual: np.ndarray  # (L, video_dim)
  caption: np.ndarray | None  # (L, caption_dim)
  num_clips_on_disk: int  # before truncation to max_clips
  visual_clips_on_disk: int | None = None  # the shortest visual stream (None: packed data)


def load_video(spec: FeatureSpec, vid: str, with_captions: bool) -> VideoFeatures:
  context = f"vid {vid}"
  streams = [
      l2_normalize(read_npz_array(visual_path(spec, vid, i), "features", dim, context))
      for i, dim in enumerate(spec.visual_dims)
  ]
  caption = None
  if with_captions:
    caption = read_npz_array(caption_path(spec, vid), "features", spec.caption_dim, context)
  visual_rows = [s.shape[0] for s in streams]
  caption_rows = None if caption is None else caption.shape[0]
  check_streams(spec, vid, visual_rows, caption_rows)
  num_clips_on_disk = clips_on_disk(spec, visual_rows, caption_rows)
  num_clips = min(num_clips_on_disk, spec.max_clips)
  visual = np.concatenate([s[:num_clips] for s in streams], axis=1)
  if spec.use_tef:
    visual = np.concatenate([visual, temporal_endpoints(num_clips)], axis=1)
  if caption is not None:
    caption = captions_per_clip(caption, spec.caption_clip_len, spec.clip_len)[:num_clips]
  return VideoFeatures(
      visual=visual,
      caption=caption,
      num_clips_on_disk=num_clips_on_disk,
      visual_clips_on_disk=min(visual_rows),
  )


def scan_video(spec: FeatureSpec, vid: str, with_captions: bool) -> tuple[int, int]:
  """(visual clips on disk, clips every stream covers) of ``vid`` from its files' npz headers, with
  ``load_video``'s checks of everything but the values."""
  context = f"vid {vid}"
  visual_rows = [
      npz_rows(visual_path(spec, vid, i), "features", dim, context)
      for i, dim in enumerate(spec.visual_dims)
  ]
  caption_rows = None
  if with_captions:
    caption_rows = npz_rows(caption_path(spec, vid), "features", spec.caption_dim, context)
  check_streams(spec, vid, visual_rows, caption_rows)
  return min(visual_rows), clips_on_disk(spec, visual_rows, caption_rows)


def load_query_tokens(spec: FeatureSpec, qid: int, caption_encoder: bool) -> np.ndarray:
  """Token features of one query, cut to ``max_query_tokens`` (the peers keep the first 32)."""
  path, dim = query_path(spec, qid, caption_encoder)
  tokens = read_npz_array(path, "last_hidden_state", dim, f"qid {qid}", zero_rows="some")
  return tokens[: spec.max_query_tokens]


class NpzStore:
  """The feature store of ``.npz`` files (docs/data_layout.md), each file read once and kept.

  A feature store serves ``ExampleSource``: ``video(vid)``, ``query_tokens(qid, caption_encoder)``,
  ``clip_counts(vid)`` ((clips kept, clips on disk), or None while unknown), and the up-front checks
  ``preload`` (every file read) and ``scan`` (every file's npz header). With ``keep_arrays=False``
  nothing is kept but the clip counts (a checker that reads a whole split in bounded memory).
  """

  def __init__(self, spec: FeatureSpec, with_captions: bool, keep_arrays: bool = True):
    self.spec = spec
    self.with_captions = with_captions
    self.keep_arrays = keep_arrays
    self._videos: dict[str, VideoFeatures] = {}
    self._tokens: dict[tuple[int, bool], np.ndarray] = {}
    self._counts: dict[str, tuple[int, int]] = {}  # vid -> (clips kept, clips on disk)
    self._visual_clips: dict[str, int] = {}  # vid -> its shortest visual stream's clips

  def _encoders(self) -> tuple[bool, ...]:
    return (False, True) if self.with_captions else (False,)

  def preload(self, annotations) -> None:
    """Reads and validates every file the annotations need, and each annotation's duration against
    its video's clips, so that a bad one fails before training."""
    for ann in annotations:
      if ann.vid not in self._counts:
        self.video(ann.vid)
      check_duration(ann, self._visual_clips[ann.vid], self.spec)
      for caption_encoder in self._encoders():
        self.query_tokens(ann.qid, caption_encoder)

  def scan(self, annotations) -> None:
    """``preload``'s checks from the npz headers alone (existence, keys, shapes, dims, the streams'
    and the duration's clip counts; not the values, which are checked when read), and the clip
    counts; nothing else is read or kept."""
    for ann in annotations:
      if ann.vid not in self._counts:
        visual_clips, on_disk = scan_video(self.spec, ann.vid, self.with_captions)
        self._visual_clips[ann.vid] = visual_clips
        self._counts[ann.vid] = (min(on_disk, self.spec.max_clips), on_disk)
      check_duration(ann, self._visual_clips[ann.vid], self.spec)
      for caption_encoder in self._encoders():
        path, dim = query_path(self.spec, ann.qid, caption_encoder)
        npz_rows(path, "last_hidden_state", dim, f"qid {ann.qid}")

  def video(self, vid: str) -> VideoFeatures:
    video = self._videos.get(vid)
    if video is None:
      video = load_video(self.spec, vid, self.with_captions)
      self._visual_clips[vid] = video.visual_clips_on_disk
      self._counts[vid] = (video.visual.shape[0], video.num_clips_on_disk)
      if self.keep_arrays:
        self._videos[vid] = video
    return video

  def query_tokens(self, qid: int, caption_encoder: bool) -> np.ndarray:
    # Keyed by the folder read, so that a query's tokens are held once when both encoders are one.
    key = (qid, caption_encoder and not self.spec.same_query_files)
    tokens = self._tokens.get(key)
    if tokens is None:
      tokens = load_query_tokens(self.spec, qid, caption_encoder)
      if self.keep_arrays:
        self._tokens[key] = tokens
    return tokens

  def clip_counts(self, vid: str) -> tuple[int, int] | None:
    return self._counts.get(vid)
