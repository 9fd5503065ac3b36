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


def _random_model(tiny_data_root, tiny_arg=""):
  """(config, val source, model, random params) of configs/tiny.py: random values in the parameter
  shapes (eval_shape compiles nothing; a jitted init takes seconds)."""
  config = tiny_config(tiny_data_root, tiny_arg)
  source = dataset.example_source(config.data, "val", with_captions=True, training=False)
  model = state_lib.build_model(config)
  batch = state_lib.zeros_batch(source.element_spec(), 2)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), batch, train=False))["params"]
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: 0.3 * rng.standard_normal(s.shape).astype(s.dtype), shapes)
  return config, source, model, params


@pytest.mark.parametrize("tiny_arg", ["", "share_vqf", "use_vqf"])
def test_vqf_attention_rows_are_distributions_over_the_real_tokens(tiny_data_root, tiny_arg):
  """With shared VQF weights both streams sow into one module, without sharing into two; without
  VQF there is nothing to show."""
  config, source, model, params = _random_model(tiny_data_root, tiny_arg)
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


def test_caption_routing_of_a_known_attention_map():
  """Video token i looks at caption i alone: all of its attention is on its own event's captions,
  none on the look-alike's; spread evenly, each event gets its share per clip."""
  num_clips, clip_len = 10, 2.0
  # The query's window covers clips 2-4, the look-alike's clips 6-7.
  windows = dict(target_windows=[[4.0, 10.0]], other_windows=[[12.0, 16.0]], clip_len=clip_len)
  sharp = np.zeros((1 + 2 * num_clips,) * 2)
  for i in range(num_clips):
    sharp[1 + i, 1 + num_clips + i] = 1.0
  stats = attention.caption_routing(sharp, num_clips, **windows)
  assert stats == {
      "own_event": 1.0,
      "look_alikes": 0.0,
      "own_clip": 1.0,
      "all_captions": 1.0,
      "own_event_per_clip": pytest.approx(1 / 3),
      "look_alikes_per_clip": 0.0,
  }
  flat = np.full_like(sharp, 1 / sharp.shape[1])
  stats = attention.caption_routing(flat, num_clips, **windows)
  assert stats["own_event"] == pytest.approx(3 / 21) and stats["look_alikes"] == pytest.approx(2 / 21)
  assert stats["own_event_per_clip"] == pytest.approx(stats["look_alikes_per_clip"])
  assert attention.caption_routing(flat, num_clips, **{**windows, "other_windows": []}) is None


def test_probe_cli_reads_the_encoder_attention_of_a_trained_workdir(trained, tmp_path, capsys):
  from lmr_jax.commands import probe

  config, workdir = trained
  out = tmp_path / "probe"
  argv = ["--workdir", workdir, "--checkpoint", "latest", "--output_dir", str(out)]
  assert probe.main(argv) == 0
  result = json.loads((out / probe.OUTPUT_NAME).read_text())
  layers = [k for k in result if k.startswith("layer_")]
  assert len(layers) == config.model.num_encoder_layers and result["num_queries"] > 0
  for key in layers:
    row = result[key]
    assert set(row) == set(attention.ROUTING_KEYS)
    assert 0 <= row["own_clip"] <= row["own_event"] <= row["all_captions"] <= 1
    assert 0 <= row["look_alikes"] <= row["all_captions"] - row["own_event"] + 1e-6
  assert "own / look-alike per clip" in capsys.readouterr().out
  # A model without captions has nothing to route: one line, before anything is restored.
  no_captions = tmp_path / "no_captions"
  no_captions.mkdir()
  saved = json.loads(open(os.path.join(workdir, "config.json")).read())
  saved["model"]["use_caption_context"] = False
  (no_captions / "config.json").write_text(json.dumps(saved))
  assert probe.main(["--workdir", str(no_captions)]) == 1
  assert "needs a model with both the visual and the caption stream" in capsys.readouterr().err


def test_encoder_attention_rows_are_distributions_over_the_real_tokens(tiny_data_root):
  config, source, model, params = _random_model(tiny_data_root)
  indices = [0, len(source) - 1]
  results = attention.encoder_attention(model, params, source, indices, batch_size=2)
  for index, per_layer in zip(indices, results):
    num_clips = int(source.example(index)["video_mask"].sum())
    assert len(per_layer) == config.model.num_encoder_layers
    for w in per_layer:
      assert w.shape == (1 + 2 * num_clips, 1 + 2 * num_clips)
      np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)  # padding gets no attention
