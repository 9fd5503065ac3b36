"""QVHighlights-format submission and ground-truth files: strict reading, validation, atomic writing.

The official evaluator trusts its inputs: a malformed line crashes it with a traceback and an unsorted or
partial submission is silently mis-scored. Here every problem is one ``SubmissionError`` line naming the
file and line (or the record index for in-memory records), raised before any metric is computed.

Submission line: ``{qid, query, vid, pred_relevant_windows: [[st, ed, score], ...] best first,
pred_saliency_scores: [one float per 2 s clip]}`` (saliency optional, but then for every query).
Ground-truth line: ``{qid, query, vid, duration, relevant_windows: [[st, ed], ...],
relevant_clip_ids: [...], saliency_scores: [[a, b, c], ...]}`` (the last two optional, all or none).
``.gz`` paths are read and written gzip-compressed.
"""

from __future__ import annotations

from typing import Sequence

from lmr_jax import fileio
from lmr_jax.errors import LmrError

CLIP_LENGTH = (
    2  # seconds per QVHighlights clip; saliency arrays have int(duration / CLIP_LENGTH) entries
)
NUM_ANNOTATORS = 3


class SubmissionError(LmrError):
  """Bad submission or ground-truth input; the message is one line naming the file and line or qid."""


def _load_jsonl(path: str) -> tuple[list[dict], list[str]]:
  """Records and their "path:line" locations."""
  pairs = fileio.read_jsonl(path, SubmissionError)
  return [r for r, _ in pairs], [w for _, w in pairs]


def read_submission(path: str) -> list[dict]:
  records, where = _load_jsonl(path)
  validate_submission(records, where)
  return records


def read_ground_truth(path: str) -> list[dict]:
  records, where = _load_jsonl(path)
  validate_ground_truth(records, where)
  return records


def _where(where: Sequence[str] | None, kind: str, i: int) -> str:
  return where[i] if where is not None else f"{kind} record {i}"


def _check_qid(record, loc: str):
  if not isinstance(record, dict):
    raise SubmissionError(f"{loc}: expected an object, got {type(record).__name__}")
  qid = record.get("qid")
  if not isinstance(qid, int) or isinstance(qid, bool):
    raise SubmissionError(f"{loc}: 'qid' must be an integer, got {qid!r}")
  return qid


def _check_windows(windows, width: int, key: str, loc: str):
  if not isinstance(windows, list) or not windows:
    raise SubmissionError(f"{loc}: '{key}' must be a non-empty list of windows")
  for k, w in enumerate(windows):
    if not (isinstance(w, list) and len(w) == width and all(fileio.is_number(x) for x in w)):
      raise SubmissionError(f"{loc}: {key}[{k}] must be {width} finite numbers, got {w!r}")
    if w[0] > w[1]:
      raise SubmissionError(f"{loc}: {key}[{k}] has start {w[0]} > end {w[1]}")


def _each_record(records: Sequence[dict], where: Sequence[str] | None, kind: str):
  """(record, "its location: qid N") for each record once its qid is checked; then, a duplicate qid
  is an error."""
  if not records:
    raise SubmissionError(f"empty {kind}: no records")
  qids = []
  for i, record in enumerate(records):
    loc = _where(where, kind, i)
    qid = _check_qid(record, loc)
    qids.append(qid)
    yield record, f"{loc}: qid {qid}"
  _check_unique(qids, where, kind)


def _check_unique(qids: list[int], where: Sequence[str] | None, kind: str):
  first = {}
  for i, qid in enumerate(qids):
    if qid in first:
      raise SubmissionError(
          f"{_where(where, kind, i)}: duplicate qid {qid} "
          f"(first at {_where(where, kind, first[qid])})"
      )
    first[qid] = i


def validate_submission(records: Sequence[dict], where: Sequence[str] | None = None):
  """Raises SubmissionError unless every record has an int qid, 1+ windows [st <= ed, score] sorted by
  score (ties allowed), and either every or no record has finite pred_saliency_scores.

  Sorting is required because the official R1 takes the first listed window and mAP the first ten.
  """
  with_saliency = bool(records) and "pred_saliency_scores" in records[0]
  for record, loc in _each_record(records, where, "submission"):
    windows = record.get("pred_relevant_windows")
    _check_windows(windows, 3, "pred_relevant_windows", loc)
    for k in range(1, len(windows)):
      if windows[k][2] > windows[k - 1][2]:
        raise SubmissionError(
            f"{loc}: pred_relevant_windows not sorted by score (window {k} scores "
            f"{windows[k][2]} > {windows[k - 1][2]})"
        )
    if ("pred_saliency_scores" in record) != with_saliency:
      raise SubmissionError(
          f"{loc}: pred_saliency_scores must be given for every query or for none"
      )
    if with_saliency:
      scores = record["pred_saliency_scores"]
      if not (isinstance(scores, list) and scores and all(fileio.is_number(s) for s in scores)):
        raise SubmissionError(
            f"{loc}: pred_saliency_scores must be a non-empty list of finite numbers"
        )


def _check_saliency(record: dict, loc: str):
  clip_ids, scores = record["relevant_clip_ids"], record["saliency_scores"]
  num_clips = int(record["duration"] / CLIP_LENGTH)
  if num_clips < 1:
    raise SubmissionError(
        f"{loc}: duration {record['duration']} is shorter than one {CLIP_LENGTH} s clip"
    )
  if not (isinstance(clip_ids, list) and isinstance(scores, list) and len(clip_ids) == len(scores)):
    raise SubmissionError(
        f"{loc}: relevant_clip_ids and saliency_scores must be lists of equal length"
    )
  for c in clip_ids:
    if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c < num_clips:
      raise SubmissionError(
          f"{loc}: relevant clip id {c!r} outside [0, {num_clips}) for duration "
          f"{record['duration']}"
      )
  for s in scores:
    if not (
        isinstance(s, list) and len(s) == NUM_ANNOTATORS and all(fileio.is_number(x) for x in s)
    ):
      raise SubmissionError(f"{loc}: saliency score {s!r} must be {NUM_ANNOTATORS} numbers")


def validate_ground_truth(records: Sequence[dict], where: Sequence[str] | None = None):
  """Raises SubmissionError unless every record has an int qid, a positive duration, 1+ windows
  [st <= ed] and, for all records or none, saliency aligned with relevant_clip_ids inside the video.
  """
  with_saliency = bool(records) and "saliency_scores" in records[0]
  for record, loc in _each_record(records, where, "ground truth"):
    if not fileio.is_number(record.get("duration")) or record["duration"] <= 0:
      raise SubmissionError(
          f"{loc}: 'duration' must be a positive number, got {record.get('duration')!r}"
      )
    if "relevant_windows" not in record:
      raise SubmissionError(f"{loc}: no relevant_windows (an unlabelled split cannot be evaluated)")
    _check_windows(record["relevant_windows"], 2, "relevant_windows", loc)
    has = ("saliency_scores" in record, "relevant_clip_ids" in record)
    if has != (with_saliency, with_saliency):
      raise SubmissionError(
          f"{loc}: relevant_clip_ids and saliency_scores must be given for every query "
          f"or for none"
      )
    if with_saliency:
      _check_saliency(record, loc)


def check_qids_match(
    submission: Sequence[dict], ground_truth: Sequence[dict], num_examples: int = 5
):
  """The official evaluator asserts equal qid sets; this says how many differ and which."""
  pred, gt = {d["qid"] for d in submission}, {d["qid"] for d in ground_truth}
  if pred == gt:
    return
  missing, extra = sorted(gt - pred), sorted(pred - gt)
  raise SubmissionError(
      f"submission and ground truth qids differ: {len(missing)} missing from the submission "
      f"(e.g. {missing[:num_examples]}), {len(extra)} not in the ground truth (e.g. {extra[:num_examples]})"
  )


def write_submission(path: str, records: Sequence[dict]):
  """Validates, then writes atomically: an invalid submission never replaces a previous file."""
  validate_submission(records)
  fileio.write_jsonl(path, records)
