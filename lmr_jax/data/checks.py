"""The values of ``config.data`` that cannot work, found before any file is read (``check_data_config``).

Each is a ``ConfigError`` naming the ``config.data.<key>``; the loaders (``dataset.prepare`` and
``dataset.example_source``) and the global config check call the one function here.
"""

from __future__ import annotations

import ml_collections

from lmr_jax import config_keys
from lmr_jax.data import synthetic
from lmr_jax.errors import ConfigError



def _value(data, key: str):
  if key not in data:
    raise ConfigError(f"config.data.{key} is missing (configs/base.py sets every data key)")
  return data[key]


def _is_count(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool) and x >= 1


def _check_streams(data) -> None:
  streams, dims = _value(data, "visual_streams"), _value(data, "visual_dims")
  if isinstance(streams, str) or not streams or not all(isinstance(s, str) and s for s in streams):
    raise ConfigError(
        f"config.data.visual_streams must be a non-empty list of feature folders, got {streams!r}"
    )
  if isinstance(dims, (str, int)) or len(dims) != len(streams):
    raise ConfigError(
        f"config.data.visual_dims {dims!r} must give one width per stream of "
        f"config.data.visual_streams {tuple(streams)!r}"
    )
  for stream, dim in zip(streams, dims):
    if not _is_count(dim):
      raise ConfigError(
          f"config.data.visual_dims: the width of '{stream}' must be >= 1, got {dim!r}"
      )


def _check_files(data) -> None:
  files = _value(data, "annotation_files")
  if not hasattr(files, "items"):
    raise ConfigError(f"config.data.annotation_files must map splits to files, got {files!r}")
  for split, path in files.items():
    if not isinstance(path, str):
      raise ConfigError(f"config.data.annotation_files.{split} must be a path, got {path!r}")
  packed_dir = _value(data, "packed_dir")
  if not isinstance(packed_dir, str):
    raise ConfigError(f"config.data.packed_dir must be a path or '', got {packed_dir!r}")
  if not packed_dir and not _value(data, "feat_root"):
    raise ConfigError("config.data.feat_root is empty: set it to the features folder")


def _check_synthetic(data) -> None:
  if "synthetic" not in data:
    raise ConfigError(
        "config.data.synthetic is missing: config.data.generate_synthetic needs its settings"
    )
  cfg = synthetic.settings_from_config(data.synthetic)
  synthetic.check_settings(cfg, "config.data.synthetic.")
  if abs(cfg.clip_len - _value(data, "clip_len")) > 1e-9:
    raise ConfigError(
        f"config.data.synthetic.clip_len={cfg.clip_len:g} differs from "
        f"config.data.clip_len={data.clip_len:g}: the data would not match its reader"
    )


def check_data_config(data: ml_collections.ConfigDict) -> None:
  """Raises a ``ConfigError`` naming the ``config.data.<key>`` of the first value that cannot work;
  reads no file and changes nothing (``example_source`` and ``prepare`` call it first)."""
  config_keys.check(data, prefix="data.")  # each declared key alone (lmr_jax/config_keys.py)
  _check_streams(data)
  _check_files(data)
  if _value(data, "generate_synthetic"):
    _check_synthetic(data)
