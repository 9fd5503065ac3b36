"""Faults: kill -9 at random points and SIGTERM, then the same command, end bit-identical to a run never
interrupted; unreadable checkpoints are skipped with a warning, never loaded."""

import os
import random
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from conftest import (
    REPO,
    child_environment,
    logged_train_losses,
    restore_checkpoint,
    tiny_config,
    train_command,
)
from lmr_jax.data import dataset, order
from lmr_jax.training import checkpoint as checkpoint_lib
from lmr_jax.commands import train as train_lib
from lmr_jax.data.position import DataPosition

pytestmark = pytest.mark.slow  # kills and resumes real trainings


def _fault_config(root):
  config = tiny_config(root)
  config.num_epochs = 2  # 14 steps: room for three faults and a resume
  config.checkpoint_every_steps = 2
  config.log_every_steps = 1
  return config


def _start(root, workdir, log_path):
  log = open(log_path, "w")
  command = train_command(
      _fault_config(root), workdir, ("num_epochs", "checkpoint_every_steps", "log_every_steps")
  )
  process = subprocess.Popen(
      command, cwd=REPO, env=child_environment(), stdout=log, stderr=subprocess.STDOUT
  )
  return process, log


def _wait_for(predicate, process, timeout=240.0):
  deadline = time.time() + timeout
  while not predicate():
    assert process.poll() is None, "training exited before the fault was injected"
    assert time.time() < deadline, "timed out waiting for the training process"
    time.sleep(0.005)


def _training_started(log_path):
  with open(log_path) as f:
    return "] step " in f.read()  # the first logged step


def _checkpoint_in_flight(workdir):
  directory = os.path.join(workdir, "checkpoints")
  return os.path.isdir(directory) and any("tmp" in name for name in os.listdir(directory))


@pytest.fixture(scope="module")
def uninterrupted(tiny_data_root, tmp_path_factory):
  config = _fault_config(tiny_data_root)
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  train_lib.train_and_evaluate(config, workdir)
  return config, workdir


def test_kill_and_sigterm_then_resume_match_an_uninterrupted_run(
    uninterrupted, tiny_data_root, tmp_path
):
  config, reference_dir = uninterrupted
  workdir = str(tmp_path / "faulty")
  rng = random.Random(0)
  faults = [
      ("SIGKILL during a step", signal.SIGKILL, lambda: _training_started(log_path)),
      ("SIGKILL during a checkpoint write", signal.SIGKILL, lambda: _checkpoint_in_flight(workdir)),
      ("SIGTERM", signal.SIGTERM, lambda: _training_started(log_path)),
  ]
  for i, (name, sig, ready) in enumerate(faults):
    log_path = str(tmp_path / f"run{i}.log")
    process, log = _start(tiny_data_root, workdir, log_path)
    try:
      _wait_for(ready, process)
      if sig == signal.SIGKILL and "step" in name:
        time.sleep(rng.uniform(0.0, 1.0))
      process.send_signal(sig)
      returncode = process.wait(timeout=120)
    finally:
      process.kill()
      log.close()
    with open(log_path) as f:
      output = f.read()
    if sig == signal.SIGTERM:
      assert returncode == 0, output[-3000:]
      assert "SIGTERM: saved step" in output, output[-3000:]
    else:
      assert returncode == -signal.SIGKILL, f"{name}: {output[-3000:]}"

  log_path = str(tmp_path / "final.log")
  process, log = _start(tiny_data_root, workdir, log_path)
  try:
    assert process.wait(timeout=300) == 0, open(log_path).read()[-3000:]
  finally:
    log.close()

  state_ref, position_ref = restore_checkpoint(config, reference_dir)
  state, position = restore_checkpoint(config, workdir)
  assert position == position_ref and int(state.step) == int(state_ref.step)
  for a, b in zip(jax.tree.leaves(state_ref), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert logged_train_losses(workdir) == logged_train_losses(reference_dir)


def _damage_metadata(step_dir):
  with open(os.path.join(step_dir, "state", "_METADATA"), "w") as f:
    f.write('{"tree_metadata": ')


def _truncate_arrays(step_dir):
  """Cuts every array data file of the step in half, as a copy killed midway leaves it."""
  data_files = [
      os.path.join(d, name)
      for d, _, names in os.walk(os.path.join(step_dir, "state"))
      for name in names
      if os.sep + "d" in d
  ]
  assert data_files
  for path in data_files:
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize("damage", [_damage_metadata, _truncate_arrays])
def test_unreadable_latest_checkpoint_is_skipped_with_a_warning(
    uninterrupted, tmp_path, damage, caplog
):
  config, reference_dir = uninterrupted
  workdir = str(tmp_path / "copy")
  shutil.copytree(reference_dir, workdir)
  checkpoints = os.path.join(workdir, "checkpoints")
  steps = sorted(int(name) for name in os.listdir(checkpoints) if name.isdigit())
  damage(os.path.join(checkpoints, str(steps[-1])))
  # A half-written save that orbax never finalised is not a step at all.
  os.makedirs(os.path.join(checkpoints, f"{steps[-1] + 1}.orbax-checkpoint-tmp-1"))

  with caplog.at_level("WARNING"):
    state, position = restore_checkpoint(config, workdir)
  assert int(state.step) == steps[-2]
  source = dataset.example_source(config.data, "train", with_captions=True, training=True)
  steps_per_epoch = order.steps_per_epoch(len(source), config.batch_size)
  assert position == DataPosition(*divmod(steps[-2], steps_per_epoch))
  assert any(
      "unreadable checkpoint" in r.getMessage() and f"{os.sep}{steps[-1]}" in r.getMessage()
      for r in caplog.records
  )
  assert os.path.isdir(os.path.join(checkpoints, f"{steps[-1]}.unreadable"))

  # Training resumes from the readable step and writes the skipped step anew.
  train_lib.train_and_evaluate(config, workdir)
  state, _ = restore_checkpoint(config, workdir)
  reference_state, _ = restore_checkpoint(config, reference_dir)
  for a, b in zip(jax.tree.leaves(reference_state), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_unreadable_named_checkpoint_is_a_one_line_error(uninterrupted, tmp_path):
  config, reference_dir = uninterrupted
  workdir = str(tmp_path / "copy")
  shutil.copytree(reference_dir, workdir)
  step = max(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())
  _damage_metadata(os.path.join(workdir, "checkpoints", str(step)))
  with pytest.raises(checkpoint_lib.UnreadableCheckpointError, match=r"unreadable checkpoint"):
    restore_checkpoint(config, workdir, str(step))
