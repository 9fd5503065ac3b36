"""Data parallelism with JAX's own machinery: a 1-D ``data`` mesh over the devices of every process.

The global batch is split along its first axis over the mesh; each process feeds only its own rows
(``pipeline.train_batches`` gives each process its shard) and ``global_batch`` assembles them into one
sharded ``jax.Array``. The train state is replicated, or with ``config.fsdp`` each array is split over
the mesh along its largest divisible axis (FSDP-style; XLA inserts the all-gathers). The same jitted
step runs on one CPU, on N local GPUs, and on many hosts after ``jax.distributed.initialize()``.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from lmr_jax.errors import LmrError

DATA_AXIS = "data"


class MeshError(LmrError):
  """A config that does not fit the devices of this job (one line, naming the config key)."""


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """Joins the multi-host job; must run before any JAX computation.

  Coordinator, process count and id come from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
  JAX_PROCESS_ID where set, otherwise from the cluster (SLURM, Open MPI, TPU pods, ...).
  """
  if not config.distributed:
    return
  num_processes, process_id = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
  jax.distributed.initialize(
      num_processes=int(num_processes) if num_processes else None,
      process_id=int(process_id) if process_id else None,
  )


def make_mesh(num_devices: int) -> jax.sharding.Mesh:
  """The ``data`` mesh over all devices (``num_devices`` 0) or the first ``num_devices`` (one process)."""
  available = jax.device_count()
  if num_devices == 0:
    num_devices = available
  if not 0 < num_devices <= available:
    raise MeshError(f"config.num_devices {num_devices}: this job has {available} devices")
  if num_devices != available and jax.process_count() > 1:
    raise MeshError("config.num_devices must be 0 (every device) in a multi-process job")
  # Auto axes: the model code stays sharding-free and XLA propagates the batch split through it.
  return jax.make_mesh(
      (num_devices,),
      (DATA_AXIS,),
      axis_types=(jax.sharding.AxisType.Auto,),
      devices=jax.devices()[:num_devices],
  )


def check_batch_size(mesh: jax.sharding.Mesh, name: str, global_batch_size: int) -> None:
  if global_batch_size % mesh.size:
    raise MeshError(
        f"config.{name} {global_batch_size} is not divisible by the {mesh.size} devices of the mesh"
    )


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def _fsdp_spec(shape: tuple[int, ...], mesh_size: int) -> PartitionSpec:
  """Splits the largest axis the mesh divides; small or indivisible arrays stay replicated."""
  divisible = [a for a, n in enumerate(shape) if n % mesh_size == 0 and n >= mesh_size]
  if not divisible or mesh_size == 1:
    return PartitionSpec()
  axis = max(divisible, key=lambda a: shape[a])
  return PartitionSpec(*[DATA_AXIS if a == axis else None for a in range(len(shape))])


def state_shardings(mesh: jax.sharding.Mesh, abstract_state, fsdp: bool):
  """A sharding per leaf of the (abstract) train state: replicated, or FSDP-style with ``fsdp``."""
  if not fsdp:
    return jax.tree.map(lambda _: replicated(mesh), abstract_state)
  return jax.tree.map(
      lambda leaf: NamedSharding(mesh, _fsdp_spec(tuple(leaf.shape), mesh.size)), abstract_state
  )


def with_shardings(abstract_tree, shardings):
  """ShapeDtypeStructs that carry ``shardings``: the restore target orbax places arrays by."""
  return jax.tree.map(
      lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
      abstract_tree,
      shardings,
  )


def global_batch(
    sharding: NamedSharding, local_batch: dict[str, np.ndarray]
) -> dict[str, jax.Array]:
  """This process's rows of the batch -> one global array per field, sharded over the mesh."""
  return {
      k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
      for k, v in local_batch.items()
  }


def put_replicated(mesh: jax.sharding.Mesh, tree):
  """Host arrays (the same on every process) -> global arrays with a copy on every device."""
  sharding = replicated(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_callback(x.shape, sharding, lambda index: x[index]), tree
  )


def put_batch_rows(mesh: jax.sharding.Mesh, tree, axis: int):
  """Host arrays holding the whole global batch on ``axis`` (the same on every process) -> global
  arrays with that axis split over the mesh, as ``batch_sharding`` splits a batch."""

  def put(x):
    spec = PartitionSpec(*([None] * axis + [DATA_AXIS]))
    return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda index: x[index])

  return jax.tree.map(put, tree)


def to_host(tree):
  """Every process gets the whole of each (global) array as numpy, rows in process order."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def all_processes_agree(flag: bool) -> bool:
  """True on every process when ``flag`` is true on any (e.g. a SIGTERM that reached one host)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.array([flag]), tiled=True)))
