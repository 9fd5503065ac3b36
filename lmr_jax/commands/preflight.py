"""Every config value checked before anything runs: types, ranges, names and cross-field rules.

``check_config`` is what ``train_and_evaluate`` and ``evaluate_checkpoint`` call first, so a value that
cannot work is one ``ConfigError`` line naming its ``config.`` key before any file is read or written,
instead of an assertion inside jit or a KeyError at the first evaluation an epoch later.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import ml_collections

from lmr_jax.data import checks as data_checks
from lmr_jax.errors import ConfigError
from lmr_jax.evaluation import evaluators
from lmr_jax.model import layers
from lmr_jax.model import lmr
from lmr_jax.training import train_step


def _count(minimum: int) -> tuple[type, Callable, str]:
  return int, lambda v: v >= minimum, f"an integer >= {minimum}"


def _number(test: Callable, text: str) -> tuple[type, Callable, str]:
  return float, lambda v: math.isfinite(v) and test(v), text


_WEIGHT = _number(lambda v: v >= 0, "a finite number >= 0")
_RATE = _number(lambda v: 0 <= v < 1, "a probability in [0, 1)")
_BOOL = (bool, lambda v: True, "True or False")


def _one_of(choices) -> tuple[type, Callable, str]:
  return str, lambda v: v in choices, f"one of {tuple(choices)}"


# key -> (type, test, what the test wants). The data keys are ``data.checks.check_data_config``'s.
RULES = {
    "seed": (int, lambda v: True, "an integer"),
    "batch_size": _count(1),
    "eval_batch_size": _count(1),
    "num_epochs": _count(1),
    "eval_every_epochs": _count(1),
    "log_every_steps": _count(1),
    "checkpoint_every_steps": _count(1),
    "keep_checkpoints": _count(1),
    "steps_per_dispatch": _count(1),
    "num_devices": _count(0),
    "fsdp": _BOOL,
    "distributed": _BOOL,
    "eval_round_to_clip": _BOOL,
    "model.hidden_dim": _count(1),
    "model.num_heads": _count(1),
    "model.ffn_dim": _count(1),
    "model.num_vqf_layers": _count(1),
    "model.num_encoder_layers": _count(1),
    "model.num_decoder_layers": _count(1),
    "model.num_queries": _count(1),
    "model.dropout": _RATE,
    "model.input_dropout": _RATE,
    "model.input_norm_affine": _BOOL,
    "model.saliency_tokens": _one_of(lmr.SALIENCY_TOKENS),
    "model.decoder_memory": _one_of(lmr.DECODER_MEMORY),
    "model.clip_positions": _one_of(layers.CLIP_POSITIONS),
    "model.qd_detr_t2v_mask": _BOOL,
    "model.dtype": _one_of(lmr.DTYPES),
    "model.attention": _one_of(layers.ATTENTION),
    "model.use_caption_context": _BOOL,
    "model.use_visual": _BOOL,
    "model.language_queries": _BOOL,
    "model.share_vqf": _BOOL,
    "model.use_vqf": _BOOL,
    "loss.span_l1": _WEIGHT,
    "loss.span_giou": _WEIGHT,
    "loss.label": _WEIGHT,
    "loss.background_weight": _number(lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "loss.saliency_margin": _WEIGHT,
    "loss.saliency_hinge": _WEIGHT,
    "loss.saliency_rank_contrastive": _WEIGHT,
    "loss.rank_contrastive_temperature": _number(lambda v: v > 0, "a number > 0"),
    "loss.saliency_inter_video": _WEIGHT,
    "loss.aux_layers": _BOOL,
    "optim.learning_rate": _number(lambda v: v > 0, "a number > 0"),
    "optim.weight_decay": _WEIGHT,
    "optim.grad_clip_norm": _WEIGHT,
    "optim.warmup_steps": _count(0),
    "optim.schedule": _one_of(sorted(train_step.SCHEDULES)),
}


def _value(config: ml_collections.ConfigDict, key: str):
  node = config
  for part in key.split("."):
    if part not in node:
      raise ConfigError(f"config.{key}: missing (configs start from configs/base.py)")
    node = node[part]
  return node


def _has_type(value, kind: type) -> bool:
  if kind is bool:
    return isinstance(value, bool)
  if kind is int:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
  if kind is float:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
  return isinstance(value, kind)


def _check_rules(config: ml_collections.ConfigDict) -> None:
  for key, (kind, test, wanted) in RULES.items():
    value = _value(config, key)
    if not _has_type(value, kind) or not test(value):
      raise ConfigError(f"config.{key} must be {wanted}, got {value!r}")


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
  _check_rules(config)
  data_checks.check_data_config(config.data)
  _check_cross_fields(config)
