"""tf.data input pipelines over an ``ExampleSource``: seeded, per-process sharded, resumable.

The training order is a pure function of (seed, epoch): epoch ``e`` visits the permutation
``default_rng([seed, e])``, each process takes its contiguous share of every global batch, and a run
resumed at (epoch, step) rebuilds that epoch and starts at its ``step``-th batch, so a resumed run sees
exactly the batches an uninterrupted one would. Evaluation keeps every query: the last batch is padded and
``example_mask`` marks the real rows.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from lmr_jax.data import order
from lmr_jax.data.examples import ExampleSource
from lmr_jax.data.position import DataPosition


@functools.cache
def hide_gpus_from_tf() -> None:
  """tf.data must never take a GPU (or its memory) away from JAX. Called before TensorFlow's first
  use, not at import, so that importing this module changes nothing."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError as e:  # TensorFlow was initialised by someone else first
    logging.warning("could not hide the GPUs from TensorFlow (%s)", e)


class TrainBatch(NamedTuple):
  position: DataPosition  # of this batch
  next_position: DataPosition  # where the stream stands after it: what a checkpoint saves
  arrays: dict[str, np.ndarray]


def _dataset_from_indices(
    source: ExampleSource, indices: np.ndarray, seeds: np.ndarray | None, batch_size: int
) -> tf.data.Dataset:
  """Maps example indices to padded examples (numpy, in parallel, order kept) and batches them."""
  hide_gpus_from_tf()
  spec = source.element_spec()
  keys = sorted(spec)

  def load(index, seed):
    rng = np.random.default_rng(seed) if seeds is not None else None
    example = source.example(int(index), rng)
    return [example[k] for k in keys]

  # Plain graph code: autograph would only rewrite it into a temporary file (one per process, left
  # in the temp directory).
  @tf.autograph.experimental.do_not_convert
  def load_tf(index, seed):
    arrays = tf.numpy_function(
        load, [index, seed], [tf.as_dtype(spec[k][1]) for k in keys], stateful=False
    )
    return {k: tf.ensure_shape(a, spec[k][0]) for k, a in zip(keys, arrays)}

  seed_column = seeds if seeds is not None else np.zeros(len(indices), np.int64)
  threads = max(1, min(8, os.cpu_count() or 1))
  ds = tf.data.Dataset.from_tensor_slices((indices.astype(np.int64), seed_column.astype(np.int64)))
  ds = ds.map(load_tf, num_parallel_calls=threads, deterministic=True)
  ds = ds.batch(batch_size, drop_remainder=True)
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = threads
  # No autotuner: its model thread sleeps up to a minute between rounds, and a finished iterator's
  # destructor (every epoch's, every evaluation's) waits for it to wake, which stalled training 3-60 s
  # at each epoch start. One loader call per pool thread and two batches ahead keep a numpy loader busy.
  options.autotune.enabled = False
  return ds.with_options(options).prefetch(2)


def train_batches(
    source: ExampleSource,
    global_batch_size: int,
    seed: int,
    start: DataPosition = DataPosition(),
    *,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[TrainBatch]:
  """Endless training batches from ``start``, each with its position and the one after it."""
  local_batch = order.local_batch_size(global_batch_size, process_count)
  steps = order.steps_per_epoch(len(source), global_batch_size)
  epoch, step = start.epoch, start.step
  while True:
    indices, seeds = order.epoch_examples(
        len(source),
        global_batch_size,
        seed,
        epoch,
        process_index=process_index,
        process_count=process_count,
    )
    first = step * local_batch
    ds = _dataset_from_indices(source, indices[first:], seeds[first:], local_batch)
    for batch in ds.as_numpy_iterator():
      position = DataPosition(epoch, step)
      yield TrainBatch(position, position.advance(steps), batch)
      step += 1
    assert step == steps, (step, steps)
    epoch, step = epoch + 1, 0


def num_eval_batches(num_examples: int, global_batch_size: int, process_count: int = 1) -> int:
  """How many batches ``eval_batches`` yields on every process."""
  local_batch = order.local_batch_size(global_batch_size, process_count)
  per_process = -(-num_examples // process_count)
  return -(-per_process // local_batch)


def eval_batches(
    source: ExampleSource, global_batch_size: int, process_index: int = 0, process_count: int = 1
) -> Iterator[dict[str, np.ndarray]]:
  """Every query once, in file order, this process's share; the last batch padded and masked.

  All processes yield the same number of batches (a multi-host eval step needs that).
  """
  local_batch = order.local_batch_size(global_batch_size, process_count)
  indices = np.arange(len(source))[process_index::process_count]
  num_batches = num_eval_batches(len(source), global_batch_size, process_count)
  num_real = len(indices)
  padded = np.concatenate([indices, np.zeros(num_batches * local_batch - num_real, np.int64)])
  ds = _dataset_from_indices(source, padded, None, local_batch)
  for b, batch in enumerate(ds.as_numpy_iterator()):
    rows = np.arange(b * local_batch, (b + 1) * local_batch)
    batch["example_mask"] = rows < num_real
    yield batch
