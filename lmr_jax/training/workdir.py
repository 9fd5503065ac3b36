"""The workdir as the record of a run, checked before anything is written into it.

A workdir holds ``config.json`` (what predict.py and eval.py rebuild the model from), the checkpoints
and ``metrics.jsonl``. ``check_for_training`` runs before the first file is written: the workdir must be
a writable folder (or creatable), a resumed run's config may differ from the saved one only in keys
that do not change what is trained, and a workdir whose every checkpoint was set aside as unreadable
stops instead of silently training from step 0 into the old log, unless the user asks to start over
(``move_previous_run`` then moves the old run, whole, into ``previous_run_N/``). ``check_matches``
is the same comparison for eval.py, which may also differ in training-only keys.
"""

from __future__ import annotations

import json
import logging
import os

import jax
import ml_collections
from jax.experimental import multihost_utils

from lmr_jax import config_keys, fileio
from lmr_jax.errors import ConfigError, LmrError
from lmr_jax.training import checkpoint as checkpoint_lib
from lmr_jax.training import metric_log

# Keys that may change between a run and its resumption or evaluation without changing what the steps
# compute (where data lives, placement, how long and how often), and those only training reads:
# evaluating a checkpoint with other values gives the same numbers. Declared in lmr_jax/config_keys.py.
RUN_CONTROL_KEYS = config_keys.keys_used(config_keys.RUN)
TRAINING_ONLY_KEYS = config_keys.keys_used(config_keys.TRAINING)
RUN_DIRS = ("checkpoints", "best", metric_log.TENSORBOARD_DIR)


class WorkdirError(LmrError):
  """A workdir that cannot hold this run (a file, unwritable, or holding another run)."""


def _flat(values: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in values.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict) and value:
      flat.update(_flat(value, f"{name}."))
    else:
      flat[name] = value
  return flat


def _comparable(config: ml_collections.ConfigDict) -> dict:
  """The config as config.json stores it (tuples as lists), flattened to dotted keys."""
  return _flat(json.loads(config.to_json_best_effort()))


def differences(saved: ml_collections.ConfigDict, given: ml_collections.ConfigDict, free) -> list:
  """[(key, saved value, given value)] for keys of both that differ, except keys under ``free``."""
  a, b = _comparable(saved), _comparable(given)
  is_free = lambda key: any(key == f or key.startswith(f"{f}.") for f in free)  # noqa: E731
  return [(k, a[k], b[k]) for k in sorted(a.keys() & b.keys()) if a[k] != b[k] and not is_free(k)]


def _describe(diff: list, path: str) -> str:
  shown = "; ".join(f"config.{k}: {v!r} in {path}, {w!r} given" for k, v, w in diff[:3])
  more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
  return shown + more


def check_matches(
    config: ml_collections.ConfigDict, workdir: str, purpose: str
) -> ml_collections.ConfigDict:
  """For ``purpose`` (e.g. "eval.py"): ``config`` may differ from ``{workdir}/config.json`` only in
  run-control and training-only keys; anything else would score another model on other inputs.
  Returns the saved config."""
  saved = checkpoint_lib.load_config(workdir)
  diff = differences(saved, config, RUN_CONTROL_KEYS + TRAINING_ONLY_KEYS)
  if diff:
    path = os.path.join(workdir, checkpoint_lib.CONFIG_FILE)
    raise ConfigError(
        f"{_describe(diff, path)}: {purpose} needs the config the run was trained with (same "
        "--config.x overrides)"
    )
  return saved


def _steps(folder: str) -> tuple[list[str], list[str]]:
  """(readable-looking step names, set-aside step names) of a checkpoint folder."""
  names = os.listdir(folder) if os.path.isdir(folder) else []
  return [n for n in names if n.isdigit()], [n for n in names if n.endswith(".unreadable")]


def move_previous_run(workdir: str) -> str:
  """Moves the earlier run's checkpoints, log, TensorBoard files and config into
  ``previous_run_N/`` (process 0; the others wait), so a fresh run starts in an empty workdir."""
  n = 1
  while os.path.exists(os.path.join(workdir, f"previous_run_{n}")):
    n += 1
  target = os.path.join(workdir, f"previous_run_{n}")
  if jax.process_index() == 0:
    os.makedirs(target)
    for name in RUN_DIRS + (metric_log.METRICS_FILE, checkpoint_lib.CONFIG_FILE):
      if os.path.exists(os.path.join(workdir, name)):
        os.replace(os.path.join(workdir, name), os.path.join(target, name))
    logging.warning("starting over: the earlier run is now in %s", target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"start over in {workdir}")
  return target


def check_for_training(config: ml_collections.ConfigDict, workdir: str, start_over: bool) -> bool:
  """Everything about ``workdir`` that can stop a training run, checked before it writes a file.
  Returns True when ``start_over`` was asked and an earlier run is there to ``move_previous_run``
  (done by the caller once every other check passed, so a failed start moves nothing)."""
  fileio.check_writable_folder(workdir, "--workdir")
  if not os.path.isdir(workdir):
    return False
  readable, set_aside = _steps(os.path.join(workdir, "checkpoints"))
  if start_over:
    return any(
        os.path.exists(os.path.join(workdir, name))
        for name in RUN_DIRS + (metric_log.METRICS_FILE,)
    )
  if set_aside and not readable:
    raise WorkdirError(
        f"{workdir}/checkpoints: every checkpoint is unreadable (set aside: "
        f"{', '.join(sorted(set_aside))}); pass --start_over to train from step 0 (the old run is "
        "kept in previous_run_N/)"
    )
  config_path = os.path.join(workdir, checkpoint_lib.CONFIG_FILE)
  if readable and os.path.exists(config_path):
    diff = differences(checkpoint_lib.load_config(workdir), config, RUN_CONTROL_KEYS)
    if diff:
      raise ConfigError(
          f"{_describe(diff, config_path)}: resuming needs the config the run was trained with; "
          "use another --workdir, or --start_over to move the old run aside"
      )
  return False
