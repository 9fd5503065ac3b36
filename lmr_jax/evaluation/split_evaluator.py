"""The evaluator that training runs: the model's submission records for one split, scored by the
metrics of ``config.evals`` (the protocol ``training.trainer.Evaluate``); ``eval.py`` runs a restored
checkpoint through the same ``split_records``."""

from __future__ import annotations

import jax
import ml_collections

from lmr_jax.data import pipeline
from lmr_jax.data.examples import ExampleSource
from lmr_jax.evaluation import evaluators
from lmr_jax.evaluation import predictions
from lmr_jax.training import metric_log
from lmr_jax.training import parallel


def split_records(
    eval_step, params, source: ExampleSource, config: ml_collections.ConfigDict, *, mesh
) -> list[dict]:
  """Submission records for every query of ``source`` (each process runs its share of the rows;
  every process gets all records), written as ``config.eval_protocol`` says (windows rounded as
  ``config.eval_round_to_clip`` says in ours)."""
  annotations_by_qid = {a.qid: a for a in source.annotations}
  to_records = predictions.records_for(config)
  rows = parallel.batch_sharding(mesh)
  records = []
  batches = pipeline.eval_batches(
      source, config.eval_batch_size, jax.process_index(), jax.process_count()
  )
  num_batches = pipeline.num_eval_batches(len(source), config.eval_batch_size, jax.process_count())
  with metric_log.progress_bar(num_batches, 0, "eval") as bar:
    for batch in batches:
      outputs = parallel.to_host(eval_step(params, parallel.global_batch(rows, batch)))
      records += to_records(outputs, parallel.to_host(batch), annotations_by_qid)
      bar.update()
  return records


class SplitEvaluator:
  """Scores one split: the model's records for it, then the metrics of ``config.evals``."""

  def __init__(self, config: ml_collections.ConfigDict, source: ExampleSource):
    evaluators.check_names(config.evals)  # before training starts, not at its first evaluation
    self.config = config
    self.source = source

  def __call__(self, eval_step, params, mesh) -> dict:
    records = split_records(eval_step, params, self.source, self.config, mesh=mesh)
    return evaluators.score(records, self.source.annotations, self.config.evals)
