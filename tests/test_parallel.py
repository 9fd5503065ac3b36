"""Data parallelism: the tiny config on 4 (fake CPU) devices trains like 1 device, a job of 2 processes
with 2 devices each and the state sharded (FSDP) trains like one process of 4, and the checkpoints
restore on 1 device and sharded on 4. conftest.py gives the session 4 CPU devices."""

import json
import os
import socket
import subprocess

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
from lmr_jax.training import parallel
from lmr_jax.commands import train as train_lib

pytestmark = pytest.mark.slow  # trains on 1, 4 and 2x2 devices, two processes

# Splitting the batch over devices reorders the float sums of the losses and gradients; a few Adam
# steps keep that at float32 round-off (observed differences are ~1e-7), far below a real change.
LOSS_RTOL = 1e-5
PARAM_ATOL = 1e-5


@pytest.fixture(scope="module")
def one_device(tiny_data_root, tmp_path_factory):
  """(config, workdir, final metrics) of the tiny config on 1 device."""
  assert jax.device_count() == 4  # the session's tiny run, which the tests compare with, uses all 4
  config = tiny_config(tiny_data_root)
  config.num_devices = 1
  workdir = str(tmp_path_factory.mktemp("one"))
  return config, workdir, train_lib.train_and_evaluate(config, workdir)


def _assert_same_params(want, got):
  """Equal within PARAM_ATOL, each leaf of ``got`` on one device."""
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got)):
    assert len(b.sharding.device_set) == 1
    name = jax.tree_util.keystr(path)
    if "['k_proj']['bias']" in name:
      # Softmax ignores a bias added to every key, so this gradient is zero up to round-off, and Adam
      # normalises that noise into steps of its own: the runs agree only in keeping it near zero.
      assert np.abs(np.asarray(a)).max() < 1e-3 and np.abs(np.asarray(b)).max() < 1e-3, name
      continue
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=PARAM_ATOL, err_msg=name)


def test_four_devices_train_like_one(tiny_trained, one_device):
  config, one_dir, one_metrics = one_device
  four_config, four_dir, four_metrics = tiny_trained
  one_losses, four_losses = logged_train_losses(one_dir), logged_train_losses(four_dir)
  assert len(one_losses) >= 3 and one_losses.keys() == four_losses.keys()
  np.testing.assert_allclose(
      [four_losses[s] for s in sorted(one_losses)],
      [one_losses[s] for s in sorted(one_losses)],
      rtol=LOSS_RTOL,
  )
  one_state = restore_checkpoint(config, one_dir, num_devices=1)[0]
  # Saved on 4 devices, restored on 1.
  four_state = restore_checkpoint(four_config, four_dir, num_devices=1)[0]
  assert int(one_state.step) == int(four_state.step) > 0
  _assert_same_params(one_state.params, four_state.params)
  assert one_metrics["brief"]["MR-full-mAP"] == pytest.approx(
      four_metrics["brief"]["MR-full-mAP"], abs=0.5
  )


def test_batch_not_divisible_by_the_mesh_is_a_one_line_error(tiny_data_root, tmp_path):
  config = tiny_config(tiny_data_root)
  config.batch_size = 6
  with pytest.raises(parallel.MeshError, match=r"^config.batch_size 6 is not divisible by the 4"):
    train_lib.train_and_evaluate(config, str(tmp_path / "w"))
  config.num_devices = 5
  with pytest.raises(parallel.MeshError, match=r"^config.num_devices 5: this job has 4 devices"):
    train_lib.train_and_evaluate(config, str(tmp_path / "w"))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_hosts_fsdp(tiny_trained, tmp_path_factory):
  """A real multi-host job on this machine: 2 processes (jax.distributed, gloo collectives) with 2 CPU
  devices each, the state sharded over all 4 (FSDP), each process reading its half of every batch:
  (workdir, [output of process 0, output of process 1])."""
  config = tiny_trained[0]
  tmp_path = tmp_path_factory.mktemp("two_hosts")
  workdir = str(tmp_path / "workdir")
  command = train_command(config, workdir, ("num_epochs",))
  command += ["--config.distributed=True", "--config.fsdp=True"]
  coordinator = f"localhost:{_free_port()}"
  processes, logs = [], []
  for process_id in range(2):
    logs.append(open(tmp_path / f"process{process_id}.log", "w+"))
    environment = child_environment(
        num_cpu_devices=2,
        JAX_COORDINATOR_ADDRESS=coordinator,
        JAX_NUM_PROCESSES="2",
        JAX_PROCESS_ID=str(process_id),
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
    )
    processes.append(
        subprocess.Popen(
            command, cwd=REPO, env=environment, stdout=logs[-1], stderr=subprocess.STDOUT
        )
    )
  try:
    returncodes = [p.wait(timeout=420) for p in processes]
  finally:
    for p in processes:
      p.kill()
  outputs = []
  for log in logs:
    log.seek(0)
    outputs.append(log.read())
    log.close()
  assert returncodes == [0, 0], "\n".join(o[-3000:] for o in outputs)
  return workdir, outputs


def test_two_fsdp_processes_of_two_devices_train_like_one_process_of_four(
    tiny_trained, two_hosts_fsdp
):
  config, four_dir, _ = tiny_trained
  workdir, outputs = two_hosts_fsdp
  assert "on 4 devices (2 processes)" in outputs[0]
  assert "Training finished" in outputs[0] and "Training finished" not in outputs[1]

  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    steps = [r["step"] for r in map(json.loads, f) if "train/loss" in r]
  assert len(steps) == len(set(steps))  # process 0 alone writes the log
  assert len(os.listdir(os.path.join(workdir, "tensorboard"))) == 1
  four_losses, two_host_losses = logged_train_losses(four_dir), logged_train_losses(workdir)
  assert four_losses.keys() == two_host_losses.keys()
  np.testing.assert_allclose(
      [two_host_losses[s] for s in sorted(four_losses)],
      [four_losses[s] for s in sorted(four_losses)],
      rtol=LOSS_RTOL,
  )
  four_state = restore_checkpoint(config, four_dir, num_devices=1)[0]
  # Sharded over the 4 devices of 2 processes, written by both, restored by 1 process on 1 device.
  two_host_state = restore_checkpoint(config, workdir, num_devices=1)[0]
  assert int(four_state.step) == int(two_host_state.step) > 0
  _assert_same_params(four_state.params, two_host_state.params)


def test_fsdp_shards_the_state_and_restores_sharded(tiny_trained, two_hosts_fsdp):
  config = tiny_trained[0].copy_and_resolve_references()
  config.fsdp = True
  state = restore_checkpoint(config, two_hosts_fsdp[0], num_devices=4)[0]
  kernels = [p for p in jax.tree.leaves(state.params) if p.ndim == 2 and p.shape[0] % 4 == 0]
  assert kernels and all(len(k.sharding.device_set) == 4 for k in kernels)
  assert all(not k.sharding.is_fully_replicated for k in kernels)
  mu = state.opt_state[-1][0].mu  # AdamW's first moment mirrors the params' layout
  assert jax.tree.map(lambda m: m.sharding.spec, mu) == jax.tree.map(
      lambda p: p.sharding.spec, state.params
  )
