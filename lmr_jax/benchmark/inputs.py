"""What the benchmark feeds the model: random batches at a config's shapes, and a small dataset in the
real on-disk format."""

from __future__ import annotations

import copy
import os

import ml_collections
import numpy as np

from lmr_jax.data import dataset
from lmr_jax.data import features as features_lib
from lmr_jax.data import synthetic


def random_batch(config, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """A batch with the pipeline's keys, shapes and dtypes; random features, realistic masks."""
  data = config.data
  clips, tokens, windows = data.max_clips, data.max_query_tokens, data.max_windows
  num_clips = rng.integers(max(1, 2 * clips // 3), clips + 1, batch_size)
  video_mask_BxL = np.arange(clips)[None] < num_clips[:, None]
  query_mask_BxT = (
      np.arange(tokens)[None] < rng.integers(tokens // 4 + 1, tokens + 1, batch_size)[:, None]
  )
  window_mask_BxW = (
      np.arange(windows)[None] < rng.integers(1, min(3, windows) + 1, batch_size)[:, None]
  )
  features = lambda *shape: rng.standard_normal(shape, np.float32)  # noqa: E731
  batch = {
      "video_feats": features(
          batch_size, clips, features_lib.FeatureSpec.from_config(data).video_dim
      )
      * video_mask_BxL[..., None],
      "video_mask": video_mask_BxL,
      "query_feats": features(batch_size, tokens, data.query_dim) * query_mask_BxT[..., None],
      "query_mask": query_mask_BxT,
      "windows": np.sort(rng.uniform(0.0, 1.0, (batch_size, windows, 2)), -1).astype(np.float32)
      * window_mask_BxW[..., None],
      "window_mask": window_mask_BxW,
      "saliency": rng.integers(0, 13, (batch_size, clips)).astype(np.float32) * video_mask_BxL,
      # Any clips of the video: which ones does not change the step's cost.
      "saliency_pos": rng.integers(0, num_clips[:, None], (batch_size, 2)).astype(np.int32),
      "saliency_neg": rng.integers(0, num_clips[:, None], (batch_size, 2)).astype(np.int32),
      "duration": (num_clips * data.clip_len).astype(np.float32),
      "qid": np.arange(batch_size, dtype=np.int32),
      "example_mask": np.ones(batch_size, bool),
  }
  if config.model.use_caption_context:
    batch["caption_feats"] = (
        features(batch_size, clips, data.caption_dim) * video_mask_BxL[..., None]
    )
    batch["caption_query_feats"] = (
        features(batch_size, tokens, data.caption_dim) * query_mask_BxT[..., None]
    )
    batch["caption_query_mask"] = query_mask_BxT
  return batch


def synthetic_source(config, num_queries: int, out_dir: str):
  """A small train split in the real on-disk format at the config's feature dims."""
  data = config.data
  clips = data.max_clips
  slowfast_dim, clip_dim = (
      data.visual_dims if len(data.visual_dims) == 2 else (8,) + tuple(data.visual_dims)
  )
  syn = synthetic.SyntheticConfig(
      train_videos=max(1, num_queries // 2),
      val_videos=1,
      test_videos=1,
      min_clips=max(1, 2 * clips // 3),
      max_clips=clips,
      min_event_clips=max(2, clips // 15),
      max_event_clips=max(3, clips // 5),
      slowfast_dim=slowfast_dim,
      clip_dim=clip_dim,
      text_dim=data.query_dim,
      caption_dim=data.caption_dim,
  )
  files = synthetic.generate(syn, out_dir)
  data = copy.deepcopy(data)
  data.feat_root = os.path.join(out_dir, "features")
  data.annotation_files = ml_collections.ConfigDict({"train": files["train"]})
  data.packed_dir = ""
  data.preload = True
  return dataset.example_source(
      data, "train", with_captions=config.model.use_caption_context, training=True
  )
