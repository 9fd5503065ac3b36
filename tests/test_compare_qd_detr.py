"""The QD-DETR comparison tool (lmr_jax/port/compare_qd_detr.py) without QD-DETR: how it runs a
checkout's scripts (a stand-in train.py here), what it refuses, and how it compares two submissions.
"""

import json
import os
import sys

import pytest

from lmr_jax.port import compare_qd_detr as compare

# A stand-in for QD-DETR's train.py: what the shims must give it, then its arguments and cwd.
FAKE_TRAIN = """\
import argparse, json, os, sys, torch
assert torch.zeros(2).cuda().device.type == "cpu"  # .cuda() is the identity on the CPU
if hasattr(torch.serialization, "get_safe_globals"):
  assert argparse.Namespace in torch.serialization.get_safe_globals()
import qd_detr  # the checkout is on the path
if "--fail" in sys.argv:
  raise SystemExit("no features here")
print(json.dumps({"argv": sys.argv, "cwd": os.getcwd()}))
"""


def _checkout(tmp_path):
  root = tmp_path / "QD-DETR"
  (root / "qd_detr").mkdir(parents=True)
  (root / "qd_detr" / "__init__.py").write_text("")
  (root / "qd_detr" / "train.py").write_text(FAKE_TRAIN)
  return str(root)


@pytest.mark.slow  # starts two Python processes that import torch
def test_runs_a_checkouts_train_py_with_the_shims(tmp_path):
  root = _checkout(tmp_path)
  log = str(tmp_path / "train.log")
  compare.run_qd_detr(root, sys.executable, ["--seed", "3"], log)
  with open(log) as f:
    ran = json.loads(f.read().strip().splitlines()[-1])
  assert ran["argv"] == ["qd_detr/train.py", "--seed", "3"] and ran["cwd"] == root
  with pytest.raises(compare.CompareError, match=r"exit 1, .*train.log\): no features here"):
    compare.run_qd_detr(root, sys.executable, ["--fail"], log)


def test_refuses_what_is_not_a_checkout_or_lacks_its_imports(tmp_path, capsys):
  with pytest.raises(compare.CompareError, match="no qd_detr/train.py here"):
    compare.check_checkout(str(tmp_path), sys.executable)
  root = _checkout(tmp_path)
  fake_python = tmp_path / "python"  # a Python without QD-DETR's imports
  fake_python.write_text(
      "#!/bin/sh\nexec " + sys.executable + " -c \"print('easydict sklearn')\"\n"
  )
  fake_python.chmod(0o755)
  with pytest.raises(compare.CompareError, match="pip install easydict scikit-learn"):
    compare.check_checkout(root, str(fake_python))
  assert compare.main(["--workdir", str(tmp_path / "w")]) == 2
  assert "--qd_detr_root and --workdir are required" in capsys.readouterr().err
  argv = ["--qd_detr_root", root, "--workdir", str(tmp_path / "w"), "--epochs", "3"]
  assert compare.main(argv) == 2
  assert "QD-DETR evaluates every 5 epochs" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "w")


def _record(qid, windows, saliency):
  return {
      "qid": qid,
      "query": "q",
      "vid": "v",
      "pred_relevant_windows": windows,
      "pred_saliency_scores": saliency,
  }


def _write(path, *records):
  path.write_text("\n".join(json.dumps(r) for r in records))
  return str(path)


def test_compares_submissions_and_metrics(tmp_path):
  theirs = _write(
      tmp_path / "theirs.jsonl",
      _record(1, [[0, 4, 0.9], [2, 6, 0.5]], [0.5, 0.25]),
      _record(2, [[0, 2, 0.8], [4, 8, 0.7]], [1.0, 0.0]),
  )
  ours = _write(
      tmp_path / "ours.jsonl",
      _record(2, [[0, 2, 0.8], [4, 8, 0.7001]], [1.0, 0.0]),
      _record(1, [[2, 6, 0.9], [0, 4, 0.5]], [0.5, 0.2578125]),
  )
  result = compare.compare_submissions(theirs, ours)
  assert result["same"] == {"windows": 1, "top1_window": 1, "scores": 1, "saliency": 1}
  assert result["max_abs_diff"]["score"] == pytest.approx(1e-4)
  assert result["max_abs_diff"]["saliency"] == pytest.approx(0.0078125)
  metrics = compare.compare_metrics({"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 2.5})
  assert metrics["b"] == {"qd_detr": 2.0, "ours": 2.5, "diff": 0.5}
  report = {"protocols": {p: {"metrics": metrics, "queries": result} for p in compare.PROTOCOLS}}
  table = compare.report_markdown(report)
  assert "| b | 2.00 | 2.50 | 2.50 |" in table and "windows equal 1 (top-1 1)" in table
  short = _write(tmp_path / "short.jsonl", _record(1, [[0, 4, 0.9]], [0.5]))
  with pytest.raises(compare.CompareError, match="not the queries of"):
    compare.compare_submissions(theirs, short)


def test_train_arguments_are_qd_detrs_qvhighlights_script_on_the_cpu():
  data = compare.Data("/d/features", "/d/train.jsonl", "/d/val.jsonl")
  args = compare.qd_detr_train_args(data, "/r", epochs=5, seed=2018)
  after = lambda flag: args[args.index(flag) + 1]  # noqa: E731
  assert (after("--device"), after("--n_epoch"), after("--bsz"), after("--seed")) == (
      "-1",
      "5",
      "32",
      "2018",
  )
  assert args[args.index("--v_feat_dirs") + 1 : args.index("--v_feat_dim")] == [
      "/d/features/slowfast_features",
      "/d/features/clip_features",
  ]
  assert after("--v_feat_dim") == "2816"  # + video_tef's 2 = QVHighlights' 2818


def test_disagreements_name_what_falls_short():
  queries = {"queries": 3, "same": {"windows": 3}, "max_abs_diff": {"score": 1e-4}}
  metrics = compare.compare_metrics({"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 2.005})
  assert compare.disagreements({"metrics": metrics, "queries": queries}, 0.01) == []
  queries = {"queries": 3, "same": {"windows": 2}, "max_abs_diff": {"score": 2e-4}}
  metrics = compare.compare_metrics({"a": 1.0, "b": 2.0}, {"a": 1.02})
  assert compare.disagreements({"metrics": metrics, "queries": queries}, 0.01) == [
      "a 1.02 against 1.0",
      "b None against 2.0",
      "windows differ in 1 queries",
      "a score differs by 0.0002",
  ]
