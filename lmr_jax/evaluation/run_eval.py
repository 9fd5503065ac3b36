"""Evaluates a trained checkpoint on one split: submission file, official metrics, C-QVal table.

``evaluate_checkpoint`` (what ``eval.py`` calls) rebuilds the train state exactly as training does, so a
checkpoint made with another config fails to restore with one ``CheckpointError`` line instead of
evaluating a half-matching model. It predicts every query of the split, writes
``{output_dir}/submission.jsonl`` and, for a labelled split, ``metrics.json`` (the official QVHighlights
layout) and, with ``cqval=True``, the paper's Tab. IV on the C-QVal splits of that split
(``cqval.md`` / ``cqval.json``). With ``plots=N`` it also draws figures into ``{output_dir}/plots/``:
the training curves, a timeline and an attention map for N queries sampled with a fixed seed and, with
``cqval``, the C-QVal bar chart (``lmr_jax/visualization``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import jax
import ml_collections

from lmr_jax.data import dataset
from lmr_jax.data.annotations import DataError, QueryAnnotation
from lmr_jax.evaluation import cqval as cqval_lib
from lmr_jax.evaluation import submission as submission_lib
from lmr_jax.training import checkpoint as checkpoint_lib
from lmr_jax.training import parallel
from lmr_jax.training import train_step as train_step_lib
from lmr_jax.training import trainer
from lmr_jax.visualization import PlotError

# Tab. IV columns -> the brief metric behind each (QVHighlights evaluator).
CQVAL_COLUMNS = (("R1@0.5", "MR-full-R1@0.5"), ("R1@0.7", "MR-full-R1@0.7"), ("mAP", "MR-full-mAP"))
# (0, 0) keeps every query: the whole split as the reference row above the C-QVal grid.
CQVAL_GRID = ((0, 0),) + cqval_lib.GRID


class EvalError(ValueError):
  """Options that cannot be evaluated together (e.g. --cqval on an unlabelled split)."""


# What eval.py reports as one "error: ..." line: bad options, data, checkpoint or spaCy model.
ERRORS = (
    EvalError,
    DataError,
    checkpoint_lib.CheckpointError,
    parallel.MeshError,
    submission_lib.SubmissionError,
    cqval_lib.SpacyModelError,
    PlotError,
)


@dataclasses.dataclass(frozen=True)
class _Annotations:
  """The part of an ExampleSource that ``trainer.score`` reads, for scoring a subset of queries."""

  annotations: Sequence[QueryAnnotation]


def restore_params(
    config: ml_collections.ConfigDict, model, checkpointer, checkpoint: str, source, mesh=None
):
  """(params, step) of ``checkpoint``, restored into this config's abstract train state (built as
  training builds it; a checkpoint of another config is a CheckpointError) and laid out on ``mesh``
  (default: ``config.num_devices``) as training lays it out. Only ``source.example(0)``'s shapes are
  read."""
  mesh = mesh or parallel.make_mesh(config.num_devices)
  tx, _ = train_step_lib.make_optimizer(config.optim, 1)
  batch = trainer.example_batch(source, config.eval_batch_size // jax.process_count())
  abstract_state, _ = trainer.sharded_state_layout(config, model, tx, mesh, batch)
  state, _ = checkpointer.restore(checkpoint, abstract_state)
  return state.params, int(state.step)


def open_checkpointer(config, workdir: str, checkpoint: str):
  """The workdir's Checkpointer, once ``checkpoint`` is known to exist (before any feature is loaded)."""
  if not os.path.isdir(workdir):  # the Checkpointer would create empty checkpoint folders in it
    raise checkpoint_lib.CheckpointError(f"{workdir}: no such workdir")
  checkpointer = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints, config.best_metric)
  try:
    checkpointer.resolve_step(checkpoint)
  except checkpoint_lib.CheckpointError:
    checkpointer.close()
    raise
  return checkpointer


def official_metrics(metrics: dict, evals: Sequence[str]) -> dict:
  """``trainer.score`` output -> one dict in the official file's layout (``brief`` + each evaluator's
  detailed keys at the top level), as the QVHighlights server returns it."""
  merged = {"brief": metrics["brief"]}
  for name in evals:
    merged.update({k: v for k, v in metrics[name].items() if k != "brief"})
  return merged


def _fmt(value) -> str:
  return "n/a" if value is None else f"{value:.2f}"


def format_brief(brief: dict, title: str) -> str:
  lines = [title, "", "| metric | value |", "|---|---|"]
  lines += [f"| {name} | {_fmt(value)} |" for name, value in brief.items()]
  return "\n".join(lines) + "\n"


def cqval_rows(
    records: list[dict],
    annotations: Sequence[QueryAnnotation],
    evals: Sequence[str],
    nlp,
    grid: Sequence[tuple[int, int]] = CQVAL_GRID,
) -> list[dict]:
  """Tab. IV rows: each (C, W) split of ``annotations`` scored on its share of ``records``.

  An empty split (common on short-query data) has size 0 and ``None`` metrics instead of an error.
  """
  splits = cqval_lib.build_cqval_splits([a.to_record() for a in annotations], nlp, grid)
  by_qid = {a.qid: a for a in annotations}
  rows = []
  for (c, w), kept in splits.items():
    qids = {r["qid"] for r in kept}
    brief = None
    if qids:
      subset = _Annotations([by_qid[r["qid"]] for r in kept])
      brief = trainer.score([r for r in records if r["qid"] in qids], subset, evals)["brief"]
    columns = {col: None if brief is None else brief[key] for col, key in CQVAL_COLUMNS}
    rows.append(
        {
            "min_clauses": c,
            "min_words": w,
            "num_queries": len(kept),
            "percent": round(100 * len(kept) / len(annotations), 2),
            **columns,
            "brief": brief,
        }
    )
  return rows


def format_cqval(rows: list[dict], title: str) -> str:
  """The paper's Tab. IV layout; C = W = 0 is the whole split."""
  header = " | ".join(col for col, _ in CQVAL_COLUMNS)
  lines = [
      title,
      "",
      f"| C | W | #queries | {header} |",
      "|---|---|---|" + "---|" * len(CQVAL_COLUMNS),
  ]
  for r in rows:
    values = " | ".join(_fmt(r[col]) for col, _ in CQVAL_COLUMNS)
    lines.append(
        f"| {r['min_clauses']} | {r['min_words']} | {r['num_queries']} ({r['percent']:.1f}%) "
        f"| {values} |"
    )
  return "\n".join(lines) + "\n"


def _write_json(path: str, obj) -> None:
  submission_lib.atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def _check_options(config, annotations, cqval: bool, split: str) -> None:
  """C-QVal needs ground truth and the QVHighlights metrics; say so before the model is restored."""
  unlabelled = sum(not a.has_labels for a in annotations)
  if cqval and unlabelled:
    raise EvalError(
        f"--cqval needs a labelled split; '{split}' has {unlabelled} of {len(annotations)} "
        "queries without relevant_windows"
    )
  if cqval and "qvhighlights" not in config.evals:
    raise EvalError(f"--cqval reports QVHighlights metrics; config.evals is {tuple(config.evals)}")


def _read_training_log(workdir: str, plots: int):
  """The records the training-curve figure needs, or None without plots."""
  if plots < 0:
    raise EvalError(f"--plots takes a number of queries >= 0, got {plots}")
  if not plots:
    return None
  from lmr_jax.visualization import plots as plots_lib  # matplotlib is imported only for plots

  return plots_lib.read_metrics_log(os.path.join(workdir, "metrics.jsonl"))


def _predict(config, workdir: str, checkpoint: str, split: str, cqval: bool, plots: int):
  """(submission records, example source, step, spaCy pipeline or None, model, params, training log
  or None); every check runs before the slow part (restoring, compiling, predicting)."""
  checkpointer = open_checkpointer(config, workdir, checkpoint)
  try:
    source = dataset.example_source(
        config.data, split, with_captions=config.model.use_caption_context, training=False
    )
    _check_options(config, source.annotations, cqval, split)
    training_log = _read_training_log(workdir, plots)
    nlp = cqval_lib.load_spacy() if cqval else None
    model = trainer.build_model(config)
    mesh = parallel.make_mesh(config.num_devices)
    parallel.check_batch_size(mesh, "eval_batch_size", config.eval_batch_size)
    params, step = restore_params(config, model, checkpointer, checkpoint, source, mesh)
  finally:
    checkpointer.close()
  predict_fn = train_step_lib.jit_predict_step(
      model, mesh, jax.tree.map(lambda p: p.sharding, params)
  )
  records = trainer.predict(predict_fn, params, source, config, mesh)
  assert len(records) == len(source.annotations), (len(records), len(source.annotations))
  return records, source, step, nlp, model, params, training_log


def _write_plots(config, workdir, model, params, source, records, training_log, num, out_dir):
  """Training curves, then a timeline and an attention map for each of ``num`` queries sampled with a
  fixed seed; the model runs once more, on those queries only, to keep its attention weights."""
  from lmr_jax.visualization import attention
  from lmr_jax.visualization import plots as plots_lib

  path = os.path.join(out_dir, "training_curves.png")
  paths = [plots_lib.plot_training_curves(training_log, path, f"training: {workdir}")]
  indices = plots_lib.sample_indices(len(source), num)
  batch_size = min(len(indices), config.eval_batch_size)
  weights = attention.vqf_attention(model, params, source, indices, batch_size)
  by_qid = {r["qid"]: r for r in records}
  clip_len = config.data.clip_len
  for index, query_weights in zip(indices, weights):
    ann = source.annotations[index].to_record()
    path = os.path.join(out_dir, f"timeline_qid{ann['qid']}.png")
    paths.append(plots_lib.plot_timeline(by_qid[ann["qid"]], ann, path, clip_len=clip_len))
    if query_weights:  # a model without VQF has no query-clip attention
      path = os.path.join(out_dir, f"attention_qid{ann['qid']}.png")
      paths.append(plots_lib.plot_attention(query_weights, ann, path, clip_len=clip_len))
  return paths


def evaluate_checkpoint(
    config: ml_collections.ConfigDict,
    workdir: str,
    checkpoint="best",
    split: str | None = None,
    cqval: bool = False,
    output_dir: str | None = None,
    plots: int = 0,
) -> dict:
  """Predicts ``split`` (default ``config.eval_split``) with ``checkpoint`` ('best', 'latest' or a step)
  of ``workdir``; writes and prints the results under ``output_dir`` (default
  ``{workdir}/eval/{split}_{checkpoint}``); ``plots`` > 0 adds figures for that many sampled queries.
  Returns {split, checkpoint, step, num_queries, output_dir, submission, metrics (None if unlabelled),
  cqval (Tab. IV rows, or None), plots (the PNG paths, or None)}."""
  checkpoint = str(checkpoint)
  split = split or config.eval_split
  output_dir = output_dir or os.path.join(workdir, "eval", f"{split}_{checkpoint}")
  records, source, step, nlp, model, params, training_log = _predict(
      config, workdir, checkpoint, split, cqval, plots
  )
  submission_path = os.path.join(output_dir, "submission.jsonl")
  submission_lib.write_submission(submission_path, records)
  result = {
      "split": split,
      "checkpoint": checkpoint,
      "step": step,
      "num_queries": len(records),
      "output_dir": output_dir,
      "submission": submission_path,
      "metrics": None,
      "cqval": None,
      "plots": None,
  }
  what = f"{split} ({len(records)} queries), checkpoint {checkpoint} (step {step})"
  plots_dir = os.path.join(output_dir, "plots")
  if plots:
    result["plots"] = _write_plots(
        config, workdir, model, params, source, records, training_log, plots, plots_dir
    )
    print(f"wrote the figures to {plots_dir}/")
  unlabelled = sum(not a.has_labels for a in source.annotations)
  if unlabelled:
    print(
        f"{what}: {unlabelled} queries without relevant_windows, so no metrics; wrote the submission: "
        f"{submission_path}"
    )
    return result

  metrics = official_metrics(trainer.score(records, source, config.evals), config.evals)
  _write_json(os.path.join(output_dir, "metrics.json"), metrics)
  print(format_brief(metrics["brief"], f"{what}: {', '.join(config.evals)}"))
  result["metrics"] = metrics
  if cqval:
    rows = cqval_rows(records, source.annotations, config.evals, nlp)
    table = format_cqval(rows, f"C-QVal of {what}: >= C subordinate clauses and >= W words")
    submission_lib.atomic_write_text(os.path.join(output_dir, "cqval.md"), table)
    _write_json(
        os.path.join(output_dir, "cqval.json"),
        {
            "split": split,
            "checkpoint": checkpoint,
            "step": step,
            "spacy_model": cqval_lib.DEFAULT_SPACY_MODEL,
            "rows": rows,
        },
    )
    print(table)
    result["cqval"] = rows
    if plots:
      from lmr_jax.visualization import plots as plots_lib

      path = os.path.join(plots_dir, "cqval.png")
      result["plots"].append(plots_lib.plot_cqval(rows, path, f"C-QVal of {what}"))
  print(f"wrote {output_dir}/")
  return result
