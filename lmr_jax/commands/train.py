"""``train_and_evaluate(config, workdir)``: the data of ``config``, the training loop, and the evaluator
of ``config.evals`` on ``config.eval_split`` (what ``train.py`` runs)."""

from __future__ import annotations

import contextlib
import logging
import os

import ml_collections

from lmr_jax.commands import preflight
from lmr_jax.data import dataset
from lmr_jax.evaluation import split_evaluator
from lmr_jax.training import run_lock, trainer
from lmr_jax.training import workdir as workdir_lib


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, start_over: bool = False
) -> dict:
  """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints); returns the last metrics.

  The config, the workdir (``workdir.check_for_training``; ``start_over`` moves an earlier run
  aside) and both splits (with ``config.data.preload``, every feature file) are checked before any
  checkpoint or log is written. From there to the end the workdir's lock is held (``run_lock``): a
  second writer stops, at once where the first already holds it.
  """
  preflight.check_config(config)
  run_lock.check_free(workdir)
  workdir_lib.check_for_training(config, workdir, start_over)
  dataset.prepare(config.data)
  with_captions = config.model.use_caption_context
  train_source = dataset.example_source(
      config.data, "train", with_captions=with_captions, training=True
  )
  eval_source = dataset.example_source(
      config.data, config.eval_split, with_captions=with_captions, training=False
  )
  logging.info("Evaluating on %d %s queries", len(eval_source), config.eval_split)
  evaluator = split_evaluator.SplitEvaluator(config, eval_source)
  created = not os.path.exists(workdir)
  os.makedirs(workdir, exist_ok=True)
  try:
    with run_lock.hold(workdir, "training"):
      # Again under the lock: another run may have written the workdir while the data was read.
      if workdir_lib.check_for_training(config, workdir, start_over):
        workdir_lib.move_previous_run(workdir)
      return trainer.train(config, workdir, train_source, evaluator)
  except BaseException:
    if created:  # a start refused before its first write leaves no empty workdir behind
      with contextlib.suppress(OSError):
        os.rmdir(workdir)
    raise
