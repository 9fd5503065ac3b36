"""The training order, a pure function of (seed, epoch): which examples each process reads, in which
order, with which per-visit seeds. The tf.data pipeline (``pipeline.py``) and the device-resident feed
(``resident.py``) both follow it, so they train on the same batches."""

from __future__ import annotations

import numpy as np

from lmr_jax.errors import ConfigError


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  """Full global batches per epoch (the remainder is left out of that epoch's permutation)."""
  steps = num_examples // global_batch_size
  if steps == 0:
    raise ConfigError(
        f"config.batch_size {global_batch_size} is larger than the {num_examples} training queries"
    )
  return steps


def local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise ConfigError(
        f"config.batch_size {global_batch_size} is not divisible by the {process_count} processes"
    )
  return global_batch_size // process_count


def process_rows(
    num_batches: int, global_batch_size: int, process_index: int, process_count: int
) -> np.ndarray:
  """Positions in the epoch order that this process reads: its contiguous slice of every global
  batch, so the processes' rows, concatenated in process order (as the mesh lays them out), are the
  single-process batch."""
  local_batch = local_batch_size(global_batch_size, process_count)
  rows = np.arange(num_batches * global_batch_size).reshape(num_batches, process_count, local_batch)
  return rows[:, process_index].reshape(-1)


def epoch_examples(
    num_examples: int,
    global_batch_size: int,
    seed: int,
    epoch: int,
    *,
    process_index: int = 0,
    process_count: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
  """(example indices, per-visit seeds) this process reads in ``epoch``, in order, whole batches.

  Both are drawn for the whole epoch and then sliced, so an example gets the same seed (the same
  random window subset and saliency pairs) whatever the number of processes.
  """
  steps = steps_per_epoch(num_examples, global_batch_size)
  order = np.random.default_rng([seed, epoch]).permutation(num_examples)[
      : steps * global_batch_size
  ]
  # One seed per visit of an example: its random window subset and saliency pairs are reproducible
  # on resume.
  seeds = np.random.default_rng([seed, epoch, 1]).integers(0, 2**62, size=len(order))
  rows = process_rows(steps, global_batch_size, process_index, process_count)
  return order[rows], seeds[rows]
