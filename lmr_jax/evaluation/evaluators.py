"""The one registry of metrics: ``config.evals`` names, ``score`` runs them on submission records.

Training's ``split_evaluator.SplitEvaluator``, ``eval.py`` and ``python -m lmr_jax.commands.score`` all
go through it, so a metric is computed one way. No TensorFlow or JAX here: scoring a file is cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lmr_jax.data.annotations import QueryAnnotation
from lmr_jax.errors import ConfigError
from lmr_jax.evaluation import charades_metrics
from lmr_jax.evaluation import qvh_metrics

# config.evals names these; each maps (submission records, ground-truth records) to a dict with a
# "brief" block of headline metrics (and, for QVHighlights, the official detailed keys).
METRICS: dict[str, Callable[[Sequence[dict], Sequence[dict]], dict]] = {
    "qvhighlights": qvh_metrics.eval_submission,
    "charades_sta": charades_metrics.eval_charades,
}


def check_names(names: Sequence[str], key: str = "config.evals") -> None:
  for name in names:
    if name not in METRICS:
      raise ConfigError(f"{key}: unknown evaluator '{name}', choose from {sorted(METRICS)}")


def brief_names(names: Sequence[str]) -> set[str]:
  """The headline metrics ``names`` report (what ``config.best_metric`` may name), known before any
  scoring; tests/test_bad_input.py checks them against real scores."""
  found = set()
  if "qvhighlights" in names:
    found |= {f"MR-{bucket}-mAP" for bucket in ("full", "short", "middle", "long")}
    found |= {"MR-full-mAP@0.5", "MR-full-mAP@0.75", "MR-full-R1@0.5", "MR-full-R1@0.7"}
    found |= {
        f"HL-min-{level}-{k}" for level, _ in qvh_metrics.SALIENCY_LEVELS for k in ("mAP", "Hit1")
    }
  if "charades_sta" in names:
    found |= {f"R{k}@{t}" for k in charades_metrics.RANKS for t in charades_metrics.IOU_THRESHOLDS}
    found |= {"mIoU", "mAP"} | {f"mAP@{t}" for t in charades_metrics.MAP_THRESHOLDS}
  return found


def score(
    records: Sequence[dict], annotations: Sequence[QueryAnnotation], names: Sequence[str]
) -> dict:
  """Each evaluator of ``names`` on the records: {"brief": all briefs merged, name: its result}."""
  check_names(names)
  ground_truth = [a.to_record() for a in annotations]
  metrics = {"brief": {}}
  for name in names:
    result = METRICS[name](records, ground_truth)
    metrics["brief"].update(result["brief"])
    metrics[name] = result
  return metrics


def official_layout(metrics: dict, names: Sequence[str]) -> dict:
  """``score`` output -> one dict in the official file's layout (``brief`` + each evaluator's
  detailed keys at the top level), as the QVHighlights server returns it."""
  merged = {"brief": metrics["brief"]}
  for name in names:
    merged.update({k: v for k, v in metrics[name].items() if k != "brief"})
  return merged


def format_brief(brief: dict, title: str) -> str:
  """A Markdown table of the headline metrics; None (an empty length bucket) prints as n/a."""
  lines = [title, "", "| metric | value |", "|---|---|"]
  lines += [f"| {name} | {format_value(value)} |" for name, value in brief.items()]
  return "\n".join(lines) + "\n"


def format_value(value) -> str:
  return "n/a" if value is None else f"{value:.2f}"
