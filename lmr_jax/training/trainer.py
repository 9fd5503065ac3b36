"""``train_and_evaluate(config, workdir)``: data -> model -> jitted steps -> checkpoints -> evaluation.

A run resumes from the latest checkpoint in ``workdir`` by itself: the train state and the data position
come back together, so the resumed run sees the same batches and dropout keys it would have seen.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import jax
import ml_collections
import numpy as np

from lmr_jax.data import dataset
from lmr_jax.data import pipeline
from lmr_jax.evaluation import charades_metrics
from lmr_jax.evaluation import predictions
from lmr_jax.evaluation import qvh_metrics
from lmr_jax.model.lmr import LMR
from lmr_jax.training import checkpoint as checkpoint_lib
from lmr_jax.training import metric_log
from lmr_jax.training import parallel
from lmr_jax.training import train_step as train_step_lib

# config.evals names these; each maps (submission records, ground-truth records) to {"brief": ...}.
EVALUATORS = {
    "qvhighlights": qvh_metrics.eval_submission,
    "charades_sta": charades_metrics.eval_charades,
}


class NonFiniteLossError(FloatingPointError):
  """Training produced NaN/inf; the last checkpoint saved before it is kept untouched."""


def build_model(config: ml_collections.ConfigDict) -> LMR:
  return LMR(config.model)


def init_state(config, model, tx, example_batch):
  """Fresh train state from ``config.seed`` (also the abstract target for restoring)."""
  return train_step_lib.create_train_state(model, tx, jax.random.key(config.seed), example_batch)


def sharded_state_layout(config, model, tx, mesh, example_batch):
  """(abstract train state carrying its shardings, the shardings) for ``config`` on ``mesh``."""
  abstract = jax.eval_shape(lambda: init_state(config, model, tx, example_batch))
  shardings = parallel.state_shardings(mesh, abstract, config.fsdp)
  return parallel.with_shardings(abstract, shardings), shardings


def example_batch(source, batch_size: int) -> dict:
  """A batch of the right shapes for initialisation (values do not matter)."""
  first = source.example(0)
  return {k: np.stack([v] * batch_size) for k, v in first.items()}


def predict(predict_fn, params, source, config, mesh) -> list[dict]:
  """Submission records for every query of ``source`` (each process predicts its share of the rows;
  every process gets all records), windows rounded as ``config.eval_round_to_clip`` says."""
  annotations_by_qid = {a.qid: a for a in source.annotations}
  round_to = predictions.clip_rounding(config)
  rows = parallel.batch_sharding(mesh)
  records = []
  batches = pipeline.eval_batches(
      source, config.eval_batch_size, jax.process_index(), jax.process_count()
  )
  num_batches = pipeline.num_eval_batches(len(source), config.eval_batch_size, jax.process_count())
  with metric_log.progress_bar(num_batches, 0, "eval") as bar:
    for batch in batches:
      outputs = parallel.to_host(predict_fn(params, parallel.global_batch(rows, batch)))
      records += predictions.to_submission_records(
          outputs, parallel.to_host(batch), annotations_by_qid, round_to
      )
      bar.update()
  return records


def score(records: list[dict], source, evals) -> dict:
  """Runs each evaluator of ``evals`` on the records; their "brief" dicts are merged."""
  for name in evals:
    if name not in EVALUATORS:
      raise ValueError(
          f"config.evals: unknown evaluator '{name}', choose from {sorted(EVALUATORS)}"
      )
  ground_truth = [a.to_record() for a in source.annotations]
  metrics = {"brief": {}}
  for name in evals:
    result = EVALUATORS[name](records, ground_truth)
    metrics["brief"].update(result["brief"])
    metrics[name] = result
  return metrics


def _check_finite(history: list[tuple[int, dict]]) -> dict:
  """Fetches the accumulated step metrics; raises on the first non-finite loss."""
  fetched = jax.device_get(history)
  for step, metrics in fetched:
    if not np.isfinite(metrics["loss"]):
      raise NonFiniteLossError(
          f"loss became {metrics['loss']} at step {step}; training stopped, the last checkpoint "
          "before it is kept"
      )
  return {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[-1][1]}


class _StopOnSignal:
  """SIGTERM/SIGINT (a scheduler's preemption, Ctrl-C) ask the loop to checkpoint and return.

  The handlers only set a flag, so a step or a checkpoint write in progress finishes first; they
  also put the previous handlers back, so a second Ctrl-C interrupts at once.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal_name = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():  # Python's rule for handlers
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    self.signal_name = signal.Signals(signum).name
    self._restore_handlers()

  def requested(self) -> bool:
    return parallel.all_processes_agree(self.signal_name is not None)

  def _restore_handlers(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def __exit__(self, *exc):
    self._restore_handlers()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints); returns the last metrics.

  On SIGTERM/SIGINT it saves a checkpoint after the current step and returns early; the same call
  (or command) then resumes exactly there.
  """
  os.makedirs(workdir, exist_ok=True)
  checkpoint_lib.save_config(config, workdir)
  if config.data.generate_synthetic:
    dataset.ensure_synthetic(config.data)
  with_captions = config.model.use_caption_context
  train_source = dataset.example_source(
      config.data, "train", with_captions=with_captions, training=True
  )
  eval_source = dataset.example_source(
      config.data, config.eval_split, with_captions=with_captions, training=False
  )
  steps_per_epoch = pipeline.steps_per_epoch(len(train_source), config.batch_size)
  total_steps = config.num_epochs * steps_per_epoch

  mesh = parallel.make_mesh(config.num_devices)
  parallel.check_batch_size(mesh, "batch_size", config.batch_size)
  parallel.check_batch_size(mesh, "eval_batch_size", config.eval_batch_size)
  model = build_model(config)
  tx, schedule = train_step_lib.make_optimizer(config.optim, total_steps)
  local_batch = example_batch(train_source, config.batch_size // jax.process_count())
  abstract_state, state_shardings = sharded_state_layout(config, model, tx, mesh, local_batch)
  checkpointer = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints, config.best_metric)
  position = pipeline.DataPosition()
  if checkpointer.latest.latest_step() is not None:
    state, position = checkpointer.restore("latest", abstract_state)
  else:
    state = jax.jit(
        lambda: init_state(config, model, tx, local_batch), out_shardings=state_shardings
    )()
  step = int(state.step)
  logging.info(
      "Training %d steps (%d per epoch) from step %d on %d devices (%d processes), "
      "%d train / %d %s queries",
      total_steps,
      steps_per_epoch,
      step,
      mesh.size,
      jax.process_count(),
      len(train_source),
      len(eval_source),
      config.eval_split,
  )

  train_step = train_step_lib.jit_train_step(model, tx, config.loss, mesh, state_shardings)
  predict_fn = train_step_lib.jit_predict_step(model, mesh, state_shardings.params)
  # Made under jit: device_put cannot place a value on other hosts' devices.
  rng = jax.jit(lambda: jax.random.key(config.seed + 1), out_shardings=parallel.replicated(mesh))()
  rows = parallel.batch_sharding(mesh)
  log = metric_log.MetricLog(workdir, config)
  history, metrics, start_time = [], {}, time.time()
  start_step = step
  batches = pipeline.train_batches(
      train_source,
      config.batch_size,
      config.seed,
      position,
      jax.process_index(),
      jax.process_count(),
  )
  bar = metric_log.progress_bar(steps_per_epoch, position.step, f"epoch {position.epoch + 1}")
  with _StopOnSignal() as stop:
    try:
      while step < total_steps:
        position, batch = next(batches)
        state, step_metrics = train_step(state, parallel.global_batch(rows, batch), rng)
        step += 1
        bar.update()
        history.append((step, step_metrics))
        epoch_done = position.step == steps_per_epoch - 1
        next_position = (
            pipeline.DataPosition(position.epoch + 1, 0)
            if epoch_done
            else pipeline.DataPosition(position.epoch, position.step + 1)
        )
        eval_now = (epoch_done and (position.epoch + 1) % config.eval_every_epochs == 0) or (
            step == total_steps
        )
        stop_now = stop.requested()
        save_now = step % config.checkpoint_every_steps == 0 or eval_now or stop_now
        if step % config.log_every_steps == 0 or save_now:
          train_means = _check_finite(history)
          history = []
          log.write(
              step,
              epoch=position.epoch,
              lr=float(schedule(step)),
              steps_per_sec=(step - start_step) / max(time.time() - start_time, 1e-9),
              **{f"train/{k}": v for k, v in train_means.items()},
          )
          bar.set_postfix(loss=f"{train_means['loss']:.4f}")
          logging.info("step %d epoch %d loss %.4f", step, position.epoch, train_means["loss"])
        if eval_now:
          records = predict(predict_fn, state.params, eval_source, config, mesh)
          metrics = score(records, eval_source, config.evals)
          log.write(
              step,
              epoch=position.epoch + 1,
              **{f"{config.eval_split}/{k}": v for k, v in metrics["brief"].items()},
          )
          logging.info("step %d %s: %s", step, config.eval_split, metrics["brief"])
        if save_now:
          checkpointer.save(state, next_position, metrics=metrics["brief"] if eval_now else None)
        if stop_now:
          logging.warning(
              "%s: saved step %d in %s and stopped; the same command resumes from it",
              stop.signal_name or "signal on another process",
              step,
              checkpointer.latest.directory,
          )
          break
        if epoch_done and step < total_steps:
          bar.close()
          bar = metric_log.progress_bar(steps_per_epoch, 0, f"epoch {position.epoch + 2}")
    finally:
      bar.close()
      log.close()
      checkpointer.close()
  if jax.process_index() == 0:
    print(_summary(config, workdir, log, checkpointer, step, total_steps, start_time, stop))
  return metrics


def _summary(config, workdir, log, checkpointer, step, total_steps, start_time, stop) -> str:
  latest, best = checkpointer.latest.latest_step(), checkpointer.best.best_step()
  return metric_log.summary(
      workdir=workdir,
      records=log.records(),
      eval_split=config.eval_split,
      best_metric=config.best_metric,
      best_step=best,
      latest_dir=str(checkpointer.latest.directory / str(latest)) if latest is not None else None,
      best_dir=str(checkpointer.best.directory / str(best)) if best is not None else None,
      step=step,
      total_steps=total_steps,
      start_time=start_time,
      stop_reason=stop.signal_name,
  )
