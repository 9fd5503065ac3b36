"""Builds the example source of a split from ``config.data`` (the one place configs meet the loaders)."""

from __future__ import annotations

import ml_collections

from lmr_jax.data import annotations as annotations_lib
from lmr_jax.data import features as features_lib
from lmr_jax.data import synthetic
from lmr_jax.data.examples import ExampleSource


def prepare(data: ml_collections.ConfigDict) -> None:
  """Whatever must exist before a split is read: the synthetic benchmark, for configs that make it."""
  if data.generate_synthetic:
    synthetic.ensure(data)


def example_source(
    data: ml_collections.ConfigDict, split: str, *, with_captions: bool, training: bool
) -> ExampleSource:
  """``split``'s examples, with features from ``data.packed_dir`` if set, else the ``.npz`` files."""
  spec = features_lib.FeatureSpec.from_config(data)
  if data.packed_dir:
    from lmr_jax.data import packed  # tensorflow_datasets is imported only for packed data

    annotations, store = packed.open_split(data.packed_dir, split, data, with_captions)
  else:
    annotations = annotations_lib.load_split(data.annotation_files, split)
    store = features_lib.NpzStore(spec, with_captions)
  return ExampleSource(
      annotations,
      store,
      spec,
      with_captions=with_captions,
      max_windows=data.max_windows,
      training=training,
      preload=data.preload,
  )
