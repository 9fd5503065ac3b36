"""Where the train step's batches come from: a tf.data stream from the host, or tables already in device
memory (``config.data.device_resident``). The loop asks a feed for its next ``Dispatch`` (one jitted
call: one step for the stream, up to ``config.steps_per_dispatch`` steps for the resident tables) and
runs it; both feeds follow the training order of ``data/order.py``, so they give the same batches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from lmr_jax.data import order, pipeline, resident
from lmr_jax.data.examples import ExampleSource
from lmr_jax.data.position import DataPosition
from lmr_jax.errors import ConfigError
from lmr_jax.training import parallel
from lmr_jax.training import train_step as train_step_lib


class Dispatch(NamedTuple):
  position: DataPosition  # of its first step
  next_position: DataPosition  # after its last step: what a checkpoint saves
  num_steps: int
  # (train state, run key) -> (train state, metrics): per step (one step) or stacked (num_steps,)
  run: Callable[[Any, jax.Array], tuple[Any, dict]]


class StreamFeed:
  """One step per dispatch, on the tf.data pipeline's batches (this process's rows of each)."""

  def __init__(self, config, source: ExampleSource, start: DataPosition, mesh, *, train_step):
    self._batches = pipeline.train_batches(
        source,
        config.batch_size,
        config.seed,
        start,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    self._rows = parallel.batch_sharding(mesh)
    self._train_step = train_step

  def next(self, max_steps: int) -> Dispatch:
    del max_steps  # always one
    batch = next(self._batches)
    arrays = parallel.global_batch(self._rows, batch.arrays)
    return Dispatch(
        batch.position,
        batch.next_position,
        1,
        lambda state, rng: self._train_step(state, arrays, rng),
    )


def check_resident_config(config: ml_collections.ConfigDict) -> None:
  if config.steps_per_dispatch < 1:
    raise ConfigError(f"config.steps_per_dispatch must be >= 1, got {config.steps_per_dispatch}")
  if config.steps_per_dispatch > 1 and not config.data.device_resident:
    raise ConfigError(
        "config.steps_per_dispatch > 1 needs config.data.device_resident=True (the tf.data path "
        "feeds one batch per step)"
    )


def load_tables(config, source: ExampleSource, mesh) -> dict[str, np.ndarray]:
  """The split's feature tables (host), once they are known to fit the mesh's devices."""
  tables = resident.build_tables(source, config.data.resident_dtype)
  nbytes = resident.table_bytes(tables)
  resident.check_fits(nbytes, mesh.local_devices)
  logging.info(
      "Device-resident data: %.2f GiB of %s features on each of %d devices",
      nbytes / 2**30,
      config.data.resident_dtype,
      mesh.size,
  )
  return tables


class ResidentFeed:
  """Up to ``config.steps_per_dispatch`` steps per dispatch, gathered from tables in device memory;
  per epoch the host sends the plan (example indices and labels) only."""

  def __init__(self, config, source, tables, start: DataPosition, *, mesh, model, tx, shardings):
    self._config, self._source, self._mesh = config, source, mesh
    self._steps_per_epoch = order.steps_per_epoch(len(source), config.batch_size)
    self._tables = parallel.put_replicated(mesh, tables)
    self._position = start
    self._plan_epoch, self._plan = None, None
    self._compiled = {}  # num_steps -> jitted resident_steps
    self._jit = lambda n: train_step_lib.jit_resident_steps(  # noqa: E731
        model,
        tx,
        config.loss,
        n,
        max_lengths=(config.data.max_clips, config.data.max_query_tokens),
        mesh=mesh,
        state_shardings=shardings,
    )

  def _epoch_plan(self, epoch: int):
    if epoch != self._plan_epoch:
      plan = resident.epoch_plan(self._source, self._config.batch_size, self._config.seed, epoch)
      self._plan_epoch, self._plan = epoch, parallel.put_batch_rows(self._mesh, plan, axis=1)
    return self._plan

  def next(self, max_steps: int) -> Dispatch:
    """The next steps up to ``max_steps`` (the loop's next log, save or evaluation), within one
    epoch and at most ``config.steps_per_dispatch``."""
    position = self._position
    num_steps = min(
        max_steps, self._config.steps_per_dispatch, self._steps_per_epoch - position.step
    )
    if num_steps not in self._compiled:
      self._compiled[num_steps] = self._jit(num_steps)
    steps, plan, tables = self._compiled[num_steps], self._epoch_plan(position.epoch), self._tables
    first = np.int32(position.step)
    next_position = position
    for _ in range(num_steps):
      next_position = next_position.advance(self._steps_per_epoch)
    self._position = next_position
    return Dispatch(
        position,
        next_position,
        num_steps,
        lambda state, rng: steps(state, tables, plan, first, rng),
    )
