"""Score a submission file against ground truth, print the brief metrics and save the full metrics json.

  python -m lmr_jax.evaluate --submission preds.jsonl --gt highlight_val_release.jsonl \
      [--save_path metrics.json] [--dataset qvh|charades]

The saved json has the official QVHighlights evaluator's names and structure (for Charades-STA only a
"brief" block). Bad input exits with status 2 and a one-line error naming the file and line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from lmr_jax.evaluation.charades_metrics import eval_charades
from lmr_jax.evaluation.qvh_metrics import eval_submission
from lmr_jax.evaluation.submission import SubmissionError, atomic_write_text, read_ground_truth, read_submission

EVALUATORS = {"qvh": eval_submission, "charades": eval_charades}


def evaluate(
    submission: Sequence[dict], ground_truth: Sequence[dict], dataset: str = "qvh"
) -> dict:
  return EVALUATORS[dataset](submission, ground_truth)


def default_save_path(submission_path: str) -> str:
  """``<dir>/<stem>_metrics.json`` beside the submission, the stem without .jsonl / .jsonl.gz."""
  base = os.path.basename(submission_path)
  for ext in (".gz", ".jsonl", ".json"):
    base = base[: -len(ext)] if base.endswith(ext) else base
  return os.path.join(os.path.dirname(submission_path), f"{base}_metrics.json")


def format_brief(brief: dict) -> str:
  """Two-column table; None (an empty length bucket) prints as n/a."""
  width = max(len(k) for k in brief)
  return "\n".join(f"{k:<{width}}  {'n/a' if v is None else f'{v:6.2f}'}" for k, v in brief.items())


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--submission", required=True, help="predictions, JSON Lines (.gz ok)")
  parser.add_argument("--gt", required=True, help="ground-truth annotations, JSON Lines (.gz ok)")
  parser.add_argument(
      "--save_path", help="metrics json (default: <submission stem>_metrics.json beside it)"
  )
  parser.add_argument("--dataset", choices=sorted(EVALUATORS), default="qvh")
  args = parser.parse_args(argv)
  try:
    metrics = evaluate(read_submission(args.submission), read_ground_truth(args.gt), args.dataset)
    save_path = args.save_path or default_save_path(args.submission)
    atomic_write_text(save_path, json.dumps(metrics, indent=4) + "\n")
  except (SubmissionError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(format_brief(metrics["brief"]))
  print(f"saved {save_path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
