"""QVHighlights-style JSON Lines annotations (QVHighlights, Charades-STA, synthetic).

One query per line: ``qid, query, duration, vid`` and, for labelled splits, ``relevant_windows`` (seconds),
``relevant_clip_ids`` and ``saliency_scores`` (three annotators per clip, QVHighlights only). Every problem
is reported as one ``DataError`` line naming the file and line, before anything is trained on it.
"""

from __future__ import annotations

import dataclasses
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


def parse_annotation(record: dict, source: str) -> QueryAnnotation:
  """Validates one decoded line; ``source`` is "path:line" and starts every error message."""
  for key in ("qid", "query", "duration", "vid"):
    if key not in record:
      raise DataError(f"{source}: missing key '{key}'")
  qid = record["qid"]
  if not isinstance(qid, int) or isinstance(qid, bool):
    raise DataError(f"{source}: 'qid' must be an integer, got {qid!r}")
  query = record["query"]
  if not isinstance(query, str) or not query.strip():
    raise DataError(f"{source}: qid {qid}: empty query")
  duration = record["duration"]
  if not fileio.is_number(duration) or duration <= 0:
    raise DataError(f"{source}: qid {qid}: 'duration' must be a positive number, got {duration!r}")
  vid = record["vid"]
  if not isinstance(vid, str) or not vid:
    raise DataError(f"{source}: qid {qid}: 'vid' must be a non-empty string")

  windows = []
  for w in record.get("relevant_windows", []):
    if not (isinstance(w, list) and len(w) == 2 and all(fileio.is_number(x) for x in w)):
      raise DataError(f"{source}: qid {qid}: window {w!r} is not [start, end]")
    start, end = float(w[0]), float(w[1])
    if not 0.0 <= start < end <= duration:
      raise DataError(
          f"{source}: qid {qid}: window [{start}, {end}] is outside [0, duration={duration}] or empty"
      )
    windows.append((start, end))

  clip_ids = record.get("relevant_clip_ids", [])
  scores = record.get("saliency_scores", [])
  if len(clip_ids) != len(scores):
    raise DataError(
        f"{source}: qid {qid}: {len(clip_ids)} relevant_clip_ids but "
        f"{len(scores)} saliency_scores"
    )
  for cid, s in zip(clip_ids, scores):
    if not isinstance(cid, int) or cid < 0:
      raise DataError(f"{source}: qid {qid}: bad relevant_clip_id {cid!r}")
    if not (isinstance(s, list) and s and all(isinstance(x, int) and 0 <= x <= 4 for x in s)):
      raise DataError(f"{source}: qid {qid}: saliency scores {s!r} must be integers in [0, 4]")
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


def load_annotations(path: str | os.PathLike) -> list[QueryAnnotation]:
  """Reads every line of a QVHighlights-style jsonl file; duplicate qids are an error."""
  annotations, seen = [], {}
  for record, source in fileio.read_jsonl(path, DataError, "annotation file"):
    ann = parse_annotation(record, source)
    if ann.qid in seen:
      raise DataError(f"{source}: duplicate qid {ann.qid} (first at line {seen[ann.qid]})")
    seen[ann.qid] = source.rsplit(":", 1)[1]
    annotations.append(ann)
  return annotations


def load_split(annotation_files, split: str) -> list[QueryAnnotation]:
  """The annotations of ``split`` from ``config.data.annotation_files``."""
  if split not in annotation_files:
    raise DataError(
        f"config.data.annotation_files has no split '{split}' (has {sorted(annotation_files)})"
    )
  return load_annotations(annotation_files[split])


def main(argv=None) -> int:
  """``python -m lmr_jax.data.annotations FILE...``: validates each file, prints its counts."""
  import argparse

  parser = argparse.ArgumentParser(description="Validate QVHighlights-style annotation files.")
  parser.add_argument("files", nargs="+")
  failed = 0
  for path in parser.parse_args(argv).files:
    try:
      anns = load_annotations(path)
    except DataError as e:
      print(f"error: {e}")
      failed += 1
      continue
    labelled = sum(a.has_labels for a in anns)
    print(
        f"{path}: {len(anns)} queries, {len({a.vid for a in anns})} videos, {labelled} labelled, "
        f"max duration {max(a.duration for a in anns):g} s"
    )
  return 1 if failed else 0


if __name__ == "__main__":
  raise SystemExit(main())
