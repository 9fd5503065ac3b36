"""eval.py / commands.evaluate on a tiny model trained once for the module: submissions, metrics, mismatches, C-QVal."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from lmr_jax.commands import evaluate as evaluate_lib
from lmr_jax.data import dataset
from lmr_jax.evaluation import cqval, qvh_metrics
from lmr_jax.evaluation.cqval import GRID, load_spacy
from lmr_jax.evaluation.submission import read_submission
from lmr_jax.errors import ConfigError
from lmr_jax.training.checkpoint import CheckpointError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OFFICIAL_KEYS = {
    "brief",
    "full",
    "long",
    "middle",
    "short",
    "HL-min-Fair",
    "HL-min-Good",
    "HL-min-VeryGood",
}


@pytest.fixture(scope="module")
def trained(tiny_trained):
  return tiny_trained[:2]


@pytest.fixture(scope="module")
def best(trained):
  config, workdir = trained
  return evaluate_lib.evaluate_checkpoint(config, workdir)


def _annotations(config, split):
  with open(config.data.annotation_files[split]) as f:
    return {r["qid"]: r for r in map(json.loads, f)}


def _check_submission(path, annotations, clip_len, max_clips):
  records = read_submission(
      path
  )  # validates: int qids, 3-number windows sorted by score, no duplicates
  assert sorted(r["qid"] for r in records) == sorted(annotations)
  for r in records:
    duration = annotations[r["qid"]]["duration"]
    scores = [w[2] for w in r["pred_relevant_windows"]]
    assert scores == sorted(scores, reverse=True)
    assert all(0 <= w[0] <= w[1] <= duration for w in r["pred_relevant_windows"])
    assert len(r["pred_saliency_scores"]) == min(int(duration / clip_len), max_clips)


def test_best_latest_and_step_write_submission_and_official_metrics(trained, best):
  config, workdir = trained
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")))
  latest = evaluate_lib.evaluate_checkpoint(config, workdir, "latest")
  early = evaluate_lib.evaluate_checkpoint(config, workdir, steps[0])
  assert (best["step"], latest["step"], early["step"]) == (
      int(os.listdir(os.path.join(workdir, "best"))[0]),
      steps[-1],
      steps[0],
  )
  assert early["output_dir"] == os.path.join(workdir, "eval", f"val_{steps[0]}")
  annotations = _annotations(config, "val")
  for result in (best, latest, early):
    _check_submission(
        result["submission"], annotations, config.data.clip_len, config.data.max_clips
    )
    with open(os.path.join(result["output_dir"], "metrics.json")) as f:
      metrics = json.load(f)
    assert metrics == result["metrics"]
    assert set(metrics) == OFFICIAL_KEYS
    assert {"MR-full-mAP", "MR-full-R1@0.5", "MR-full-R1@0.7", "HL-min-VeryGood-Hit1"} <= set(
        metrics["brief"]
    )
    assert set(metrics["full"]["MR-mAP"]) >= {"0.5", "0.75", "average"}
  # A restored checkpoint scores exactly what training logged for that step (same params, batches
  # and post-processing), and best/ holds the step whose logged best_metric is the highest.
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = [r for r in map(json.loads, f) if f"val/{config.best_metric}" in r]
  by_step = {r["step"]: r for r in logged}
  best_values = [r[f"val/{config.best_metric}"] for r in logged]
  assert len(set(best_values)) > 1  # the choice is not trivial
  assert by_step[best["step"]][f"val/{config.best_metric}"] == max(best_values)
  for result in (best, latest):
    assert {f"val/{k}": v for k, v in result["metrics"]["brief"].items()} == {
        k: v for k, v in by_step[result["step"]].items() if k.startswith("val/")
    }


def test_unlabelled_split_writes_the_submission_only(trained, capsys):
  config, workdir = trained
  out = os.path.join(workdir, "test_eval")
  result = evaluate_lib.evaluate_checkpoint(config, workdir, "best", split="test", output_dir=out)
  annotations = _annotations(config, "test")
  assert result["metrics"] is None and result["num_queries"] == len(annotations)
  assert sorted(os.listdir(out)) == ["submission.jsonl"]
  _check_submission(result["submission"], annotations, config.data.clip_len, config.data.max_clips)
  assert "no metrics" in capsys.readouterr().out
  with pytest.raises(evaluate_lib.EvalError, match="--cqval needs a labelled split"):
    evaluate_lib.evaluate_checkpoint(config, workdir, "best", split="test", cqval=True)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"hidden_dim": 32},
            r"arrays differ \(e.g. params/.*: \(16,\) float32 saved, \(32,\) float32",
        ),
        ({"share_vqf": False}, r"arrays of this config are not saved \(e.g. params/caption_vqf/"),
        (
            {"use_caption_context": False},
            r"saved arrays are not in this config \(e.g. params/caption_",
        ),
    ],
    ids=["hidden_dim", "without_weight_sharing", "without_captions"],
)
def test_checkpoint_of_another_config_is_a_one_line_error(trained, change, message, tmp_path):
  """The workdir's config.json names the differing key first; a workdir without one (made elsewhere)
  is still refused, by the saved arrays, before anything is restored."""
  config, workdir = trained
  other = config.copy_and_resolve_references()
  other.model.update(change)
  (key,) = change
  with pytest.raises(ConfigError, match=rf"config\.model\.{key}: .* given") as e:
    evaluate_lib.evaluate_checkpoint(other, workdir)
  assert "\n" not in str(e.value)
  copy = str(tmp_path / "without_config_json")
  shutil.copytree(workdir, copy)
  os.remove(os.path.join(copy, "config.json"))
  with pytest.raises(CheckpointError, match=message) as e:
    evaluate_lib.evaluate_checkpoint(other, copy, output_dir=str(tmp_path / "out"))
  assert "\n" not in str(e.value) and "does not fit this config's model" in str(e.value)


def test_missing_checkpoint_or_workdir_is_a_one_line_error(trained, tmp_path):
  config, workdir = trained
  with pytest.raises(CheckpointError, match="no checkpoint at step 999"):
    evaluate_lib.evaluate_checkpoint(config, workdir, 999)
  with pytest.raises(CheckpointError, match="'best', 'latest' or a step number"):
    evaluate_lib.evaluate_checkpoint(config, workdir, "newest")
  missing = str(tmp_path / "never_trained")
  with pytest.raises(CheckpointError, match="no such workdir"):
    evaluate_lib.evaluate_checkpoint(config, missing)
  assert not os.path.exists(missing)
  with pytest.raises(CheckpointError, match="no 'best' checkpoint"):
    evaluate_lib.evaluate_checkpoint(config, str(tmp_path))


def test_cqval_rows_score_each_split_on_its_queries(trained, best):
  config, _ = trained
  annotations = list(_annotations(config, "val").values())
  records = read_submission(best["submission"])
  source = dataset.example_source(
      config.data, "val", with_captions=config.model.use_caption_context, training=False
  )
  # (0, 8): the longer tiny queries; (1, 99): nothing, scored as n/a instead of failing.
  rows = cqval.score_rows(
      records, source.annotations, config.evals, load_spacy(), grid=((0, 0), (0, 8), (1, 99))
  )
  assert rows[0]["num_queries"] == len(annotations)
  assert rows[0]["mAP"] == best["metrics"]["brief"]["MR-full-mAP"]
  long_qids = {a["qid"] for a in annotations if len(a["query"].rstrip(".").split()) >= 8}
  assert rows[1]["num_queries"] == len(long_qids) > 0
  direct = qvh_metrics.eval_submission(
      [r for r in records if r["qid"] in long_qids],
      [a for a in annotations if a["qid"] in long_qids],
  )["brief"]
  assert (rows[1]["R1@0.5"], rows[1]["R1@0.7"], rows[1]["mAP"]) == (
      direct["MR-full-R1@0.5"],
      direct["MR-full-R1@0.7"],
      direct["MR-full-mAP"],
  )
  assert rows[2]["num_queries"] == 0 and rows[2]["mAP"] is None and rows[2]["brief"] is None
  assert "| 1 | 99 | 0 (0.0%) | n/a | n/a | n/a |" in cqval.format_score_rows(rows, "t")


def test_eval_py_prints_the_tables_and_writes_cqval(trained, tmp_path):
  """The one subprocess (imports alone cost seconds): the absl entry point with --config overrides."""
  config, workdir = trained
  out = str(tmp_path / "cli")
  overrides = [f"--config.data.feat_root={config.data.feat_root}"] + [
      f"--config.data.annotation_files.{split}={path}"
      for split, path in config.data.annotation_files.items()
  ]
  proc = subprocess.run(
      [
          sys.executable,
          "eval.py",
          "--config=configs/tiny.py",
          f"--workdir={workdir}",
          "--checkpoint=latest",
          "--cqval",
          f"--output_dir={out}",
          "--verbosity=-1",
          *overrides,
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "| metric | value |" in proc.stdout and "| MR-full-mAP |" in proc.stdout
  assert "| C | W | #queries | R1@0.5 | R1@0.7 | mAP |" in proc.stdout
  assert "Traceback" not in proc.stderr
  with open(os.path.join(out, "cqval.json")) as f:
    rows = json.load(f)["rows"]
  assert [(r["min_clauses"], r["min_words"]) for r in rows] == [(0, 0), *GRID]
  with open(os.path.join(out, "cqval.md")) as f:
    assert f.read() in proc.stdout
  assert sorted(os.listdir(out)) == ["cqval.json", "cqval.md", "metrics.json", "submission.jsonl"]
