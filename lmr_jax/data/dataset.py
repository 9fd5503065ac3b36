"""Builds the example source of a split from ``config.data`` (the one place configs meet the loaders)."""

from __future__ import annotations

import logging
import os

import ml_collections

from lmr_jax.data import annotations as annotations_lib
from lmr_jax.data import features as features_lib
from lmr_jax.data import synthetic
from lmr_jax.data.examples import ExampleSource


def feature_spec(data: ml_collections.ConfigDict) -> features_lib.FeatureSpec:
  return features_lib.FeatureSpec(
      feat_root=data.feat_root,
      visual_streams=tuple(data.visual_streams),
      visual_dims=tuple(data.visual_dims),
      query_feat_dir=data.query_feat_dir,
      query_dim=data.query_dim,
      caption_feat_dir=data.caption_feat_dir,
      caption_query_feat_dir=data.caption_query_feat_dir,
      caption_dim=data.caption_dim,
      clip_len=data.clip_len,
      caption_clip_len=data.caption_clip_len,
      max_clips=data.max_clips,
      max_query_tokens=data.max_query_tokens,
      use_tef=data.use_tef,
  )


def ensure_synthetic(data: ml_collections.ConfigDict) -> None:
  """Writes the synthetic benchmark described by ``data.synthetic`` unless it is already there."""
  if all(os.path.exists(p) for p in data.annotation_files.values()):
    return
  root = os.path.dirname(os.path.normpath(data.feat_root))
  logging.info("Writing the synthetic benchmark to %s", root)
  synthetic.generate(synthetic.SyntheticConfig(**data.synthetic.to_dict()), root)


def example_source(
    data: ml_collections.ConfigDict, split: str, *, with_captions: bool, training: bool
) -> ExampleSource:
  if data.packed_dir:
    from lmr_jax.data import packed  # tensorflow_datasets is imported only for packed data

    return packed.packed_source(
        data.packed_dir, split, data, with_captions=with_captions, training=training
    )
  if split not in data.annotation_files:
    raise annotations_lib.DataError(
        f"config.data.annotation_files has no split '{split}' (has {sorted(data.annotation_files)})"
    )
  annotations = annotations_lib.load_annotations(data.annotation_files[split])
  return ExampleSource(
      annotations,
      feature_spec(data),
      with_captions=with_captions,
      max_windows=data.max_windows,
      training=training,
      preload=data.preload,
  )
