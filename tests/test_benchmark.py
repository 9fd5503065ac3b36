"""`python -m lmr_jax.benchmark` at tiny shapes: every figure is measured, finite and positive."""

import json
import math
import os

from lmr_jax import benchmark

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def test_benchmark_reports_every_figure(tmp_path):
  config = benchmark.load_config(os.path.join(CONFIGS, "tiny.py"))
  results, profile = benchmark.run_benchmark(
      config,
      steps=2,
      warmup=1,
      data_queries=16,
      data_batches=3,
      matmul_size=128,
      profile_dir=str(tmp_path / "trace"),
  )
  keys = [row[0] for row in benchmark.ROWS]
  assert sorted(results) == sorted(keys)
  for key in keys:
    assert math.isfinite(results[key]) and results[key] > 0, (key, results[key])
  table = benchmark.format_table(results).splitlines()
  assert len(table) == 2 + len(keys)
  assert all(row[1] in line for row, line in zip(benchmark.ROWS, table[2:]))
  # The profile ranks the step's ops, slowest first, and names the model code each computes.
  assert 0 < len(profile) <= 25
  times = [ms for ms, _, _, _ in profile]
  assert times == sorted(times, reverse=True) and times[-1] > 0
  assert any("LMR" in scope and "transpose" in scope for _, _, _, scope in profile)  # backward ops
  assert len(benchmark.format_profile(profile).splitlines()) == 2 + len(profile)


def test_main_writes_json(tmp_path, monkeypatch):
  monkeypatch.setattr(
      benchmark,
      "run_benchmark",
      lambda config, **kwargs: ({row[0]: 0.25 for row in benchmark.ROWS}, []),
  )
  out = tmp_path / "bench.json"
  benchmark.main([f"--config={os.path.join(CONFIGS, 'tiny.py')}", f"--json={out}"])
  record = json.loads(out.read_text())
  assert set(record["figures"]) == {row[0] for row in benchmark.ROWS}
  assert record["pass"]["step_s"] is True  # 0.25 s <= 0.5 s
  assert record["pass"]["peak_fraction"] is False  # 0.25 % < 50 %
  assert record["pass"]["compile_s"] is None  # no target
