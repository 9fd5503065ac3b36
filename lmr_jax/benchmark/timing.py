"""The train step compiled and timed (per compute dtype), the losses' share, inference and memory."""

from __future__ import annotations

import copy
import resource
import statistics
import time
from typing import NamedTuple

import jax

from lmr_jax.benchmark import inputs
from lmr_jax.benchmark.devices import median_seconds
from lmr_jax.losses import losses
from lmr_jax.training import state as state_lib
from lmr_jax.training import train_step as train_step_lib


class StepCost(NamedTuple):
  """A compiled train step's median time and its cost from XLA's cost analysis."""

  seconds: float
  flops: float
  bytes: float | None  # None where the backend's cost analysis has no "bytes accessed"


def compile_step(config, tx, state, batch, *, key):
  """The config's train step, lowered and compiled: (compiled, compile seconds, flops, bytes)."""
  model = state_lib.build_model(config)
  start = time.perf_counter()
  compiled = (
      train_step_lib.jit_train_step(model, tx, config.loss).lower(state, batch, key).compile()
  )
  seconds = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return compiled, seconds, cost["flops"], cost.get("bytes accessed")


def train_setup(config, batch_size: int, rng, schedule_steps: int):
  """(model, optimizer, initial state, the batch on the device) of ``config`` on a random batch of
  its shapes (``inputs.random_batch``); ``schedule_steps`` sets the learning-rate schedule only."""
  batch = inputs.random_batch(config, batch_size, rng)
  model = state_lib.build_model(config)
  tx, _ = train_step_lib.make_optimizer(config.optim, schedule_steps)
  state = state_lib.init_state(config, model, tx, batch)
  return model, tx, state, jax.device_put(batch)


def time_step(compiled, state, batch, key, *, warmup: int, steps: int):
  """(state, median seconds of ``steps`` calls after ``warmup``); the state is donated each call."""
  (state,), (seconds,) = time_steps_paired(
      [(compiled, state, batch)], key, warmup=warmup, steps=steps
  )
  return state, seconds


def time_steps_paired(runs, key, *, warmup: int, steps: int):
  """Two or more compiled train steps timed in alternation, each call to ``block_until_ready``:
  ``runs`` = [(compiled, state, batch)]; returns (their states, their median seconds). Alternating
  makes the steps' ratio robust to a VM whose speed drifts within a run."""
  states = [state for _, state, _ in runs]
  for _ in range(warmup):
    states = [compiled(s, batch, key)[0] for (compiled, _, batch), s in zip(runs, states)]
  jax.block_until_ready(states)
  times = [[] for _ in runs]
  for _ in range(steps):
    for i, (compiled, _, batch) in enumerate(runs):
      start = time.perf_counter()
      states[i], metrics = compiled(states[i], batch, key)
      jax.block_until_ready((states[i], metrics))
      times[i].append(time.perf_counter() - start)
  return states, [statistics.median(t) for t in times]


def dtype_step(config, dtype: str, tx, state, *, batch, key, warmup: int, steps: int):
  """The train step with ``config.model.dtype = dtype`` (same params, state): (state, StepCost)."""
  config = copy.deepcopy(config)
  config.model.dtype = dtype
  compiled, _, flops, bytes_accessed = compile_step(config, tx, state, batch, key=key)
  state, seconds = time_step(compiled, state, batch, key, warmup=warmup, steps=steps)
  return state, StepCost(seconds, flops, bytes_accessed)


def loss_seconds(model, config, params, batch, *, key, repeats: int) -> float:
  """Matching + losses: their forward and backward w.r.t. fixed model outputs, as in the step."""
  outputs = jax.jit(lambda p, b, k: model.apply({"params": p}, b, train=True, rngs={"dropout": k}))(
      params, batch, key
  )
  loss_grad = jax.jit(jax.value_and_grad(lambda o, b: losses.total_loss(o, b, config.loss)[0]))
  jax.block_until_ready(loss_grad(outputs, batch))
  return median_seconds(lambda: loss_grad(outputs, batch), repeats)


def inference_figures(model, config, params, rng, *, repeats: int) -> dict[str, float]:
  """Milliseconds per query of the jitted eval step at batch 1 and 32."""
  predict = train_step_lib.jit_eval_step(model)
  results = {}
  for size in (1, 32):
    eval_batch = jax.device_put(inputs.random_batch(config, size, rng))
    jax.block_until_ready(predict(params, eval_batch))
    seconds = median_seconds(lambda: predict(params, eval_batch), max(repeats, 5))
    results[f"infer_b{size}_ms"] = 1e3 * seconds / size
  return results


def temp_gbytes(compiled) -> float | None:
  """The compiled step's temporary buffers (activations kept for the backward pass, workspaces) from
  XLA's memory analysis; None where the backend gives none. Allocated on the device each call."""
  analysis = compiled.memory_analysis()
  return None if analysis is None else analysis.temp_size_in_bytes / 1e9


def memory_figures() -> dict[str, float | None]:
  """Peak host RSS (Linux: ru_maxrss in KiB) and the default device's peak bytes in use where its
  backend reports them (GPU, TPU; None on the CPU)."""
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return {
      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
      "device_peak_gb": None if peak is None else peak / 1e9,
  }
