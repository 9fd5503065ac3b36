"""Orbax checkpoints of the train state *and* the data position, so a resumed run is exact.

``{workdir}/checkpoints`` keeps the latest ``keep`` steps; ``{workdir}/best`` keeps the one step with the
best validation metric. Each step directory holds two items: ``state`` (params, optimizer state, step)
and ``data`` (the DataPosition of the next batch, as JSON).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from jax.experimental import multihost_utils

from lmr_jax import config_keys, fileio
from lmr_jax.data.position import DataPosition
from lmr_jax.errors import LmrError


class _DropOrbaxInfo(logging.Filter):

  def filter(self, record):
    return record.levelno >= logging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


_DROP_ORBAX_INFO = _DropOrbaxInfo()


def quiet_orbax_logs() -> None:
  """Drops orbax's INFO records (a dozen per save) from the absl log; warnings and errors stay.
  Called by the entry points, never at import; calling it again adds nothing."""
  handler = absl_logging.get_absl_handler()
  if _DROP_ORBAX_INFO not in handler.filters:
    handler.addFilter(_DROP_ORBAX_INFO)


class CheckpointError(LmrError):
  """A checkpoint that cannot serve this run (missing, or made with another config)."""


class UnreadableCheckpointError(CheckpointError):
  """A step directory that cannot be read back: half-written, truncated or otherwise damaged."""


# What proves a finalised step damaged: tensorstore reports a corrupt, short or missing array file with
# these status codes (as a ValueError), a damaged metadata file fails to parse, a file orbax wrote is
# gone. Anything else (other I/O errors, permissions, an orbax or tensorstore API change) says nothing
# about the files, so it must not cost the user a checkpoint.
_DAMAGE_STATUS = ("DATA_LOSS:", "OUT_OF_RANGE:", "NOT_FOUND:")


def _causes(error: BaseException) -> list[BaseException]:
  """``error`` and what it was raised from (orbax wraps tensorstore's error in a bare Exception)."""
  chain = []
  while error is not None and error not in chain and len(chain) < 8:
    chain.append(error)
    error = error.__cause__ or error.__context__
  return chain


def _is_damage(error: BaseException) -> bool:
  if isinstance(error, (json.JSONDecodeError, FileNotFoundError)):
    return True
  return type(error) is ValueError and str(error).startswith(_DAMAGE_STATUS)


def _read_error(step_dir, error: Exception) -> CheckpointError:
  """The error for a step that failed to read: UnreadableCheckpointError only for proven damage."""
  damage = next((e for e in _causes(error) if _is_damage(e)), None)
  error = damage or error
  reason = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}"
  if damage is not None:
    return UnreadableCheckpointError(f"{step_dir}: unreadable checkpoint ({reason})")
  return CheckpointError(
      f"{step_dir}: could not be read ({reason}); this is not a sign of damage, so the step was left "
      "as it is: fix the cause and rerun"
  )


CONFIG_FILE = "config.json"


def _tuples(value):
  """JSON lists back to the tuples the configs use (ConfigDict fields keep their first type)."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes ``{workdir}/config.json`` (process 0, atomically), so predict.py needs only the workdir."""
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, CONFIG_FILE)
  fileio.atomic_write_text(path, config.to_json_best_effort(indent=2, sort_keys=True))


# Config keys added after runs were first saved, with the value that reproduces what those runs
# trained: a config.json without the key was trained that way.
KEYS_BEFORE_ADDED = config_keys.before_added()


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The locked config a workdir was trained with (``save_config``'s file), with the keys added since
  it was written set to what it was trained with (``KEYS_BEFORE_ADDED``)."""
  path = os.path.join(workdir, CONFIG_FILE)
  try:
    with open(path) as f:
      values = json.load(f)
  except FileNotFoundError:
    raise CheckpointError(f"{path}: no such file; was {workdir} written by train.py?") from None
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: not valid JSON ({e})") from None
  if isinstance(values, dict):
    for key, value in KEYS_BEFORE_ADDED.items():
      *parents, name = key.split(".")
      node = values
      for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
      if isinstance(node, dict):
        node.setdefault(name, value)
  return ml_collections.ConfigDict(_tuples(values)).lock()


def _state_handler() -> ocp.PyTreeCheckpointHandler:
  """Orbax's handler for the train state, with each replicated array written whole by its first
  replica. Orbax's default off GPUs ("replica-parallel") writes a slice of every replicated array
  from each replica, which pays for itself on arrays of many MB; LMR's state is ~600 arrays of a few
  hundred KB at most, where the slicing nearly doubles a save (a two-layer tiny state on 4 CPU
  devices: 2.5 s -> 1.4 s per save). Checkpoints written either way restore on any device count."""
  registry = ocp.type_handlers.create_type_handler_registry(
      (jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False)),
      (np.ndarray, ocp.type_handlers.NumpyHandler()),
      (np.number, ocp.type_handlers.ScalarHandler()),
      (int, ocp.type_handlers.ScalarHandler()),
      (float, ocp.type_handlers.ScalarHandler()),
  )
  return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


def _manager(directory: str, keep: int, best_metric: str | None = None) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      create=True,
      enable_async_checkpointing=False,
      best_fn=(lambda m: m[best_metric]) if best_metric else None,
      best_mode="max",
  )
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=options,
      item_handlers={"state": _state_handler(), "data": ocp.JsonCheckpointHandler()},
  )


def _key_name(key) -> str:
  for attr in ("key", "idx", "name"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def array_specs(tree) -> dict[str, tuple[tuple[int, ...], str]]:
  """{"params/encoder_0/.../kernel": (shape, dtype)} of a state, abstract state or checkpoint metadata."""
  return {
      "/".join(_key_name(k) for k in path): (tuple(leaf.shape), str(leaf.dtype))
      for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


def check_fits(step_dir, abstract_state) -> None:
  """Compares the saved arrays (names, shapes, dtypes; metadata only) with this config's state.

  Orbax refuses a mismatch too, but names no array for a structure mismatch and, failing midway,
  leaves reads in flight that print tracebacks at exit; this check fails first, in one line.
  """
  path = step_dir / "state"
  try:
    saved = array_specs(_state_handler().metadata(path))
  except Exception as e:  # noqa: BLE001 - classified: only proven damage may be set aside
    raise _read_error(step_dir, e) from None
  expected = array_specs(abstract_state)
  # Parameter names first in examples: the optimizer moments repeat them and say less.
  first = lambda names: min(names, key=lambda n: (not n.startswith("params/"), n))  # noqa: E731
  differ = [n for n in expected.keys() & saved.keys() if expected[n] != saved[n]]
  missing, extra = expected.keys() - saved.keys(), saved.keys() - expected.keys()
  problems = []
  if differ:
    name = first(differ)
    problems.append(
        f"{len(differ)} arrays differ (e.g. {name}: {saved[name][0]} {saved[name][1]} "
        f"saved, {expected[name][0]} {expected[name][1]} in this config)"
    )
  if missing:
    problems.append(f"{len(missing)} arrays of this config are not saved (e.g. {first(missing)})")
  if extra:
    problems.append(f"{len(extra)} saved arrays are not in this config (e.g. {first(extra)})")
  if problems:
    raise CheckpointError(
        f"{step_dir}: does not fit this config's model: {'; '.join(problems)}; "
        "use the config (and --config overrides) it was trained with"
    )


def _set_aside(manager: ocp.CheckpointManager, step: int) -> None:
  """Renames an unreadable step so no manager lists it again; its files stay for inspection."""
  step_dir = manager.directory / str(step)
  if jax.process_index() == 0:
    try:
      os.replace(step_dir, f"{step_dir}.unreadable")
    except OSError as e:
      logging.warning("could not set %s aside (%s); it is skipped this time only", step_dir, e)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"set aside {step_dir}")
  manager.reload()


class Checkpointer:
  """The latest-N and best-1 managers of one workdir."""

  def __init__(self, workdir: str, keep: int, best_metric: str):
    self.latest = _manager(os.path.join(workdir, "checkpoints"), keep)
    self.best = _manager(os.path.join(workdir, "best"), 1, best_metric)

  def save(self, state, position: DataPosition, metrics: dict | None = None) -> None:
    """Saves to the latest set and, when ``metrics`` is given, offers the step to the best set."""
    step = int(jax.device_get(state.step))
    args = ocp.args.Composite(
        state=ocp.args.PyTreeSave(state), data=ocp.args.JsonSave(dataclasses.asdict(position))
    )
    if step not in self.latest.all_steps():
      self._save(self.latest, step, args)
    if metrics is not None:
      self._save(self.best, step, args, metrics=metrics)

  def _save(self, manager: ocp.CheckpointManager, step: int, args, metrics=None) -> None:
    """One manager's save; a disk fault is a WriteError naming the step (orbax writes a step into
    a temporary folder and renames it when complete, so the earlier steps stay whole)."""
    try:
      manager.save(step, args=args, metrics=metrics)
    except Exception as e:
      fault = fileio.disk_fault(e)
      if not fault:
        raise
      last = self.latest.latest_step()
      kept = f"the last complete one is step {last}" if last is not None else "none was complete"
      raise fileio.write_error(
          manager.directory / str(step), fault, f"checkpoint; {kept}"
      ) from None

  def resolve_step(self, which: str) -> tuple[ocp.CheckpointManager, int]:
    """'latest', 'best' or a step number -> (manager, step)."""
    which = str(which)
    if which == "best":
      manager, step = self.best, self.best.best_step()
    elif which == "latest":
      manager, step = self.latest, self.latest.latest_step()
    elif not which.isdigit():
      raise CheckpointError(f"checkpoint must be 'best', 'latest' or a step number, got {which!r}")
    else:
      step = int(which)
      manager = self.latest if step in self.latest.all_steps() else self.best
      if step not in manager.all_steps():
        raise CheckpointError(
            f"no checkpoint at step {step} in {self.latest.directory} or " f"{self.best.directory}"
        )
    if step is None:
      raise CheckpointError(f"no '{which}' checkpoint in {manager.directory}")
    return manager, step

  def restore(self, which: str, abstract_state):
    """Restores (state, DataPosition) into ``abstract_state``'s shapes and shardings.

    A shape or structure mismatch is a CheckpointError. For 'latest', a step proven damaged (e.g. a
    copy killed midway: truncated arrays, broken metadata) is set aside as ``{step}.unreadable`` with a
    warning and the step before it is tried; a named step or 'best' that is damaged is an
    UnreadableCheckpointError. Any other failure to read (I/O, permissions, an API change) is a
    CheckpointError naming the step and the cause, and nothing is moved or skipped.
    """
    manager, step = self.resolve_step(which)
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    if str(which) != "latest":
      return self._restore_step(manager, step, target)
    newest = step
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        restored = self._restore_step(manager, step, target)
      except UnreadableCheckpointError as e:
        logging.warning("%s; set aside as %s.unreadable, trying the step before it", e, step)
        _set_aside(manager, step)
        continue
      if step != newest:
        logging.warning(
            "resuming from step %d, not the latest step %d (damaged, set aside)", step, newest
        )
      return restored
    raise CheckpointError(
        f"no readable checkpoint in {manager.directory}: every step was damaged and set aside "
        "as {step}.unreadable"
    )

  def _restore_step(self, manager: ocp.CheckpointManager, step: int, target):
    step_dir = manager.directory / str(step)
    check_fits(step_dir, target)
    try:
      restored = manager.restore(
          step,
          args=ocp.args.Composite(
              state=ocp.args.PyTreeRestore(
                  target, restore_args=ocp.checkpoint_utils.construct_restore_args(target)
              ),
              data=ocp.args.JsonRestore(),
          ),
      )
      position = DataPosition(**restored.data)
    except Exception as e:  # noqa: BLE001 - classified: only proven damage may be set aside
      raise _read_error(step_dir, e) from None
    logging.info("Restored %s", step_dir)
    return restored.state, position

  def close(self) -> None:
    self.latest.close()
    self.best.close()
