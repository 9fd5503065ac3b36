"""predict.py and lmr_jax.inference end to end: a tiny CLIP-only model trained once for the module, the
tiny random preprocess checkpoints (tests/tiny_models.py) and tiny generated videos."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from lmr_jax import cli  # noqa: E402

import torch
import transformers
import av

from conftest import CLIP_ONLY_DIM as DIM  # noqa: E402
from conftest import CLIP_ONLY_MAX_CLIPS as MAX_CLIPS  # noqa: E402
from conftest import REPO, entry_point  # noqa: E402
from lmr_jax.evaluation.submission import read_submission  # noqa: E402
from lmr_jax.inference import encoders as encoders_lib  # noqa: E402
from lmr_jax.inference import predictor as predictor_lib  # noqa: E402
from lmr_jax.commands import evaluate as evaluate_lib  # noqa: E402
from preprocess import captions as captions_lib  # noqa: E402
from tiny_models import write_video  # noqa: E402

QUERY_KEYS = {
    "query",
    "vid",
    "video",
    "duration",
    "clip_len",
    "pred_relevant_windows",
    "pred_saliency_scores",
}


@pytest.fixture(scope="module")
def trained(clip_only_trained):
  """(config, workdir) of the tiny CLIP-only model (conftest), this worker's copy."""
  return clip_only_trained


@pytest.fixture(scope="module")
def models(tiny_hf_models):
  return tiny_hf_models


@pytest.fixture(scope="module")
def predictor(trained):
  return predictor_lib.Predictor.from_workdir(trained[1])


def _model_flags(models):
  return [
      f"--clip={models['clip']}",
      f"--llama={models['llama']}",
      f"--captioner={models['llava']}",
      "--max_new_tokens=3",
      "--caption_batch_size=4",
  ]


def _encoders(config, models):
  return encoders_lib.Encoders(
      config,
      clip=str(models["clip"]),
      llama=str(models["llama"]),
      captioner=str(models["llava"]),
      max_new_tokens=3,
      caption_batch_size=4,
  )


@pytest.fixture(scope="module")
def predict_cli():
  with entry_point("predict.py") as module:
    yield module


def run_cli(predict_cli, capsys, *argv):
  """predict.py's main in this process: (exit status, stdout, stderr)."""
  capsys.readouterr()
  status = cli.run_absl(predict_cli.main, predict_cli.__doc__, ["predict.py", *argv])
  captured = capsys.readouterr()
  return status, captured.out, captured.err


def _check_record(record, num_clips, top_k):
  windows = record["pred_relevant_windows"]
  assert 0 < len(windows) <= top_k
  assert all(0 <= st <= ed <= record["duration"] for st, ed, _ in windows)
  scores = [w[2] for w in windows]
  assert scores == sorted(scores, reverse=True)
  assert len(record["pred_saliency_scores"]) == num_clips
  assert record["clip_len"] == 2.0


def test_features_give_evals_prediction(predict_cli, trained, predictor, tmp_path, capsys):
  config, workdir = trained
  result = evaluate_lib.evaluate_checkpoint(config, workdir, split="val", output_dir=str(tmp_path))
  expected = {r["qid"]: r for r in read_submission(result["submission"])}
  with open(config.data.annotation_files["val"]) as f:
    annotations = [json.loads(line) for line in f]
  feat_root = config.data.feat_root
  for ann in annotations:
    video = predictor_lib.load_video_inputs(config, feat_root, ann["vid"], ann["duration"])
    query = predictor_lib.load_query_inputs(config, feat_root, ann["qid"])
    (record,) = predictor.predict(video, [query], top_k=None)
    want = expected[ann["qid"]]
    assert (record["qid"], record["vid"]) == (ann["qid"], ann["vid"])
    np.testing.assert_allclose(
        record["pred_relevant_windows"], want["pred_relevant_windows"], atol=1e-3
    )
    np.testing.assert_allclose(
        record["pred_saliency_scores"], want["pred_saliency_scores"], atol=1e-3
    )

  ann = annotations[0]
  argv = [f"--workdir={workdir}", f"--features={feat_root}", f"--vid={ann['vid']}"]
  argv += [f"--qid={ann['qid']}", f"--duration={ann['duration']}", "--top_k=3"]
  status, out, err = run_cli(predict_cli, capsys, *argv)
  assert status == 0, err
  (record,) = map(json.loads, out.splitlines())
  assert record["query"] is None and record["qid"] == ann["qid"]
  np.testing.assert_allclose(
      record["pred_relevant_windows"], expected[ann["qid"]]["pred_relevant_windows"][:3], atol=1e-3
  )


def test_many_queries_run_in_several_batches_as_one_at_a_time(trained, predictor):
  """More queries than eval_batch_size: full batches, then a partial one padded to a power of two;
  every query gets what it gets alone."""
  config, _ = trained
  small = config.copy_and_resolve_references()
  small.eval_batch_size = 4
  batched = predictor_lib.Predictor(small, predictor.params, predictor.step)
  with open(config.data.annotation_files["val"]) as f:
    annotations = [json.loads(line) for line in f]
  feat_root = config.data.feat_root
  queries = [predictor_lib.load_query_inputs(config, feat_root, a["qid"]) for a in annotations]
  queries = (queries * 9)[:9]  # two full batches of 4 and one of 1, padded to 1
  video = predictor_lib.load_video_inputs(config, feat_root, annotations[0]["vid"])
  together = batched.predict(video, queries, top_k=None)
  for query, record in zip(queries, together, strict=True):
    (alone,) = predictor.predict(video, [query], top_k=None)
    assert record["qid"] == alone["qid"] == query.qid
    np.testing.assert_allclose(
        record["pred_relevant_windows"], alone["pred_relevant_windows"], atol=1e-4
    )
    np.testing.assert_allclose(
        record["pred_saliency_scores"], alone["pred_saliency_scores"], atol=1e-4
    )


def test_rounding_to_clips_is_the_same_in_eval_and_predict(trained, predictor, tmp_path):
  """config.eval_round_to_clip (on in configs/qvh.py and configs/charades.py) rounds eval's and
  predict's windows alike."""
  config, workdir = trained
  rounded = config.copy_and_resolve_references()
  rounded.eval_round_to_clip = True
  result = evaluate_lib.evaluate_checkpoint(rounded, workdir, split="val", output_dir=str(tmp_path))
  expected = {r["qid"]: r for r in read_submission(result["submission"])}
  rounded_predictor = predictor_lib.Predictor(rounded, predictor.params, predictor.step)
  with open(config.data.annotation_files["val"]) as f:
    annotations = [json.loads(line) for line in f]
  feat_root = config.data.feat_root
  unrounded_ends = []
  for ann in annotations:
    video = predictor_lib.load_video_inputs(rounded, feat_root, ann["vid"], ann["duration"])
    query = predictor_lib.load_query_inputs(rounded, feat_root, ann["qid"])
    (record,) = rounded_predictor.predict(video, [query], top_k=None)
    windows = record["pred_relevant_windows"]
    assert windows == expected[ann["qid"]]["pred_relevant_windows"]
    assert all(st % 2 == 0 and ed % 2 == 0 for st, ed, _ in windows)
    (unrounded,) = predictor.predict(video, [query], top_k=None)
    unrounded_ends += [x for w in unrounded["pred_relevant_windows"] for x in w[:2]]
  assert any(x % 2 for x in unrounded_ends)  # the switch changed something


def test_llama_query_tokens_encode_query_text_with_llama(models):
  """configs/charades.py's paper setting: the visual VQF's query tokens are Llama's, not CLIP's."""
  from configs import charades
  from preprocess.llama_embedding import LlamaEmbedder

  config = charades.get_config().unlock()
  config.data.query_dim = config.data.caption_dim = DIM  # the tiny Llama's width
  encoders = encoders_lib.Encoders(config, llama=str(models["llama"]))
  encoders.require(video=False, text=True)  # no --clip needed for query text
  text = "a man cooks food in a kitchen"
  query = encoders.query(text)
  expected = LlamaEmbedder(models["llama"]).token_vectors(text)
  np.testing.assert_array_equal(query.tokens, expected)
  np.testing.assert_array_equal(query.caption_tokens, expected)
  with pytest.raises(predictor_lib.PredictError, match="encoding query text .* needs --llama"):
    encoders_lib.Encoders(config, clip=str(models["clip"])).require(video=False, text=True)


def test_raw_video_queries_share_its_features(
    predict_cli, trained, models, tmp_path, capsys, monkeypatch
):
  config, workdir = trained
  write_video(tmp_path / "kitchen.mp4", 7)  # 4 clips of 2 s
  (tmp_path / "queries.txt").write_text("a woman talks to the camera\n\n")
  opened = []
  real_reader = encoders_lib.ClipReader
  for module in (encoders_lib, captions_lib):
    monkeypatch.setattr(
        module, "ClipReader", lambda *a, **kw: opened.append(a[0]) or real_reader(*a, **kw)
    )
  saved = tmp_path / "features"
  argv = [f"--workdir={workdir}", f"--video={tmp_path / 'kitchen.mp4'}", *_model_flags(models)]
  argv += ["--query=a man cooks food in a kitchen", "--query=a person is walking a dog"]
  argv += [f"--queries_file={tmp_path / 'queries.txt'}", f"--save_features={saved}"]
  argv += ["--top_k=4", f"--output={tmp_path / 'out.jsonl'}"]
  status, out, err = run_cli(predict_cli, capsys, *argv)
  assert status == 0, err
  assert out == ""
  # one decoding pass for CLIP and one for the captioner, whatever the number of queries
  assert len(opened) == 2
  records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
  assert [r["query"] for r in records] == [
      "a man cooks food in a kitchen",
      "a person is walking a dog",
      "a woman talks to the camera",
  ]
  for record in records:
    assert set(record) == QUERY_KEYS
    assert record["vid"] == "kitchen" and record["video"] == str(tmp_path / "kitchen.mp4")
    assert record["duration"] == pytest.approx(7.0)
    _check_record(record, num_clips=4, top_k=4)
  assert sorted(os.listdir(saved)) == ["caption_features", "captions", "clip_features"]

  # The saved files are a feature root: --features on them gives the same moments.
  status, out, err = run_cli(
      predict_cli,
      capsys,
      f"--workdir={workdir}",
      f"--features={saved}",
      "--vid=kitchen",
      "--duration=7",
      "--top_k=4",
      "--query=a man cooks food in a kitchen",
      *_model_flags(models),
  )
  assert status == 0, err
  (again,) = map(json.loads, out.splitlines())
  assert again["pred_relevant_windows"] == records[0]["pred_relevant_windows"]
  assert again["pred_saliency_scores"] == records[0]["pred_saliency_scores"]


def test_long_video_is_predicted_in_merged_windows(trained, models, predictor, tmp_path):
  config, _ = trained
  write_video(tmp_path / "long.mp4", 30)  # 15 clips > max_clips 12: windows at clips 0 and 3
  encoders = _encoders(config, models)
  duration = encoders.write_video_features(tmp_path / "long.mp4", tmp_path, "long")
  video = predictor_lib.load_video_inputs(config, str(tmp_path), "long", duration)
  query = encoders.query("a man cooks food in a kitchen")
  assert video.num_clips == 15
  assert predictor_lib.window_starts(15, MAX_CLIPS, MAX_CLIPS // 2) == [0, 3]
  (record,) = predictor.predict(video, [query], top_k=None)
  _check_record(record, num_clips=15, top_k=2 * config.model.num_queries)

  def window(start):
    clips = slice(start, start + MAX_CLIPS)
    part = predictor_lib.VideoInputs(
        "part", video.visual[clips], video.caption[clips], MAX_CLIPS * 2.0
    )
    (out,) = predictor.predict(part, [query], top_k=None)
    return out

  first, last = window(0), window(3)
  saliency = np.array(record["pred_saliency_scores"])
  first_saliency, last_saliency = (np.array(w["pred_saliency_scores"]) for w in (first, last))
  np.testing.assert_allclose(saliency[:3], first_saliency[:3], atol=2e-4)
  np.testing.assert_allclose(saliency[12:], last_saliency[9:], atol=2e-4)
  np.testing.assert_allclose(
      saliency[3:12], (first_saliency[3:] + last_saliency[:9]) / 2, atol=2e-4
  )
  # every kept moment is one of a window's, in seconds of the whole video
  candidates = [tuple(w) for w in first["pred_relevant_windows"]]
  candidates += [(st + 6.0, ed + 6.0, s) for st, ed, s in last["pred_relevant_windows"]]
  for moment in record["pred_relevant_windows"]:
    assert min(np.abs(np.subtract(moment, c)).max() for c in candidates) < 1e-3
  assert len(record["pred_relevant_windows"]) <= len(candidates)


def test_window_starts_and_cross_window_suppression():
  assert predictor_lib.window_starts(12, 12, 6) == [0]
  assert predictor_lib.window_starts(30, 12, 6) == [0, 6, 12, 18]
  assert predictor_lib.window_starts(31, 12, 12) == [0, 12, 19]
  first = np.array([[0.0, 10.0, 0.9], [1.0, 10.0, 0.8]])  # overlapping, but one window's own
  second = np.array([[0.0, 9.0, 0.85], [20.0, 30.0, 0.7]])
  merged = predictor_lib.merge_moments([first, second], nms_iou=0.5)
  np.testing.assert_array_equal(merged, [[0.0, 10.0, 0.9], [1.0, 10.0, 0.8], [20.0, 30.0, 0.7]])


def _workdir_with_config(trained, directory, **data):
  """A workdir holding only config.json, with ``data`` fields changed."""
  _, workdir = trained
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  config["data"].update(data)
  directory.mkdir()
  (directory / "config.json").write_text(json.dumps(config))
  return str(directory)


@pytest.mark.parametrize(
    "case, message",
    [
        ("no_workdir", "no such workdir"),
        ("no_checkpoint", "no 'best' checkpoint"),
        ("bad_step", "no checkpoint at step 999"),
        ("no_video", "nowhere.mp4: no such video file"),
        ("corrupt_video", "bad.mp4: unreadable video"),
        ("missing_features", "missing feature file"),
        ("slowfast", "a raw video's SlowFast features needs --slowfast"),
        ("no_query", "no query: pass --query"),
        ("both_inputs", "pass either --video or --features"),
        ("no_captioner", "the captions of a raw video needs --captioner"),
        ("tokenless_query", "(Llama embedding tokens) has no tokens"),
    ],
)
def test_bad_inputs_are_one_line_errors(
    predict_cli, trained, models, tmp_path, capsys, case, message
):
  config, workdir = trained
  write_video(tmp_path / "v.mp4", 3)
  (tmp_path / "bad.mp4").write_bytes(b"\x00not a video" * 64)
  video = f"--video={tmp_path / 'v.mp4'}"
  query = "--query=a man cooks food"
  argv = {
      "no_workdir": [f"--workdir={tmp_path / 'nowhere'}", video, query],
      "no_checkpoint": [
          f"--workdir={_workdir_with_config(trained, tmp_path / 'untrained')}",
          video,
          query,
      ],
      "bad_step": [f"--workdir={workdir}", "--checkpoint=999", video, query],
      "no_video": [f"--workdir={workdir}", f"--video={tmp_path / 'nowhere.mp4'}", query],
      "corrupt_video": [f"--workdir={workdir}", f"--video={tmp_path / 'bad.mp4'}", query],
      "missing_features": [
          f"--workdir={workdir}",
          f"--features={config.data.feat_root}",
          "--vid=nowhere",
          "--qid=1",
      ],
      "slowfast": [
          "--workdir="
          + _workdir_with_config(
              trained,
              tmp_path / "slowfast",
              visual_streams=["slowfast_features", "clip_features"],
              visual_dims=[4, DIM],
          ),
          video,
          query,
      ],
      "no_query": [f"--workdir={workdir}", video],
      "both_inputs": [f"--workdir={workdir}", video, f"--features={tmp_path}", query],
      "no_captioner": [
          f"--workdir={workdir}",
          video,
          query,
          f"--clip={models['clip']}",
          f"--llama={models['llama']}",
      ],
      "tokenless_query": [f"--workdir={workdir}", video, "--query=zebra xylophone"],
  }[case]
  if case != "no_captioner":
    argv += _model_flags(models)
  status, out, err = run_cli(predict_cli, capsys, *argv)
  assert status == 1 and out == ""
  # transformers may draw loading progress bars above it
  (error,) = [line for line in err.splitlines() if "error" in line]
  assert error.startswith("error: ") and message in error, err


def test_cli_entry_point_exits_with_one_error_line(trained):
  _, workdir = trained
  result = subprocess.run(
      [sys.executable, "predict.py", f"--workdir={workdir}", "--features=/nonexistent", "--qid=1"],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert result.returncode == 1 and result.stdout == ""
  # TensorFlow's C++ start-up notes may come first
  assert result.stderr.splitlines()[-1] == "error: /nonexistent: no such feature directory"
