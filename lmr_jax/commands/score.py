"""Scores a submission file against ground truth, prints the brief metrics, saves the full metrics json.

  python -m lmr_jax.commands.score --submission preds.jsonl --gt highlight_val_release.jsonl \
      [--save_path metrics.json] [--evaluator qvhighlights|charades_sta]

The saved json has the official QVHighlights evaluator's names and structure (for Charades-STA only a
"brief" block). Bad input exits with status 1 and a one-line error naming the file and line (usage errors: 2);
the metrics never overwrite an input.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from absl import flags

from lmr_jax import cli, fileio
from lmr_jax.evaluation import evaluators
from lmr_jax.evaluation.submission import read_ground_truth, read_submission


def default_save_path(submission_path: str) -> str:
  """``<dir>/<stem>_metrics.json`` beside the submission, the stem without .jsonl / .jsonl.gz."""
  base = os.path.basename(submission_path)
  for ext in (".gz", ".jsonl", ".json"):
    base = base.removesuffix(ext)
  return os.path.join(os.path.dirname(submission_path), f"{base}_metrics.json")


def _define_flags(flag_values) -> None:
  flags.DEFINE_string(
      "submission",
      None,
      "predictions, JSON Lines (.gz ok)",
      flag_values=flag_values,
      required=True,
  )
  flags.DEFINE_string(
      "gt",
      None,
      "ground-truth annotations, JSON Lines (.gz ok)",
      flag_values=flag_values,
      required=True,
  )
  flags.DEFINE_string(
      "save_path",
      None,
      "metrics json (default: <submission stem>_metrics.json beside it)",
      flag_values=flag_values,
  )
  flags.DEFINE_enum(
      "evaluator",
      "qvhighlights",
      sorted(evaluators.METRICS),
      "metrics to compute",
      flag_values=flag_values,
  )


def main(argv: Sequence[str] | None = None) -> int:
  return cli.run_command(_define_flags, _score, __doc__, argv)


def _score(args) -> None:
  save_path = args.save_path or default_save_path(args.submission)
  fileio.check_output_file(save_path, [args.submission, args.gt], "--save_path")
  submission, ground_truth = read_submission(args.submission), read_ground_truth(args.gt)
  metrics = evaluators.METRICS[args.evaluator](submission, ground_truth)
  fileio.write_json(save_path, metrics, indent=4)
  print(evaluators.format_brief(metrics["brief"], f"{args.submission}: {args.evaluator}"), end="")
  print(f"saved {save_path}")


if __name__ == "__main__":
  sys.exit(main())
