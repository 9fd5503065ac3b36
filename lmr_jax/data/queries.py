"""QVHighlights-style JSON Lines annotations (QVHighlights, Charades-STA, synthetic), read and checked.

One query per line: ``qid, query, duration, vid`` and, for labelled splits, ``relevant_windows`` (seconds),
``relevant_clip_ids`` and ``saliency_scores`` (three annotators per clip, QVHighlights only). Every problem
is reported as one ``DataError`` line naming the file and line, before anything is trained on it.

The loaders import this module; ``annotations`` (which re-exports it) is also the checker command, which
reaches up to the feature checks of ``dataset``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

from lmr_jax import fileio
from lmr_jax.errors import LmrError


class DataError(LmrError):
  """Bad input data; the message is one line naming the file and the line, qid or key."""


@dataclasses.dataclass(frozen=True)
class QueryAnnotation:
  qid: int
  query: str
  vid: str
  duration: float
  windows: tuple[tuple[float, float], ...]  # seconds; empty for unlabelled (test) splits
  relevant_clip_ids: tuple[int, ...]
  saliency_scores: tuple[tuple[int, ...], ...]  # per relevant clip, one score per annotator
  source: str  # "file:line", for error messages downstream

  @property
  def has_labels(self) -> bool:
    return bool(self.windows)

  def to_record(self) -> dict:
    """The annotation as a jsonl record again (what the evaluators take as ground truth)."""
    record = {"qid": self.qid, "query": self.query, "duration": self.duration, "vid": self.vid}
    if self.has_labels:
      record["relevant_windows"] = [list(w) for w in self.windows]
    if self.relevant_clip_ids:
      record["relevant_clip_ids"] = list(self.relevant_clip_ids)
      record["saliency_scores"] = [list(s) for s in self.saliency_scores]
    return record


def _shown(value) -> str:
  """``value`` as the file spells it (``null``, not ``None``), cut short: error messages are one line."""
  try:
    text = json.dumps(value)
  except (TypeError, ValueError):
    text = repr(value)
  return text if len(text) <= 60 else text[:57] + "..."


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _list_field(record: dict, key: str, where: str) -> list:
  """``record[key]``, a list; absent is empty (unlabelled splits), ``null`` or a non-list an error."""
  value = record.get(key, [])
  if not isinstance(value, list):
    raise DataError(f"{where}: '{key}' must be a list, got {_shown(value)}")
  return value


def parse_annotation(record: dict, source: str) -> QueryAnnotation:
  """Validates one decoded line; ``source`` is "path:line" and starts every error message."""
  for key in ("qid", "query", "duration", "vid"):
    if key not in record:
      raise DataError(f"{source}: missing key '{key}'")
  qid = record["qid"]
  if not _is_int(qid):
    raise DataError(f"{source}: 'qid' must be an integer, got {_shown(qid)}")
  where = f"{source}: qid {qid}"
  query = record["query"]
  if not isinstance(query, str) or not query.strip():
    raise DataError(f"{where}: empty query")
  duration = record["duration"]
  if not fileio.is_number(duration) or duration <= 0:
    raise DataError(f"{where}: 'duration' must be a positive number, got {_shown(duration)}")
  vid = record["vid"]
  if not isinstance(vid, str) or not vid:
    raise DataError(f"{where}: 'vid' must be a non-empty string")

  windows = []
  for w in _list_field(record, "relevant_windows", where):
    if not (isinstance(w, list) and len(w) == 2 and all(fileio.is_number(x) for x in w)):
      raise DataError(f"{where}: window {_shown(w)} is not [start, end]")
    start, end = float(w[0]), float(w[1])
    if not start < end:
      raise DataError(f"{where}: window [{start}, {end}] is reversed or empty (start >= end)")
    if not 0.0 <= start < end <= duration:
      raise DataError(f"{where}: window [{start}, {end}] is outside [0, duration={duration}]")
    windows.append((start, end))

  clip_ids = _list_field(record, "relevant_clip_ids", where)
  scores = _list_field(record, "saliency_scores", where)
  if len(clip_ids) != len(scores):
    raise DataError(f"{where}: {len(clip_ids)} relevant_clip_ids but {len(scores)} saliency_scores")
  for cid, s in zip(clip_ids, scores):
    if not _is_int(cid) or cid < 0:
      raise DataError(f"{where}: bad relevant_clip_id {_shown(cid)}")
    if not (isinstance(s, list) and s and all(_is_int(x) and 0 <= x <= 4 for x in s)):
      raise DataError(f"{where}: saliency scores {_shown(s)} must be integers in [0, 4]")
    if len(s) != len(scores[0]):
      raise DataError(
          f"{where}: clip {cid} has {len(s)} saliency scores, clip {clip_ids[0]} has "
          f"{len(scores[0])} (one per annotator, the same annotators for every clip)"
      )
  repeated = [c for i, c in enumerate(clip_ids) if c in clip_ids[:i]]
  if repeated:
    raise DataError(f"{where}: relevant_clip_ids repeat clip {repeated[0]}")
  return QueryAnnotation(
      qid=qid,
      query=query,
      vid=vid,
      duration=float(duration),
      windows=tuple(windows),
      relevant_clip_ids=tuple(clip_ids),
      saliency_scores=tuple(tuple(s) for s in scores),
      source=source,
  )


def _line(source: str) -> str:
  return source.rsplit(":", 1)[1]


def load_annotations(path: str | os.PathLike) -> list[QueryAnnotation]:
  """Reads every line of a QVHighlights-style jsonl file; duplicate qids are an error, and so is a
  file whose queries have different numbers of annotators (QVHighlights: 3 scores per clip)."""
  if os.path.isdir(path):
    raise DataError(f"{os.fspath(path)}: is a directory, not an annotation file")
  annotations, seen, annotators = [], {}, None
  for record, source in fileio.read_jsonl(path, DataError, "annotation file"):
    ann = parse_annotation(record, source)
    if ann.qid in seen:
      raise DataError(f"{source}: duplicate qid {ann.qid} (first at line {seen[ann.qid]})")
    seen[ann.qid] = _line(source)
    if ann.saliency_scores:
      if annotators is None:
        annotators = (len(ann.saliency_scores[0]), _line(source))
      elif len(ann.saliency_scores[0]) != annotators[0]:
        raise DataError(
            f"{source}: qid {ann.qid}: {len(ann.saliency_scores[0])} saliency scores per clip, "
            f"but line {annotators[1]} has {annotators[0]} (one per annotator, the same in a file)"
        )
    annotations.append(ann)
  return annotations


def num_clips(duration: float, clip_len: float) -> int:
  """The clips of ``clip_len`` seconds that start inside ``duration``: a trailing partial clip counts,
  as in the feature releases (150 s at 2 s: 75)."""
  return max(1, math.ceil(duration / clip_len - 1e-6))


def check_clip_ids(annotations: list[QueryAnnotation], clip_len: float) -> None:
  """Every relevant clip must start inside its video: ``relevant_clip_ids`` count clips of
  ``clip_len`` seconds (config.data.clip_len), so one past the duration's clips is a bad label (or a
  clip_len that is not the annotation's)."""
  for ann in annotations:
    if ann.relevant_clip_ids:
      clips = num_clips(ann.duration, clip_len)
      last = max(ann.relevant_clip_ids)
      if last >= clips:
        raise DataError(
            f"{ann.source}: qid {ann.qid}: relevant_clip_id {last} is past the video's {clips} "
            f"clips (duration {ann.duration:g} s / config.data.clip_len {clip_len:g} s)"
        )


def load_split(annotation_files, split: str) -> list[QueryAnnotation]:
  """The annotations of ``split`` from ``config.data.annotation_files``."""
  if split not in annotation_files:
    raise DataError(
        f"config.data.annotation_files has no split '{split}' (has {sorted(annotation_files)})"
    )
  if not annotation_files[split]:
    raise DataError(f"config.data.annotation_files.{split} is empty: no annotation file to read")
  return load_annotations(annotation_files[split])
