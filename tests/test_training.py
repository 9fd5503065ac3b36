"""Train step, exact resume from orbax checkpoints, and the stop on a non-finite loss."""

import os

import jax
import numpy as np
import optax
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from configs import base
from conftest import logged_train_losses, restore_checkpoint, tiny_config, train_on_one_batch
from lmr_jax import config_keys
from lmr_jax.data import pipeline
from lmr_jax.commands import train as train_lib
from lmr_jax.data.position import DataPosition
from lmr_jax.training import metric_log
from lmr_jax.training import train_step as train_step_lib
from lmr_jax.training import trainer


@pytest.mark.slow
def test_train_steps_decrease_loss_on_a_fixed_batch(tiny_data_root):
  """At the paper's depths (2 VQF, 2 encoder and 2 decoder layers, so the decoder's auxiliary
  losses too), where the tiny config has one of each."""
  config = tiny_config(tiny_data_root)
  for stack in ("vqf", "encoder", "decoder"):
    config.model[f"num_{stack}_layers"] = 2
  config.model.dropout = config.model.input_dropout = 0.0
  config.optim.learning_rate = 1e-3
  state, step_metrics, _, _ = train_on_one_batch(config, steps=8)
  losses = [m["loss"] for m in step_metrics]
  assert int(state.step) == 8
  assert losses[-1] < 0.8 * losses[0], losses


def _tensorboard_scalars(workdir):
  """{tag: {step: value}} of the run's TensorBoard event files."""
  accumulator = event_accumulator.EventAccumulator(
      os.path.join(workdir, "tensorboard"), size_guidance={event_accumulator.TENSORS: 0}
  )
  accumulator.Reload()
  return {
      tag: {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in accumulator.Tensors(tag)}
      for tag in accumulator.Tags()[event_accumulator.TENSORS]
      if not tag.startswith("_hparams_")  # the config, as TensorBoard's hparams plugin stores it
  }


def test_resume_continues_exactly(tiny_trained, tmp_path, capsys):
  """2 epochs straight (the session's shared run of the tiny config) == 1 epoch, stop, then the same
  command for 2 epochs (bit-identical on CPU)."""
  config, straight, _ = tiny_trained
  scalars = _tensorboard_scalars(straight)
  for tag in ("train/loss", "train/span_l1", "train/saliency_inter_video", "lr", "val/MR-full-mAP"):
    assert tag in scalars, sorted(scalars)
  assert scalars["train/loss"] == pytest.approx(logged_train_losses(straight), rel=1e-6)
  assert len(scalars["val/MR-full-mAP"]) == config.num_epochs
  config = config.copy_and_resolve_references()
  resumed = str(tmp_path / "resumed")
  config.num_epochs = 1
  train_lib.train_and_evaluate(config, resumed)
  capsys.readouterr()
  config.num_epochs = 2
  final_metrics = train_lib.train_and_evaluate(config, resumed)
  summary = capsys.readouterr().out
  assert "Training finished at step" in summary
  # where the resumed process's time went: its first dispatch compiles, then the other steps of the
  # second epoch, one evaluation (the last step) and its checkpoint saves
  (wall,) = [line for line in summary.splitlines() if "wall time" in line]
  assert "setup" in wall and "first dispatch of 1 step(s) with its compilation" in wall
  assert " 1 evaluation(s) " in wall and "checkpoint save(s)" in wall and "more step(s)" in wall
  assert f"best checkpoint (val MR-full-mAP): {os.path.join(resumed, 'best')}" in summary
  assert f"tensorboard --logdir {os.path.join(resumed, 'tensorboard')}" in summary

  state_a, position_a = restore_checkpoint(config, straight)
  state_b, position_b = restore_checkpoint(config, resumed)
  assert position_a == position_b == DataPosition(epoch=2, step=0)
  assert int(state_a.step) == int(state_b.step)
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_array_equal(a, b)
  log_a, log_b = logged_train_losses(straight), logged_train_losses(resumed)
  assert log_a == log_b  # same losses at every logged step, before and after the restart
  assert "MR-full-mAP" in final_metrics["brief"]


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(
    tiny_data_root, tmp_path, monkeypatch
):
  config = tiny_config(tiny_data_root)
  config.log_every_steps = 1
  config.checkpoint_every_steps = 3
  real_batches = pipeline.train_batches

  def poisoned(*args, **kwargs):
    for batch in real_batches(*args, **kwargs):
      if batch.position.step == 4:  # the 5th step
        arrays = batch.arrays
        batch = batch._replace(
            arrays=dict(arrays, video_feats=np.full_like(arrays["video_feats"], np.nan))
        )
      yield batch

  monkeypatch.setattr(pipeline, "train_batches", poisoned)
  workdir = str(tmp_path / "nan")
  with pytest.raises(trainer.NonFiniteLossError, match="at step 5"):
    train_lib.train_and_evaluate(config, workdir)
  assert sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))) == [3]
  state, position = restore_checkpoint(config, workdir)
  assert int(state.step) == 3 and position == DataPosition(0, 3)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


def _optim(**fields):
  """configs/base.py's optimizer settings with ``fields`` changed."""
  optim = base.get_base_config().optim
  optim.update(fields)
  return optim


def test_schedules_by_their_closed_forms():
  """Learning rate 1e-3, 4 warmup steps, 104 steps in all. Cosine: 0 -> 1e-3 linearly over the warmup,
  then half a cosine period down to 0 at the last step, 0 after it; constant: the same warmup, then
  1e-3 for good. Without warmup both start at the peak."""
  assert sorted(train_step_lib.SCHEDULES) == sorted(config_keys.SCHEDULES) == ["constant", "cosine"]
  schedule = lambda name, warmup: train_step_lib.make_optimizer(  # noqa: E731
      _optim(schedule=name, learning_rate=1e-3, warmup_steps=warmup), 104
  )[1]
  cosine = {
      0: 0.0,
      1: 2.5e-4,
      2: 5e-4,
      3: 7.5e-4,
      4: 1e-3,  # the peak, at the end of the warmup
      29: 8.535533905932737e-4,  # 1e-3 * (1 + cos(pi / 4)) / 2: a quarter into the decay
      54: 5e-4,  # half way
      79: 1.4644660940672624e-4,  # 1e-3 * (1 - cos(pi / 4)) / 2
      103: 2.467198171342e-07,  # 1e-3 * (1 - cos(pi / 100)) / 2: the last step's
      104: 0.0,
      500: 0.0,
  }
  constant = {0: 0.0, 1: 2.5e-4, 3: 7.5e-4, 4: 1e-3, 5: 1e-3, 104: 1e-3, 10**6: 1e-3}
  for name, want in (("cosine", cosine), ("constant", constant)):
    got = [float(schedule(name, 4)(step)) for step in want]
    np.testing.assert_allclose(got, list(want.values()), rtol=1e-6, atol=1e-10, err_msg=name)
  values = np.array([schedule("cosine", 4)(step) for step in range(105)])
  np.testing.assert_allclose(np.diff(values[:5]), 2.5e-4, rtol=1e-5)  # linear warmup
  assert (np.diff(values[4:]) < 0).all()  # strictly decreasing from the peak to the end
  for name in ("cosine", "constant"):
    assert float(schedule(name, 0)(0)) == pytest.approx(1e-3, rel=1e-6), name


def test_grad_clip_norm_zero_means_no_clipping():
  """grad_clip_norm=0: exactly AdamW; grad_clip_norm=1: AdamW of the gradients clipped to global norm
  1. A huge first gradient dominates AdamW's moments unclipped, not clipped, so the second updates
  differ (the first does not show it: Adam's first step does not depend on the gradient's scale)."""
  params = {"w": np.array([1.0, -1.0, 0.5], np.float32)}
  grads = [np.array([3e6, -4e6, 0.0], np.float32), np.array([0.1, 0.1, -0.2], np.float32)]

  def updates(tx):
    state, out = tx.init(params), []
    for g in grads:
      update, state = tx.update({"w": g}, state, params)
      out.append(np.asarray(update["w"]))
    return np.stack(out)

  adamw = lambda: optax.adamw(1e-4, weight_decay=1e-4)  # noqa: E731 - base.py's lr and decay
  unclipped = updates(train_step_lib.make_optimizer(_optim(grad_clip_norm=0.0), 100)[0])
  clipped = updates(train_step_lib.make_optimizer(_optim(grad_clip_norm=1.0), 100)[0])
  np.testing.assert_allclose(unclipped, updates(adamw()), rtol=1e-6)
  np.testing.assert_allclose(
      clipped, updates(optax.chain(optax.clip_by_global_norm(1.0), adamw())), rtol=1e-6
  )
  assert not np.allclose(unclipped[1], clipped[1], rtol=0.1)


def test_phase_clock_line_shows_each_phase_that_happened():
  clock = metric_log.PhaseClock()
  clock.add("setup", 12.04)
  clock.add("first_dispatch", 31.0, count=1)
  clock.add("steps", 879.4, count=1319)
  clock.add("evaluation", 45.2, count=3)
  line = clock.line()
  assert line.startswith("wall time 00:00:")
  assert line.endswith(
      ": setup 12.0 s, first dispatch of 1 step(s) with its compilation 31.0 s, 1319 more step(s) "
      "14 min 39 s, 3 evaluation(s) 45.2 s"
  )  # no checkpoint was saved: no such part


def test_a_log_write_the_disk_refuses_is_one_line_naming_the_log(tmp_path, monkeypatch):
  """metrics.jsonl is cut back to its whole lines (tests/test_fileio.py); TensorFlow's event writer
  reports a full disk in its own error, which becomes a WriteError naming the TensorBoard folder."""
  from lmr_jax.errors import WriteError  # noqa: PLC0415

  log = metric_log.MetricLog(str(tmp_path), base.get_base_config())
  log.write(1, loss=1.0)

  def full_disk():
    raise tf.errors.ResourceExhaustedError(None, None, "tmp/events.out: No space left on device")

  monkeypatch.setattr(log._writer, "flush", full_disk)
  with pytest.raises(WriteError) as error:
    log.write(2, loss=0.5)
  message = str(error.value)
  assert message.startswith(f"{log.tensorboard_dir}: not written (TensorBoard events)")
  assert "(ENOSPC)" in message and "\n" not in message
  monkeypatch.undo()
  log.close()
  assert [r["step"] for r in log.records()] == [1, 2]  # the JSON line was written before
