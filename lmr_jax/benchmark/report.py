"""Every figure measured in order (``run_benchmark``) and the report: one table row per figure with
its target."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from lmr_jax.benchmark import devices, feeding, inputs, roofline, timing
from lmr_jax.benchmark import profile as profile_lib
from lmr_jax.benchmark.roofline import DTYPES, MATMUL_KEYS, QVH_TRAIN_QUERIES, SCHEDULES
from lmr_jax.training import state as state_lib
from lmr_jax.training import train_step as train_step_lib

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
  batch = inputs.random_batch(config, batch_size, rng)
  model = state_lib.build_model(config)
  config_steps = config.num_epochs * (train_queries // batch_size)
  tx, _ = train_step_lib.make_optimizer(config.optim, config_steps)
  state = state_lib.init_state(config, model, tx, batch)
  batch = jax.device_put(batch)
  key = jax.random.key(config.seed + 1)

  compiled, compile_s, flops, bytes_accessed = timing.compile_step(
      config, tx, state, batch, key=key
  )
  state, step_s = timing.time_step(compiled, state, batch, key, warmup=warmup, steps=steps)
  steps_by_dtype = {config_dtype: timing.StepCost(step_s, flops, bytes_accessed)}
  results = {"compile_s": compile_s, "step_s": step_s, "samples_per_s": batch_size / step_s}
  results["step_gflop"] = flops / 1e9
  results["step_gbyte"] = None if bytes_accessed is None else bytes_accessed / 1e9
  results["intensity"] = None if not bytes_accessed else flops / bytes_accessed
  results["step_gflops"] = results["step_gflop"] / step_s
  profile = []
  if profile_dir:
    state, profile = profile_lib.profile_ops(compiled, state, batch, key, trace_dir=profile_dir)
  results["loss_share"] = (
      100 * timing.loss_seconds(model, config, state.params, batch, key=key, repeats=steps) / step_s
  )
  results.update(timing.inference_figures(model, config, state.params, rng, repeats=steps))
  # Before the other dtypes and the dataset: the footprint of training and inference themselves.
  results.update(timing.memory_figures())

  for dtype in dtypes:
    if dtype not in steps_by_dtype:
      state, steps_by_dtype[dtype] = timing.dtype_step(
          config, dtype, tx, state, batch=batch, key=key, warmup=warmup, steps=steps
      )
  size = matmul_size or devices.default_matmul_size()
  matmul = {d: devices.matmul_gflops(size, dtype=d) for d in DTYPES if d in steps_by_dtype}
  results.update({MATMUL_KEYS[d]: matmul.get(d) for d in DTYPES})
  results.update(roofline.peak_figures(steps_by_dtype, matmul, config_dtype))
  results.update(roofline.schedule_figures(step_s, results["roofline_s"], config_steps))
  results.update(
      feeding.feeding_figures(
          config, batch_size, step_s, rng, data_queries=data_queries, batches=data_batches
      )
  )
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
