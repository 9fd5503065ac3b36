r"""Packs each split's numpy features into a TFDS dataset (ArrayRecord shards) and reads it back.

Cluster and remote filesystems serve a few large shards far better than tens of thousands of small
``.npz`` files, so this writes what the numpy loaders produce into real TFDS datasets:

  python -m lmr_jax.data.packed --config=configs/qvh.py --out_dir=/data/qvh_packed
  python -m lmr_jax.data.packed --config=configs/qvh.py --out_dir=/data/qvh_packed --splits=test

Each split is its own dataset, ``{out_dir}/lmr_packed/{split}/1.0.0/`` (ArrayRecord shards,
dataset_info.json, features.json, metadata.json; ``tfds.builder_from_directory`` opens it), so a
split can be added later. One record per query, in annotation-file order: ``qid``,
``query_tokens``, ``caption_query_tokens`` and the ``visual`` and ``caption`` rows of its video,
exactly as ``features.load_video`` returns them (normalised, TEF appended, cut to ``max_clips``). A
video's rows are stored once, in the record of its first query in the split; its other queries'
records hold zero rows.

metadata.json holds the data settings that the stored arrays depend on (checked against the reading
config) and, per query, the annotation and its clip count. Labels are not stored:
``ExampleSource`` serves it through a ``PackedStore``, so windows, the random training subset
of ``max_windows`` (free to change after packing), saliency, the sampled saliency pairs and padding
come from the numpy path's own code, and a packed example is bit-identical to the numpy one.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import tempfile
from collections.abc import Sequence

import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import flags
from etils import epath
from ml_collections import config_flags

from lmr_jax import cli, config_keys
from lmr_jax.data import checks
from lmr_jax.data import features as features_lib
from lmr_jax.data import pipeline
from lmr_jax.data import queries as queries_lib
from lmr_jax.data import synthetic
from lmr_jax.data.queries import DataError, QueryAnnotation

NAME = "lmr_packed"
VERSION = "1.0.0"
# The config.data fields that decide what features.load_video / load_query_tokens return.
SETTINGS = config_keys.stored_data_keys()


def dataset_dir(packed_dir: str, split: str) -> str:
  return os.path.join(packed_dir, NAME, split, VERSION)


def packed_settings(data: ml_collections.ConfigDict, with_captions: bool) -> dict:
  """The settings as JSON stores them (tuples become lists), so stored and current compare equal."""
  settings = {key: data[key] for key in SETTINGS}
  settings = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}
  settings["with_captions"] = with_captions
  return settings


def _features(spec: features_lib.FeatureSpec, with_captions: bool) -> tfds.features.FeaturesDict:
  def rows(dim):  # raw bytes: exact float32, and far faster to write and parse than a float list
    return tfds.features.Tensor(
        shape=(None, dim), dtype=np.float32, encoding=tfds.features.Encoding.BYTES
    )

  features = {
      "qid": tfds.features.Scalar(np.int64),
      "visual": rows(spec.video_dim),
      "query_tokens": rows(spec.query_dim),
  }
  if with_captions:
    features.update(caption=rows(spec.caption_dim), caption_query_tokens=rows(spec.caption_dim))
  return tfds.features.FeaturesDict(features)


class LmrPacked(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes one split (the builder config of the same name) from the numpy feature files."""

  VERSION = tfds.core.Version(VERSION)
  # tfds looks for a checksums file next to a builder's code, which for code outside its own
  # package needs the importlib_resources backport; nothing is downloaded, so there is none.
  code_path = None

  def __init__(
      self,
      *,
      split: str,
      annotations: list[QueryAnnotation],
      spec: features_lib.FeatureSpec,
      settings: dict,
      **kwargs,
  ):
    self._split = split
    self._annotations = annotations
    self._spec = spec
    self._settings = settings
    super().__init__(config=tfds.core.BuilderConfig(name=split, version=VERSION), **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # "queries" is filled while the examples are generated; tfds writes metadata.json afterwards.
    metadata = tfds.core.MetadataDict(settings=self._settings, queries=[])
    return tfds.core.DatasetInfo(
        builder=self,
        description="LMR features of one split, one record per query.",
        features=_features(self._spec, self._settings["with_captions"]),
        metadata=metadata,
        disable_shuffling=True,
    )  # record i is query i of the annotation file

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is local
    return {self._split: self._generate_examples()}

  def _generate_examples(self):
    with_captions = self._settings["with_captions"]
    queries = self.info.metadata["queries"]
    clips = {}  # vid -> (clips kept, clips on disk)
    for row, ann in enumerate(self._annotations):
      example = {
          "qid": ann.qid,
          "query_tokens": features_lib.load_query_tokens(self._spec, ann.qid, False),
      }
      if with_captions:
        example["caption_query_tokens"] = features_lib.load_query_tokens(self._spec, ann.qid, True)
      if ann.vid in clips:
        example["visual"] = np.zeros((0, self._spec.video_dim), np.float32)
        if with_captions:
          example["caption"] = np.zeros((0, self._spec.caption_dim), np.float32)
      else:
        video = features_lib.load_video(self._spec, ann.vid, with_captions)
        clips[ann.vid] = (
            video.visual.shape[0],
            video.num_clips_on_disk,
            video.visual_clips_on_disk,
        )
        example["visual"] = video.visual
        if with_captions:
          example["caption"] = video.caption
      num_clips, num_clips_on_disk, visual_clips = clips[ann.vid]
      # The checks an ExampleSource runs on .npz files; a packed split is not checked again.
      features_lib.check_duration(ann, visual_clips, self._spec)
      queries.append(
          {
              "annotation": ann.to_record(),
              "source": ann.source,
              "num_clips": num_clips,
              "num_clips_on_disk": num_clips_on_disk,
          }
      )
      yield row, example


def _num_shards(
    spec: features_lib.FeatureSpec,
    with_captions: bool,
    annotations: list[QueryAnnotation],
    shard_size_mb: float,
) -> int:
  """Shards for one split from an upper bound of its size (every video at max_clips, every query at
  max_query_tokens), so that no shard is much over ``shard_size_mb``.

  tfds 4.9.10 ignores DownloadConfig's min/max_shard_size (its ShardConfig computes the count from
  class defaults), so the count is passed instead.
  """
  caption = spec.caption_dim if with_captions else 0
  num_videos = len({a.vid for a in annotations})
  bound = 4 * (
      num_videos * spec.max_clips * (spec.video_dim + caption)
      + len(annotations) * spec.max_query_tokens * (spec.query_dim + caption)
  )
  return max(1, min(len(annotations), math.ceil(bound / (shard_size_mb * 2**20))))


def pack(
    data: ml_collections.ConfigDict,
    out_dir: str,
    splits: Sequence[str],
    *,
    with_captions: bool,
    shard_size_mb: float = 256.0,
) -> list[str]:
  """Packs every query of each split; returns the dataset directories. Refuses to overwrite."""
  checks.check_data_config(data)
  pipeline.hide_gpus_from_tf()
  spec = features_lib.FeatureSpec.from_config(data)
  settings = packed_settings(data, with_captions)
  written = []
  for split in splits:
    annotations = queries_lib.load_split(data.annotation_files, split)
    queries_lib.check_clip_ids(annotations, spec.clip_len)
    builder = LmrPacked(
        split=split, annotations=annotations, spec=spec, settings=settings, data_dir=out_dir
    )
    if builder.is_prepared():
      raise DataError(f"{builder.data_dir}: split '{split}' is already packed; delete it to repack")
    shards = _num_shards(spec, with_captions, annotations, shard_size_mb)
    with tempfile.TemporaryDirectory() as download_dir:  # tfds wants one; nothing is downloaded
      builder.download_and_prepare(
          download_dir=download_dir,
          file_format="array_record",
          download_config=tfds.download.DownloadConfig(num_shards=shards),
      )
    logging.info(
        "Packed %d %s queries into %d shards: %s", len(annotations), split, shards, builder.data_dir
    )
    written.append(os.fspath(builder.data_dir))
  return written


class PackedStore:
  """The feature store of one packed split (see ``features.NpzStore`` for the protocol).

  Records are read on demand (random access, thread-safe), so memory stays small whatever the split's
  size; ``preload`` reads nothing, the records having been validated when they were packed, and the
  clip counts come from metadata.json.
  """

  def __init__(
      self, records: Sequence[dict], annotations: list[QueryAnnotation], queries, path: str
  ):
    self._path = path
    # ``example`` asks for the video's record and then up to twice for the query's (often the same
    # record): decode each once.
    self._read = functools.lru_cache(maxsize=32)(records.__getitem__)
    self._qids = [a.qid for a in annotations]
    self._query_row = {a.qid: row for row, a in enumerate(annotations)}
    self._video_row = {}
    for row, ann in enumerate(annotations):
      self._video_row.setdefault(ann.vid, row)
    self._clip_counts = {
        a.vid: (q["num_clips"], q["num_clips_on_disk"]) for a, q in zip(annotations, queries)
    }

  def preload(self, annotations) -> None:
    del annotations

  def scan(self, annotations) -> None:
    del annotations

  def clip_counts(self, vid: str) -> tuple[int, int]:
    return self._clip_counts[vid]

  def _record(self, row: int) -> dict:
    record = self._read(row)
    if record["qid"] != self._qids[row]:
      raise DataError(
          f"{self._path}: record {row} holds qid {record['qid']}, metadata.json says "
          f"{self._qids[row]}; the packed split is corrupt, repack it"
      )
    return record

  def video(self, vid: str) -> features_lib.VideoFeatures:
    record = self._record(self._video_row[vid])
    return features_lib.VideoFeatures(
        visual=record["visual"],
        caption=record.get("caption"),
        num_clips_on_disk=self._clip_counts[vid][1],
    )

  def query_tokens(self, qid: int, caption_encoder: bool) -> np.ndarray:
    record = self._record(self._query_row[qid])
    return record["caption_query_tokens" if caption_encoder else "query_tokens"]


def _check_settings(path: str, stored: dict, current: dict) -> None:
  diffs = [
      f"{k}={stored.get(k)!r} (config: {v!r})" for k, v in current.items() if stored.get(k) != v
  ]
  if diffs:
    raise DataError(
        f"{path}: packed with other data settings than this config: "
        f"{', '.join(diffs)}; repack with this config or fix it"
    )


def open_split(
    packed_dir: str, split: str, data: ml_collections.ConfigDict, with_captions: bool
) -> tuple[list[QueryAnnotation], PackedStore]:
  """(the split's annotations as packed, its feature store), once the packed settings are known to
  be this config's."""
  path = dataset_dir(packed_dir, split)
  if not (epath.Path(path) / "dataset_info.json").exists():
    root = epath.Path(packed_dir) / NAME
    found = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    raise DataError(
        f"{path}: split '{split}' is not packed (packed splits in {packed_dir}: "
        f"{found or 'none'}); write it with python -m lmr_jax.data.packed "
        f"--splits={split}"
    )
  pipeline.hide_gpus_from_tf()
  builder = tfds.builder_from_directory(path)
  metadata = builder.info.metadata
  _check_settings(path, metadata["settings"], packed_settings(data, with_captions))
  queries = metadata["queries"]
  annotations = [queries_lib.parse_annotation(q["annotation"], q["source"]) for q in queries]
  return annotations, PackedStore(builder.as_data_source(split), annotations, queries, path)


def _define_flags() -> None:
  """Defined only when run as a script: train.py defines its own --config in the same process."""
  config_flags.DEFINE_config_file(
      "config", None, "Config file (configs/*.py[:variant]).", lock_config=True
  )
  flags.DEFINE_string("out_dir", None, "Packed datasets go to {out_dir}/lmr_packed/{split}/.")
  flags.DEFINE_list("splits", ["train", "val"], "Splits of config.data.annotation_files to pack.")
  flags.DEFINE_float("shard_size_mb", 256.0, "Largest shard size, from the config's maxima.")
  flags.mark_flags_as_required(["config", "out_dir"])


def main() -> None:
  config = flags.FLAGS.config
  checks.check_data_config(config.data)
  if config.data.generate_synthetic:
    synthetic.ensure(config.data)
  for path in pack(
      config.data,
      flags.FLAGS.out_dir,
      flags.FLAGS.splits,
      with_captions=config.model.use_caption_context,
      shard_size_mb=flags.FLAGS.shard_size_mb,
  ):
    print(path)


if __name__ == "__main__":
  _define_flags()
  raise SystemExit(cli.run_absl(main, __doc__))
