"""Builds the example source of a split from ``config.data`` (the one place configs meet the loaders).

``check_data_config`` (from ``checks``) says which ``config.data`` values cannot work, ``example_source``
builds a split with every check that needs the files (``ExampleSource``), and ``check_split`` runs those
checks alone, for the annotation checker (``python -m lmr_jax.data.annotations --config=...``).
"""

from __future__ import annotations

import ml_collections

from lmr_jax.data import features as features_lib
from lmr_jax.data import queries as queries_lib
from lmr_jax.data import synthetic
from lmr_jax.data.checks import check_data_config
from lmr_jax.data.examples import ExampleSource


def prepare(data: ml_collections.ConfigDict) -> None:
  """Whatever must exist before a split is read: the synthetic benchmark, for configs that make it."""
  check_data_config(data)
  if data.generate_synthetic:
    synthetic.ensure(data)


def _source(data, split: str, *, with_captions: bool, training: bool, keep_arrays: bool):
  check_data_config(data)
  spec = features_lib.FeatureSpec.from_config(data)
  if data.packed_dir:
    from lmr_jax.data import packed  # noqa: PLC0415 - tensorflow_datasets only for packed data

    annotations, store = packed.open_split(data.packed_dir, split, data, with_captions)
  else:
    annotations = queries_lib.load_split(data.annotation_files, split)
    store = features_lib.NpzStore(spec, with_captions, keep_arrays=keep_arrays)
  return ExampleSource(
      annotations,
      store,
      spec,
      with_captions=with_captions,
      max_windows=data.max_windows,
      training=training,
      preload=data.preload or not keep_arrays,
  )


def example_source(
    data: ml_collections.ConfigDict, split: str, *, with_captions: bool, training: bool
) -> ExampleSource:
  """``split``'s examples, with features from ``data.packed_dir`` if set, else the ``.npz`` files.

  Every check of the split runs here, before training or evaluation writes anything (see
  ``ExampleSource``; with ``data.preload`` False the feature values are checked when first read)."""
  return _source(data, split, with_captions=with_captions, training=training, keep_arrays=True)


def config_splits(data: ml_collections.ConfigDict) -> list[str]:
  """The splits of ``data.annotation_files`` that name a file."""
  return [split for split, path in data.annotation_files.items() if path]


def check_split(
    data: ml_collections.ConfigDict, split: str, *, with_captions: bool, training: bool
) -> str:
  """Runs every check ``example_source`` runs on ``split``, reading each feature file whole (as
  ``data.preload`` does) but keeping none, so a split of any size fits in memory; returns a summary.
  A problem is the ``LmrError`` that training would stop with."""
  source = _source(data, split, with_captions=with_captions, training=training, keep_arrays=False)
  anns = source.annotations
  checked = "packed features (checked when packed)" if data.packed_dir else "every feature file"
  return (
      f"{len(anns)} queries{' usable for training' if training else ''}, "
      f"{len({a.vid for a in anns})} videos: annotations and {checked} checked"
  )
