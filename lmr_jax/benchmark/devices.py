"""The device the benchmark runs on: its datasheet peak (``device_peaks.json``) and measured matmuls."""

from __future__ import annotations

import json
import os
import re
import statistics
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp


class DevicePeak(NamedTuple):
  """One chip's datasheet peak: dense TFLOP/s (no structured sparsity) and memory TB/s."""

  name: str
  bf16: float
  f32: float | None  # exact float32 (CUDA cores); None: not a datasheet figure (TPU)
  # float32 matmuls at JAX's default precision: TF32 tensor cores on NVIDIA, one bf16 pass on TPU.
  f32_default: float
  hbm_tbps: float


def load_device_peaks(path: str = os.path.join(os.path.dirname(__file__), "device_peaks.json")):
  """((pattern, DevicePeak or None), ...) in match order, from the datasheet file (its "source"
  fields name each figure's datasheet)."""
  with open(path) as f:
    entries = json.load(f)["peaks"]
  return tuple((e["pattern"], DevicePeak(**e["peak"]) if e["peak"] else None) for e in entries)


DEVICE_PEAKS = load_device_peaks()


# jax_default_matmul_precision values under which float32 matmuls take the fast path (TF32 / bf16).
FAST_F32_PRECISIONS = (None, "default", "fastest", "bfloat16", "tensorfloat32")


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
