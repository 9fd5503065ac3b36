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
    train_command,
)
from lmr_jax.data import dataset, order
from lmr_jax.training import checkpoint as checkpoint_lib
from lmr_jax.commands import train as train_lib
from lmr_jax.data.position import DataPosition

pytestmark = pytest.mark.slow  # kills and resumes real trainings


def _start(config, workdir, log_path):
  """``python train.py`` of ``config`` (the tiny config: 14 steps, a checkpoint every 3, room for
  three faults and a resume)."""
  log = open(log_path, "w")
  command = train_command(config, workdir)
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


def test_kill_and_sigterm_then_resume_match_an_uninterrupted_run(tiny_trained, tmp_path):
  """The session's tiny run is the uninterrupted one."""
  config, reference_dir, _ = tiny_trained
  workdir = str(tmp_path / "faulty")
  rng = random.Random(0)
  faults = [
      ("SIGKILL during a step", signal.SIGKILL, lambda: _training_started(log_path)),
      ("SIGKILL during a checkpoint write", signal.SIGKILL, lambda: _checkpoint_in_flight(workdir)),
      ("SIGTERM", signal.SIGTERM, lambda: _training_started(log_path)),
  ]
  for i, (name, sig, ready) in enumerate(faults):
    log_path = str(tmp_path / f"run{i}.log")
    process, log = _start(config, workdir, log_path)
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
  process, log = _start(config, workdir, log_path)
  try:
    assert process.wait(timeout=300) == 0, open(log_path).read()[-3000:]
  finally:
    log.close()

  state_ref, position_ref = restore_checkpoint(config, reference_dir)
  state, position = restore_checkpoint(config, workdir)
  assert position == position_ref and int(state.step) == int(state_ref.step)
  for a, b in zip(jax.tree.leaves(state_ref), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The logged losses too, except where a SIGTERM stop split a logging window: the stop logs its
  # step (one the reference never logs, when it is not a logging step) with the mean since the last
  # log, and the resumed run's next log averages only the steps after the stop.
  faulty, reference = logged_train_losses(workdir), logged_train_losses(reference_dir)
  for stop in sorted(set(faulty) - set(reference)):
    after = min((step for step in faulty if step > stop), default=None)
    for step in (stop, after):
      faulty.pop(step, None)
      reference.pop(step, None)
  assert faulty == reference and len(faulty) >= len(logged_train_losses(reference_dir)) - 1


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


def _damaged_copy(reference_dir, tmp_path, damage) -> tuple[str, list[int]]:
  """A copy of ``reference_dir`` whose latest checkpoint ``damage`` made unreadable, with a save that
  orbax never finalised after it: (workdir, the steps it had)."""
  workdir = str(tmp_path / "copy")
  shutil.copytree(reference_dir, workdir)
  checkpoints = os.path.join(workdir, "checkpoints")
  steps = sorted(int(name) for name in os.listdir(checkpoints) if name.isdigit())
  damage(os.path.join(checkpoints, str(steps[-1])))
  # A half-written save that orbax never finalised is not a step at all.
  os.makedirs(os.path.join(checkpoints, f"{steps[-1] + 1}.orbax-checkpoint-tmp-1"))
  return workdir, steps


@pytest.mark.parametrize("damage", [_damage_metadata, _truncate_arrays])
def test_unreadable_latest_checkpoint_is_skipped_with_a_warning(
    tiny_trained, tmp_path, damage, caplog
):
  config, reference_dir, _ = tiny_trained
  workdir, steps = _damaged_copy(reference_dir, tmp_path, damage)
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
  assert os.path.isdir(os.path.join(workdir, "checkpoints", f"{steps[-1]}.unreadable"))


def test_training_resumes_before_an_unreadable_step_and_writes_it_anew(tiny_trained, tmp_path):
  config, reference_dir, _ = tiny_trained
  workdir, _ = _damaged_copy(reference_dir, tmp_path, _truncate_arrays)
  train_lib.train_and_evaluate(config, workdir)
  state, _ = restore_checkpoint(config, workdir)
  reference_state, _ = restore_checkpoint(config, reference_dir)
  for a, b in zip(jax.tree.leaves(reference_state), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_unreadable_named_checkpoint_is_a_one_line_error(tiny_trained, tmp_path):
  config, reference_dir, _ = tiny_trained
  workdir = str(tmp_path / "copy")
  shutil.copytree(reference_dir, workdir)
  step = max(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())
  _damage_metadata(os.path.join(workdir, "checkpoints", str(step)))
  with pytest.raises(checkpoint_lib.UnreadableCheckpointError, match=r"unreadable checkpoint"):
    restore_checkpoint(config, workdir, str(step))
