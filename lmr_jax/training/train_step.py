"""The optimizer, the train state and the pure, jitted train step."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from lmr_jax.data import resident
from lmr_jax.errors import ConfigError
from lmr_jax.losses import losses
from lmr_jax.training import parallel

SCHEDULES = {
    "constant": lambda optim, total_steps: optax.join_schedules(
        [
            optax.linear_schedule(0.0, optim.learning_rate, max(optim.warmup_steps, 1)),
            optax.constant_schedule(optim.learning_rate),
        ],
        [optim.warmup_steps],
    ),
    "cosine": lambda optim, total_steps: optax.warmup_cosine_decay_schedule(
        0.0, optim.learning_rate, optim.warmup_steps, max(total_steps, optim.warmup_steps + 1)
    ),
}


def make_optimizer(optim: ml_collections.ConfigDict, total_steps: int):
  """AdamW (decoupled weight decay, as the peers' PyTorch AdamW) after global-norm clipping."""
  if optim.schedule not in SCHEDULES:
    raise ConfigError(f"config.optim.schedule '{optim.schedule}' is not one of {sorted(SCHEDULES)}")
  schedule = SCHEDULES[optim.schedule](optim, total_steps)
  transforms = [optax.clip_by_global_norm(optim.grad_clip_norm)] if optim.grad_clip_norm else []
  transforms.append(optax.adamw(schedule, weight_decay=optim.weight_decay))
  return optax.chain(*transforms), schedule


@struct.dataclass
class TrainState:
  step: jnp.ndarray
  params: Any
  opt_state: Any


def create_train_state(
    model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array, example_batch: dict
) -> TrainState:
  params = jax.jit(functools.partial(model.init, train=False))(rng, example_batch)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def train_step(
    state: TrainState,
    batch: dict,
    rng: jax.Array,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    loss_cfg: ml_collections.ConfigDict,
):
  """One optimisation step; ``rng`` is the run's key, folded with the step for dropout."""
  dropout_rng = jax.random.fold_in(rng, state.step)

  def loss_fn(params):
    outputs = model.apply({"params": params}, batch, train=True, rngs={"dropout": dropout_rng})
    return losses.total_loss(outputs, batch, loss_cfg)

  (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(terms, loss=loss, grad_norm=optax.tree.norm(grads))
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, batch: dict, *, model: nn.Module) -> dict:
  """Last decoder layer's moments (cxw, fg probability) and the clip saliency."""
  outputs = model.apply({"params": params}, batch, train=False)
  return {
      "spans": outputs["pred_spans"][-1],
      "scores": jax.nn.softmax(outputs["pred_logits"][-1], axis=-1)[..., losses.FOREGROUND],
      "saliency": outputs["saliency"],
  }


def jit_train_step(model, tx, loss_cfg, mesh=None, *, state_shardings=None):
  """The step, jitted; with a ``mesh``, the batch is split over it and the state laid out as
  ``state_shardings`` (the train state's buffers are donated either way)."""
  step = functools.partial(train_step, model=model, tx=tx, loss_cfg=loss_cfg)
  if mesh is None:
    return jax.jit(step, donate_argnums=(0,))
  replicated = parallel.replicated(mesh)
  return jax.jit(
      step,
      in_shardings=(state_shardings, parallel.batch_sharding(mesh), replicated),
      out_shardings=(state_shardings, replicated),
      donate_argnums=(0,),
  )


def resident_steps(
    state: TrainState,
    tables: dict,
    plan: dict,
    first_step: jnp.ndarray,
    rng: jax.Array,
    *,
    num_steps: int,
    model: nn.Module,
    tx: optax.GradientTransformation,
    loss_cfg: ml_collections.ConfigDict,
    max_lengths: tuple[int, int],
    rows=None,
):
  """``num_steps`` train steps under ``lax.scan`` on batches gathered on the device: step i takes row
  ``first_step + i`` of the epoch ``plan`` (``resident.epoch_plan``) and its features from ``tables``.
  Returns the state and each step's metrics, stacked (num_steps,). ``max_lengths``: the batch's
  (max_clips, max_query_tokens); ``rows``: its sharding.
  """

  def one_step(state, i):
    plan_row = jax.tree.map(lambda x: x[first_step + i], plan)
    batch = resident.gather_batch(tables, plan_row, *max_lengths)
    if rows is not None:
      batch = jax.lax.with_sharding_constraint(batch, rows)
    return train_step(state, batch, rng, model=model, tx=tx, loss_cfg=loss_cfg)

  return jax.lax.scan(one_step, state, jnp.arange(num_steps))


def jit_resident_steps(
    model, tx, loss_cfg, num_steps: int, *, max_lengths, mesh=None, state_shardings=None
):
  """``resident_steps`` jitted for ``num_steps``; the state is donated; with a ``mesh`` the tables
  are replicated, the plan's batch axis split over it and the state laid out as ``state_shardings``.
  """
  rows = parallel.batch_sharding(mesh) if mesh is not None else None
  steps = functools.partial(
      resident_steps,
      num_steps=num_steps,
      model=model,
      tx=tx,
      loss_cfg=loss_cfg,
      max_lengths=tuple(max_lengths),
      rows=rows,
  )
  if mesh is None:
    return jax.jit(steps, donate_argnums=(0,))
  replicated = parallel.replicated(mesh)
  plan_rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, parallel.DATA_AXIS))
  return jax.jit(
      steps,
      in_shardings=(state_shardings, replicated, plan_rows, replicated, replicated),
      out_shardings=(state_shardings, replicated),
      donate_argnums=(0,),
  )


def jit_eval_step(model, mesh=None, param_shardings=None):
  """``eval_step``, jitted; with a ``mesh``, batch rows in and out are split over it."""
  step = functools.partial(eval_step, model=model)
  if mesh is None:
    return jax.jit(step)
  rows = parallel.batch_sharding(mesh)
  return jax.jit(
      step,
      in_shardings=(param_shardings, rows),
      out_shardings=rows,
  )
