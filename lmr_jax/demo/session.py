"""What the demo page asks of a trained workdir, without the page: a video (an upload, or one with
precomputed features) and free-text queries in, predict.py's records and the clip captions out.

An uploaded video goes through the very steps of ``predict.py --video`` (``Encoders`` writes its
feature files, the loaders read them back, ``Predictor`` predicts in sliding windows), so the page
shows what predict.py prints. Its files are kept under ``cache_dir``, named by the video's content,
so a second question about the same video skips CLIP and the captioner.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from lmr_jax.errors import LmrError
from lmr_jax.inference import predictor as predictor_lib

MAX_QUERIES = 20  # one page request; each query is a model row per window
MAX_UPLOAD_MB = 500.0  # demo.py --max_upload_mb
MAX_VIDEO_MINUTES = 30.0  # demo.py --max_video_minutes
Progress = Callable[[float, str], None]  # (fraction done, what is running)
# Share of the work each stage of a new upload takes (captioning dominates), for one progress bar.
STAGES = {
    "slowfast features": (0.0, 0.1),  # models that read SlowFast features only
    "clip features": (0.1, 0.15),
    "captions": (0.15, 0.85),
    "caption embeddings": (0.85, 0.9),
}


class DemoError(LmrError):
  """Input the page cannot answer; the message is the one line the page shows."""


@dataclasses.dataclass(frozen=True)
class Answer:
  """One request's results: predict.py records (one per query, in the order asked) and, where the
  video has them, its clip captions as the model read them."""

  records: list[dict]
  captions: list[dict]  # [{"start", "end", "caption", "instruction"}] in clip order; [] if none
  video_name: str


def parse_queries(text: str | None) -> list[str]:
  """One query per non-empty line."""
  queries = [line.strip() for line in (text or "").splitlines() if line.strip()]
  if not queries:
    raise DemoError("enter a query: one sentence per line")
  if len(queries) > MAX_QUERIES:
    raise DemoError(f"at most {MAX_QUERIES} queries at a time, got {len(queries)}")
  return queries


def _content_id(path: str) -> str:
  """A file name for the video's features: its name and a hash of its bytes."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).stem)[:48] or "video"
  return f"{stem}_{digest.hexdigest()[:12]}"


def read_captions(feat_root: str | os.PathLike, vid: str, duration: float) -> list[dict]:
  """``captions/{vid}.json`` (preprocess.captions' record) as rows with clip times (the last clip
  ends with the video); [] if absent."""
  path = Path(feat_root) / "captions" / f"{vid}.json"
  if not path.exists():
    return []
  try:
    record = json.loads(path.read_text(encoding="utf-8"))
    captions, clip_len = record["captions"], float(record["clip_len"])
    instructions = record.get("instructions") or [""] * len(captions)
  except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
    raise DemoError(f"{path}: unreadable captions record ({type(e).__name__}: {e})") from None
  return caption_rows(captions, instructions, clip_len=clip_len, duration=duration)


def caption_rows(captions, instructions, *, clip_len: float, duration: float) -> list[dict]:
  """One row per clip caption with its clip's times (the last clip ends with the video)."""
  return [
      {
          "start": i * clip_len,
          "end": min((i + 1) * clip_len, duration),
          "caption": c,
          "instruction": ins,
      }
      for i, (c, ins) in enumerate(zip(captions, instructions))
  ]


class DemoSession:
  """A restored workdir and its frozen encoders (``Encoders``; queries are free text, so they are
  always needed), loaded once for every request of the page. ``features``: a feature root whose
  videos the page lists (read once, here); ``videos``: a folder of their raw files, for the player.
  """

  def __init__(
      self,
      predictor: predictor_lib.Predictor,
      encoders,
      cache_dir: str | os.PathLike,
      features: str | None = None,
      *,
      videos: str | None = None,
      top_k: int = 10,
      max_upload_mb: float = MAX_UPLOAD_MB,
      max_video_minutes: float = MAX_VIDEO_MINUTES,
  ):
    predictor_lib.check_options(predictor.config, top_k, None, 0.5)
    self.predictor, self.encoders = predictor, encoders
    self.cache_dir = Path(cache_dir)
    self.features, self.videos, self.top_k = features, videos, top_k
    self.max_upload_mb, self.max_video_minutes = max_upload_mb, max_video_minutes
    # The videos the page lists and a request may name: those with a file of the first visual
    # stream (the loaders check the rest when one is asked for).
    self.feature_vids: list[str] = []
    if features:
      stream = Path(features) / predictor.config.data.visual_streams[0]
      self.feature_vids = sorted(p.stem for p in stream.glob("*.npz"))

  @property
  def config(self):
    return self.predictor.config

  def video_file(self, vid: str) -> str | None:
    """The raw file of a feature video in ``videos`` (any extension), for the player."""
    if not self.videos or vid not in self.feature_vids:  # never a path a request makes up
      return None
    matches = sorted(Path(self.videos).glob(f"{glob.escape(vid)}.*"))
    return str(matches[0]) if matches else None

  def answer_upload(
      self, video: str | None, text: str | None, on_progress: Progress | None = None
  ) -> Answer:
    """Moments of each query in an uploaded video file (its features cached by content)."""
    report = on_progress or (lambda fraction, what: None)
    queries = parse_queries(text)
    if not video:
      raise DemoError("upload a video, or pick one with precomputed features")
    predictor_lib.check_raw_video_config(self.config)
    name = os.path.basename(video)
    feat_root = self.cache_dir / "features"

    def stage_progress(stage: str, done: int, total: int) -> None:
      low, high = STAGES[stage]
      report(low + (high - low) * done / max(total, 1), f"{stage}: {done}/{total}")

    try:
      self._check_upload(video, name)
      vid = _content_id(video)
      duration = self.encoders.write_video_features(video, feat_root, vid, stage_progress)
    except predictor_lib.PredictError as e:  # name the user's file, not the upload's temp path
      raise DemoError(str(e).replace(str(video), name)) from None
    inputs = predictor_lib.load_video_inputs(self.config, str(feat_root), vid, duration)
    report(0.9, "predicting")
    records = self._predict(inputs, queries, video=name)
    return Answer(records, read_captions(feat_root, vid, inputs.duration), name)

  def _check_upload(self, video: str, name: str) -> None:
    """Before any model runs: the file is within the size limit (the server's own limit refuses
    larger uploads before they land; this holds for any other way in), a video by its content, and
    within the duration limit."""
    megabytes = os.path.getsize(video) / 2**20
    if megabytes > self.max_upload_mb:
      raise DemoError(
          f"{name}: {megabytes:.3g} MB; this server takes uploads up to {self.max_upload_mb:g} MB"
      )
    minutes = self.encoders.video_duration(video) / 60  # an unreadable file: a PredictError
    if minutes > self.max_video_minutes:
      raise DemoError(
          f"{name}: {minutes:.3g} minutes long; this server takes videos up to "
          f"{self.max_video_minutes:g} minutes"
      )

  def answer_features(self, vid: str | None, text: str | None) -> Answer:
    """Moments of each query in a video of the ``features`` root."""
    queries = parse_queries(text)
    if not vid or vid not in self.feature_vids:
      raise DemoError(f"no video {vid!r} with precomputed features under {self.features}")
    inputs = predictor_lib.load_video_inputs(self.config, self.features, vid)
    records = self._predict(inputs, queries, video=self.video_file(vid))
    return Answer(records, read_captions(self.features, vid, inputs.duration), vid)

  def _predict(self, inputs, queries: list[str], video: str | None) -> list[dict]:
    encoded = [self.encoders.query(text) for text in queries]
    records = self.predictor.predict(inputs, encoded, self.top_k)
    return [{**r, "video": video} if video else r for r in records]
