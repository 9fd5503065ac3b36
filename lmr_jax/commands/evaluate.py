"""Evaluates a trained checkpoint on one split: submission file, official metrics, C-QVal table.

``evaluate_checkpoint`` (what ``eval.py`` runs) rebuilds the train state exactly as training does
(``training.state``), so a checkpoint made with another config fails to restore with one
``CheckpointError`` line instead of evaluating a half-matching model. It runs the model on every query
of the split, writes ``{output_dir}/submission.jsonl`` and, for a labelled split, ``metrics.json`` (the
official QVHighlights layout) and, with ``cqval=True``, the paper's Tab. IV on the C-QVal splits of
that split (``cqval.md`` / ``cqval.json``). With ``plots=N`` it also draws figures into
``{output_dir}/plots/``: the training curves, a timeline and an attention map for N queries sampled
with a fixed seed and, with ``cqval``, the C-QVal bar chart (``lmr_jax/visualization``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any

import jax
import ml_collections

from lmr_jax import fileio
from lmr_jax.data import dataset
from lmr_jax.data.examples import ExampleSource
from lmr_jax.commands import preflight
from lmr_jax.errors import LmrError
from lmr_jax.evaluation import cqval as cqval_lib
from lmr_jax.evaluation import evaluators
from lmr_jax.evaluation import split_evaluator
from lmr_jax.evaluation import submission as submission_lib
from lmr_jax.training import checkpoint as checkpoint_lib
from lmr_jax.training import parallel, run_lock
from lmr_jax.training import state as state_lib
from lmr_jax.training import train_step as train_step_lib
from lmr_jax.training import workdir as workdir_lib

# What evaluate_checkpoint may write into its output folder (besides plots/).
OUTPUT_NAMES = ("submission.jsonl", "metrics.json", "cqval.md", "cqval.json")


class EvalError(LmrError):
  """Options that cannot be evaluated together (e.g. --cqval on an unlabelled split)."""


@dataclasses.dataclass(frozen=True)
class _Evaluation:
  """What the model produced for a split, with what the reports need."""

  records: list[dict]  # submission records, one per query
  source: ExampleSource
  step: int  # of the restored checkpoint
  model: Any
  params: Any


def evaluate_checkpoint(
    config: ml_collections.ConfigDict,
    workdir: str,
    checkpoint="best",
    split: str | None = None,
    *,
    cqval: bool = False,
    output_dir: str | None = None,
    plots: int = 0,
) -> dict:
  """Runs ``checkpoint`` ('best', 'latest' or a step) of ``workdir`` on ``split`` (default
  ``config.eval_split``); writes and prints the results under ``output_dir`` (default
  ``{workdir}/eval/{split}_{checkpoint}``); ``plots`` > 0 adds figures for that many sampled queries.
  Returns {split, checkpoint, step, num_queries, output_dir, submission, metrics (None if unlabelled),
  cqval (Tab. IV rows, or None), plots (the PNG paths, or None)}. Every option, file and the
  checkpoint are checked before the slow part (restoring, compiling, running the model)."""
  checkpoint = str(checkpoint)
  split = split or config.eval_split
  output_dir = output_dir or os.path.join(workdir, "eval", f"{split}_{checkpoint}")
  _check_request(config, workdir, split, output_dir, plots=plots)
  writes_into_workdir = os.path.isdir(workdir) and _is_inside(output_dir, workdir)
  with run_lock.hold(workdir, "evaluation") if writes_into_workdir else contextlib.nullcontext():
    return _evaluate(
        config,
        workdir,
        checkpoint=checkpoint,
        split=split,
        cqval=cqval,
        output_dir=output_dir,
        plots=plots,
    )


def _is_inside(path: str, folder: str) -> bool:
  path, folder = os.path.realpath(path), os.path.realpath(folder)
  return os.path.commonpath([path, folder]) == folder


def _evaluate(config, workdir: str, *, checkpoint: str, split: str, cqval, output_dir, plots):
  """``evaluate_checkpoint`` once its request is checked (and the workdir's lock held where the
  results go into it)."""
  checkpointer = state_lib.open_checkpointer(config, workdir, checkpoint)
  try:
    source = dataset.example_source(
        config.data, split, with_captions=config.model.use_caption_context, training=False
    )
    _check_options(config, source, cqval, split)
    training_log = _read_training_log(workdir) if plots else None
    nlp = cqval_lib.load_spacy() if cqval else None
    evaluation = _run_model(config, checkpointer, checkpoint, source)
  finally:
    checkpointer.close()
  submission_path = os.path.join(output_dir, "submission.jsonl")
  submission_lib.write_submission(submission_path, evaluation.records)
  what = f"{split} ({len(evaluation.records)} queries), checkpoint {checkpoint} (step {evaluation.step})"
  result = {
      "split": split,
      "checkpoint": checkpoint,
      "step": evaluation.step,
      "num_queries": len(evaluation.records),
      "output_dir": output_dir,
      "submission": submission_path,
      "metrics": None,
      "cqval": None,
      "plots": None,
  }
  plots_dir = os.path.join(output_dir, "plots")
  if plots:
    result["plots"] = _write_plots(
        config, workdir, evaluation, training_log, num=plots, out_dir=plots_dir
    )
    print(f"wrote the figures to {plots_dir}/")
  unlabelled = sum(not a.has_labels for a in source.annotations)
  if unlabelled:
    print(
        f"{what}: {unlabelled} queries without relevant_windows, so no metrics; wrote the submission: "
        f"{submission_path}"
    )
    return result
  result["metrics"] = _write_metrics(config, evaluation, output_dir, what)
  if cqval:
    result["cqval"] = _write_cqval(
        config, evaluation, nlp, output_dir, what=what, split=split, checkpoint=checkpoint
    )
    if plots:
      from lmr_jax.visualization import plots as plots_lib

      path = os.path.join(plots_dir, "cqval.png")
      result["plots"].append(plots_lib.plot_cqval(result["cqval"], path, f"C-QVal of {what}"))
  print(f"wrote {output_dir}/")
  return result


def _check_request(config, workdir: str, split: str, output_dir: str, *, plots: int) -> None:
  """The config (alone and against the run's config.json), the split and the output folder."""
  preflight.check_config(config)
  if plots < 0:
    raise EvalError(f"--plots takes a number of queries >= 0, got {plots}")
  files = config.data.annotation_files
  if split not in files or not files[split]:
    raise EvalError(
        f"--split '{split}' is not a split of config.data.annotation_files "
        f"(has {sorted(k for k, v in files.items() if v)})"
    )
  if os.path.exists(os.path.join(workdir, checkpoint_lib.CONFIG_FILE)):
    _note_protocol(config, workdir_lib.check_matches(config, workdir, "eval.py"), workdir)
  inputs = [files[split], os.path.join(workdir, "metrics.jsonl")]
  fileio.check_output_dir(output_dir, inputs, OUTPUT_NAMES)


def _note_protocol(config, saved, workdir: str) -> None:
  """A ported QD-DETR workdir (``saved``: its config.json) evaluates as QD-DETR does; say so when
  ``config`` evaluates otherwise (a --config file does not carry the workdir's eval_protocol)."""
  keys = ("eval_protocol", "eval_batch_size")
  if saved.eval_protocol == "qd_detr" and any(config.get(k) != saved.get(k) for k in keys):
    print(
        f"note: {workdir}/config.json evaluates as QD-DETR does (eval_protocol='qd_detr', "
        f"eval_batch_size={saved.eval_batch_size}); this evaluation uses "
        f"eval_protocol={config.eval_protocol!r}, eval_batch_size={config.eval_batch_size}"
    )


def _check_options(config, source: ExampleSource, cqval: bool, split: str) -> None:
  """C-QVal needs ground truth and the QVHighlights metrics; say so before the model is restored."""
  unlabelled = sum(not a.has_labels for a in source.annotations)
  if cqval and unlabelled:
    raise EvalError(
        f"--cqval needs a labelled split; '{split}' has {unlabelled} of {len(source)} "
        "queries without relevant_windows"
    )
  if cqval and "qvhighlights" not in config.evals:
    raise EvalError(f"--cqval reports QVHighlights metrics; config.evals is {tuple(config.evals)}")


def _read_training_log(workdir: str) -> list[dict]:
  from lmr_jax.visualization import plots as plots_lib  # matplotlib is imported only for plots

  return plots_lib.read_metrics_log(os.path.join(workdir, "metrics.jsonl"))


def _run_model(config, checkpointer, checkpoint: str, source: ExampleSource) -> _Evaluation:
  """Restores ``checkpoint`` laid out as training lays it out and runs it on every query."""
  model = state_lib.build_model(config)
  mesh = parallel.make_mesh(config.num_devices)
  parallel.check_batch_size(mesh, "eval_batch_size", config.eval_batch_size)
  params, step = state_lib.restore_params(
      config, model, checkpointer, checkpoint, element_spec=source.element_spec(), mesh=mesh
  )
  eval_step = train_step_lib.jit_eval_step(model, mesh, jax.tree.map(lambda p: p.sharding, params))
  records = split_evaluator.split_records(eval_step, params, source, config, mesh=mesh)
  assert len(records) == len(source), (len(records), len(source))
  return _Evaluation(records, source, step, model, params)


def _write_metrics(config, evaluation: _Evaluation, output_dir: str, what: str) -> dict:
  scored = evaluators.score(evaluation.records, evaluation.source.annotations, config.evals)
  metrics = evaluators.official_layout(scored, config.evals)
  fileio.write_json(os.path.join(output_dir, "metrics.json"), metrics)
  print(evaluators.format_brief(metrics["brief"], f"{what}: {', '.join(config.evals)}"))
  return metrics


def _write_cqval(config, evaluation: _Evaluation, nlp, output_dir, *, what, split, checkpoint):
  rows = cqval_lib.score_rows(evaluation.records, evaluation.source.annotations, config.evals, nlp)
  table = cqval_lib.format_score_rows(
      rows, f"C-QVal of {what}: >= C subordinate clauses and >= W words"
  )
  fileio.atomic_write_text(os.path.join(output_dir, "cqval.md"), table)
  fileio.write_json(
      os.path.join(output_dir, "cqval.json"),
      {
          "split": split,
          "checkpoint": checkpoint,
          "step": evaluation.step,
          "spacy_model": cqval_lib.DEFAULT_SPACY_MODEL,
          "rows": rows,
      },
  )
  print(table)
  return rows


def _write_plots(
    config, workdir, evaluation: _Evaluation, training_log, *, num, out_dir
) -> list[str]:
  """Training curves, then a timeline and an attention map for each of ``num`` queries sampled with a
  fixed seed; the model runs once more, on those queries only, to keep its attention weights."""
  from lmr_jax.visualization import attention
  from lmr_jax.visualization import plots as plots_lib

  source = evaluation.source
  path = os.path.join(out_dir, "training_curves.png")
  paths = [plots_lib.plot_training_curves(training_log, path, f"training: {workdir}")]
  indices = plots_lib.sample_indices(len(source), num)
  batch_size = min(len(indices), config.eval_batch_size)
  weights = attention.vqf_attention(
      evaluation.model, evaluation.params, source, indices, batch_size=batch_size
  )
  by_qid = {r["qid"]: r for r in evaluation.records}
  clip_len = config.data.clip_len
  for index, query_weights in zip(indices, weights):
    ann = source.annotations[index].to_record()
    path = os.path.join(out_dir, f"timeline_qid{ann['qid']}.png")
    paths.append(plots_lib.plot_timeline(by_qid[ann["qid"]], ann, path, clip_len=clip_len))
    if query_weights:  # a model without VQF has no query-clip attention
      path = os.path.join(out_dir, f"attention_qid{ann['qid']}.png")
      paths.append(plots_lib.plot_attention(query_weights, ann, path, clip_len=clip_len))
  return paths
