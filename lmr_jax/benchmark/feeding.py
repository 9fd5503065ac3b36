"""The input pipelines' rates: tf.data on the host and the device-resident feed."""

from __future__ import annotations

import tempfile
import time

import jax

from lmr_jax.benchmark import inputs
from lmr_jax.data import pipeline
from lmr_jax.data import resident


def resident_throughput(source, batch_size: int, num_batches: int) -> float:
  """Batches/s of the device-resident feed (``config.data.device_resident``): the tables put on the
  device once (not timed), then per batch its gather on the device, and per epoch the host's plan
  (example indices and labels) and its transfer, as training does them."""
  spec = source.spec
  tables = jax.device_put(resident.build_tables(source))
  gather = jax.jit(
      lambda tables, plan, step: resident.gather_batch(
          tables, jax.tree.map(lambda x: x[step], plan), spec.max_clips, spec.max_query_tokens
      )
  )
  steps_per_epoch = len(source) // batch_size

  def plan(epoch):
    return jax.device_put(resident.epoch_plan(source, batch_size, 0, epoch))

  jax.block_until_ready(gather(tables, plan(0), 0))  # compiles
  start = time.perf_counter()
  for i in range(num_batches):
    epoch, step = divmod(i, steps_per_epoch)
    if step == 0:
      epoch_plan = plan(epoch)
    jax.block_until_ready(gather(tables, epoch_plan, step))
  return num_batches / (time.perf_counter() - start)


def data_throughput(source, batch_size: int, num_batches: int) -> float:
  """Batches/s of the training pipeline after its first batch (epochs are rebuilt as in training)."""
  batches = pipeline.train_batches(source, batch_size, seed=0)
  next(batches)
  start = time.perf_counter()
  for _ in range(num_batches):
    next(batches)
  return num_batches / (time.perf_counter() - start)


def feeding_figures(
    config, batch_size: int, step_s: float, rng, *, data_queries: int, batches: int
):
  """The input pipelines' rates next to the train step's, over one small dataset in the real on-disk
  format: tf.data (host) and the device-resident feed."""
  with tempfile.TemporaryDirectory(prefix="lmr_benchmark_") as out_dir:
    source = inputs.synthetic_source(config, data_queries, out_dir)
    spec = source.element_spec()
    shapes = {k: v.shape[1:] for k, v in inputs.random_batch(config, 1, rng).items()}
    if shapes != {k: shape for k, (shape, _) in spec.items()}:
      raise AssertionError(f"benchmark batch {shapes} differs from the pipeline's {spec}")
    rate = data_throughput(source, min(batch_size, len(source)), batches)
    resident_rate = resident_throughput(source, min(batch_size, len(source)), batches)
  return {
      "data_batches_per_s": rate,
      "data_ratio": rate * step_s,
      "resident_batches_per_s": resident_rate,
      "resident_vs_tf_data": resident_rate / rate,
  }
