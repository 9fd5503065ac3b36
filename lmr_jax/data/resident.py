"""Device-resident training data: the split's features live in accelerator memory, once.

The tf.data path (``pipeline.py``) copies every batch's features from the host: ~40 MB per QVHighlights
batch of 32, which caps a fast accelerator at the host's feeding rate. Here the features of every video
and query of the split are packed into a few padded tables (``build_tables``) that are put on the devices
once; per epoch the host sends only the ``epoch_plan``: which example each row of each batch is, and its
labels (window subset, saliency pairs, ...), drawn with the same per-visit seeds as the tf.data path. The
jitted step gathers its batch from the tables (``gather_batch``), so both paths give the same batches.

Tables (V videos with C clips in all, N queries with Q tokens in all; no padding is stored):
  video_feats CxDv, video_start V, video_clips V, caption_feats CxDc (with captions; the same rows
  as the visual features), query_feats QxDq, query_start N, query_tokens N, and with captions
  caption_query_feats / _start / _tokens (unless both query encoders read one folder, Charades'
  Llama tokens: then the query's serve both), example_video N (the video of each query).
"""

from __future__ import annotations

import math
import sys

import jax.numpy as jnp
import numpy as np
from absl import flags

from lmr_jax import cli, fileio
from lmr_jax.config_keys import RESIDENT_DTYPES
from lmr_jax.data import features as features_lib
from lmr_jax.data import order
from lmr_jax.data import queries as queries_lib
from lmr_jax.data.examples import ExampleSource
from lmr_jax.data.queries import DataError

# Of a device's free memory, what the tables may take; the rest is for the train step's activations.
MAX_SHARE_OF_FREE_MEMORY = 0.8


def build_tables(source: ExampleSource, dtype: str = "float32") -> dict[str, np.ndarray]:
  """The feature tables of ``source``'s split (host numpy), features in ``dtype``: each video's
  clips and each query's tokens stored once, back to back (no padding: Charades videos average a
  third of max_clips), with their first row and count."""
  if dtype not in RESIDENT_DTYPES:
    raise DataError(f"config.data.resident_dtype '{dtype}' is not one of {RESIDENT_DTYPES}")
  spec, store = source.spec, source.store
  vids = list(dict.fromkeys(ann.vid for ann in source.annotations))
  video_row = {vid: row for row, vid in enumerate(vids)}
  tables = {"example_video": np.array([video_row[a.vid] for a in source.annotations], np.int32)}

  def concatenated(items, dim):
    """(the items back to back (sum of lengths, dim), each one's first row, each one's length)."""
    counts = np.array([len(x) for x in items], np.int32)
    table = np.zeros((max(int(counts.sum()), 1), dim), jnp.dtype(dtype))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
    for start, x in zip(starts, items):
      table[start : start + len(x)] = x
    return table, starts, counts

  videos = [store.video(vid) for vid in vids]
  tables["video_feats"], tables["video_start"], tables["video_clips"] = concatenated(
      [v.visual for v in videos], spec.video_dim
  )
  tokens = [store.query_tokens(ann.qid, False) for ann in source.annotations]
  tables["query_feats"], tables["query_start"], tables["query_tokens"] = concatenated(
      tokens, spec.query_dim
  )
  if source.with_captions:
    # A video's captions are cut to its kept clips: the same rows as its visual features.
    tables["caption_feats"], _, _ = concatenated([v.caption for v in videos], spec.caption_dim)
    if not spec.same_query_files:
      (
          tables["caption_query_feats"],
          tables["caption_query_start"],
          tables["caption_query_tokens"],
      ) = concatenated(
          [store.query_tokens(ann.qid, True) for ann in source.annotations], spec.caption_dim
      )
  return tables


def epoch_plan(source: ExampleSource, global_batch_size: int, seed: int, epoch: int) -> dict:
  """(steps, global batch, ...) arrays of epoch ``epoch``: ``example`` (the query of each row) and
  every label of ``ExampleSource.labels``, drawn with the tf.data path's per-visit seeds, so that row
  r of step s is the example the tf.data path puts there, window subset and saliency pairs included.
  """
  indices, seeds = order.epoch_examples(len(source), global_batch_size, seed, epoch)
  labels = [source.labels(int(i), np.random.default_rng(s)) for i, s in zip(indices, seeds)]
  plan = {k: np.stack([x[k] for x in labels]) for k in labels[0]}
  plan["example"] = indices.astype(np.int32)
  steps = len(indices) // global_batch_size
  return {k: v.reshape((steps, global_batch_size) + v.shape[1:]) for k, v in plan.items()}


def _padded(table_NxD, start_B, count_B, length: int):
  """(B, length, D) rows ``start + i`` of the table, zero from each ``count`` on, and the mask."""
  mask_BxL = jnp.arange(length)[None, :] < count_B[:, None]
  index_BxL = jnp.where(mask_BxL, start_B[:, None] + jnp.arange(length)[None, :], 0)
  rows_BxLxD = jnp.where(mask_BxL[..., None], table_NxD[index_BxL], jnp.zeros((), table_NxD.dtype))
  return rows_BxLxD, mask_BxL


def gather_batch(tables: dict, plan_row: dict, max_clips: int, max_tokens: int) -> dict:
  """One batch, as the tf.data path builds it (padded to ``max_clips`` / ``max_tokens`` with zeros
  and masks), from the tables and one step of the plan. Jittable: the features are gathered on the
  device."""
  example_B = plan_row["example"]
  video_B = tables["example_video"][example_B]
  batch = {k: v for k, v in plan_row.items() if k != "example"}
  video_start_B, clips_B = tables["video_start"][video_B], tables["video_clips"][video_B]
  batch["video_feats"], batch["video_mask"] = _padded(
      tables["video_feats"], video_start_B, clips_B, max_clips
  )
  batch["query_feats"], batch["query_mask"] = _padded(
      tables["query_feats"],
      tables["query_start"][example_B],
      tables["query_tokens"][example_B],
      max_tokens,
  )
  if "caption_feats" in tables:
    batch["caption_feats"], _ = _padded(tables["caption_feats"], video_start_B, clips_B, max_clips)
    if "caption_query_feats" in tables:
      batch["caption_query_feats"], batch["caption_query_mask"] = _padded(
          tables["caption_query_feats"],
          tables["caption_query_start"][example_B],
          tables["caption_query_tokens"][example_B],
          max_tokens,
      )
    else:  # one folder serves both query encoders
      batch["caption_query_feats"] = batch["query_feats"]
      batch["caption_query_mask"] = batch["query_mask"]
  return batch


def table_bytes(tables: dict) -> int:
  return sum(int(np.asarray(v).nbytes) for v in tables.values())


def free_bytes(device) -> tuple[int, int] | None:
  """(free, total) bytes of ``device``'s memory, or None where the runtime does not say (CPU)."""
  try:
    stats = device.memory_stats()
  except Exception:  # noqa: BLE001 - backends without memory stats raise various errors
    stats = None
  if not stats or "bytes_limit" not in stats:
    return None
  return stats["bytes_limit"] - stats.get("bytes_in_use", 0), stats["bytes_limit"]


def host_free_bytes() -> tuple[int, int]:
  """(MemAvailable, MemTotal) of this host (CPU devices hold their buffers in host memory)."""
  info = {}
  with open("/proc/meminfo") as f:
    for line in f:
      name, value = line.split(":", 1)
      info[name] = int(value.split()[0]) * 1024
  return info["MemAvailable"], info["MemTotal"]


def check_fits(needed_per_device: int, devices) -> None:
  """Raises a DataError naming the bytes needed and available when the tables (replicated on every
  device of ``devices``) would take more than ``MAX_SHARE_OF_FREE_MEMORY`` of a device's free memory.
  CPU devices share the host's memory: their copies are added up against it."""
  gib = lambda n: f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"  # noqa: E731
  advice = (
      "; use config.data.resident_dtype=bfloat16 (half the bytes), fewer devices, or the tf.data "
      "path (config.data.device_resident=False)"
  )
  memory_of = {device: free_bytes(device) for device in devices}
  host_devices = [d for d, memory in memory_of.items() if memory is None]
  for device, memory in memory_of.items():
    if memory is not None and needed_per_device > MAX_SHARE_OF_FREE_MEMORY * memory[0]:
      raise DataError(
          f"config.data.device_resident: the train split's features need {gib(needed_per_device)} "
          f"on each device, but {device} has {gib(memory[0])} free of {gib(memory[1])} (at most "
          f"{MAX_SHARE_OF_FREE_MEMORY:.0%} of the free memory may hold data){advice}"
      )
  if host_devices:
    needed = needed_per_device * len(host_devices)
    available, total = host_free_bytes()
    if needed > MAX_SHARE_OF_FREE_MEMORY * available:
      raise DataError(
          f"config.data.device_resident: the train split's features need {gib(needed)} on the "
          f"{len(host_devices)} host (CPU) devices, but this host has {gib(available)} available of "
          f"{gib(total)} (at most {MAX_SHARE_OF_FREE_MEMORY:.0%} may hold data){advice}"
      )


def footprint_bytes(data, annotations, with_captions: bool, dtype: str) -> int:
  """An upper bound of ``build_tables``' bytes for ``annotations`` without reading a feature file:
  each video's clips from its duration (at most ``data.max_clips``), each query at
  ``data.max_query_tokens`` tokens."""
  spec = features_lib.FeatureSpec.from_config(data)
  width = jnp.dtype(dtype).itemsize
  durations = {ann.vid: ann.duration for ann in annotations}
  clips = sum(min(math.ceil(d / spec.clip_len - 1e-6), spec.max_clips) for d in durations.values())
  clip_dim = spec.video_dim + (spec.caption_dim if with_captions else 0)
  token_dim = spec.query_dim
  if with_captions and not spec.same_query_files:
    token_dim += spec.caption_dim
  index_bytes = 4 * (3 * len(durations) + 6 * len(annotations))
  return width * (clips * clip_dim + len(annotations) * spec.max_query_tokens * token_dim) + (
      index_bytes
  )


def _define_flags(flag_values) -> None:
  flags.DEFINE_string("config", "configs/qvh.py", "config file[:arg]", flag_values=flag_values)
  flags.DEFINE_string(
      "split", "train", "the config's split whose features to size", flag_values=flag_values
  )
  flags.DEFINE_string(
      "annotations", "", "this file instead of the config's split", flag_values=flag_values
  )


def main(argv=None) -> int:
  """``python -m lmr_jax.data.resident --config=configs/qvh.py``: the device memory the train split's
  features would take with ``config.data.device_resident``, at float32 and bfloat16."""
  return cli.run_command(_define_flags, _report, main.__doc__, argv)


def _report(args) -> None:
  config = fileio.load_config(args.config)
  anns = (
      queries_lib.load_annotations(args.annotations)
      if args.annotations
      else queries_lib.load_split(config.data.annotation_files, args.split)
  )
  with_captions = config.model.use_caption_context
  print(
      f"{args.config} {args.split}: {len(anns)} queries, {len({a.vid for a in anns})} videos "
      f"(clips from durations, queries at max_query_tokens={config.data.max_query_tokens})"
  )
  for dtype in RESIDENT_DTYPES:
    nbytes = footprint_bytes(config.data, anns, with_captions, dtype)
    print(f"  {dtype}: at most {nbytes / 2**30:.2f} GiB per device")


if __name__ == "__main__":
  sys.exit(main())
