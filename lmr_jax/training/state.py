"""The train state as training builds it, fresh or restored: the one recipe that training, evaluation,
inference and the QD-DETR port share, so a checkpoint made with another config fails in one
``CheckpointError`` line instead of serving a half-matching model."""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

from lmr_jax.model.lmr import LMR
from lmr_jax.training import checkpoint as checkpoint_lib
from lmr_jax.training import parallel
from lmr_jax.training import train_step as train_step_lib

ElementSpec = dict[str, tuple[tuple[int, ...], np.dtype]]  # ExampleSource.element_spec()


def build_model(config: ml_collections.ConfigDict, *, eval_protocol: bool = True) -> LMR:
  """The model of ``config``; its evaluation follows ``config.eval_protocol`` unless
  ``eval_protocol`` is False (predict.py: a prediction never depends on the other queries)."""
  qd_detr_eval = eval_protocol and config.get("eval_protocol", "lmr") == "qd_detr"
  return LMR(config.model, qd_detr_eval=qd_detr_eval)


def zeros_batch(element_spec: ElementSpec, batch_size: int, xp=np) -> dict[str, np.ndarray]:
  """A batch of the right shapes for initialisation (values do not matter). ``xp=jax.numpy`` under
  jit: zeros made there are a broadcast, where a numpy batch closed over is a constant that XLA
  folds through the model's forward pass (four times the init's compilation)."""
  return {k: xp.zeros((batch_size,) + shape, dtype) for k, (shape, dtype) in element_spec.items()}


def init_state(config, model, tx, batch) -> train_step_lib.TrainState:
  """Fresh train state from ``config.seed`` (also the abstract target for restoring)."""
  return train_step_lib.create_train_state(model, tx, jax.random.key(config.seed), batch)


def sharded_state_layout(config, model, tx, mesh, *, batch):
  """(abstract train state carrying its shardings, the shardings) for ``config`` on ``mesh``."""
  abstract = jax.eval_shape(lambda: init_state(config, model, tx, batch))
  shardings = parallel.state_shardings(mesh, abstract, config.fsdp)
  return parallel.with_shardings(abstract, shardings), shardings


def open_checkpointer(config, workdir: str, which: str) -> checkpoint_lib.Checkpointer:
  """The workdir's Checkpointer, once checkpoint ``which`` is known to exist (before any feature is
  loaded)."""
  if not os.path.isdir(workdir):  # the Checkpointer would create empty checkpoint folders in it
    raise checkpoint_lib.CheckpointError(f"{workdir}: no such workdir")
  checkpointer = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints, config.best_metric)
  try:
    checkpointer.resolve_step(which)
  except checkpoint_lib.CheckpointError:
    checkpointer.close()
    raise
  return checkpointer


def restore_params(
    config: ml_collections.ConfigDict,
    model,
    checkpointer: checkpoint_lib.Checkpointer,
    which: str,
    *,
    element_spec: ElementSpec,
    mesh,
):
  """(params, step) of checkpoint ``which``, restored into this config's abstract train state and
  laid out on ``mesh`` as training lays it out. ``element_spec`` gives one example's shapes."""
  tx, _ = train_step_lib.make_optimizer(config.optim, 1)
  batch = zeros_batch(element_spec, config.eval_batch_size // jax.process_count())
  abstract_state, _ = sharded_state_layout(config, model, tx, mesh, batch=batch)
  state, _ = checkpointer.restore(which, abstract_state)
  return state.params, int(state.step)


def restore_on_one_device(config, workdir: str, which: str, element_spec: ElementSpec):
  """(params, step) of checkpoint ``which`` of ``workdir`` on one device, for reading a trained
  model (predict, the QD-DETR comparison): any saved layout restores onto one."""
  checkpointer = open_checkpointer(config, workdir, which)
  try:
    return restore_params(
        config,
        build_model(config),
        checkpointer,
        which,
        element_spec=element_spec,
        mesh=parallel.make_mesh(1),
    )
  finally:
    checkpointer.close()
