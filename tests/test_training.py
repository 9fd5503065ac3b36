"""Train step, exact resume from orbax checkpoints, and the stop on a non-finite loss."""

import os

import jax
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from conftest import logged_train_losses, restore_checkpoint, tiny_config
from lmr_jax.data import dataset, pipeline
from lmr_jax.training import train_step as train_step_lib
from lmr_jax.training import trainer


def test_train_steps_decrease_loss_on_a_fixed_batch(tiny_data_root):
  config = tiny_config(tiny_data_root)
  config.model.dropout = config.model.input_dropout = 0.0
  config.optim.learning_rate = 1e-3
  source = dataset.example_source(config.data, "train", with_captions=True, training=True)
  _, batch = next(pipeline.train_batches(source, 4, seed=0))
  model = trainer.build_model(config)
  tx, _ = train_step_lib.make_optimizer(config.optim, 100)
  state = trainer.init_state(config, model, tx, batch)
  step = train_step_lib.jit_train_step(model, tx, config.loss)
  losses = []
  for _ in range(8):
    state, metrics = step(state, batch, jax.random.key(0))
    losses.append(float(metrics["loss"]))
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


def test_resume_continues_exactly(tiny_data_root, tmp_path, capsys):
  """2 epochs straight == 1 epoch, stop, then the same command for 2 epochs (bit-identical on CPU)."""
  config = tiny_config(tiny_data_root)
  config.checkpoint_every_steps = 1000  # only the end-of-epoch evaluations save
  straight = str(tmp_path / "straight")
  trainer.train_and_evaluate(config, straight)
  summary = capsys.readouterr().out
  assert "Training finished at step" in summary
  assert f"best checkpoint (val MR-full-mAP): {os.path.join(straight, 'best')}" in summary
  assert f"tensorboard --logdir {os.path.join(straight, 'tensorboard')}" in summary
  scalars = _tensorboard_scalars(straight)
  for tag in ("train/loss", "train/span_l1", "train/saliency_inter_video", "lr", "val/MR-full-mAP"):
    assert tag in scalars, sorted(scalars)
  assert scalars["train/loss"] == pytest.approx(logged_train_losses(straight), rel=1e-6)
  assert len(scalars["val/MR-full-mAP"]) == config.num_epochs
  resumed = str(tmp_path / "resumed")
  config.num_epochs = 1
  trainer.train_and_evaluate(config, resumed)
  config.num_epochs = 2
  final_metrics = trainer.train_and_evaluate(config, resumed)

  state_a, position_a = restore_checkpoint(config, straight)
  state_b, position_b = restore_checkpoint(config, resumed)
  assert position_a == position_b == pipeline.DataPosition(epoch=2, step=0)
  assert int(state_a.step) == int(state_b.step)
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_array_equal(a, b)
  log_a, log_b = logged_train_losses(straight), logged_train_losses(resumed)
  assert log_a == log_b  # same losses at every logged step, before and after the restart
  assert "MR-full-mAP" in final_metrics["brief"]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(
    tiny_data_root, tmp_path, monkeypatch
):
  config = tiny_config(tiny_data_root)
  config.log_every_steps = 1
  config.checkpoint_every_steps = 3
  real_batches = pipeline.train_batches

  def poisoned(*args, **kwargs):
    for position, batch in real_batches(*args, **kwargs):
      if position.step == 4:  # the 5th step
        batch = dict(batch, video_feats=np.full_like(batch["video_feats"], np.nan))
      yield position, batch

  monkeypatch.setattr(pipeline, "train_batches", poisoned)
  workdir = str(tmp_path / "nan")
  with pytest.raises(trainer.NonFiniteLossError, match="at step 5"):
    trainer.train_and_evaluate(config, workdir)
  assert sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))) == [3]
  state, position = restore_checkpoint(config, workdir)
  assert int(state.step) == 3 and position == pipeline.DataPosition(0, 3)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))
