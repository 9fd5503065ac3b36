"""Figures: each plot function, its CLI, the VQF attention weights and `eval.py --plots` in-process."""

import json
import os
import re
import shutil

import jax
import numpy as np
import pytest
from lmr_jax import cli
from conftest import REPO, entry_point, tiny_config
from matplotlib import image

from lmr_jax.data import dataset
from lmr_jax.training import state as state_lib
from lmr_jax.commands import evaluate as evaluate_lib
from lmr_jax.visualization import PlotError, attention, plots


@pytest.fixture(scope="module")
def trained(tiny_trained):
  return tiny_trained[:2]


@pytest.fixture(scope="module")
def eval_main():
  with entry_point("eval.py") as module:
    yield module


def _check_png(path):
  assert os.path.getsize(path) > 0
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  pixels = image.imread(path)
  assert pixels.ndim == 3 and pixels.shape[2] in (3, 4) and min(pixels.shape[:2]) > 100


def _val_annotations(config):
  with open(config.data.annotation_files["val"]) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def evaluated(trained, eval_main, tmp_path_factory):
  """The output folder of `eval.py --cqval --plots=2`, run through its main function."""
  config, workdir = trained
  out = str(tmp_path_factory.mktemp("plots_eval"))
  argv = [
      "eval.py",
      "--config=configs/tiny.py",
      f"--workdir={workdir}",
      "--cqval",
      "--plots=2",
      f"--output_dir={out}",
      f"--config.data.feat_root={config.data.feat_root}",
  ] + [
      f"--config.data.annotation_files.{split}={path}"
      for split, path in config.data.annotation_files.items()
  ]
  with pytest.MonkeyPatch.context() as patch:  # --config is relative to the repository
    patch.chdir(REPO)
    assert cli.run_absl(eval_main.main, eval_main.__doc__, argv) == 0
  return out


def test_eval_py_plots_writes_every_figure(trained, evaluated):
  config, _ = trained
  annotations = _val_annotations(config)
  qids = [annotations[i]["qid"] for i in plots.sample_indices(len(annotations), 2)]
  expected = ["cqval.png", "training_curves.png"]
  expected += [f"{kind}_qid{q}.png" for q in qids for kind in ("attention", "timeline")]
  assert sorted(os.listdir(os.path.join(evaluated, "plots"))) == sorted(expected)
  for name in expected:
    _check_png(os.path.join(evaluated, "plots", name))


@pytest.mark.parametrize("tiny_arg", ["", "share_vqf", "use_vqf"])
def test_vqf_attention_rows_are_distributions_over_the_real_tokens(tiny_data_root, tiny_arg):
  """With shared VQF weights both streams sow into one module, without sharing into two; without
  VQF there is nothing to show."""
  config = tiny_config(tiny_data_root, tiny_arg)
  source = dataset.example_source(config.data, "val", with_captions=True, training=False)
  model = state_lib.build_model(config)
  batch = state_lib.zeros_batch(source.element_spec(), 2)
  # Random values in the parameter shapes: eval_shape compiles nothing (a jitted init takes seconds).
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), batch, train=False))["params"]
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: 0.3 * rng.standard_normal(s.shape).astype(s.dtype), shapes)
  indices = [0, 3, len(source) - 1]
  results = attention.vqf_attention(model, params, source, indices, batch_size=2)
  assert len(results) == len(indices)
  for index, weights in zip(indices, results):
    if tiny_arg == "use_vqf":
      assert weights == {}
      continue
    example = source.example(index)
    num_clips = example["video_mask"].sum()
    assert list(weights) == ["visual", "caption"]
    assert weights["visual"].shape == (num_clips, example["query_mask"].sum())
    assert weights["caption"].shape == (num_clips, example["caption_query_mask"].sum())
    for w in weights.values():
      assert (w >= 0).all()
      np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)


def test_plot_functions_and_their_errors(trained, tmp_path):
  config, workdir = trained
  records = plots.read_metrics_log(os.path.join(workdir, "metrics.jsonl"))
  panels = plots.training_series(records)
  assert next(iter(panels)) == "train/loss"
  assert {"train/label", "lr", "val/MR-full-R1", "val/HL-min-mAP"} <= set(panels)
  assert set(panels["train/label"]) == {"train/label"}  # the tiny config has one decoder layer
  # A deeper decoder's auxiliary losses share their term's panel.
  deeper = [
      dict(r, **{"train/aux0/label": 2 * r["train/label"]}) for r in records if "train/label" in r
  ]
  assert set(plots.training_series(deeper)["train/label"]) == {"train/label", "train/aux0/label"}
  _check_png(plots.plot_training_curves(records + deeper, str(tmp_path / "curves.png")))

  # An unlabelled query (no windows, no saliency) and a C-QVal split without queries still plot.
  annotation = {"qid": 1, "query": "a man's t-shirt.", "vid": "v", "duration": 10.0}
  record = {"qid": 1, "pred_relevant_windows": [[1.0, 4.0, 0.9]], "pred_saliency_scores": [0.1] * 5}
  _check_png(plots.plot_timeline(record, annotation, str(tmp_path / "t.png"), clip_len=2.0))
  weights = {"visual": np.full((5, 7), 1 / 7)}
  _check_png(plots.plot_attention(weights, annotation, str(tmp_path / "a.png"), clip_len=2.0))
  keys = ("min_clauses", "min_words", "num_queries", "R1@0.5", "R1@0.7", "mAP")
  rows = [
      dict(zip(keys, (0, 0, 9, 50.0, 20.0, 30.0))),
      dict(zip(keys, (1, 8, 0, None, None, None))),
  ]
  _check_png(plots.plot_cqval(rows, str(tmp_path / "c.png")))

  # CLIP tokens: [SOT] words [EOT]; a count that matches nothing falls back to indices.
  words = ["a", "man", "'s", "t", "-", "shirt", "."]
  assert plots.token_labels("A man's t-shirt.", 7) == words
  assert plots.token_labels("A man's t-shirt.", 9) == ["<start>", *words, "<end>"]
  assert plots.token_labels("A man's t-shirt.", 8) == [f"#{i}" for i in range(8)]

  missing = str(tmp_path / "nowhere" / "metrics.jsonl")
  with pytest.raises(PlotError, match=re.escape(f"{missing}: no such file")):
    plots.read_metrics_log(missing)
  bad = tmp_path / "metrics.jsonl"
  bad.write_text('{"step": 1, "lr": 0.1}\n{"step": 2,\n')
  with pytest.raises(PlotError, match=re.escape(f"{bad}:2: malformed JSON")):
    plots.read_metrics_log(str(bad))
  cqval_json = tmp_path / "cqval.json"
  cqval_json.write_text(json.dumps({"rows": [{"min_clauses": 0}]}))
  with pytest.raises(PlotError, match=re.escape(f"{cqval_json}: row 0 lacks")):
    plots.load_cqval(str(cqval_json))


def test_cli(trained, evaluated, tmp_path, capsys):
  config, workdir = trained
  out = str(tmp_path / "cli")
  assert plots.main(["--workdir", workdir, "--out_dir", out]) == 0
  _check_png(os.path.join(out, "training_curves.png"))

  annotations = config.data.annotation_files["val"]
  args = ["--eval_dir", evaluated, "--annotations", annotations, "--num_queries", "3"]
  assert plots.main(args + ["--out_dir", out]) == 0
  names = sorted(os.listdir(out))
  assert len(names) == 5
  assert names[0] == "cqval.png" and sum(n.startswith("timeline_qid") for n in names) == 3
  assert "wrote" in capsys.readouterr().out

  assert plots.main(["--workdir", str(tmp_path / "untrained")]) == 1
  assert "untrained/metrics.jsonl: no such file" in capsys.readouterr().err


def test_eval_plots_errors_come_before_restoring(trained, tmp_path):
  config, workdir = trained
  no_log = str(tmp_path / "no_log")
  shutil.copytree(workdir, no_log, ignore=shutil.ignore_patterns("metrics.jsonl", "eval"))
  with pytest.raises(PlotError, match=re.escape(f"{no_log}/metrics.jsonl: no such file")):
    evaluate_lib.evaluate_checkpoint(config, no_log, plots=1)
  with pytest.raises(evaluate_lib.EvalError, match="--plots takes a number of queries >= 0"):
    evaluate_lib.evaluate_checkpoint(config, workdir, plots=-1)
  assert not os.path.exists(os.path.join(no_log, "eval"))
