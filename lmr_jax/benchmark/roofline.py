"""Peaks, shares of peak (MFU), the roofline step time and the papers' schedules in hours."""

from __future__ import annotations

from typing import NamedTuple

import jax

from lmr_jax.benchmark import devices
from lmr_jax.model import lmr as lmr_lib

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


def roofline_seconds(flops: float, bytes_accessed, peak_tflops: float, bandwidth_tbps) -> float:
  """max(FLOPs / peak, bytes / bandwidth); FLOPs / peak alone where either byte figure is None."""
  seconds = flops / (peak_tflops * 1e12)
  if bytes_accessed is None or bandwidth_tbps is None:
    return seconds
  return max(seconds, bytes_accessed / (bandwidth_tbps * 1e12))


def peak_figures(steps_by_dtype: dict, matmul: dict, config_dtype: str) -> dict:
  """Device peaks per dtype (datasheet, else the measured matmul), each timed dtype's step and share
  of its peak (MFU), the config dtype's roofline step time and its share of the measured matmul."""
  sheet = devices.device_peak(jax.devices()[0].device_kind)
  results = {"bandwidth_tbps": sheet.hbm_tbps if sheet else None}
  for dtype in DTYPES:
    measured = matmul.get(dtype)
    peak = devices.datasheet_tflops(sheet, dtype) or (measured / 1e3 if measured else None)
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
