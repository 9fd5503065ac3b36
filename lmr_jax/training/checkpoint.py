"""Orbax checkpoints of the train state *and* the data position, so a resumed run is exact.

``{workdir}/checkpoints`` keeps the latest ``keep`` steps; ``{workdir}/best`` keeps the one step with the
best validation metric. Each step directory holds two items: ``state`` (params, optimizer state, step)
and ``data`` (the DataPosition of the next batch, as JSON).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
import orbax.checkpoint as ocp

from lmr_jax.data.pipeline import DataPosition


class CheckpointError(ValueError):
  """A checkpoint that cannot serve this run (missing, or made with another config)."""


def _manager(directory: str, keep: int, best_metric: str | None = None) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=False,
      best_fn=(lambda m: m[best_metric]) if best_metric else None, best_mode="max")
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


class Checkpointer:
  """The latest-N and best-1 managers of one workdir."""

  def __init__(self, workdir: str, keep: int, best_metric: str):
    self.latest = _manager(os.path.join(workdir, "checkpoints"), keep)
    self.best = _manager(os.path.join(workdir, "best"), 1, best_metric)

  def save(self, state, position: DataPosition, metrics: dict | None = None) -> None:
    """Saves to the latest set and, when ``metrics`` is given, offers the step to the best set."""
    step = int(jax.device_get(state.step))
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=ocp.args.JsonSave(dataclasses.asdict(position)))
    if step not in self.latest.all_steps():
      self.latest.save(step, args=args)
    if metrics is not None:
      self.best.save(step, args=args, metrics=metrics)

  def resolve_step(self, which: str) -> tuple[ocp.CheckpointManager, int]:
    """'latest', 'best' or a step number -> (manager, step)."""
    if which == "best":
      manager, step = self.best, self.best.best_step()
    elif which == "latest":
      manager, step = self.latest, self.latest.latest_step()
    else:
      step = int(which)
      manager = self.latest if step in self.latest.all_steps() else self.best
      if step not in manager.all_steps():
        raise CheckpointError(f"no checkpoint at step {step} in {self.latest.directory} or "
                              f"{self.best.directory}")
    if step is None:
      raise CheckpointError(f"no '{which}' checkpoint in {manager.directory}")
    return manager, step

  def restore(self, which: str, abstract_state):
    """Restores (state, DataPosition); a shape or structure mismatch is a CheckpointError."""
    manager, step = self.resolve_step(which)
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointError(
          f"{manager.directory}/{step}: does not fit this config's model "
          f"({type(e).__name__}: {str(e).splitlines()[0][:300]})") from None
    logging.info("Restored %s/%d", manager.directory, step)
    return restored.state, DataPosition(**restored.data)

  def close(self) -> None:
    self.latest.close()
    self.best.close()
