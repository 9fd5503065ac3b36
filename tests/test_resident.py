"""Device-resident data (config.data.device_resident): the same batches as the tf.data path, the same
training, and a clear error before anything is written when the features do not fit."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import logged_train_losses, restore_checkpoint, tiny_config
from lmr_jax.commands import train as train_lib
from lmr_jax.data import dataset, pipeline, resident
from lmr_jax.data.annotations import DataError
from lmr_jax.errors import ConfigError


@pytest.fixture(scope="module")
def train_source(tiny_data_root):
  config = tiny_config(tiny_data_root)
  return config, dataset.example_source(config.data, "train", with_captions=True, training=True)


def test_gathered_batches_are_the_pipelines(train_source):
  """Every batch of two epochs, gathered on the device from the tables and the epoch plan, equals
  the tf.data pipeline's batch of that step, array for array (window subsets and saliency pairs
  included)."""
  config, source = train_source
  tables = resident.build_tables(source)
  # Each video's clips once, unpadded, shared by its queries.
  assert (
      len(tables["video_feats"]) == sum(tables["video_clips"]) < len(source) * config.data.max_clips
  )
  lengths = (config.data.max_clips, config.data.max_query_tokens)
  gather = jax.jit(lambda tables, row: resident.gather_batch(tables, row, *lengths))
  stream = pipeline.train_batches(source, config.batch_size, config.seed)
  for epoch in range(2):
    plan = resident.epoch_plan(source, config.batch_size, config.seed, epoch)
    for step in range(len(plan["example"])):
      want = next(stream).arrays
      got = gather(tables, {k: v[step] for k, v in plan.items()})
      assert sorted(got) == sorted(want)
      for key in want:
        assert got[key].dtype == want[key].dtype, key
        np.testing.assert_array_equal(
            got[key], want[key], err_msg=f"epoch {epoch} step {step} {key}"
        )


def _first_batch(config, source, tables):
  """The first training batch, gathered from ``tables``."""
  plan = resident.epoch_plan(source, config.batch_size, config.seed, 0)
  return resident.gather_batch(
      tables,
      {k: v[0] for k, v in plan.items()},
      config.data.max_clips,
      config.data.max_query_tokens,
  )


def test_bfloat16_tables_hold_the_rounded_features(train_source):
  config, source = train_source
  tables = resident.build_tables(source, "bfloat16")
  got = _first_batch(config, source, tables)
  want = next(pipeline.train_batches(source, config.batch_size, config.seed)).arrays
  for key in ("video_feats", "caption_feats", "query_feats", "caption_query_feats"):
    assert got[key].dtype == jnp.bfloat16
    np.testing.assert_array_equal(got[key], want[key].astype(jnp.bfloat16), err_msg=key)
  assert resident.table_bytes(tables) < 0.6 * resident.table_bytes(resident.build_tables(source))
  with pytest.raises(DataError, match="config.data.resident_dtype 'float16' is not one of"):
    resident.build_tables(source, "float16")


def test_one_query_folder_is_held_once(train_source):
  """Charades-STA reads its query tokens from one folder for both encoders: the caption encoder's
  tokens are the query's, not a second table."""
  config, source = train_source
  tables = resident.build_tables(source)
  shared = dict(tables)
  del shared["caption_query_feats"], shared["caption_query_start"], shared["caption_query_tokens"]
  batch = _first_batch(config, source, shared)
  np.testing.assert_array_equal(batch["caption_query_feats"], batch["query_feats"])
  np.testing.assert_array_equal(batch["caption_query_mask"], batch["query_mask"])


def test_resident_training_equals_the_tf_data_run(tiny_trained, tmp_path):
  """The session's tiny run (tf.data, 4 devices) again with device-resident data and 2 steps per
  dispatch: the same logged losses, validation metrics and final parameters (float32, CPU)."""
  config, streamed, _ = tiny_trained
  config = config.copy_and_resolve_references()
  config.data.device_resident = True
  config.steps_per_dispatch = 2
  workdir = str(tmp_path / "resident")
  metrics = train_lib.train_and_evaluate(config, workdir)
  want, got = logged_train_losses(streamed), logged_train_losses(workdir)
  assert sorted(got) == sorted(want)
  np.testing.assert_allclose(
      [got[s] for s in sorted(got)], [want[s] for s in sorted(want)], rtol=1e-5
  )
  state_a, position_a = restore_checkpoint(config, streamed)
  state_b, position_b = restore_checkpoint(config, workdir)
  assert position_a == position_b and int(state_a.step) == int(state_b.step)
  for a, b in zip(jax.tree.leaves(state_a.params), jax.tree.leaves(state_b.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert "MR-full-mAP" in metrics["brief"]


@pytest.mark.slow
def test_data_that_does_not_fit_stop_before_the_workdir_is_touched(
    train_source, tmp_path, monkeypatch
):
  """The session's 4 CPU devices each hold a copy in host memory: 4 x the tables must fit in 80 %
  of what the host has available."""
  config, source = train_source
  config = config.copy_and_resolve_references()
  config.data.device_resident = True
  needed = 4 * resident.table_bytes(resident.build_tables(source))
  monkeypatch.setattr(resident, "host_free_bytes", lambda: (needed, 64 * 2**30))
  workdir = str(tmp_path / "never")
  with pytest.raises(DataError) as error:
    train_lib.train_and_evaluate(config, workdir)
  message = str(error.value)
  assert (
      f"config.data.device_resident: the train split's features need {needed / 2**20:.2f} MiB on "
      f"the 4 host (CPU) devices, but this host has {needed / 2**20:.2f} MiB available of 64.00 GiB"
  ) in message
  assert "resident_dtype=bfloat16" in message
  assert not os.path.exists(workdir)


class _Accelerator:
  """A device whose runtime reports its memory, as GPUs and TPUs do."""

  def __init__(self, limit, in_use):
    self._stats = {"bytes_limit": limit, "bytes_in_use": in_use}

  def memory_stats(self):
    return self._stats

  def __str__(self):
    return "cuda:0"


def test_fit_check_reads_the_accelerators_memory():
  gpu = _Accelerator(limit=80 * 2**30, in_use=70 * 2**30)
  resident.check_fits(8 * 2**30, [gpu])  # 8 of 10 GiB free: at the 80 % limit, no error
  with pytest.raises(DataError, match=r"need 8\.50 GiB on each device, but cuda:0 has 10\.00 GiB "):
    resident.check_fits(int(8.5 * 2**30), [gpu])


@pytest.mark.slow
def test_steps_per_dispatch_needs_resident_data(tiny_data_root, tmp_path):
  config = tiny_config(tiny_data_root)
  config.steps_per_dispatch = 4
  with pytest.raises(ConfigError, match="steps_per_dispatch > 1 needs config.data.device_resident"):
    train_lib.train_and_evaluate(config, str(tmp_path / "never"))
  assert not os.path.exists(tmp_path / "never")


def test_footprint_bounds_the_tables(train_source):
  """docs/accelerators.md's footprints come from ``footprint_bytes`` (durations and max_query_tokens, no feature
  file read): an upper bound of what ``build_tables`` holds, and not a loose one for the clips."""
  config, source = train_source
  for dtype in resident.RESIDENT_DTYPES:
    actual = resident.table_bytes(resident.build_tables(source, dtype))
    bound = resident.footprint_bytes(config.data, source.annotations, True, dtype)
    assert actual <= bound < 3 * actual, (dtype, actual, bound)
