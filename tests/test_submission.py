"""Submission / ground-truth reading, validation and atomic writing, and the evaluate CLI."""

import json
import os
import re
import subprocess
import sys

import pytest

from lmr_jax.commands.score import default_save_path, main
from lmr_jax.fileio import write_jsonl
from lmr_jax.evaluation.submission import (
    SubmissionError,
    check_qids_match,
    read_ground_truth,
    read_submission,
    validate_ground_truth,
    validate_submission,
    write_submission,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pred(qid, windows=((0, 10, 0.9), (20, 30, 0.5)), **extra):
  return {
      "qid": qid,
      "query": "q",
      "vid": "v",
      "pred_relevant_windows": [list(w) for w in windows],
      **extra,
  }


def _gt(qid, **extra):
  record = {
      "qid": qid,
      "query": "q",
      "vid": "v",
      "duration": 10,
      "relevant_windows": [[0, 4]],
      "relevant_clip_ids": [0, 1],
      "saliency_scores": [[1, 2, 3], [4, 4, 4]],
  }
  record.update(extra)
  return record


def _write_lines(path, lines):
  path.write_text("".join(line + "\n" for line in lines))
  return str(path)


def _one_line_error(excinfo):
  message = str(excinfo.value)
  assert "\n" not in message
  return message


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_write_then_read_round_trip(tmp_path, suffix):
  records = [_pred(1, pred_saliency_scores=[0.1, 0.2]), _pred(2, pred_saliency_scores=[0.3])]
  path = str(tmp_path / f"preds{suffix}")
  write_submission(path, records)
  assert read_submission(path) == records
  assert os.listdir(tmp_path) == [f"preds{suffix}"]  # no temporary file left behind


def test_invalid_write_keeps_previous_file(tmp_path):
  path = str(tmp_path / "preds.jsonl")
  write_submission(path, [_pred(1)])
  with pytest.raises(SubmissionError):
    write_submission(path, [_pred(1), _pred(1)])
  assert read_submission(path) == [_pred(1)]
  assert os.listdir(tmp_path) == ["preds.jsonl"]


def test_malformed_json_names_file_and_line(tmp_path):
  path = _write_lines(
      tmp_path / "preds.jsonl", [json.dumps(_pred(1)), '{"qid": 2, "pred_relevant_windows": [[0']
  )
  with pytest.raises(SubmissionError) as excinfo:
    read_submission(path)
  assert _one_line_error(excinfo).startswith(f"{path}:2: malformed JSON")


@pytest.mark.parametrize(
    "content, match",
    [
        (["[1, 2]"], ":1: expected a JSON object"),
        ([], "empty JSON Lines file"),
    ],
)
def test_bad_files(tmp_path, content, match):
  with pytest.raises(SubmissionError, match=match):
    read_submission(_write_lines(tmp_path / "x.jsonl", content))


def test_binary_file_is_one_line_error(tmp_path):
  path = tmp_path / "x.jsonl"
  path.write_bytes(b"\xff\xfe\x00garbage")
  with pytest.raises(SubmissionError) as excinfo:
    read_ground_truth(str(path))
  assert "not a readable UTF-8 JSON Lines file" in _one_line_error(excinfo)


def test_duplicate_qid_names_both_lines(tmp_path):
  path = _write_lines(tmp_path / "preds.jsonl", [json.dumps(_pred(q)) for q in (1, 2, 1)])
  with pytest.raises(
      SubmissionError, match=r"preds.jsonl:3: duplicate qid 1 \(first at .*preds.jsonl:1\)"
  ):
    read_submission(path)


@pytest.mark.parametrize(
    "windows, match",
    [
        ([], "non-empty list"),
        ([[0, 10]], r"\[0\] must be 3 finite numbers"),
        ([[0, 10, 0.9], [5, 1, 0.5]], r"\[1\] has start 5 > end 1"),
        ([[0, float("nan"), 0.9]], "finite numbers"),
        ([[0, "10", 0.9]], "finite numbers"),
        ([[0, True, 0.9]], "finite numbers"),
        ([[0, 10, 0.5], [0, 5, 0.9]], "not sorted by score"),
    ],
)
def test_bad_prediction_windows(windows, match):
  with pytest.raises(SubmissionError, match=match):
    validate_submission([_pred(7, windows)])


def test_score_ties_and_zero_length_windows_are_valid(tmp_path):
  """Tied scores and zero-length windows pass, in predictions and ground truth alike, and are written
  and read back unchanged; one step past either boundary fails."""
  records = [_pred(1, [[3, 3, 0.5], [0, 10, 0.5], [7, 7, 0.25]]), _pred(2, [[2, 2, 0.0]])]
  assert validate_submission(records) is None
  assert validate_ground_truth([_gt(1, relevant_windows=[[4, 4], [0, 4]])]) is None
  path = str(tmp_path / "preds.jsonl")
  write_submission(path, records)
  assert read_submission(path) == records
  with pytest.raises(SubmissionError, match=r"window 1 scores 0\.5000001 > 0\.5\)"):
    validate_submission([_pred(1, [[3, 3, 0.5], [0, 10, 0.5000001]])])
  with pytest.raises(SubmissionError, match=r"\[0\] has start 3 > end 2\.999"):
    validate_submission([_pred(1, [[3, 2.999, 0.5]])])
  with pytest.raises(SubmissionError, match=r"\[0\] has start 4 > end 3\.999"):
    validate_ground_truth([_gt(1, relevant_windows=[[4, 3.999]])])


def test_saliency_all_or_none_and_finite():
  with pytest.raises(
      SubmissionError, match="submission record 1: qid 2: .*every query or for none"
  ):
    validate_submission([_pred(1, pred_saliency_scores=[0.1]), _pred(2)])
  with pytest.raises(SubmissionError, match="finite numbers"):
    validate_submission([_pred(1, pred_saliency_scores=[0.1, float("inf")])])


def test_qid_must_be_an_integer():
  with pytest.raises(SubmissionError, match="'qid' must be an integer, got '1'"):
    validate_submission([_pred("1")])


@pytest.mark.parametrize(
    "record, match",
    [
        ({"qid": 1, "duration": 10}, "no relevant_windows"),
        (_gt(1, duration=0), "'duration' must be a positive number"),
        (_gt(1, relevant_windows=[[4, 0]]), "start 4 > end 0"),
        (_gt(1, relevant_clip_ids=[0, 5]), r"clip id 5 outside \[0, 5\)"),
        (_gt(1, saliency_scores=[[1, 2, 3]]), "lists of equal length"),
        (_gt(1, saliency_scores=[[1, 2], [3, 4]]), "must be 3 numbers"),
    ],
)
def test_bad_ground_truth(record, match):
  with pytest.raises(SubmissionError, match=match):
    validate_ground_truth([record])


def test_ground_truth_saliency_all_or_none(tmp_path):
  unlabelled = {
      k: v for k, v in _gt(2).items() if k not in ("relevant_clip_ids", "saliency_scores")
  }
  path = _write_lines(tmp_path / "gt.jsonl", [json.dumps(_gt(1)), json.dumps(unlabelled)])
  with pytest.raises(SubmissionError, match="gt.jsonl:2: qid 2: .*every query or for none"):
    read_ground_truth(path)


def test_qid_mismatch_reports_counts_and_examples():
  with pytest.raises(SubmissionError) as excinfo:
    check_qids_match([_pred(q) for q in (1, 2, 9)], [_gt(q) for q in range(1, 9)])
  assert _one_line_error(excinfo) == (
      "submission and ground truth qids differ: 6 missing from the submission (e.g. [3, 4, 5, 6, 7]), "
      "1 not in the ground truth (e.g. [9])"
  )


def test_default_save_path():
  assert default_save_path("/a/b/preds.jsonl") == "/a/b/preds_metrics.json"
  assert default_save_path("/a/b/preds.jsonl.gz") == "/a/b/preds_metrics.json"


def test_cli_prints_brief_and_saves_metrics(tmp_path, capsys):
  write_jsonl(
      str(tmp_path / "preds.jsonl"), [_pred(1, [[0, 4, 0.9]], pred_saliency_scores=[0.1, 0.9, 0.2])]
  )
  write_jsonl(str(tmp_path / "gt.jsonl"), [_gt(1)])
  save_path = tmp_path / "out" / "m.json"
  argv = ["--submission", str(tmp_path / "preds.jsonl"), "--gt", str(tmp_path / "gt.jsonl")]
  assert main(argv + ["--save_path", str(save_path)]) == 0
  out = capsys.readouterr().out
  table = dict(re.findall(r"^\| (\S+) \| (\S+) \|$", out, re.M))
  assert table.pop("metric") == "value"
  assert out.splitlines()[-1] == f"saved {save_path}"
  assert (
      table["MR-short-mAP"] == "100.00" and table["MR-long-mAP"] == "n/a"
  )  # [0, 4]: a short window
  assert len(table) == 14
  with open(save_path) as f:
    metrics = json.load(f)
  assert list(metrics) == [
      "brief",
      "HL-min-Fair",
      "HL-min-Good",
      "HL-min-VeryGood",
      "full",
      "long",
      "middle",
      "short",
  ]
  assert main(argv) == 0
  assert os.path.exists(tmp_path / "preds_metrics.json")


@pytest.mark.slow
def test_cli_bad_input_exits_nonzero_with_one_line(tmp_path):
  preds = _write_lines(tmp_path / "preds.jsonl", [json.dumps(_pred(1)), "not json"])
  gt = _write_lines(tmp_path / "gt.jsonl", [json.dumps(_gt(1))])
  result = subprocess.run(
      [sys.executable, "-m", "lmr_jax.commands.score", "--submission", preds, "--gt", gt],
      cwd=REPO,
      capture_output=True,
      text=True,
  )
  assert result.returncode == 1
  assert result.stderr == f"error: {preds}:2: malformed JSON (Expecting value at column 1)\n"
  assert result.stdout == ""


def test_cli_missing_file(tmp_path, capsys):
  assert (
      main(["--submission", str(tmp_path / "nope.jsonl"), "--gt", str(tmp_path / "gt.jsonl")]) == 1
  )
  missing = tmp_path / "nope.jsonl"
  assert capsys.readouterr().err == f"error: {missing}: no such file (expected: JSON Lines file)\n"
