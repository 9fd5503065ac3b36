"""`python -m lmr_jax.benchmark` at tiny shapes: every figure is measured, finite and positive, and
the derived ones (shares of peak, roofline, schedules) follow from the measured ones."""

import json
import math
import os

import jax
import pytest

from lmr_jax.benchmark import __main__ as benchmark_cli
from lmr_jax.benchmark import devices, qd_detr_pytorch, report, roofline
from lmr_jax.benchmark.profile import format_module_times, format_profile, module_times
from lmr_jax.fileio import load_config

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


# A stand-in for a public QD-DETR checkout: its ``qd_detr.model.build_model(args)`` interface, a tiny
# torch model and criterion (the real one is measured in docs/benchmark.md; tests never read ../shared).
FAKE_QD_DETR_MODEL = """
import torch

class Model(torch.nn.Module):
  def __init__(self, args):
    super().__init__()
    self.vid = torch.nn.Linear(args.v_feat_dim, args.hidden_dim)
    self.txt = torch.nn.Linear(args.t_feat_dim, args.hidden_dim)
    self.span = torch.nn.Linear(args.hidden_dim, 2)

  def forward(self, src_txt, src_txt_mask, src_vid, src_vid_mask):
    vid = (self.vid(src_vid) * src_vid_mask[..., None]).sum(1)
    txt = (self.txt(src_txt) * src_txt_mask[..., None]).sum(1)
    return {"pred_spans": self.span(vid + txt).sigmoid()}

class Criterion(torch.nn.Module):
  weight_dict = {"loss_span": 10.0}

  def forward(self, outputs, targets):
    spans = torch.stack([t["spans"][0] for t in targets["span_labels"]])
    assert targets["saliency_pos_labels"].dtype == torch.long
    return {"loss_span": (outputs["pred_spans"] - spans).abs().mean(), "class_error": 0.0}

def build_model(args):
  assert (args.v_feat_dim, args.t_feat_dim, args.max_v_l) == (24 + 16 + 2, 16, 24), args
  return Model(args), Criterion()
"""


@pytest.mark.slow
def test_benchmark_reports_every_figure(tmp_path):
  config = load_config(os.path.join(CONFIGS, "tiny.py"))
  assert config.model.dtype == "float32"
  checkout = tmp_path / "QD-DETR"
  (checkout / "qd_detr").mkdir(parents=True)
  (checkout / "qd_detr" / "__init__.py").write_text("")
  (checkout / "qd_detr" / "model.py").write_text(FAKE_QD_DETR_MODEL)
  results, profile = report.run_benchmark(
      config,
      steps=2,
      warmup=1,
      data_queries=16,
      data_batches=3,
      matmul_size=128,
      profile_dir=str(tmp_path / "trace"),
      dtypes=("float32", "bfloat16"),
      compare_config=os.path.join(CONFIGS, "tiny.py:use_caption_context,language_queries"),
      qd_detr_root=str(checkout),
  )
  keys = report.FIGURE_KEYS
  assert sorted(results) == sorted(keys)
  # The CPU has no datasheet entry (no bandwidth) and reports no device memory statistics.
  assert jax.devices()[0].platform == "cpu"
  not_applicable = {"bandwidth_tbps", "device_peak_gb"}
  assert all(results[key] is None for key in not_applicable)
  for key in set(keys) - not_applicable:
    assert math.isfinite(results[key]) and results[key] > 0, (key, results[key])
  table = report.format_table(results).splitlines()
  assert len(table) == 2 + len(report.ROWS)
  assert all(row[1] in line for row, line in zip(report.ROWS, table[2:]))
  assert "| device memory bandwidth (datasheet) | n/a |" in "\n".join(table)

  approx = lambda x: pytest.approx(x, rel=1e-9)  # noqa: E731
  assert results["intensity"] == approx(results["step_gflop"] / results["step_gbyte"])
  assert results["resident_vs_tf_data"] == approx(
      results["resident_batches_per_s"] / results["data_batches_per_s"]
  )
  # Both dtypes timed; the config's (float32) is the step of the rows above.
  assert results["step_s_float32"] == results["step_s"]
  # Unknown device: the peaks are the matmuls measured in this run, the roofline FLOPs / peak.
  assert results["peak_tflops_float32"] == approx(results["matmul_gflops"] / 1e3)
  assert results["peak_tflops_bfloat16"] == approx(results["matmul_bf16_gflops"] / 1e3)
  assert results["mfu_float32"] == approx(results["peak_fraction"])
  assert results["peak_fraction"] == approx(100 * results["step_gflops"] / results["matmul_gflops"])
  assert results["roofline_s"] == approx(
      results["step_gflop"] / results["peak_tflops_float32"] / 1e3
  )
  # Projections: steps x step time.
  for key, steps in (("qvh", 200 * (7218 // 32)), ("charades", 100 * (12404 // 8))):
    assert roofline.SCHEDULES[key].steps == steps
    assert results[f"{key}_h"] == approx(steps * results["step_s"] / 3600)
    assert results[f"{key}_roofline_h"] == approx(steps * results["roofline_s"] / 3600)
  assert results["schedule_h"] == approx(2 * (7218 // 4) * results["step_s"] / 3600)
  # The compare config (no captions: fewer FLOPs) and the PyTorch stand-in, against it.
  assert results["flop_ratio"] == approx(results["step_gflop"] / results["compare_step_gflop"])
  assert results["flop_ratio"] > 1
  assert results["ratio_per_flop"] == approx(results["step_ratio"] / results["flop_ratio"])
  assert results["torch_speedup"] == approx(results["torch_step_s"] / results["compare_step_s"])
  assert results["torch_qvh_h"] == approx(
      roofline.SCHEDULES["qvh"].steps * results["torch_step_s"] / 3600
  )
  assert results["peak_rss_infer_gb"] >= results["peak_rss_gb"]  # read later, the same process
  # read first (a peak so far: in a process that already ran other work, as under pytest, the same)
  assert 0 < results["rss_start_gb"] <= results["peak_rss_gb"]
  assert 0 < results["step_temp_gb"] < results["peak_rss_gb"]
  step_row = next(line for line in table if line.startswith("| train step time (median"))
  assert step_row.count(" s |") == 4  # measured, target, compare config, PyTorch

  # The profile ranks the step's ops, slowest first, and names the model code each computes.
  times = [ms for ms, _, _, _ in profile]
  assert len(profile) > 25 and times == sorted(times, reverse=True) and times[-1] >= 0
  assert any("LMR" in scope and "transpose" in scope for _, _, _, scope in profile)  # backward ops
  assert len(format_profile(profile).splitlines()) == 2 + 25
  # ... and sums them by model part and pass: every op counted once, the caption stream's input
  # projection in both passes, the attention's core apart from its projections.
  parts = {(part, direction): ms for part, direction, ms in module_times(profile)}
  assert sum(parts.values()) == approx(sum(times))
  assert parts[("caption_proj", "forward")] > 0 and parts[("caption_proj", "backward")] > 0
  assert ("LMR.encode/encoder_0/attend", "backward") in parts
  assert ("LMR.encode/encoder_0", "forward") in parts
  assert format_module_times(profile).splitlines()[-1].startswith(f"| {sum(times):.1f} | all ops")


@pytest.mark.parametrize(
    "kind, name, bf16, hbm_tbps",
    [
        ("NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM", 989, 3.35),
        ("NVIDIA H200", "NVIDIA H200 SXM", 989, 4.8),
        ("NVIDIA A100-SXM4-80GB", "NVIDIA A100 SXM 80GB", 312, 2.039),
        ("NVIDIA L4", "NVIDIA L4", 121, 0.3),
        ("TPU v4", "TPU v4", 275, 1.2),
        ("TPU v5 lite", "TPU v5e", 197, 0.819),
        ("TPU v5", "TPU v5p", 459, 2.765),
        ("TPU v5p", "TPU v5p", 459, 2.765),
    ],
)
def test_known_device_peaks(kind, name, bf16, hbm_tbps):
  peak = devices.device_peak(kind)
  assert (peak.name, peak.bf16, peak.hbm_tbps) == (name, bf16, hbm_tbps)
  assert devices.datasheet_tflops(peak, "bfloat16") == bf16


@pytest.mark.parametrize(
    "kind", ["cpu", "NVIDIA L40S", "NVIDIA H100 PCIe", "NVIDIA H200 NVL", "TPU v6 lite", "Tesla T4"]
)
def test_unknown_devices_have_no_peak(kind):
  assert devices.device_peak(kind) is None
  assert devices.datasheet_tflops(None, "float32") is None


def test_float32_peak_follows_the_matmul_precision():
  h100, tpu = devices.device_peak("NVIDIA H100 80GB HBM3"), devices.device_peak("TPU v4")
  assert devices.datasheet_tflops(h100, "float32") == 494.5  # TF32, JAX's default on GPUs
  assert devices.datasheet_tflops(tpu, "float32") == 275  # one bf16 pass, the TPU default
  with jax.default_matmul_precision("float32"):
    assert devices.datasheet_tflops(h100, "float32") == 67
    assert devices.datasheet_tflops(tpu, "float32") is None  # no datasheet figure: measured


def test_roofline_is_the_slower_of_compute_and_memory():
  assert roofline.roofline_seconds(2e12, 1e9, 1000, 2.0) == pytest.approx(2e-3)  # compute
  assert roofline.roofline_seconds(2e12, 1e11, 1000, 2.0) == pytest.approx(5e-2)  # memory
  assert roofline.roofline_seconds(2e12, 1e11, 1000, None) == pytest.approx(2e-3)  # no bandwidth


@pytest.mark.slow
def test_main_prints_the_device_and_writes_json(tmp_path, monkeypatch, capsys):
  calls = []

  def fake_run_benchmark(config, **kwargs):
    calls.append(kwargs)
    figures = dict.fromkeys(report.FIGURE_KEYS, 0.25)
    return dict(figures, bandwidth_tbps=None, mfu_bfloat16=None), []

  monkeypatch.setattr(report, "run_benchmark", fake_run_benchmark)
  out = tmp_path / "bench.json"
  tiny = os.path.join(CONFIGS, "tiny.py")
  benchmark_cli.main([f"--config={tiny}", f"--json={out}"])
  assert calls[-1]["dtypes"] == ("float32", "bfloat16")  # the default: both
  assert calls[-1]["compare_config"] == "configs/qvh.py:qd_detr"  # the default
  assert calls[-1]["qd_detr_root"] == ""
  header = capsys.readouterr().out.splitlines()[0]
  device = jax.devices()[0]
  for part in (device.device_kind, device.platform, f"{jax.device_count()} devices"):
    assert part in header
  assert f"{tiny}, batch 4, dtype float32" in header
  record = json.loads(out.read_text())
  assert set(record["figures"]) == set(report.FIGURE_KEYS)
  assert record["compare_config"] == "configs/qvh.py:qd_detr"
  assert record["figures"]["bandwidth_tbps"] is None
  assert (record["device"], record["platform"]) == (device.device_kind, device.platform)
  assert (record["device_count"], record["dtype"]) == (jax.device_count(), "float32")
  assert record["dtypes"] == ["float32", "bfloat16"]
  assert record["pass"]["step_s"] is True  # 0.25 s <= 0.5 s
  assert record["pass"]["peak_fraction"] is False  # 0.25 % < 45 %
  assert record["pass"]["compile_s"] is None  # no target

  benchmark_cli.main([f"--config={tiny}", "--dtypes=bfloat16", "--batch_size=2"])
  assert calls[-1]["dtypes"] == ("bfloat16",) and calls[-1]["batch_size"] == 2
  benchmark_cli.main([f"--config={tiny}", f"--compare_config={tiny}", "--qd_detr_root=/q"])
  assert calls[-1]["compare_config"] == "" and calls[-1]["qd_detr_root"] == "/q"  # itself: none
  assert benchmark_cli.main([f"--config={tiny}", "--dtypes=float16"]) == 2


def test_qd_detr_pytorch_needs_a_checkout(tmp_path, capsys):
  """Without qd_detr/model.py under --qd_detr_root: one line, before torch is imported."""
  assert qd_detr_pytorch.main([f"--qd_detr_root={tmp_path}"]) == 1
  err = capsys.readouterr().err.strip()
  assert (
      err == f"error: {tmp_path}: no qd_detr/model.py here; --qd_detr_root takes a QD-DETR checkout"
  )
