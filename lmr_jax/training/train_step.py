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


def jit_train_step(model, tx, loss_cfg, mesh=None, state_shardings=None):
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


def jit_eval_step(model, mesh=None, param_shardings=None):
  """``eval_step``, jitted; with a ``mesh``, batch rows in and out are split over it."""
  step = functools.partial(eval_step, model=model)
  if mesh is None:
    return jax.jit(step)
  rows = parallel.batch_sharding(mesh)
  return jax.jit(step, in_shardings=(param_shardings, rows), out_shardings=rows)
