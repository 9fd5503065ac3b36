"""The training loop: jitted steps over a feed (tf.data or device-resident tables), with logs, evaluations and checkpoints.

``train`` resumes from the latest checkpoint in ``workdir`` by itself: the train state and the data
position come back together, so the resumed run sees the same batches and dropout keys it would have
seen. Evaluation is passed in (``lmr_jax.evaluation.evaluators``), so training depends on nothing above
it; ``lmr_jax.commands.train.train_and_evaluate`` puts the two together.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lmr_jax.data import order
from lmr_jax.data.examples import ExampleSource
from lmr_jax.data.position import DataPosition
from lmr_jax.errors import LmrError
from lmr_jax.training import checkpoint as checkpoint_lib
from lmr_jax.training import feeds
from lmr_jax.training import metric_log
from lmr_jax.training import parallel
from lmr_jax.training import state as state_lib
from lmr_jax.training import train_step as train_step_lib

# (jitted eval step, params, mesh) -> {"brief": {metric: value}, ...}: what ``train`` calls to evaluate.
Evaluate = Callable[[Callable, Any, jax.sharding.Mesh], dict]


class NonFiniteLossError(LmrError, FloatingPointError):
  """Training produced NaN/inf; the last checkpoint saved before it is kept untouched."""


@dataclasses.dataclass
class _Schedule:
  """When the loop logs, evaluates and saves."""

  config: ml_collections.ConfigDict
  steps_per_epoch: int

  @property
  def total_steps(self) -> int:
    return self.config.num_epochs * self.steps_per_epoch

  def eval_due(self, step: int, next_position: DataPosition) -> bool:
    epoch_end = next_position.step == 0
    return step == self.total_steps or (
        epoch_end and next_position.epoch % self.config.eval_every_epochs == 0
    )

  def save_due(self, step: int) -> bool:
    return step % self.config.checkpoint_every_steps == 0

  def log_due(self, step: int) -> bool:
    return step % self.config.log_every_steps == 0

  def steps_to_next_event(self, step: int) -> int:
    """Steps from ``step`` to the next log, save or the end (a dispatch of several steps stops
    there; epoch ends, where evaluations happen, are the feed's to respect)."""
    return min(
        self.total_steps - step,
        self.config.log_every_steps - step % self.config.log_every_steps,
        self.config.checkpoint_every_steps - step % self.config.checkpoint_every_steps,
    )


def train(
    config: ml_collections.ConfigDict, workdir: str, source: ExampleSource, evaluate: Evaluate
) -> dict:
  """Trains ``config`` on ``source`` in ``workdir`` (resuming if it holds checkpoints), evaluating
  at the end of every ``eval_every_epochs`` epochs and at the last step; returns the last metrics.

  On SIGTERM/SIGINT it saves a checkpoint after the current step and returns early; the same call
  (or command) then resumes exactly there. Long because it is the whole loop, to be read top to
  bottom: set up, then per dispatch step, log, evaluate, save, stop.
  """
  clock = metric_log.PhaseClock()
  feeds.check_resident_config(config)
  schedule = _Schedule(config, order.steps_per_epoch(len(source), config.batch_size))
  mesh = _mesh(config)
  # Built (and checked against the devices' memory) before anything is written to the workdir.
  tables = feeds.load_tables(config, source, mesh) if config.data.device_resident else None
  os.makedirs(workdir, exist_ok=True)
  model = state_lib.build_model(config)
  tx, lr_schedule = train_step_lib.make_optimizer(config.optim, schedule.total_steps)
  checkpointer = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints, config.best_metric)
  state, position, shardings = _initial_state(
      config, model, tx, mesh, source=source, checkpointer=checkpointer
  )
  # Only now that the checkpoint fits (or there is none) does the workdir's record of the run change.
  checkpoint_lib.save_config(config, workdir)
  feed = _feed(config, source, tables, position, mesh=mesh, model=model, tx=tx, shardings=shardings)
  eval_step = train_step_lib.jit_eval_step(model, mesh, shardings.params)
  # Made under jit: device_put cannot place a value on other hosts' devices.
  rng = jax.jit(lambda: jax.random.key(config.seed + 1), out_shardings=parallel.replicated(mesh))()
  step = start_step = int(state.step)
  _log_start(config, schedule, step, mesh, num_queries=len(source))
  log = metric_log.MetricLog(workdir, config)
  bar = _EpochBars(schedule.steps_per_epoch, position)
  history, metrics, start_time = [], {}, time.time()
  clock.add("setup", time.monotonic() - clock.start)
  log_train = functools.partial(
      _log_train, log, lr_schedule=lr_schedule, start_step=start_step, start_time=start_time
  )
  with _StopOnSignal() as stop:
    try:
      while step < schedule.total_steps:
        phase = "first_dispatch" if step == start_step else "steps"  # the first compiles
        with clock.timing(phase, count=0):
          dispatch = feed.next(schedule.steps_to_next_event(step))
          state, step_metrics = dispatch.run(state, rng)
        clock.counts[phase] += dispatch.num_steps
        step += dispatch.num_steps
        history.append((step, step_metrics))
        bar.step(dispatch.next_position, dispatch.num_steps)
        eval_now = schedule.eval_due(step, dispatch.next_position)
        stop_now = stop.requested()
        save_now = schedule.save_due(step) or eval_now or stop_now
        if schedule.log_due(step) or save_now:
          with clock.timing("steps", count=0):  # fetching the losses waits for the steps
            train_loss = log_train(history, step, dispatch.position.epoch)
          history = []
          bar.show_loss(train_loss)
        if eval_now:
          with clock.timing("evaluation"):
            metrics = evaluate(eval_step, state.params, mesh)
          _log_eval(
              log, config.eval_split, step, dispatch.next_position.epoch, brief=metrics["brief"]
          )
        if save_now:
          with clock.timing("checkpoint"):
            checkpointer.save(state, dispatch.next_position, metrics["brief"] if eval_now else None)
        if stop_now:
          _log_stop(stop, step, checkpointer)
          break
    except BaseException:
      _close(bar, log, checkpointer, failing=True)
      raise
    _close(bar, log, checkpointer, failing=False)
  if jax.process_index() == 0:
    print(
        _summary(
            config,
            workdir,
            log,
            checkpointer,
            step=step,
            total_steps=schedule.total_steps,
            start_time=start_time,
            stop=stop,
            clock=clock,
        )
    )
  return metrics


def _mesh(config):
  mesh = parallel.make_mesh(config.num_devices)
  parallel.check_batch_size(mesh, "batch_size", config.batch_size)
  parallel.check_batch_size(mesh, "eval_batch_size", config.eval_batch_size)
  return mesh


def _feed(config, source, tables, position, *, mesh, model, tx, shardings):
  """The resident tables' feed when ``tables`` were loaded, else the tf.data stream's."""
  if tables is not None:
    return feeds.ResidentFeed(
        config, source, tables, position, mesh=mesh, model=model, tx=tx, shardings=shardings
    )
  train_step = train_step_lib.jit_train_step(
      model, tx, config.loss, mesh, state_shardings=shardings
  )
  return feeds.StreamFeed(config, source, position, mesh, train_step=train_step)


def _initial_state(config, model, tx, mesh, *, source: ExampleSource, checkpointer):
  """(train state, data position, state shardings): the latest checkpoint's, or fresh ones."""
  spec, rows = source.element_spec(), config.batch_size // jax.process_count()
  abstract_state, shardings = state_lib.sharded_state_layout(
      config, model, tx, mesh, batch=state_lib.zeros_batch(spec, rows)
  )
  if checkpointer.latest.latest_step() is not None:
    state, position = checkpointer.restore("latest", abstract_state)
    return state, position, shardings
  state = jax.jit(
      lambda: state_lib.init_state(config, model, tx, state_lib.zeros_batch(spec, rows, jnp)),
      out_shardings=shardings,
  )()
  return state, DataPosition(), shardings


def _log_start(config, schedule: _Schedule, step: int, mesh, *, num_queries: int) -> None:
  logging.info(
      "Training %d steps (%d per epoch) from step %d on %d devices (%d processes), %d train queries",
      schedule.total_steps,
      schedule.steps_per_epoch,
      step,
      mesh.size,
      jax.process_count(),
      num_queries,
  )


def _check_finite(history: list[tuple[int, dict]]) -> dict:
  """Fetches the accumulated metrics (entries of (last step, metrics of one step or stacked over a
  dispatch's steps)); raises on the first non-finite loss; returns the means over the steps."""
  fetched = [(step, jax.tree.map(np.atleast_1d, m)) for step, m in jax.device_get(history)]
  for last_step, metrics in fetched:
    losses = metrics["loss"]
    bad = np.flatnonzero(~np.isfinite(losses))
    if len(bad):
      raise NonFiniteLossError(
          f"loss became {losses[bad[0]]} at step {last_step - len(losses) + 1 + bad[0]}; training "
          "stopped, the last checkpoint before it is kept"
      )
  return {k: float(np.mean(np.concatenate([m[k] for _, m in fetched]))) for k in fetched[-1][1]}


def _log_train(log, history, step, epoch, *, lr_schedule, start_step, start_time) -> float:
  """Writes the mean of the steps since the last log (after checking them); returns the loss."""
  means = _check_finite(history)
  log.write(
      step,
      epoch=epoch,
      lr=float(lr_schedule(step)),
      steps_per_sec=(step - start_step) / max(time.time() - start_time, 1e-9),
      **{f"train/{k}": v for k, v in means.items()},
  )
  logging.info("step %d epoch %d loss %.4f", step, epoch, means["loss"])
  return means["loss"]


def _close(*closables, failing: bool) -> None:
  """Closes the bars, the log and the checkpointer; while an error is on its way out (a full disk,
  say, which may fail these closes too) their own errors are logged, so the first one is reported.
  """
  for closable in closables:
    if not failing:
      closable.close()
      continue
    try:
      closable.close()
    except Exception as e:  # noqa: BLE001 - secondary to the error being raised
      logging.warning("closing %s after the error: %s", type(closable).__name__, e)


def _log_stop(stop: "_StopOnSignal", step: int, checkpointer) -> None:
  logging.warning(
      "%s: saved step %d in %s and stopped; the same command resumes from it",
      stop.signal_name or "signal on another process",
      step,
      checkpointer.latest.directory,
  )


def _log_eval(log, split: str, step: int, epochs_done: int, *, brief: dict) -> None:
  log.write(step, epoch=epochs_done, **{f"{split}/{k}": v for k, v in brief.items()})
  logging.info("step %d %s: %s", step, split, brief)


class _EpochBars:
  """One progress bar per epoch, started where the data stream stands."""

  def __init__(self, steps_per_epoch: int, position: DataPosition):
    self._steps = steps_per_epoch
    self._bar = metric_log.progress_bar(
        steps_per_epoch, position.step, f"epoch {position.epoch + 1}"
    )

  def step(self, next_position: DataPosition, num_steps: int = 1) -> None:
    self._bar.update(num_steps)
    if next_position.step == 0:
      self._bar.close()
      self._bar = metric_log.progress_bar(self._steps, 0, f"epoch {next_position.epoch + 1}")

  def show_loss(self, loss: float) -> None:
    self._bar.set_postfix(loss=f"{loss:.4f}")

  def close(self) -> None:
    self._bar.close()


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


def _summary(
    config, workdir, log, checkpointer, *, step, total_steps, start_time, stop, clock
) -> str:
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
      clock=clock,
  )
