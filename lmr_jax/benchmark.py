r"""Speed benchmark of LMR training and inference at a config's real shapes, on any device (#13).

  python -m lmr_jax.benchmark                              # configs/qvh.py: B32, 75 clips, captions
  python -m lmr_jax.benchmark --config=configs/tiny.py --steps=3 --json=/tmp/bench.json
  python -m lmr_jax.benchmark --dtypes=float32             # the step in fp32 only (+ config's)
  python -m lmr_jax.benchmark --profile_dir=/tmp/lmr_trace # + the step's slowest ops

Prints a header (device kind, platform, device count, config, batch, compute dtype, where the
peaks come from) and one markdown table: compile time, train step time and samples/s in the config's
dtype; the step's FLOPs and bytes accessed from XLA's cost analysis and their ratio (arithmetic
intensity); the GFLOP/s the step runs at against plain matmuls measured in the same run (fp32, bf16)
and against the device's datasheet peak (``DEVICE_PEAKS``; the measured matmuls where the device is
not listed, as the CPU); the step timed with ``model.dtype`` float32 and bfloat16 (params stay
float32), each with its share of peak (MFU); the roofline step time max(FLOPs / peak, bytes /
bandwidth); the hours of the config's schedule and of the papers' QVHighlights and Charades-STA
schedules at the measured and at the roofline step time; inference latency per query at batch 1 and
32; the share of a step spent in matching + losses; tf.data throughput on a small synthetic dataset
in the real on-disk format; the peak host RSS and, where the device reports it (GPU, TPU), its peak
memory in use. Each row with its target and pass/fail.

The model, optimizer and jitted steps are the training code's own (state_lib.build_model,
train_step.make_optimizer / jit_train_step / jit_eval_step); inputs are random with the real shapes
and masks (videos of 2/3 to all of max_clips clips, 1 to 3 windows). Everything runs on the default
device (``jax.devices()[0]``), timed to ``jax.block_until_ready``.
"""

from __future__ import annotations

import argparse
import collections
import copy
import glob
import gzip
import json
import os
import re
import resource
import statistics
import sys
import tempfile
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lmr_jax import cli
from lmr_jax.data import dataset
from lmr_jax.data import features as features_lib
from lmr_jax.data import pipeline
from lmr_jax.data import resident
from lmr_jax.data import synthetic
from lmr_jax.fileio import load_config
from lmr_jax.losses import losses
from lmr_jax.model import lmr as lmr_lib
from lmr_jax.training import state as state_lib
from lmr_jax.training import train_step as train_step_lib

DTYPES = lmr_lib.DTYPES  # ("float32", "bfloat16"): config.model.dtype, the matmuls' compute dtype
MATMUL_KEYS = {"float32": "matmul_gflops", "bfloat16": "matmul_bf16_gflops"}


class Schedule(NamedTuple):
  """A paper's training schedule: epochs of full batches over its train queries."""

  name: str
  train_queries: int
  batch_size: int
  epochs: int

  @property
  def steps(self) -> int:
    return self.epochs * (self.train_queries // self.batch_size)  # the remainder is dropped

  def describe(self) -> str:
    steps = self.train_queries // self.batch_size
    return f"{self.name} schedule ({self.epochs} epochs x {steps} steps, batch {self.batch_size})"


QVH_TRAIN_QUERIES = 7218
# The papers' schedules (LMR, QD-DETR): QVHighlights 200 epochs at batch 32; Charades-STA 100 epochs
# at batch 8 over its 12,404 train queries.
SCHEDULES = {
    "qvh": Schedule("QVHighlights", QVH_TRAIN_QUERIES, 32, 200),
    "charades": Schedule("Charades-STA", 12404, 8, 100),
}


class DevicePeak(NamedTuple):
  """One chip's datasheet peak: dense TFLOP/s (no structured sparsity) and memory TB/s."""

  name: str
  bf16: float
  f32: float | None  # exact float32 (CUDA cores); None: not a datasheet figure (TPU)
  # float32 matmuls at JAX's default precision: TF32 tensor cores on NVIDIA, one bf16 pass on TPU.
  f32_default: float
  hbm_tbps: float


# Matched in order against ``device_kind`` (first match wins; None: not listed, use the measured
# matmuls). NVIDIA's datasheets give tensor-core figures "with sparsity"; the dense ones are half.
DEVICE_PEAKS = (
    # Other parts under the same names, with other clocks and memory: measured instead.
    (r"H100 (PCIe|NVL)|H200 NVL", None),
    # NVIDIA H100 Tensor Core GPU datasheet, H100 SXM: FP32 67 TFLOPS, TF32 989*, BF16 1,979*
    # (*with sparsity), GPU memory bandwidth 3.35 TB/s.
    (r"H100", DevicePeak("NVIDIA H100 SXM", 989.0, 67.0, 494.5, 3.35)),
    # NVIDIA H200 datasheet, H200 SXM: the H100 SXM's FP32 67, TF32 989*, BF16 1,979*; 4.8 TB/s.
    (r"H200", DevicePeak("NVIDIA H200 SXM", 989.0, 67.0, 494.5, 4.8)),
    # NVIDIA A100 datasheet: FP32 19.5 TFLOPS, TF32 156, BF16 312 (dense); 80GB SXM 2,039 GB/s (the
    # 40GB and PCIe parts have the same compute, 1.6-1.9 TB/s).
    (r"A100", DevicePeak("NVIDIA A100 SXM 80GB", 312.0, 19.5, 156.0, 2.039)),
    # NVIDIA L4 datasheet: FP32 30.3 TFLOPS, TF32 120*, BF16 242* (*with sparsity); 300 GB/s.
    (r"\bL4\b", DevicePeak("NVIDIA L4", 121.0, 30.3, 60.0, 0.3)),
    # Google Cloud TPU system architecture pages, per chip: v4 275 bf16 TFLOPS, 1,200 GB/s HBM; v5e
    # 197, 819 GB/s; v5p 459, 2,765 GB/s. float32 matmuls run as one bf16 pass at default precision.
    (r"TPU v4", DevicePeak("TPU v4", 275.0, None, 275.0, 1.2)),
    (r"TPU v5 ?(lite|e)", DevicePeak("TPU v5e", 197.0, None, 197.0, 0.819)),
    (r"TPU v5p?\b", DevicePeak("TPU v5p", 459.0, None, 459.0, 2.765)),
)
# jax_default_matmul_precision values under which float32 matmuls take the fast path (TF32 / bf16).
FAST_F32_PRECISIONS = (None, "default", "fastest", "bfloat16", "tensorfloat32")

# The Charades-STA rows multiply by this run's step: at QVH shapes unless the config is Charades'.
CHARADES_STEP = "QVH shapes unless --config=configs/charades.py"

# (key, label, unit, target as (comparison, bound) or None, public PyTorch QD-DETR on the same
# 2-core CPU). A figure is None where it does not apply (a dtype not timed, no datasheet entry).
ROWS = (
    ("compile_s", "train step compile time (lower + compile)", "s", None, None),
    ("step_s", "train step time (median, config dtype)", "s", ("<=", 0.5), 1.38),
    ("samples_per_s", "train samples/s", "1/s", None, 23.0),
    ("step_gflop", "train step FLOPs (XLA cost analysis)", "GFLOP", None, None),
    ("step_gbyte", "train step bytes accessed (XLA cost analysis)", "GB", None, None),
    ("intensity", "arithmetic intensity (FLOPs / byte accessed)", "FLOP/B", None, None),
    ("step_gflops", "train step achieved GFLOP/s", "GFLOP/s", None, None),
    ("matmul_gflops", "fp32 matmul GFLOP/s (practical peak)", "GFLOP/s", None, None),
    ("matmul_bf16_gflops", "bf16 matmul GFLOP/s (practical peak)", "GFLOP/s", None, None),
    ("peak_fraction", "train step share of matmul peak (config dtype)", "%", (">=", 45.0), None),
    ("peak_tflops_float32", "fp32 peak (datasheet; else the fp32 matmul)", "TFLOP/s", None, None),
    ("peak_tflops_bfloat16", "bf16 peak (datasheet; else the bf16 matmul)", "TFLOP/s", None, None),
    ("bandwidth_tbps", "device memory bandwidth (datasheet)", "TB/s", None, None),
    ("step_s_float32", "train step time, float32 compute", "s", None, None),
    ("mfu_float32", "train step share of float32 device peak (MFU)", "%", None, None),
    ("step_s_bfloat16", "train step time, bf16 compute (fp32 params)", "s", None, None),
    ("mfu_bfloat16", "train step share of bf16 device peak (MFU)", "%", None, None),
    ("roofline_s", "roofline step time, config dtype: max(FLOPs/peak, bytes/BW)", "s", None, None),
    ("schedule_h", "full schedule (--train_queries x config epochs)", "h", None, 17.0),
    ("qvh_h", f"{SCHEDULES['qvh'].describe()} x measured step", "h", None, 17.0),
    ("qvh_roofline_h", f"{SCHEDULES['qvh'].describe()} x roofline step", "h", None, None),
    (
        "charades_h",
        f"{SCHEDULES['charades'].describe()} x measured step ({CHARADES_STEP})",
        "h",
        None,
        None,
    ),
    (
        "charades_roofline_h",
        f"{SCHEDULES['charades'].describe()} x roofline step ({CHARADES_STEP})",
        "h",
        None,
        None,
    ),
    ("loss_share", "matching + losses share of a step", "%", ("<", 10.0), None),
    ("infer_b1_ms", "inference latency, batch 1", "ms/query", ("<=", 5.0), 40.0),
    ("infer_b32_ms", "inference latency, batch 32", "ms/query", None, 9.8),
    ("data_batches_per_s", "tf.data train batches/s (real format)", "1/s", None, None),
    ("data_ratio", "tf.data rate / train step rate", "x", (">=", 5.0), None),
    (
        "resident_batches_per_s",
        "device-resident batches/s (gathered on the device, epoch plans included)",
        "1/s",
        None,
        None,
    ),
    ("resident_vs_tf_data", "device-resident rate / tf.data rate", "x", (">=", 1.0), None),
    (
        "peak_rss_gb",
        "peak RSS (train + inference in the config dtype, before other dtypes and tf.data)",
        "GB",
        ("<", 3.0),
        1.4,
    ),
    ("device_peak_gb", "device memory peak in use (memory_stats, at the RSS)", "GB", None, None),
)


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


def matmul_gflops(size: int, repeats: int = 5, dtype: str = "float32") -> float:
  """GFLOP/s of a (size x size) @ (size x size) matmul in ``dtype`` (median of ``repeats``)."""
  a_NxN = jax.random.normal(jax.random.key(0), (size, size), jnp.dtype(dtype))
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready(matmul(a_NxN, a_NxN))
  return 2 * size**3 / median_seconds(lambda: matmul(a_NxN, a_NxN), repeats) / 1e9


def default_matmul_size() -> int:
  """2048 on the CPU (~0.1 s a matmul); 8192 on accelerators, where a 2048 matmul takes tens of
  microseconds and the call's overhead would hide the peak."""
  return 2048 if jax.devices()[0].platform == "cpu" else 8192


def device_peak(device_kind: str) -> DevicePeak | None:
  """The datasheet peak of the chip ``device_kind`` names (``DEVICE_PEAKS``); None if not listed."""
  for pattern, peak in DEVICE_PEAKS:
    if re.search(pattern, device_kind):
      return peak
  return None


def datasheet_tflops(peak: DevicePeak | None, dtype: str) -> float | None:
  """``peak``'s TFLOP/s for matmuls in ``dtype`` at the current jax_default_matmul_precision."""
  if peak is None:
    return None
  if dtype == "bfloat16":
    return peak.bf16
  fast = jax.config.jax_default_matmul_precision in FAST_F32_PRECISIONS
  return peak.f32_default if fast else peak.f32


def device_info() -> dict[str, str | int]:
  """The default device (the benchmark's), the device count and where the peaks come from."""
  device = jax.devices()[0]
  peak = device_peak(device.device_kind)
  return {
      "device": device.device_kind,
      "platform": device.platform,
      "device_count": jax.device_count(),
      "peak_source": f"datasheet: {peak.name}" if peak else "matmuls measured in this run",
  }


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


def resident_throughput(source, batch_size: int, num_batches: int) -> float:
  """Batches/s of the device-resident feed (``config.data.device_resident``): the tables put on the
  device once (not timed), then per batch its gather on the device, and per epoch the host's plan
  (example indices and labels) and its transfer, as training does them."""
  spec = source.spec
  tables = jax.device_put(resident.build_tables(source))
  gather = jax.jit(
      lambda tables, plan, step: resident.gather_batch(
          tables, jax.tree.map(lambda x: x[step], plan), spec.max_clips, spec.max_query_tokens
      )
  )
  steps_per_epoch = len(source) // batch_size

  def plan(epoch):
    return jax.device_put(resident.epoch_plan(source, batch_size, 0, epoch))

  jax.block_until_ready(gather(tables, plan(0), 0))  # compiles
  start = time.perf_counter()
  for i in range(num_batches):
    epoch, step = divmod(i, steps_per_epoch)
    if step == 0:
      epoch_plan = plan(epoch)
    jax.block_until_ready(gather(tables, epoch_plan, step))
  return num_batches / (time.perf_counter() - start)


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


class StepCost(NamedTuple):
  """A compiled train step's median time and its cost from XLA's cost analysis."""

  seconds: float
  flops: float
  bytes: float | None  # None where the backend's cost analysis has no "bytes accessed"


def compile_step(config, tx, state, batch, key):
  """The config's train step, lowered and compiled: (compiled, compile seconds, flops, bytes)."""
  model = state_lib.build_model(config)
  start = time.perf_counter()
  compiled = (
      train_step_lib.jit_train_step(model, tx, config.loss).lower(state, batch, key).compile()
  )
  seconds = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return compiled, seconds, cost["flops"], cost.get("bytes accessed")


def time_step(compiled, state, batch, key, warmup: int, steps: int):
  """(state, median seconds of ``steps`` calls after ``warmup``); the state is donated each call."""
  for _ in range(warmup):
    state, _ = compiled(state, batch, key)
  jax.block_until_ready(state)  # the warmup's dispatched work is not part of the first timed step
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch, key)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  return state, statistics.median(times)


def dtype_step(config, dtype: str, tx, state, batch, key, warmup: int, steps: int):
  """The train step with ``config.model.dtype = dtype`` (same params, state): (state, StepCost)."""
  config = copy.deepcopy(config)
  config.model.dtype = dtype
  compiled, _, flops, bytes_accessed = compile_step(config, tx, state, batch, key)
  state, seconds = time_step(compiled, state, batch, key, warmup, steps)
  return state, StepCost(seconds, flops, bytes_accessed)


def loss_seconds(model, config, params, batch, key, repeats: int) -> float:
  """Matching + losses: their forward and backward w.r.t. fixed model outputs, as in the step."""
  outputs = jax.jit(lambda p, b, k: model.apply({"params": p}, b, train=True, rngs={"dropout": k}))(
      params, batch, key
  )
  loss_grad = jax.jit(jax.value_and_grad(lambda o, b: losses.total_loss(o, b, config.loss)[0]))
  jax.block_until_ready(loss_grad(outputs, batch))
  return median_seconds(lambda: loss_grad(outputs, batch), repeats)


def inference_figures(model, config, params, rng, repeats: int) -> dict[str, float]:
  """Milliseconds per query of the jitted eval step at batch 1 and 32."""
  predict = train_step_lib.jit_eval_step(model)
  results = {}
  for size in (1, 32):
    eval_batch = jax.device_put(random_batch(config, size, rng))
    jax.block_until_ready(predict(params, eval_batch))
    seconds = median_seconds(lambda: predict(params, eval_batch), max(repeats, 5))
    results[f"infer_b{size}_ms"] = 1e3 * seconds / size
  return results


def memory_figures() -> dict[str, float | None]:
  """Peak host RSS (Linux: ru_maxrss in KiB) and the default device's peak bytes in use where its
  backend reports them (GPU, TPU; None on the CPU)."""
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return {
      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
      "device_peak_gb": None if peak is None else peak / 1e9,
  }


def feeding_figures(config, batch_size: int, step_s: float, rng, data_queries: int, batches: int):
  """The input pipelines' rates next to the train step's, over one small dataset in the real on-disk
  format: tf.data (host) and the device-resident feed."""
  with tempfile.TemporaryDirectory(prefix="lmr_benchmark_") as out_dir:
    source = synthetic_source(config, data_queries, out_dir)
    spec = source.element_spec()
    shapes = {k: v.shape[1:] for k, v in random_batch(config, 1, rng).items()}
    if shapes != {k: shape for k, (shape, _) in spec.items()}:
      raise AssertionError(f"benchmark batch {shapes} differs from the pipeline's {spec}")
    rate = data_throughput(source, min(batch_size, len(source)), batches)
    resident_rate = resident_throughput(source, min(batch_size, len(source)), batches)
  return {
      "data_batches_per_s": rate,
      "data_ratio": rate * step_s,
      "resident_batches_per_s": resident_rate,
      "resident_vs_tf_data": resident_rate / rate,
  }


def roofline_seconds(flops: float, bytes_accessed, peak_tflops: float, bandwidth_tbps) -> float:
  """max(FLOPs / peak, bytes / bandwidth); FLOPs / peak alone where either byte figure is None."""
  seconds = flops / (peak_tflops * 1e12)
  if bytes_accessed is None or bandwidth_tbps is None:
    return seconds
  return max(seconds, bytes_accessed / (bandwidth_tbps * 1e12))


def peak_figures(steps_by_dtype: dict, matmul: dict, config_dtype: str) -> dict:
  """Device peaks per dtype (datasheet, else the measured matmul), each timed dtype's step and share
  of its peak (MFU), the config dtype's roofline step time and its share of the measured matmul."""
  sheet = device_peak(jax.devices()[0].device_kind)
  results = {"bandwidth_tbps": sheet.hbm_tbps if sheet else None}
  for dtype in DTYPES:
    measured = matmul.get(dtype)
    peak = datasheet_tflops(sheet, dtype) or (measured / 1e3 if measured else None)
    step = steps_by_dtype.get(dtype)
    results[f"peak_tflops_{dtype}"] = peak
    results[f"step_s_{dtype}"] = step.seconds if step else None
    results[f"mfu_{dtype}"] = (
        100 * step.flops / step.seconds / 1e12 / peak if step and peak else None
    )
  step = steps_by_dtype[config_dtype]
  results["roofline_s"] = roofline_seconds(
      step.flops, step.bytes, results[f"peak_tflops_{config_dtype}"], results["bandwidth_tbps"]
  )
  results["peak_fraction"] = 100 * step.flops / step.seconds / 1e9 / matmul[config_dtype]
  return results


def schedule_figures(step_s: float, roofline_s: float, config_steps: int) -> dict[str, float]:
  """Hours of the config's schedule and of the papers' (``SCHEDULES``): steps x step time."""
  results = {"schedule_h": config_steps * step_s / 3600}
  for key, schedule in SCHEDULES.items():
    results[f"{key}_h"] = schedule.steps * step_s / 3600
    results[f"{key}_roofline_h"] = schedule.steps * roofline_s / 3600
  return results


def run_benchmark(
    config: ml_collections.ConfigDict,
    *,
    batch_size: int | None = None,
    steps: int = 10,
    warmup: int = 2,
    train_queries: int = QVH_TRAIN_QUERIES,
    data_queries: int = 128,
    data_batches: int = 16,
    matmul_size: int = 0,
    profile_dir: str = "",
    dtypes: tuple[str, ...] = DTYPES,
) -> tuple[dict[str, float | None], list]:
  """Measures every figure of ``ROWS`` (None where one does not apply); returns them by key, and
  with ``profile_dir`` the train step's ops ranked by time (``profile_ops``; empty otherwise).

  The order of the measurements is part of what they mean: the config's dtype first, its peak RSS
  read after its training and inference and before the other ``dtypes`` and the dataset."""
  batch_size = batch_size or config.batch_size
  config_dtype = config.model.dtype
  rng = np.random.default_rng(0)
  batch = random_batch(config, batch_size, rng)
  model = state_lib.build_model(config)
  config_steps = config.num_epochs * (train_queries // batch_size)
  tx, _ = train_step_lib.make_optimizer(config.optim, config_steps)
  state = state_lib.init_state(config, model, tx, batch)
  batch = jax.device_put(batch)
  key = jax.random.key(config.seed + 1)

  compiled, compile_s, flops, bytes_accessed = compile_step(config, tx, state, batch, key)
  state, step_s = time_step(compiled, state, batch, key, warmup, steps)
  steps_by_dtype = {config_dtype: StepCost(step_s, flops, bytes_accessed)}
  results = {"compile_s": compile_s, "step_s": step_s, "samples_per_s": batch_size / step_s}
  results["step_gflop"] = flops / 1e9
  results["step_gbyte"] = None if bytes_accessed is None else bytes_accessed / 1e9
  results["intensity"] = None if not bytes_accessed else flops / bytes_accessed
  results["step_gflops"] = results["step_gflop"] / step_s
  profile = []
  if profile_dir:
    state, profile = profile_ops(compiled, state, batch, key, profile_dir)
  results["loss_share"] = (
      100 * loss_seconds(model, config, state.params, batch, key, steps) / step_s
  )
  results.update(inference_figures(model, config, state.params, rng, steps))
  # Before the other dtypes and the dataset: the footprint of training and inference themselves.
  results.update(memory_figures())

  for dtype in dtypes:
    if dtype not in steps_by_dtype:
      state, steps_by_dtype[dtype] = dtype_step(config, dtype, tx, state, batch, key, warmup, steps)
  size = matmul_size or default_matmul_size()
  matmul = {d: matmul_gflops(size, dtype=d) for d in DTYPES if d in steps_by_dtype}
  results.update({MATMUL_KEYS[d]: matmul.get(d) for d in DTYPES})
  results.update(peak_figures(steps_by_dtype, matmul, config_dtype))
  results.update(schedule_figures(step_s, results["roofline_s"], config_steps))
  results.update(feeding_figures(config, batch_size, step_s, rng, data_queries, data_batches))
  return results, profile


def passes(key: str, value: float | None) -> bool | None:
  target = {row[0]: row[3] for row in ROWS}[key]
  if target is None or value is None:
    return None
  op, bound = target
  return {"<=": value <= bound, "<": value < bound, ">=": value >= bound}[op]


def format_table(results: dict[str, float | None]) -> str:
  lines = [
      "| figure | measured | target | QD-DETR (PyTorch) | pass |",
      "|---|---|---|---|---|",
  ]
  for key, label, unit, target, reference in ROWS:
    value = results[key]
    ok = passes(key, value)
    lines.append(
        f"| {label} | {'n/a' if value is None else f'{value:.3g} {unit}'} "
        f"| {f'{target[0]} {target[1]:g} {unit}' if target else ''} "
        f"| {f'{reference:g} {unit}' if reference is not None else ''} "
        f"| {'' if ok is None else ('pass' if ok else 'FAIL')} |"
    )
  return "\n".join(lines)


def header(config_spec: str, batch_size: int, dtype: str, info: dict) -> str:
  """One line: device kind, platform, device count, config, batch, compute dtype, peak source."""
  count = info["device_count"]
  return (
      f"{info['device']} ({info['platform']}, {count} device{'s' if count != 1 else ''}, "
      f"benchmark on one), {config_spec}, batch {batch_size}, dtype {dtype}; peaks: "
      f"{info['peak_source']}"
  )


def parse_dtypes(spec: str) -> tuple[str, ...]:
  """``--dtypes``: comma-separated, each one of ``DTYPES``."""
  dtypes = tuple(d.strip() for d in spec.split(",") if d.strip())
  unknown = [d for d in dtypes if d not in DTYPES]
  if unknown:
    raise argparse.ArgumentTypeError(f"{unknown} not in {DTYPES}")
  return dtypes


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/qvh.py", help="config file[:arg]")
  parser.add_argument("--batch_size", type=int, default=0, help="0: the config's")
  parser.add_argument("--steps", type=int, default=10, help="timed train steps (median)")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument(
      "--train_queries",
      type=int,
      default=QVH_TRAIN_QUERIES,
      help="queries per epoch, for the config's schedule's hours",
  )
  parser.add_argument("--data_queries", type=int, default=128, help="size of the tf.data dataset")
  parser.add_argument(
      "--matmul_size", type=int, default=0, help="0: 2048 on the CPU, 8192 on GPU/TPU"
  )
  parser.add_argument(
      "--dtypes",
      default=",".join(DTYPES),
      type=parse_dtypes,
      help="compute dtypes to time the train step in (besides the config's model.dtype)",
  )
  parser.add_argument("--json", default="", help="also write the figures here")
  parser.add_argument(
      "--profile_dir",
      default="",
      help="also trace 2 train steps with jax.profiler here (Perfetto/TensorBoard) and print the "
      "slowest ops with the model code they compute",
  )
  return parser.parse_args(argv)


def main(argv=None) -> None:
  args = parse_args(argv)
  config = load_config(args.config)
  batch_size = args.batch_size or config.batch_size
  results, profile = run_benchmark(
      config,
      batch_size=batch_size,
      steps=args.steps,
      warmup=args.warmup,
      train_queries=args.train_queries,
      data_queries=args.data_queries,
      matmul_size=args.matmul_size,
      profile_dir=args.profile_dir,
      dtypes=args.dtypes,
  )
  info = device_info()
  print(header(args.config, batch_size, config.model.dtype, info))
  print(format_table(results))
  if profile:
    print(f"\nSlowest ops of the train step (trace in {args.profile_dir}):")
    print(format_profile(profile))
  if args.json:
    record = {
        "config": args.config,
        "batch_size": batch_size,
        **info,
        "dtype": config.model.dtype,
        "dtypes": list(args.dtypes),
        "figures": {row[0]: results[row[0]] for row in ROWS},
        "pass": {row[0]: passes(row[0], results[row[0]]) for row in ROWS},
    }
    with open(args.json, "w") as f:
      json.dump(record, f, indent=1)


if __name__ == "__main__":
  sys.exit(cli.exit_code(main, sys.argv))
