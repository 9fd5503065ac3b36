r"""Speed benchmark of LMR training and inference at a config's real shapes (issue #6).

  python -m lmr_jax.benchmark                                   # configs/qvh.py: B32, 75 clips, captions
  python -m lmr_jax.benchmark --config=configs/tiny.py --steps=3 --json=/tmp/bench.json
  python -m lmr_jax.benchmark --profile_dir=/tmp/lmr_trace          # + the step's slowest ops

Prints one markdown table: compile time, train step time and samples/s (and the hours of the config's
full schedule), the step's FLOPs from XLA's cost analysis and the GFLOP/s they run at against a plain
fp32 matmul measured in the same run, inference latency per query at batch 1 and 32, the share of a step
spent in matching + losses, tf.data throughput on a small synthetic dataset in the real on-disk format,
and the peak RSS; each with its target and pass/fail.

The model, optimizer and jitted steps are the training code's own (state_lib.build_model,
train_step.make_optimizer / jit_train_step / jit_eval_step); inputs are random with the real shapes and
masks (videos of 2/3 to all of max_clips clips, 1 to 3 windows).
"""

from __future__ import annotations

import argparse
import collections
import copy
import glob
import gzip
import importlib.util
import json
import os
import re
import resource
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lmr_jax.data import dataset
from lmr_jax.data import features as features_lib
from lmr_jax.errors import ConfigError
from lmr_jax.data import pipeline
from lmr_jax.data import synthetic
from lmr_jax.losses import losses
from lmr_jax.training import train_step as train_step_lib
from lmr_jax.training import state as state_lib

QVH_TRAIN_QUERIES = 7218

# (key, label, unit, target as (comparison, bound) or None, public PyTorch QD-DETR on the same 2-core CPU)
ROWS = (
    ("compile_s", "train step compile time (lower + compile)", "s", None, None),
    ("step_s", "train step time (median)", "s", ("<=", 0.5), 1.38),
    ("samples_per_s", "train samples/s", "1/s", None, 23.0),
    ("schedule_h", "full schedule (train queries x epochs)", "h", None, 17.0),
    ("step_gflop", "train step FLOPs (XLA cost analysis)", "GFLOP", None, None),
    ("step_gflops", "train step achieved GFLOP/s", "GFLOP/s", None, None),
    ("matmul_gflops", "fp32 matmul GFLOP/s (practical peak)", "GFLOP/s", None, None),
    ("peak_fraction", "train step share of matmul peak", "%", (">=", 50.0), None),
    ("loss_share", "matching + losses share of a step", "%", ("<", 10.0), None),
    ("infer_b1_ms", "inference latency, batch 1", "ms/query", ("<=", 5.0), 40.0),
    ("infer_b32_ms", "inference latency, batch 32", "ms/query", None, 9.8),
    ("data_batches_per_s", "tf.data train batches/s (real format)", "1/s", None, None),
    ("data_ratio", "tf.data rate / train step rate", "x", (">=", 5.0), None),
    ("peak_rss_gb", "peak RSS (train + inference, before the tf.data test)", "GB", ("<", 3.0), 1.4),
)


def load_config(spec: str) -> ml_collections.ConfigDict:
  """``path/to/config.py[:arg]`` -> ``get_config(arg)``, as ml_collections' config_flags reads it."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("benchmark_config", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except ModuleNotFoundError as e:  # the configs import their siblings as ``configs.base``
    raise ConfigError(
        f"{path}: cannot import {e.name!r}; run the benchmark from the repository root"
    ) from None
  return module.get_config(arg)


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


def median_seconds(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmul_gflops(size: int, repeats: int = 5) -> float:
  a_NxN = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready(matmul(a_NxN, a_NxN))
  return 2 * size**3 / median_seconds(lambda: matmul(a_NxN, a_NxN), repeats) / 1e9


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


def data_throughput(source, batch_size: int, num_batches: int) -> float:
  """Batches/s of the training pipeline after its first batch (epochs are rebuilt as in training)."""
  batches = pipeline.train_batches(source, batch_size, seed=0)
  next(batches)
  start = time.perf_counter()
  for _ in range(num_batches):
    next(batches)
  return num_batches / (time.perf_counter() - start)


_HLO_OP = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) .*?op_name="([^"]*)"', re.M)


def profile_ops(compiled, state, batch, key, trace_dir: str, steps: int = 2, top: int = 25):
  """Traces ``steps`` calls of the compiled train step with jax.profiler and ranks its ops by time.

  Returns (state, rows): each row is (ms per step, op, output shape, the jaxpr scope it computes:
  Flax module path and primitive, "transpose(jvp(...))" for the backward pass). The scope comes from
  the compiled HLO's metadata; ops the trace names differently (another backend) keep an empty one.
  Times are summed over the runtime's threads.
  """
  import jax.profiler  # noqa: PLC0415 - only the profiling run needs it

  jax.block_until_ready(state)
  jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
  for _ in range(steps):
    state, metrics = compiled(state, batch, key)
  jax.block_until_ready((state, metrics))
  jax.profiler.stop_trace()
  traces = sorted(glob.glob(os.path.join(trace_dir, "**", "*.json.gz"), recursive=True))
  with gzip.open(traces[-1]) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  scopes = {m[1]: (m[2], m[3]) for m in _HLO_OP.finditer(compiled.as_text())}
  micros = collections.Counter()
  for event in events:
    if event.get("ph") == "X" and event.get("name") in scopes:
      micros[event["name"]] += event.get("dur", 0)
  rows = []
  for name, total in micros.most_common(top):
    shape, scope = scopes[name]
    rows.append((total / 1e3 / steps, name, shape, scope.replace("jit(train_step)/", "")))
  return state, rows


def format_profile(rows) -> str:
  lines = ["| ms/step | op | shape | computes |", "|---|---|---|---|"]
  lines += [f"| {ms:.1f} | {op} | {shape} | {scope} |" for ms, op, shape, scope in rows]
  return "\n".join(lines)


def run_benchmark(
    config: ml_collections.ConfigDict,
    *,
    batch_size: int | None = None,
    steps: int = 10,
    warmup: int = 2,
    train_queries: int = QVH_TRAIN_QUERIES,
    data_queries: int = 128,
    data_batches: int = 16,
    matmul_size: int = 2048,
    profile_dir: str = "",
) -> tuple[dict[str, float], list]:
  """Measures every figure of ``ROWS``; returns them by key, and with ``profile_dir`` the train
  step's ops ranked by time (``profile_ops``; empty otherwise).

  Long because the order of the measurements is part of what they mean (the peak RSS is read after
  training and inference and before the dataset is written), and one function shows that order."""
  batch_size = batch_size or config.batch_size
  rng = np.random.default_rng(0)
  results = {}

  batch = random_batch(config, batch_size, rng)
  model = state_lib.build_model(config)
  total_steps = config.num_epochs * (train_queries // batch_size)
  tx, _ = train_step_lib.make_optimizer(config.optim, total_steps)
  state = state_lib.init_state(config, model, tx, batch)
  batch = jax.device_put(batch)
  key = jax.random.key(config.seed + 1)

  start = time.perf_counter()
  compiled = (
      train_step_lib.jit_train_step(model, tx, config.loss).lower(state, batch, key).compile()
  )
  results["compile_s"] = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  results["step_gflop"] = cost["flops"] / 1e9

  for _ in range(warmup):
    state, _ = compiled(state, batch, key)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch, key)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  results["step_s"] = step_s
  results["samples_per_s"] = batch_size / step_s
  results["schedule_h"] = total_steps * step_s / 3600
  results["step_gflops"] = results["step_gflop"] / step_s
  results["matmul_gflops"] = matmul_gflops(matmul_size)
  results["peak_fraction"] = 100 * results["step_gflops"] / results["matmul_gflops"]
  profile = []
  if profile_dir:
    state, profile = profile_ops(compiled, state, batch, key, profile_dir)

  # Matching + losses: their forward and backward w.r.t. fixed model outputs, as in the step.
  outputs = jax.jit(lambda p, b, k: model.apply({"params": p}, b, train=True, rngs={"dropout": k}))(
      state.params, batch, key
  )
  loss_grad = jax.jit(jax.value_and_grad(lambda o, b: losses.total_loss(o, b, config.loss)[0]))
  jax.block_until_ready(loss_grad(outputs, batch))
  results["loss_share"] = 100 * median_seconds(lambda: loss_grad(outputs, batch), steps) / step_s

  predict = train_step_lib.jit_eval_step(model)
  for size in (1, 32):
    eval_batch = jax.device_put(random_batch(config, size, rng))
    jax.block_until_ready(predict(state.params, eval_batch))
    seconds = median_seconds(lambda: predict(state.params, eval_batch), max(steps, 5))
    results[f"infer_b{size}_ms"] = 1e3 * seconds / size

  # Before the dataset is written and preloaded: the footprint of training and inference themselves.
  results["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9

  with tempfile.TemporaryDirectory(prefix="lmr_benchmark_") as out_dir:
    source = synthetic_source(config, data_queries, out_dir)
    spec = source.element_spec()
    shapes = {k: v.shape[1:] for k, v in random_batch(config, 1, rng).items()}
    if shapes != {k: shape for k, (shape, _) in spec.items()}:
      raise AssertionError(f"benchmark batch {shapes} differs from the pipeline's {spec}")
    rate = data_throughput(source, min(batch_size, len(source)), data_batches)
  results["data_batches_per_s"] = rate
  results["data_ratio"] = rate * step_s
  return results, profile


def passes(key: str, value: float) -> bool | None:
  target = {row[0]: row[3] for row in ROWS}[key]
  if target is None:
    return None
  op, bound = target
  return {"<=": value <= bound, "<": value < bound, ">=": value >= bound}[op]


def format_table(results: dict[str, float]) -> str:
  lines = [
      "| figure | measured | target | QD-DETR (PyTorch) | pass |",
      "|---|---|---|---|---|",
  ]
  for key, label, unit, target, reference in ROWS:
    ok = passes(key, results[key])
    lines.append(
        f"| {label} | {results[key]:.3g} {unit} "
        f"| {f'{target[0]} {target[1]:g} {unit}' if target else ''} "
        f"| {f'{reference:g} {unit}' if reference is not None else ''} "
        f"| {'' if ok is None else ('pass' if ok else 'FAIL')} |"
    )
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/qvh.py", help="config file[:arg]")
  parser.add_argument("--batch_size", type=int, default=0, help="0: the config's")
  parser.add_argument("--steps", type=int, default=10, help="timed train steps (median)")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument(
      "--train_queries",
      type=int,
      default=QVH_TRAIN_QUERIES,
      help="queries per epoch, for the schedule's hours",
  )
  parser.add_argument("--data_queries", type=int, default=128, help="size of the tf.data dataset")
  parser.add_argument("--matmul_size", type=int, default=2048)
  parser.add_argument("--json", default="", help="also write the figures here")
  parser.add_argument(
      "--profile_dir",
      default="",
      help="also trace 2 train steps with jax.profiler here (Perfetto/TensorBoard) and print the "
      "slowest ops with the model code they compute",
  )
  args = parser.parse_args(argv)
  config = load_config(args.config)
  results, profile = run_benchmark(
      config,
      batch_size=args.batch_size or None,
      steps=args.steps,
      warmup=args.warmup,
      train_queries=args.train_queries,
      data_queries=args.data_queries,
      matmul_size=args.matmul_size,
      profile_dir=args.profile_dir,
  )
  print(
      f"{args.config}, batch {args.batch_size or config.batch_size}, {jax.devices()[0].device_kind}"
  )
  print(format_table(results))
  if profile:
    print(f"\nSlowest ops of the train step (trace in {args.profile_dir}):")
    print(format_profile(profile))
  if args.json:
    record = {
        "config": args.config,
        "batch_size": args.batch_size or config.batch_size,
        "device": jax.devices()[0].device_kind,
        "figures": results,
        "pass": {row[0]: passes(row[0], results[row[0]]) for row in ROWS},
    }
    with open(args.json, "w") as f:
      json.dump(record, f, indent=1)


if __name__ == "__main__":
  sys.exit(main())
