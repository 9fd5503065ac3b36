r"""Figures as PNG files: pure functions of plain data (log records, submission and annotation lines,
attention arrays, C-QVal rows), each writing one file and returning its path.

  python -m lmr_jax.visualization.plots --workdir W                   # W/plots/training_curves.png
  python -m lmr_jax.visualization.plots --eval_dir D [--annotations F --num_queries N]

With ``--eval_dir`` (an ``eval.py`` output folder): ``cqval.png`` from ``D/cqval.json`` when present and,
given the split's annotation file, timelines of N sampled queries from ``D/submission.jsonl``; the
attention maps need the model, so only ``eval.py --plots N`` draws them. Figures are drawn on
``matplotlib.figure.Figure`` objects (Agg canvas, no pyplot state, no display needed).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import textwrap
from collections.abc import Mapping, Sequence

import numpy as np
from absl import flags
from matplotlib.figure import Figure

from lmr_jax import cli, fileio
from lmr_jax.data.annotations import DataError, load_annotations
from lmr_jax.evaluation.submission import SubmissionError, read_submission
from lmr_jax.visualization import PlotError

SAMPLE_SEED = 0  # eval.py and this CLI sample the same queries of a split
CQVAL_METRICS = ("R1@0.5", "R1@0.7", "mAP")
# CLIP's pre-tokenizer (lower-cased words, contractions, single digits, punctuation runs), in Python re.
_CLIP_WORDS = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+")


def _save(fig: Figure, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  return path


def sample_indices(num_items: int, num: int, seed: int = SAMPLE_SEED) -> list[int]:
  """``min(num, num_items)`` distinct indices, sorted; a fixed permutation's first ``num``, so a larger
  ``num`` keeps the queries of a smaller one."""
  return sorted(int(i) for i in np.random.default_rng(seed).permutation(num_items)[:num])


# ---------------------------------------------------------------------------------------------------
# Training curves


def read_metrics_log(path: str) -> list[dict]:
  """The records of a training log (``{workdir}/metrics.jsonl``, one JSON object per line)."""
  pairs = fileio.read_jsonl(path, PlotError, "training log (train.py writes it in its workdir)")
  for record, where in pairs:
    if not isinstance(record.get("step"), int):
      raise PlotError(f"{where}: expected a JSON object with an integer 'step'")
  return [record for record, _ in pairs]


def _panel_of(key: str) -> str:
  """Auxiliary decoder losses share their term's panel (train/aux0/label -> train/label); eval metrics
  share one panel per family: thresholds (val/MR-full-R1@0.5 -> val/MR-full-R1) and QVHighlights'
  highlight levels (val/HL-min-Good-mAP -> val/HL-min-mAP)."""
  if key.startswith("train/"):
    return re.sub(r"^train/aux\d+/", "train/", key)
  if "/" in key:
    return re.sub(r"-(Fair|Good|VeryGood)-", "-", key.split("@")[0])
  return key


def training_series(records: Sequence[dict]) -> dict[str, dict[str, tuple[list, list]]]:
  """{panel: {key: (steps, values)}} of every numeric field; a step logged twice (a resumed run
  repeats the steps after its checkpoint) keeps its last value."""
  by_key: dict[str, dict[int, float]] = {}
  for record in records:
    for key, value in record.items():
      if key in ("step", "epoch") or isinstance(value, bool):
        continue
      if isinstance(value, (int, float)) and math.isfinite(value):
        by_key.setdefault(key, {})[record["step"]] = float(value)
  panels: dict[str, dict[str, tuple[list, list]]] = {}
  for key, points in by_key.items():
    steps = sorted(points)
    panels.setdefault(_panel_of(key), {})[key] = (steps, [points[s] for s in steps])
  # The total loss first, then the log's own order (train terms, lr, eval metrics).
  return dict(sorted(panels.items(), key=lambda item: item[0] != "train/loss"))


def plot_training_curves(records: Sequence[dict], path: str, title: str = "training") -> str:
  """A grid of small panels, one per loss term (with its auxiliary-layer terms), lr, throughput and
  eval metric family, against the step; eval points are marked."""
  panels = training_series(records)
  if not panels:
    raise PlotError(f"{title}: the training log has no numeric field to plot")
  cols = min(4, len(panels))
  rows = -(-len(panels) // cols)
  fig = Figure(figsize=(3.3 * cols, 2.3 * rows + 0.5), layout="constrained")
  fig.suptitle(title)
  axes = fig.subplots(rows, cols, squeeze=False).ravel()
  for ax, (panel, series) in zip(axes, panels.items()):
    for key, (steps, values) in series.items():
      label = key[len(panel.split("/")[0]) + 1 :] if "/" in key else key
      ax.plot(steps, values, marker="o" if len(steps) < 30 else None, ms=3, lw=1.2, label=label)
    ax.set_title(panel, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if len(series) > 1:
      ax.legend(fontsize=6)
  for ax in axes[len(panels) :]:
    ax.set_axis_off()
  for ax in axes[-cols:]:
    ax.set_xlabel("step", fontsize=8)
  return _save(fig, path)


# ---------------------------------------------------------------------------------------------------
# Per-query figures


def _title(annotation: Mapping) -> str:
  return (
      textwrap.fill(f'"{annotation["query"]}"', 100)
      + f"\nqid {annotation['qid']}, {annotation['vid']}"
  )


def plot_timeline(
    record: Mapping, annotation: Mapping, path: str, *, clip_len: float, top_k: int = 3
) -> str:
  """Paper Fig. 4 for one query: ground-truth windows and the ``top_k`` predicted windows (with their
  scores) above the predicted per-clip saliency, with the annotators' saliency where the ground truth
  has it; the x axis is in seconds.

  ``record`` is a submission line, ``annotation`` the query's annotation line (windows optional).
  """
  gt_windows = annotation.get("relevant_windows", [])
  predicted = record["pred_relevant_windows"][:top_k]
  fig = Figure(figsize=(10, 4.6), layout="constrained")
  fig.suptitle(_title(annotation), fontsize=10)
  ax_win, ax_sal = fig.subplots(2, 1, sharex=True, height_ratios=(len(predicted) + 1, 3))

  labels = ["ground truth"] + [f"top {i + 1} ({w[2]:.2f})" for i, w in enumerate(predicted)]
  ys = np.arange(len(labels))[::-1]
  ax_win.broken_barh(
      [(st, ed - st) for st, ed in gt_windows], (ys[0] - 0.35, 0.7), color="tab:green", alpha=0.8
  )
  for y, (st, ed, _) in zip(ys[1:], predicted):
    ax_win.broken_barh([(st, ed - st)], (y - 0.35, 0.7), color="tab:blue", alpha=0.8)
  ax_win.set_yticks(ys, labels, fontsize=8)
  ax_win.set_ylim(-0.6, len(labels) - 0.4)
  ax_win.grid(axis="x", alpha=0.3)

  saliency = np.asarray(record.get("pred_saliency_scores", []), np.float64)
  centers = (np.arange(len(saliency)) + 0.5) * clip_len
  for st, ed in gt_windows:
    ax_sal.axvspan(st, ed, color="tab:green", alpha=0.12, lw=0)
  ax_sal.plot(centers, saliency, color="tab:blue", marker=".", lw=1.3, label="predicted saliency")
  ax_sal.set_ylabel("predicted saliency", fontsize=8)
  ax_sal.set_xlabel("time (s)")
  ax_sal.grid(alpha=0.3)
  handles, labels = ax_sal.get_legend_handles_labels()
  if annotation.get("saliency_scores"):
    ax_gt = ax_sal.twinx()
    gt = [sum(scores) for scores in annotation["saliency_scores"]]
    gt_centers = (np.asarray(annotation["relevant_clip_ids"]) + 0.5) * clip_len
    ax_gt.bar(gt_centers, gt, width=0.8 * clip_len, color="tab:green", alpha=0.35)
    ax_gt.set_ylabel("annotators' saliency (sum)", fontsize=8)
    ax_gt.set_ylim(0, max(gt) * 1.15)
    ax_sal.set_zorder(ax_gt.get_zorder() + 1)  # the curve above the bars
    ax_sal.patch.set_visible(False)
    handles += [ax_gt.patches[0]]
    labels += ["annotators' saliency"]
  ax_sal.legend(handles, labels, fontsize=7, loc="upper right")
  ax_sal.set_xlim(0, annotation["duration"])
  return _save(fig, path)


def token_labels(query: str, num_tokens: int) -> list[str]:
  """Labels for a query's ``num_tokens`` text tokens, without a tokenizer: its words (CLIP's
  pre-tokenization, lower-cased) when the counts match, framed by start/end when there are two more
  tokens (CLIP's [SOT] ... [EOT]); otherwise token indices, as sub-word pieces cannot be aligned."""
  words = _CLIP_WORDS.findall(query.lower())
  if num_tokens == len(words):
    return words
  if num_tokens == len(words) + 2:
    return ["<start>", *words, "<end>"]
  return [f"#{i}" for i in range(num_tokens)]


def plot_attention(
    weights: Mapping[str, np.ndarray], annotation: Mapping, path: str, *, clip_len: float
) -> str:
  """Paper Fig. 5 for one query: per stream, the VQF weights of each clip (context token, x axis in
  seconds) over the query's tokens (rows), averaged over heads; ground-truth windows are outlined.
  """
  if not weights:
    raise PlotError(f"qid {annotation['qid']}: no attention weights (a model without VQF)")
  num_rows = sum(w.shape[1] for w in weights.values())
  fig = Figure(figsize=(10, 1.6 + 0.22 * num_rows + 0.6 * len(weights)), layout="constrained")
  fig.suptitle(_title(annotation), fontsize=10)
  axes = fig.subplots(
      len(weights), 1, squeeze=False, height_ratios=[w.shape[1] for w in weights.values()]
  )[:, 0]
  for ax, (stream, w) in zip(axes, weights.items()):
    num_clips, num_tokens = w.shape
    image = ax.imshow(
        w.T,
        aspect="auto",
        cmap="viridis",
        interpolation="nearest",
        extent=(0, num_clips * clip_len, num_tokens - 0.5, -0.5),
    )
    ax.set_yticks(np.arange(num_tokens), token_labels(annotation["query"], num_tokens), fontsize=7)
    for st, ed in annotation.get("relevant_windows", []):
      ax.axvspan(st, ed, fill=False, edgecolor="white", lw=1.5, ls="--")
    ax.set_title(
        f"{stream} stream: clip -> query-token attention (VQF, mean over heads)", fontsize=9
    )
    fig.colorbar(image, ax=ax, pad=0.01, fraction=0.03)
  axes[-1].set_xlabel("time (s); dashed: ground-truth windows")
  return _save(fig, path)


# ---------------------------------------------------------------------------------------------------
# C-QVal


def load_cqval(path: str) -> list[dict]:
  """The rows of ``eval.py --cqval``'s ``cqval.json``, checked for the keys the chart reads."""
  if not os.path.isfile(path):
    raise PlotError(f"{path}: no such file (eval.py --cqval writes it)")
  try:
    with open(path) as f:
      rows = json.load(f)["rows"]
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise PlotError(f"{path}: not a cqval.json with 'rows' ({type(e).__name__}: {e})") from None
  needed = {"min_clauses", "min_words", "num_queries", *CQVAL_METRICS}
  for i, row in enumerate(rows):
    if not isinstance(row, dict) or not needed <= set(row):
      raise PlotError(f"{path}: row {i} lacks one of {sorted(needed)}")
  return rows


def plot_cqval(rows: Sequence[Mapping], path: str, title: str = "C-QVal") -> str:
  """Paper Tab. IV as grouped bars: R1@0.5, R1@0.7 and mAP per (>= C clauses, >= W words) split, the
  whole split (C = W = 0) first; an empty split is marked n/a."""
  fig = Figure(figsize=(max(6.0, 0.75 * len(rows) + 2), 4), layout="constrained")
  ax = fig.subplots()
  x = np.arange(len(rows))
  width = 0.8 / len(CQVAL_METRICS)
  for j, metric in enumerate(CQVAL_METRICS):
    values = [r[metric] for r in rows]
    bars = ax.bar(
        x + (j - (len(CQVAL_METRICS) - 1) / 2) * width,
        [np.nan if v is None else v for v in values],
        width,
        label=metric,
    )
    ax.bar_label(bars, ["" if v is None else f"{v:.1f}" for v in values], fontsize=6)
  for i, r in enumerate(rows):
    if r["num_queries"] == 0:
      ax.text(i, 0.02, "n/a", ha="center", fontsize=8, transform=ax.get_xaxis_transform())
  ax.set_xticks(
      x,
      [
          (
              "all"
              if (r["min_clauses"], r["min_words"]) == (0, 0)
              else f"C>={r['min_clauses']}\nW>={r['min_words']}"
          )
          + f"\n{r['num_queries']} q"
          for r in rows
      ],
      fontsize=7,
  )
  ax.set_ylabel("%")
  ax.margins(y=0.1)  # room for the value labels
  ax.set_xlim(-0.6, len(rows) - 0.4)  # autoscaling ignores an all-n/a group at the end
  ax.set_title(title, fontsize=10)
  ax.grid(axis="y", alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)


# ---------------------------------------------------------------------------------------------------
# Command line


def _timelines(eval_dir: str, annotations: str, num: int, clip_len: float, *, out_dir: str) -> list:
  submission = os.path.join(eval_dir, "submission.jsonl")
  if not os.path.isfile(submission):
    raise PlotError(f"{submission}: no such file (eval.py writes it)")
  try:
    records = read_submission(submission)
    gt = {a.qid: a.to_record() for a in load_annotations(annotations)}
  except (SubmissionError, DataError) as e:
    raise PlotError(str(e)) from None
  paths = []
  for i in sample_indices(len(records), num):
    qid = records[i]["qid"]
    if qid not in gt:
      raise PlotError(f"{annotations}: no qid {qid} (a query of {submission})")
    path = os.path.join(out_dir, f"timeline_qid{qid}.png")
    paths.append(plot_timeline(records[i], gt[qid], path, clip_len=clip_len))
  return paths


def _define_flags(flag_values) -> None:
  flags.DEFINE_string(
      "workdir", None, "a training workdir: plots its metrics.jsonl", flag_values=flag_values
  )
  flags.DEFINE_string(
      "eval_dir",
      None,
      "an eval.py output folder: cqval.json, submission.jsonl",
      flag_values=flag_values,
  )
  flags.DEFINE_string(
      "annotations",
      None,
      "the evaluated split's annotation file (for timelines)",
      flag_values=flag_values,
  )
  flags.DEFINE_integer(
      "num_queries", 4, "timelines to draw (with --annotations)", flag_values=flag_values
  )
  flags.DEFINE_float("clip_len", 2.0, "seconds per clip", flag_values=flag_values)
  flags.DEFINE_string(
      "out_dir", None, "default: {eval_dir}/plots, else {workdir}/plots", flag_values=flag_values
  )


def main(argv=None) -> int:
  return cli.run_command(_define_flags, _plot, __doc__, argv)


def _plot(args) -> None:
  if not (args.workdir or args.eval_dir):
    raise cli.UsageError("nothing to plot: pass --workdir and/or --eval_dir")
  if args.annotations and not args.eval_dir:
    raise cli.UsageError(
        "--annotations draws timelines of --eval_dir's submission: pass --eval_dir"
    )
  out_dir = args.out_dir or os.path.join(args.eval_dir or args.workdir, "plots")
  paths = []
  if args.workdir:
    records = read_metrics_log(os.path.join(args.workdir, "metrics.jsonl"))
    path = os.path.join(out_dir, "training_curves.png")
    paths.append(plot_training_curves(records, path, f"training: {args.workdir}"))
  if args.eval_dir:
    cqval_path = os.path.join(args.eval_dir, "cqval.json")
    if os.path.exists(cqval_path):
      paths.append(plot_cqval(load_cqval(cqval_path), os.path.join(out_dir, "cqval.png")))
    if args.annotations:
      paths += _timelines(
          args.eval_dir, args.annotations, args.num_queries, args.clip_len, out_dir=out_dir
      )
  print("\n".join(f"wrote {p}" for p in paths))


if __name__ == "__main__":
  sys.exit(main())
