"""lmr_jax/config_keys.py: one declaration per config key, read by the base config, the value checks,
the resume and eval comparisons, packed data and old workdirs."""

import json
import re

import ml_collections
import pytest

from configs import base
from lmr_jax import config_keys
from lmr_jax.data import packed
from lmr_jax.errors import ConfigError
from lmr_jax.training import checkpoint as checkpoint_lib
from lmr_jax.training import workdir


def _flat(values: dict, prefix: str = "") -> set[str]:
  keys = set()
  for key, value in values.items():
    if isinstance(value, dict) and key != "annotation_files":
      keys |= _flat(value, f"{prefix}{key}.")
    else:
      keys.add(f"{prefix}{key}")
  return keys


def test_the_base_config_is_the_declared_keys_at_their_defaults():
  config = base.get_base_config()
  declared = {name for name, key in config_keys.KEYS.items() if key.in_base}
  assert _flat(json.loads(config.to_json_best_effort())) == declared
  assert config.model.saliency_tokens == config_keys.KEYS["model.saliency_tokens"].default
  config_keys.check(config)  # every default passes its own check


def test_every_reader_takes_its_keys_from_the_declarations():
  assert workdir.RUN_CONTROL_KEYS == config_keys.keys_used(config_keys.RUN)
  assert workdir.TRAINING_ONLY_KEYS == config_keys.keys_used(config_keys.TRAINING)
  assert "max_clips" in packed.SETTINGS and "max_windows" not in packed.SETTINGS
  assert checkpoint_lib.KEYS_BEFORE_ADDED == config_keys.before_added()
  assert checkpoint_lib.KEYS_BEFORE_ADDED["model.decoder_memory"] == "video_and_captions"
  uses = {key.use for key in config_keys.KEYS.values()}
  assert uses == {config_keys.MODEL, config_keys.TRAINING, config_keys.RUN}


@pytest.mark.parametrize(
    "key, value, wanted",
    [
        ("batch_size", 0, "an integer >= 1"),
        ("model.dropout", 1.5, "a probability in [0, 1)"),
        ("model.use_vqf", 1, "True or False"),
        ("optim.schedule", "linear", "one of ('constant', 'cosine')"),
        ("data.clip_len", float("nan"), "a positive number of seconds"),
        ("data.caption_feat_dir", "", "the name of a feature folder"),
    ],
)
def test_a_value_that_cannot_work_names_its_key_and_what_it_takes(key, value, wanted):
  values = base.get_base_config().to_dict()
  *groups, leaf = key.split(".")
  node = values
  for group in groups:
    node = node[group]
  node[leaf] = value  # past the ConfigDict's own type checks, as a config file could write it
  with pytest.raises(ConfigError, match=re.escape(f"config.{key} must be {wanted}, got")):
    config_keys.check(ml_collections.ConfigDict(values))


def test_a_missing_key_is_named():
  config = base.get_base_config()
  del config.loss["span_l1"]
  with pytest.raises(ConfigError, match="config.loss.span_l1: missing"):
    config_keys.check(config)
