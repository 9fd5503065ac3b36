"""Scores a submission file against ground truth, prints the brief metrics, saves the full metrics json.

  python -m lmr_jax.commands.score --submission preds.jsonl --gt highlight_val_release.jsonl \
      [--save_path metrics.json] [--evaluator qvhighlights|charades_sta]

The saved json has the official QVHighlights evaluator's names and structure (for Charades-STA only a
"brief" block). Bad input exits with status 1 and a one-line error naming the file and line (usage errors: 2);
the metrics never overwrite an input.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from lmr_jax import cli
from lmr_jax import fileio
from lmr_jax.evaluation import evaluators
from lmr_jax.evaluation.submission import read_ground_truth, read_submission


def default_save_path(submission_path: str) -> str:
  """``<dir>/<stem>_metrics.json`` beside the submission, the stem without .jsonl / .jsonl.gz."""
  base = os.path.basename(submission_path)
  for ext in (".gz", ".jsonl", ".json"):
    base = base[: -len(ext)] if base.endswith(ext) else base
  return os.path.join(os.path.dirname(submission_path), f"{base}_metrics.json")


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--submission", required=True, help="predictions, JSON Lines (.gz ok)")
  parser.add_argument("--gt", required=True, help="ground-truth annotations, JSON Lines (.gz ok)")
  parser.add_argument(
      "--save_path", help="metrics json (default: <submission stem>_metrics.json beside it)"
  )
  parser.add_argument(
      "--evaluator",
      choices=sorted(evaluators.METRICS),
      default="qvhighlights",
      help="metrics to compute (default: %(default)s)",
  )
  return cli.argparse_main(parser, _score, argv)


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
