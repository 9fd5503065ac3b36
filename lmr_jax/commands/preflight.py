"""Every config value checked before anything runs: types, ranges, names and cross-field rules.

``check_config`` is what ``train_and_evaluate`` and ``evaluate_checkpoint`` call first, so a value that
cannot work is one ``ConfigError`` line naming its ``config.`` key before any file is read or written,
instead of an assertion inside jit or a KeyError at the first evaluation an epoch later.
"""

from __future__ import annotations

import ml_collections

from lmr_jax import config_keys
from lmr_jax.data import checks as data_checks
from lmr_jax.errors import ConfigError
from lmr_jax.evaluation import evaluators


def _check_cross_fields(config: ml_collections.ConfigDict) -> None:
  model = config.model
  if model.hidden_dim % model.num_heads:
    raise ConfigError(
        f"config.model.hidden_dim ({model.hidden_dim}) must be divisible by config.model.num_heads "
        f"({model.num_heads})"
    )
  if not (model.use_visual or model.use_caption_context):
    raise ConfigError(
        "config.model.use_visual and config.model.use_caption_context are both False: the model "
        "would see no video"
    )
  evals = tuple(config.evals)
  if not evals:
    raise ConfigError("config.evals is empty; choose from " f"{sorted(evaluators.METRICS)}")
  evaluators.check_names(evals)
  known = evaluators.brief_names(evals)
  if config.best_metric not in known:
    raise ConfigError(
        f"config.best_metric '{config.best_metric}' is not a metric of config.evals {evals}; "
        f"choose from {sorted(known)}"
    )
  splits = config.data.annotation_files
  if config.eval_split not in splits or not splits[config.eval_split]:
    raise ConfigError(
        f"config.eval_split '{config.eval_split}' has no file in config.data.annotation_files "
        f"(has {sorted(k for k in splits if splits[k])})"
    )


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises one ``ConfigError`` naming the first config key whose value cannot run."""
  config_keys.check(config)  # every declared key's type and range (lmr_jax/config_keys.py)
  data_checks.check_data_config(config.data)
  _check_cross_fields(config)
