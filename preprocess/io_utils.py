"""Files, work splitting and failure bookkeeping shared by the preprocessing CLIs.

Every CLI turns a list of keys (video ids or query ids) into one output file per key. The helpers here make
such runs safe to scale out and to interrupt: keys are split deterministically across array-job shards, an
output that exists is never recomputed (so a re-run resumes), outputs are written atomically (a killed run
never leaves a truncated file that a resume would then skip), and one bad input is logged and skipped
instead of stopping the run.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from absl import flags
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from lmr_jax import fileio


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """QVHighlights-style annotations: one JSON object per non-empty line (lmr_jax's one reader, so a
  malformed line is one error naming the file and line)."""
  return [record for record, _ in fileio.read_jsonl(path, what="annotation file")]


def load_queries(paths: Iterable[str | os.PathLike]) -> dict[int, str]:
  """qid -> query text over several annotation files (e.g. train/val/test of one dataset).

  A qid that appears twice with different text would make `qid{qid}.npz` ambiguous, so it is an error.
  """
  queries: dict[int, str] = {}
  for path in paths:
    for row in read_jsonl(path):
      qid, query = int(row["qid"]), row["query"]
      if queries.setdefault(qid, query) != query:
        raise ValueError(
            f"qid {qid} has two different queries ({path}): {queries[qid]!r} vs {query!r}"
        )
  return queries


def load_vids(paths: Iterable[str | os.PathLike]) -> set[str]:
  """The video ids referenced by annotation files."""
  return {str(row["vid"]) for path in paths for row in read_jsonl(path)}


def batched(items: Iterable, size: int) -> Iterator[list]:
  """Consecutive lists of `size` items (the last may be shorter); itertools.batched needs Python 3.12."""
  batch: list = []
  for item in items:
    batch.append(item)
    if len(batch) == size:
      yield batch
      batch = []
  if batch:
    yield batch


def save_npz(path: Path, **arrays: np.ndarray) -> None:
  """Atomically write an uncompressed .npz (string arrays are stored as numpy unicode, never pickled):
  readers and resumed runs see no file or a complete one."""
  with fileio.atomic_file(path) as f:
    np.savez(f, **arrays)


def save_json(path: Path, obj: Any) -> None:
  """Atomically write a UTF-8 JSON file."""
  fileio.atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=1))


def shard_keys(keys: Iterable, shard: int, num_shards: int) -> list:
  """The keys shard `shard` of `num_shards` owns: every num_shards-th key of the sorted, de-duplicated list.

  Sorting makes the split independent of file listing order, so array-job tasks never overlap or miss a
  key; striding (rather than contiguous blocks) spreads long and short items evenly over the shards.
  """
  if not 0 <= shard < num_shards:
    raise ValueError(f"--shard must be in [0, {num_shards}), got {shard}")
  return sorted(set(keys))[shard::num_shards]


def define_run_flags(flag_values) -> None:
  """Flags every preprocess command shares: output root, array-job sharding and logging."""
  flags.DEFINE_string(
      "out", None, "feature root (see docs/data_layout.md)", flag_values=flag_values, required=True
  )
  flags.DEFINE_integer(
      "shard", 0, "index of this job in an array of --num_shards", flag_values=flag_values
  )
  flags.DEFINE_integer(
      "num_shards", 1, "number of jobs the work is split into", flag_values=flag_values
  )
  flags.DEFINE_enum(
      "log_level",
      "INFO",
      ["DEBUG", "INFO", "WARNING", "ERROR"],
      "logging threshold",
      flag_values=flag_values,
  )


def define_video_flags(flag_values, *, verb: str) -> None:
  """--videos and --annotations of the commands that read videos; ``verb`` says in --help what the
  command does to each video ("caption", "encode")."""
  flags.DEFINE_string(
      "videos",
      None,
      "directory of {vid}.mp4 (or .mkv, .webm, ...)",
      flag_values=flag_values,
      required=True,
  )
  flags.DEFINE_list(
      "annotations",
      [],
      f"comma-separated jsonl files; if given, {verb} only their vids",
      flag_values=flag_values,
  )


def setup_logging(level: str) -> None:
  logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@dataclass
class RunReport:
  """What one pass over a key list did; failures map key -> one-line reason."""

  name: str
  done: int = 0
  skipped: int = 0
  failures: dict[str, str] = field(default_factory=dict)


def run_keys(
    name: str,
    keys: Sequence,
    output_path: Callable[[Any], Path],
    load: Callable[[], Any],
    *,
    work: Callable[[Any, Any], None],
    logger: logging.Logger,
) -> RunReport:
  """Call `work(key, load())` (which writes `output_path(key)`) for each key whose output does not exist yet.

  `load` (the models) is called once, and only if some key is left, so a finished shard loads nothing; it
  runs outside the per-key error handling, so a model that cannot load stops the run instead of failing
  every key. An exception from one key is logged as a single line and recorded; the run goes on with the
  next key. A disk fault (full, over quota, I/O error) stops the run with a WriteError naming the
  output; KeyboardInterrupt and other BaseExceptions propagate: finished outputs are already on disk.
  """
  pending = [key for key in keys if not output_path(key).exists()]
  report = RunReport(name, skipped=len(keys) - len(pending))
  if not pending:
    return report
  loaded = load()
  with logging_redirect_tqdm():
    for key in tqdm(pending, desc=name, unit="item", dynamic_ncols=True):
      try:
        work(key, loaded)
      except Exception as exc:  # noqa: BLE001 - any per-item failure must not stop the run...
        fault = fileio.disk_fault(exc)
        if fault:  # ...but the disk's: every later item would fail the same way
          raise fileio.write_error(output_path(key), fault) from None
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        logger.error("%s %s failed: %s", name, key, reason)
        logger.debug("traceback for %s", key, exc_info=True)
        report.failures[str(key)] = reason
      else:
        report.done += 1
  return report


def summarize(reports: Sequence[RunReport], logger: logging.Logger) -> int:
  """Log one summary line per run plus every failure; return the process exit code (1 if anything failed)."""
  failed = 0
  for r in reports:
    logger.info(
        "%s: %d written, %d already done, %d failed", r.name, r.done, r.skipped, len(r.failures)
    )
    for key, reason in r.failures.items():
      logger.error("  failed %s %s: %s", r.name, key, reason)
    failed += len(r.failures)
  if failed:
    logger.error(
        "%d item(s) failed; fix them and re-run the same command to finish (done items are kept)",
        failed,
    )
  return 1 if failed else 0
