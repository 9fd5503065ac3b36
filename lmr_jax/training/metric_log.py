"""What a training run reports, from process 0 only: ``metrics.jsonl``, TensorBoard event files, tqdm
progress bars, and the summary screen at the end.

``{workdir}/metrics.jsonl`` holds one JSON object per event (the plots and tests read it);
``{workdir}/tensorboard`` holds the same scalars (train loss per term, lr, eval metrics) plus the
config as hyperparameters: ``tensorboard --logdir {workdir}/tensorboard``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import jax
import ml_collections
from flax.metrics import tensorboard
from tqdm import tqdm

from lmr_jax import fileio

TENSORBOARD_DIR = "tensorboard"
METRICS_FILE = "metrics.jsonl"


class MetricLog:
  """Appends records to metrics.jsonl and writes their numeric fields as TensorBoard scalars."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, METRICS_FILE)
    self.tensorboard_dir = os.path.join(workdir, TENSORBOARD_DIR)
    self._writer = None
    if self.enabled:
      self._writer = tensorboard.SummaryWriter(self.tensorboard_dir)
      self._writer.hparams(config.to_dict())

  def write(self, step: int, **scalars: float) -> None:
    if not self.enabled:
      return
    fileio.append_jsonl(self.path, dict(step=step, **scalars))
    with self._tensorboard_faults():
      for name, value in scalars.items():
        # a metric the split cannot give (e.g. no highlight labels) stays null
        if value is not None:
          self._writer.scalar(name, value, step)
      self._writer.flush()

  @contextlib.contextmanager
  def _tensorboard_faults(self):
    """TensorFlow's event writer reports a full disk in errors of its own: a WriteError instead."""
    try:
      yield
    except Exception as e:
      fault = fileio.disk_fault(e)
      if fault:
        raise fileio.write_error(self.tensorboard_dir, fault, "TensorBoard events") from None
      raise

  def records(self) -> list[dict]:
    """Every record of metrics.jsonl so far (this run's and, after a resume, the earlier runs')."""
    if not os.path.exists(self.path):
      return []
    return [record for record, _ in fileio.read_jsonl(self.path, what="training log")]

  def close(self) -> None:
    if self._writer is not None:
      writer, self._writer = self._writer, None
      with self._tensorboard_faults():
        writer.close()


def progress_bar(total: int, initial: int, description: str) -> tqdm:
  """A bar with ETA (hidden on processes other than 0 and when stderr is not a terminal)."""
  return tqdm(
      total=total,
      initial=initial,
      desc=description,
      unit="step",
      dynamic_ncols=True,
      leave=False,
      disable=jax.process_index() != 0 or not sys.stderr.isatty(),
  )


class PhaseClock:
  """Wall time of a run's phases, for the summary: where a quick run's minutes go. Phases run on
  the host, so a phase that ends without waiting for the device (a dispatched step) is charged
  to the next one that waits (the next log fetches the steps' losses)."""

  # Shown in this order as "{label} {time}"; "{n}" is the phase's count (steps, evaluations, saves).
  PHASES = (
      ("setup", "setup"),
      ("first_dispatch", "first dispatch of {n} step(s) with its compilation"),
      ("steps", "{n} more step(s)"),
      ("evaluation", "{n} evaluation(s)"),
      ("checkpoint", "{n} checkpoint save(s)"),
  )

  def __init__(self):
    self.start = time.monotonic()
    self.seconds = dict.fromkeys((key for key, _ in self.PHASES), 0.0)
    self.counts = dict.fromkeys(self.seconds, 0)

  def add(self, phase: str, seconds: float, count: int = 1) -> None:
    self.seconds[phase] += seconds
    self.counts[phase] += count

  @contextlib.contextmanager
  def timing(self, phase: str, count: int = 1):
    begin = time.monotonic()
    try:
      yield
    finally:
      self.add(phase, time.monotonic() - begin, count)

  def line(self) -> str:
    """E.g. "wall time 00:16:41: setup 12.0 s, first dispatch of 1 step(s) with its compilation
    31.0 s, 1319 more step(s) 14 min 39 s, 3 evaluation(s) 45.0 s, 4 checkpoint save(s) 9.0 s"
    (phases that did not happen left out)."""
    parts = [
        f"{label.format(n=self.counts[key])} {_duration(self.seconds[key])}"
        for key, label in self.PHASES
        if self.counts[key]
    ]
    total = time.strftime("%H:%M:%S", time.gmtime(time.monotonic() - self.start))
    return f"wall time {total}: " + ", ".join(parts)


def _duration(seconds: float) -> str:
  minutes, rest = divmod(int(round(seconds)), 60)
  return f"{minutes} min {rest} s" if minutes else f"{seconds:.1f} s"


def _format_metrics(metrics: dict, prefix: str, names: tuple[str, ...]) -> str:
  return "  ".join(
      f"{name} {metrics[f'{prefix}/{name}']:.2f}" for name in names if f"{prefix}/{name}" in metrics
  )


def summary(
    *,
    workdir: str,
    records: list[dict],
    eval_split: str,
    best_metric: str,
    best_step: int | None,
    latest_dir: str | None,
    best_dir: str | None,
    step: int,
    total_steps: int,
    start_time: float,
    stop_reason: str | None,
    clock: PhaseClock | None = None,
) -> str:
  """The end-of-run screen: where training stopped, the last and best evaluation, where things are,
  and (``clock``) where the process's wall time went."""
  elapsed = time.strftime("%H:%M:%S", time.gmtime(time.time() - start_time))
  state = f"stopped by {stop_reason}" if stop_reason else "finished"
  lines = [f"Training {state} at step {step}/{total_steps} after {elapsed} in this process."]
  if clock is not None:
    lines.append(f"  {clock.line()}")
  evals = [r for r in records if f"{eval_split}/{best_metric}" in r]
  shown = (best_metric, "MR-full-R1@0.5", "MR-full-R1@0.7", "HL-min-VeryGood-mAP")
  if evals:
    lines.append(
        f"  last eval  (step {evals[-1]['step']}): {_format_metrics(evals[-1], eval_split, shown)}"
    )
  best = [r for r in evals if r["step"] == best_step]
  if best:
    lines.append(f"  best eval  (step {best_step}): {_format_metrics(best[-1], eval_split, shown)}")
  if best_dir:
    lines.append(f"  best checkpoint ({eval_split} {best_metric}): {best_dir}")
  if latest_dir:
    lines.append(f"  latest checkpoint: {latest_dir}")
  lines.append(f"  metrics: {os.path.join(workdir, METRICS_FILE)}")
  lines.append(f"  TensorBoard: tensorboard --logdir {os.path.join(workdir, TENSORBOARD_DIR)}")
  if stop_reason:
    lines.append("  Resume: rerun the same command.")
  return "\n".join(lines)
