"""Every figure measured in order (``run_benchmark``) and the report: one table row per figure with
its target."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import jax
import ml_collections
import numpy as np

from lmr_jax import fileio
from lmr_jax.benchmark import devices, feeding, qd_detr_pytorch, roofline, timing
from lmr_jax.benchmark import profile as profile_lib
from lmr_jax.benchmark.roofline import DTYPES, MATMUL_KEYS, QVH_TRAIN_QUERIES, SCHEDULES
from lmr_jax.errors import LmrError
from lmr_jax.fileio import load_config

# The Charades-STA rows multiply by this run's step: at QVH shapes unless the config is Charades'.
CHARADES_STEP = "QVH shapes unless --config=configs/charades.py"


# (key, label, unit, target as (comparison, bound) or None). A figure is None where it does not apply
# (a dtype not timed, no datasheet entry, no --compare_config or --qd_detr_root).
ROWS = (
    ("compile_s", "train step compile time (lower + compile)", "s", None),
    ("step_s", "train step time (median, config dtype)", "s", ("<=", 0.5)),
    ("samples_per_s", "train samples/s", "1/s", None),
    ("step_gflop", "train step FLOPs (XLA cost analysis)", "GFLOP", None),
    ("step_gbyte", "train step bytes accessed (XLA cost analysis)", "GB", None),
    ("intensity", "arithmetic intensity (FLOPs / byte accessed)", "FLOP/B", None),
    ("step_gflops", "train step achieved GFLOP/s", "GFLOP/s", None),
    ("step_ratio", "train step / compare config's step (alternated, same run)", "x", ("<=", 1.3)),
    ("flop_ratio", "train step FLOPs / compare config's", "x", None),
    ("ratio_per_flop", "step ratio / FLOP ratio (time per FLOP vs compare config)", "x", None),
    ("torch_speedup", "PyTorch QD-DETR step / compare config's step", "x", (">=", 1.5)),
    ("matmul_gflops", "fp32 matmul GFLOP/s (practical peak)", "GFLOP/s", None),
    ("matmul_bf16_gflops", "bf16 matmul GFLOP/s (practical peak)", "GFLOP/s", None),
    ("peak_fraction", "train step share of matmul peak (config dtype)", "%", (">=", 45.0)),
    ("peak_tflops_float32", "fp32 peak (datasheet; else the fp32 matmul)", "TFLOP/s", None),
    ("peak_tflops_bfloat16", "bf16 peak (datasheet; else the bf16 matmul)", "TFLOP/s", None),
    ("bandwidth_tbps", "device memory bandwidth (datasheet)", "TB/s", None),
    ("step_s_float32", "train step time, float32 compute", "s", None),
    ("mfu_float32", "train step share of float32 device peak (MFU)", "%", None),
    ("step_s_bfloat16", "train step time, bf16 compute (fp32 params)", "s", None),
    ("mfu_bfloat16", "train step share of bf16 device peak (MFU)", "%", None),
    ("roofline_s", "roofline step time, config dtype: max(FLOPs/peak, bytes/BW)", "s", None),
    ("schedule_h", "full schedule (--train_queries x config epochs)", "h", None),
    ("qvh_h", f"{SCHEDULES['qvh'].describe()} x measured step", "h", None),
    ("qvh_roofline_h", f"{SCHEDULES['qvh'].describe()} x roofline step", "h", None),
    (
        "charades_h",
        f"{SCHEDULES['charades'].describe()} x measured step ({CHARADES_STEP})",
        "h",
        None,
    ),
    (
        "charades_roofline_h",
        f"{SCHEDULES['charades'].describe()} x roofline step ({CHARADES_STEP})",
        "h",
        None,
    ),
    ("loss_share", "matching + losses share of a step", "%", ("<", 10.0)),
    ("infer_b1_ms", "inference latency, batch 1", "ms/query", ("<=", 10.0)),
    ("infer_b32_ms", "inference latency, batch 32", "ms/query", None),
    ("data_batches_per_s", "tf.data train batches/s (real format)", "1/s", None),
    ("data_ratio", "tf.data rate / train step rate", "x", (">=", 5.0)),
    (
        "resident_batches_per_s",
        "device-resident batches/s (gathered on the device, epoch plans included)",
        "1/s",
        None,
    ),
    ("resident_vs_tf_data", "device-resident rate / tf.data rate", "x", (">=", 1.0)),
    ("rss_start_gb", "peak RSS before the model (interpreter and imports)", "GB", None),
    ("step_temp_gb", "train step's temporary buffers (XLA memory analysis)", "GB", None),
    (
        "peak_rss_gb",
        "peak RSS of training (state, compile, steps; config dtype)",
        "GB",
        ("<=", 2.5),
    ),
    ("peak_rss_infer_gb", "peak RSS after inference too (batch 1 and 32)", "GB", None),
    ("device_peak_gb", "device memory peak in use (memory_stats, after inference)", "GB", None),
)

# The same figure for the compare config (ours, same run) and public QD-DETR's PyTorch code
# (``qd_detr_pytorch``, its own process): the table's two last columns, also in the JSON.
COMPARED = {
    "step_s": ("compare_step_s", "torch_step_s"),
    "samples_per_s": ("compare_samples_per_s", "torch_samples_per_s"),
    "step_gflop": ("compare_step_gflop", None),
    "step_gflops": ("compare_step_gflops", None),
    "peak_fraction": ("compare_peak_fraction", None),
    "qvh_h": ("compare_qvh_h", "torch_qvh_h"),
    "infer_b1_ms": ("compare_infer_b1_ms", "torch_infer_b1_ms"),
    "infer_b32_ms": ("compare_infer_b32_ms", "torch_infer_b32_ms"),
    "peak_rss_gb": (None, "torch_peak_rss_gb"),
}
COMPARED_KEYS = tuple(k for pair in COMPARED.values() for k in pair if k)
FIGURE_KEYS = tuple(row[0] for row in ROWS) + COMPARED_KEYS  # every figure run_benchmark returns


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
    compare_config: str = "",
    qd_detr_root: str = "",
) -> tuple[dict[str, float | None], list]:
  """Measures every figure of ``ROWS`` and ``COMPARED`` (None where one does not apply); returns
  them by key, and with ``profile_dir`` the train step's ops ranked by time (``profile_ops``; empty
  otherwise). ``compare_config``: a config spec (``path.py[:arg]``) whose step is timed alternating
  with the config's; ``qd_detr_root``: a public QD-DETR checkout, whose step is timed on the compare
  config's batch (``qd_detr_pytorch``).

  Long because the order of the measurements is part of what they mean: the config's dtype first,
  its training peak RSS read right after its steps and again after its inference, before the compare
  config, the other ``dtypes`` and the dataset; public QD-DETR's PyTorch step last, in its own
  process."""
  rss_start = timing.memory_figures()["peak_rss_gb"]
  batch_size = batch_size or config.batch_size
  config_dtype = config.model.dtype
  rng = np.random.default_rng(0)
  config_steps = config.num_epochs * (train_queries // batch_size)
  model, tx, state, batch = timing.train_setup(config, batch_size, rng, config_steps)
  key = jax.random.key(config.seed + 1)

  compiled, compile_s, flops, bytes_accessed = timing.compile_step(
      config, tx, state, batch, key=key
  )
  state, step_s = timing.time_step(compiled, state, batch, key, warmup=warmup, steps=steps)
  rss = timing.memory_figures()  # the training process's footprint: state, compiled step, steps
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
  after_inference = timing.memory_figures()
  results["rss_start_gb"] = rss_start
  results["step_temp_gb"] = timing.temp_gbytes(compiled)
  results["peak_rss_gb"] = rss["peak_rss_gb"]
  results["peak_rss_infer_gb"] = after_inference["peak_rss_gb"]
  results["device_peak_gb"] = after_inference["device_peak_gb"]

  state, compared = _compared_figures(
      load_config(compare_config) if compare_config else None,
      (compiled, state, batch, flops),
      batch_size=batch_size,
      key=key,
      warmup=warmup,
      steps=steps,
  )
  results.update(compared)
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
  if results["compare_step_s"] is not None:
    results["compare_peak_fraction"] = (
        100 * results["compare_step_gflops"] / results[MATMUL_KEYS[config_dtype]]
    )
    results["compare_qvh_h"] = SCHEDULES["qvh"].steps * results["compare_step_s"] / 3600
  results.update(
      feeding.feeding_figures(
          config, batch_size, step_s, rng, data_queries=data_queries, batches=data_batches
      )
  )
  results.update(
      _torch_figures(
          qd_detr_root,
          compare_config or qd_detr_pytorch.QD_DETR_CONFIG,
          batch_size,
          results,
          steps=steps,
          warmup=warmup,
      )
  )
  return results, profile


def _compared_figures(compare_config, main, *, batch_size: int, key, warmup: int, steps: int):
  """(the config's state, figures): the compare config's step (timed alternating with the config's
  already compiled one, whose state it donates), FLOPs and inference, and the ratios; every figure
  None without a compare config."""
  keys = ("step_ratio", "flop_ratio", "ratio_per_flop") + tuple(
      k for k in COMPARED_KEYS if k.startswith("compare_")
  )
  compiled, state, batch, flops = main
  if compare_config is None:
    return state, dict.fromkeys(keys)
  rng = np.random.default_rng(0)  # the batch qd_detr_pytorch feeds public QD-DETR
  other_model, other_tx, other_state, other_batch = timing.train_setup(
      compare_config, batch_size, rng, 1000
  )
  other_compiled, _, other_flops, _ = timing.compile_step(
      compare_config, other_tx, other_state, other_batch, key=key
  )
  (state, other_state), (paired_s, other_s) = timing.time_steps_paired(
      [(compiled, state, batch), (other_compiled, other_state, other_batch)],
      key,
      warmup=warmup,
      steps=steps,
  )
  figures = dict.fromkeys(keys)
  figures.update(
      compare_step_s=other_s,
      compare_samples_per_s=batch_size / other_s,
      compare_step_gflop=other_flops / 1e9,
      compare_step_gflops=other_flops / 1e9 / other_s,
      step_ratio=paired_s / other_s,
      flop_ratio=flops / other_flops,
  )
  figures["ratio_per_flop"] = figures["step_ratio"] / figures["flop_ratio"]
  inference = timing.inference_figures(
      other_model, compare_config, other_state.params, rng, repeats=steps
  )
  figures.update({f"compare_{k}": v for k, v in inference.items()})
  return state, figures


def _torch_figures(
    qd_detr_root: str, config_spec: str, batch_size: int, results: dict, *, steps: int, warmup: int
):
  """Public QD-DETR's PyTorch figures (``qd_detr_pytorch`` in a child process, at ``config_spec``'s
  shapes) and its step against the compare config's; every key None without ``qd_detr_root``."""
  keys = ("torch_speedup",) + tuple(k for k in COMPARED_KEYS if k.startswith("torch_"))
  if not qd_detr_root:
    return dict.fromkeys(keys)
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "qd_detr_pytorch.json")
    command = [sys.executable, "-m", "lmr_jax.benchmark.qd_detr_pytorch"]
    command += [f"--qd_detr_root={qd_detr_root}", f"--config={config_spec}"]
    command += [f"--batch_size={batch_size}"]
    command += [f"--steps={steps}", f"--warmup={warmup}", f"--json={out}"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
      last = (done.stderr.strip().splitlines() or ["no output"])[-1]
      raise LmrError(f"--qd_detr_root={qd_detr_root}: public QD-DETR's step failed: {last}")
    torch = fileio.read_jsonl(out, what="qd_detr_pytorch's figures")[0][0]
  figures = dict.fromkeys(keys)
  figures.update({f"torch_{k}": torch[k] for k in ("step_s", "infer_b1_ms", "infer_b32_ms")})
  figures["torch_peak_rss_gb"] = torch["peak_rss_gb"]
  figures["torch_samples_per_s"] = batch_size / torch["step_s"]
  figures["torch_qvh_h"] = SCHEDULES["qvh"].steps * torch["step_s"] / 3600
  if results["compare_step_s"] is not None:
    figures["torch_speedup"] = torch["step_s"] / results["compare_step_s"]
  return figures


def passes(key: str, value: float | None) -> bool | None:
  target = {row[0]: row[3] for row in ROWS}[key]
  if target is None or value is None:
    return None
  op, bound = target
  return {"<=": value <= bound, "<": value < bound, ">=": value >= bound}[op]


def format_table(results: dict[str, float | None]) -> str:
  lines = [
      "| figure | measured | target | compare config (ours) | QD-DETR (PyTorch) | pass |",
      "|---|---|---|---|---|---|",
  ]
  show = lambda key, unit: (  # noqa: E731
      "" if key is None or results.get(key) is None else f"{results[key]:.3g} {unit}"
  )
  for key, label, unit, target in ROWS:
    value = results[key]
    ok = passes(key, value)
    compare_key, torch_key = COMPARED.get(key, (None, None))
    lines.append(
        f"| {label} | {'n/a' if value is None else f'{value:.3g} {unit}'} "
        f"| {f'{target[0]} {target[1]:g} {unit}' if target else ''} "
        f"| {show(compare_key, unit)} | {show(torch_key, unit)} "
        f"| {'' if ok is None else ('pass' if ok else 'FAIL')} |"
    )
  return "\n".join(lines)


def header(config_spec: str, batch_size: int, dtype: str, *, info: dict, compare: str = "") -> str:
  """One line: device kind, platform, device count, config, batch, compute dtype, peak source and
  the compare config."""
  count = info["device_count"]
  return (
      f"{info['device']} ({info['platform']}, {count} device{'s' if count != 1 else ''}, "
      f"benchmark on one), {config_spec}, batch {batch_size}, dtype {dtype}; peaks: "
      f"{info['peak_source']}; compare config: {compare or 'none'}"
  )
