"""Bad input against every entry point: one line on stderr naming the file or key, the documented exit
status (2 usage, 1 data/run errors, 0 --help), and no input or earlier output changed.

The entry points run in this process (``cli.run_absl`` on train.py / eval.py / predict.py's ``main``;
the module commands' ``main``) so ~50 cases cost seconds; two subprocess runs check what a user's
terminal really shows: one line, no start-up banners. Data files and the synthetic generator are
tests/test_bad_data.py's.
"""

import errno
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import (
    REPO,
    child_environment,
    entry_point,
    forge_lock,
    tiny_config,
    train_on_one_batch,
)
from lmr_jax import cli
from lmr_jax.commands import score as score_cli
from lmr_jax.evaluation import cqval as cqval_cli
from lmr_jax.evaluation import evaluators

TINY = os.path.join(REPO, "configs", "tiny.py")


def snapshot(*paths) -> dict:
  """{file: sha256} of every file under ``paths`` (files or folders), to prove nothing changed."""
  found = {}
  for path in paths:
    files = (
        [path]
        if os.path.isfile(path)
        else [os.path.join(d, n) for d, _, names in os.walk(path) for n in names]
    )
    for name in files:
      with open(name, "rb") as f:
        found[name] = hashlib.sha256(f.read()).hexdigest()
  return found


def error_lines(err: str) -> list[str]:
  """stderr without absl log records (in this process they may reach the captured stream)."""
  return [
      line
      for line in err.splitlines()
      if line.strip() and not (line[:1] in "IWEF" and line[1:5].isdigit())
  ]


def run_entry(script: str, argv, capsys):
  """(exit status, stdout, stderr) of ``script``'s main with ``argv``, in this process."""
  with entry_point(script) as module:
    capsys.readouterr()
    status = cli.run_absl(module.main, module.__doc__, [script, *argv])
    out, err = capsys.readouterr()
  return status, out, err


def assert_one_line(err: str, *fragments: str, prefix: str = "error: ") -> None:
  lines = error_lines(err)
  assert len(lines) == 1, err
  assert lines[0].startswith(prefix), lines[0]
  for fragment in fragments:
    assert fragment in lines[0], (fragment, lines[0])


def data_flags(config) -> list[str]:
  flags = [f"--config.data.feat_root={config.data.feat_root}"]
  flags += [
      f"--config.data.annotation_files.{split}={path}"
      for split, path in config.data.annotation_files.items()
  ]
  return flags


@pytest.fixture(scope="module")
def tiny_args(tiny_data_root):
  return [f"--config={TINY}", *data_flags(tiny_config(tiny_data_root))]


def run_flags(config) -> list[str]:
  """The command line that gives ``config``: configs/tiny.py and an override per differing key."""
  from configs import tiny
  from lmr_jax.training import workdir as workdir_lib

  text = lambda v: repr(tuple(v)) if isinstance(v, list) else str(v)  # noqa: E731 - JSON's lists
  given = workdir_lib.differences(tiny.get_config(), config, free=())
  return [f"--config={TINY}"] + [f"--config.{key}={text(value)}" for key, _, value in given]


@pytest.fixture
def trained_copy(tiny_trained, tmp_path):
  """(config, a copy of the session's trained tiny workdir, free to damage, and the command-line
  flags of its config)."""
  config, workdir, _ = tiny_trained
  copy = str(tmp_path / "workdir")
  shutil.copytree(workdir, copy)
  return config, copy, run_flags(config)


# --- usage errors: exit 2 ------------------------------------------------------------------------

USAGE_CASES = {
    "unknown override key": (["--config.model.hidden_size=8"], "--config.model.hidden_size"),
    "unknown nested section": (["--config.modle.hidden_dim=8"], "'modle'"),
    "malformed value": (["--config.batch_size=abc"], "--config.batch_size=abc"),
    "missing config file": (["--config=configs/nope.py"], "configs/nope.py: no such config file"),
    "config variant that fails": ([f"--config={TINY}:no_such_switch"], "no_such_switch"),
    "unknown flag": (["--epochs=3"], "epochs"),
    "extra argument": (["extra"], "unexpected arguments"),
}


@pytest.mark.parametrize("case", sorted(USAGE_CASES))
def test_usage_errors_exit_2(case, tiny_args, tmp_path, capsys):
  extra, fragment = USAGE_CASES[case]
  workdir = tmp_path / "w"
  argv = [*tiny_args, f"--workdir={workdir}", *extra]
  if extra[0].startswith("--config="):
    argv = [extra[0], f"--workdir={workdir}"]
  status, out, err = run_entry("train.py", argv, capsys)
  assert status == cli.EXIT_USAGE
  assert_one_line(err, fragment, prefix="usage error: ")
  assert not workdir.exists() and out == ""


def test_missing_required_flag_and_help(capsys):
  status, _, err = run_entry("train.py", [f"--config={TINY}"], capsys)
  assert status == cli.EXIT_USAGE
  assert_one_line(err, "--workdir", prefix="usage error: ")
  for script in ("train.py", "eval.py", "predict.py"):
    status, out, err = run_entry(script, ["--help"], capsys)
    assert status == cli.EXIT_OK and err == ""
    assert "--workdir" in out and "--verbose" in out


# --- config values that cannot run: exit 1, before the workdir exists ---------------------------

CONFIG_CASES = {
    "batch_size 0": ("batch_size=0", "config.batch_size"),
    "eval_batch_size 0": ("eval_batch_size=0", "config.eval_batch_size"),
    "num_epochs 0": ("num_epochs=0", "config.num_epochs"),
    "heads do not divide hidden": ("model.num_heads=3", "config.model.num_heads"),
    "dropout above 1": ("model.dropout=1.5", "config.model.dropout"),
    "k of 0": ("model.num_queries=0", "config.model.num_queries"),
    "unknown dtype": ("model.dtype=float16", "config.model.dtype"),
    "unknown attention": ("model.attention=flash", "config.model.attention"),
    "unknown schedule": ("optim.schedule=linear", "config.optim.schedule"),
    "negative learning rate": ("optim.learning_rate=-0.1", "config.optim.learning_rate"),
    "unknown best_metric": ("best_metric=MR-full-mAP@0.6", "config.best_metric"),
    "best_metric of another evaluator": ("best_metric=mIoU", "config.best_metric"),
    "unknown evaluator": ("evals=('qvhighlight',)", "config.evals"),
    "no evaluator": ("evals=()", "config.evals"),
    "unknown eval_split": ("eval_split=dev", "config.eval_split"),
    "max_windows 0": ("data.max_windows=0", "config.data.max_windows"),
    "max_clips 0": ("data.max_clips=0", "config.data.max_clips"),
    "no video at all": ("model.use_visual=False", "config.model.use_visual"),
    "steps_per_dispatch without resident data": ("steps_per_dispatch=2", "steps_per_dispatch"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_config_values_fail_before_the_workdir_is_made(case, tiny_args, tmp_path, capsys):
  override, key = CONFIG_CASES[case]
  extra = [f"--config.{override}"]
  if case == "no video at all":
    extra.append("--config.model.use_caption_context=False")
  workdir = tmp_path / "w"
  status, out, err = run_entry("train.py", [*tiny_args, f"--workdir={workdir}", *extra], capsys)
  assert status == cli.EXIT_ERROR, err
  assert_one_line(err, key)
  assert not workdir.exists()


def test_brief_names_are_what_the_evaluators_report(tiny_data_root):
  """``config.best_metric`` is checked against ``evaluators.brief_names``; they must be the keys the
  evaluators really return."""
  from lmr_jax.data import annotations as annotations_lib

  path = os.path.join(tiny_data_root, "annotations", "val.jsonl")
  # Charades-STA's metrics take one window per query.
  anns = [a for a in annotations_lib.load_annotations(path) if len(a.windows) == 1]
  assert len(anns) >= 5 and all(a.saliency_scores for a in anns)
  rng = np.random.default_rng(0)
  records = [
      {
          "qid": a.qid,
          "vid": a.vid,
          "pred_relevant_windows": [[0.0, 4.0, 0.9], [2.0, 10.0, 0.5]],
          "pred_saliency_scores": rng.random(int(a.duration // 2)).tolist(),
      }
      for a in anns
  ]
  for names in (("qvhighlights",), ("charades_sta",), ("qvhighlights", "charades_sta")):
    brief = evaluators.score(records, anns, names)["brief"]
    assert set(brief) == evaluators.brief_names(names), names


# --- workdirs -------------------------------------------------------------------------------------


def test_workdir_that_is_a_file(tiny_args, tmp_path, capsys):
  path = tmp_path / "a_file"
  path.write_text("keep me")
  status, _, err = run_entry("train.py", [*tiny_args, f"--workdir={path}/run"], capsys)
  assert status == cli.EXIT_ERROR
  assert_one_line(err, str(path), "is a file")
  assert path.read_text() == "keep me"


def test_workdir_that_cannot_be_written(tiny_args, capsys):
  # /proc refuses new files even to root, which passes every permission check.
  status, _, err = run_entry("train.py", [*tiny_args, "--workdir=/proc/lmr_run"], capsys)
  assert status == cli.EXIT_ERROR
  assert_one_line(err, "/proc/lmr_run", "cannot write")


def test_a_held_workdir_stops_training_and_evaluation_into_it(
    trained_copy, live_pid, tmp_path, capsys
):
  """Another live process holds the workdir (a second train.py, an eval.py writing there): train.py
  and an eval.py writing into the workdir stop with one line naming it and change nothing; an
  eval.py writing elsewhere reads the workdir without the lock and runs."""
  _, workdir, tiny_args = trained_copy
  lock = forge_lock(workdir, live_pid)
  before = snapshot(workdir)
  holder = f"in use by training (pid {live_pid} on {socket.gethostname()}"
  status, _, err = run_entry("train.py", [*tiny_args, f"--workdir={workdir}"], capsys)
  assert status == cli.EXIT_ERROR
  assert_one_line(err, lock, holder)
  status, _, err = run_entry("eval.py", [f"--workdir={workdir}", "--split=val"], capsys)
  assert status == cli.EXIT_ERROR
  assert_one_line(err, lock, holder)
  assert snapshot(workdir) == before
  elsewhere = tmp_path / "eval_elsewhere"
  argv = [f"--workdir={workdir}", "--split=val", f"--output_dir={elsewhere}"]
  status, _, err = run_entry("eval.py", argv, capsys)
  assert status == 0, err
  assert (elsewhere / "metrics.json").exists() and snapshot(workdir) == before


def test_a_full_disk_in_training_is_one_line_and_the_same_command_resumes(
    trained_copy, monkeypatch, capsys
):
  """The disk refuses a checkpoint (orbax's save raises ENOSPC) in a resumed run: one line naming the
  step's folder, the cause and the last complete step, which stays whole; with space back, the same
  command resumes from it and finishes."""
  import orbax.checkpoint as ocp  # noqa: PLC0415

  config, workdir, tiny_args = trained_copy
  checkpoints = os.path.join(workdir, "checkpoints")
  latest = max(int(n) for n in os.listdir(checkpoints) if n.isdigit())
  kept = snapshot(os.path.join(checkpoints, str(latest)), os.path.join(workdir, "best"))
  argv = [*tiny_args, f"--workdir={workdir}", f"--config.num_epochs={config.num_epochs + 1}"]

  def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), checkpoints)

  monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
  status, _, err = run_entry("train.py", argv, capsys)
  assert status == cli.EXIT_ERROR
  assert_one_line(
      err, f"{checkpoints}/", "No space left on device (ENOSPC)", f"complete one is step {latest})"
  )
  assert snapshot(os.path.join(checkpoints, str(latest)), os.path.join(workdir, "best")) == kept
  assert not os.path.exists(os.path.join(workdir, "lock.json"))
  monkeypatch.undo()
  status, _, err = run_entry("train.py", argv, capsys)
  assert status == 0, err
  assert max(int(n) for n in os.listdir(checkpoints) if n.isdigit()) > latest


RESUME_CASES = {
    "other model width": ("model.hidden_dim=32", "config.model.hidden_dim"),
    "same shapes, other clip length": ("data.clip_len=1.0", "config.data.clip_len"),
    "same shapes, visual streams swapped": (
        "data.visual_streams=('clip_features','slowfast_features')",
        "config.data.visual_streams",
    ),
    "same shapes, other learning rate": ("optim.learning_rate=0.5", "config.optim.learning_rate"),
}


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_resuming_with_another_config_keeps_the_record(case, trained_copy, capsys):
  """A config that differs from the run's in anything but run control stops before config.json, the
  checkpoints or the log change."""
  _, workdir, tiny_args = trained_copy
  override, key = RESUME_CASES[case]
  before = snapshot(workdir)
  argv = [*tiny_args, f"--workdir={workdir}", f"--config.{override}"]
  status, _, err = run_entry("train.py", argv, capsys)
  assert status == cli.EXIT_ERROR
  assert_one_line(err, key, os.path.join(workdir, "config.json"))
  assert snapshot(workdir) == before


def _set_every_step_aside(workdir):
  checkpoints = os.path.join(workdir, "checkpoints")
  for name in os.listdir(checkpoints):
    if name.isdigit():
      os.replace(os.path.join(checkpoints, name), os.path.join(checkpoints, f"{name}.unreadable"))


def test_all_checkpoints_unreadable_stops_unless_asked_to_start_over(trained_copy, capsys):
  _, workdir, tiny_args = trained_copy
  _set_every_step_aside(workdir)
  before = snapshot(workdir)
  status, _, err = run_entry("train.py", [*tiny_args, f"--workdir={workdir}"], capsys)
  assert status == cli.EXIT_ERROR
  assert_one_line(err, f"{workdir}/checkpoints", "--start_over")
  assert snapshot(workdir) == before

  argv = [*tiny_args, f"--workdir={workdir}", "--start_over", "--config.num_epochs=1"]
  status, _, err = run_entry("train.py", argv, capsys)
  assert status == cli.EXIT_OK, err
  previous = os.path.join(workdir, "previous_run_1")
  moved = {name.replace(previous, workdir): h for name, h in snapshot(previous).items()}
  assert moved == before  # the old run, file for file
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    assert min(json.loads(line)["step"] for line in f) <= 2  # a fresh log from step 0


def test_recovering_from_a_damaged_latest_step_prints_no_traceback(trained_copy, capfd):
  _, workdir, tiny_args = trained_copy
  checkpoints = os.path.join(workdir, "checkpoints")
  latest = max(int(n) for n in os.listdir(checkpoints) if n.isdigit())
  with open(os.path.join(checkpoints, str(latest), "state", "_METADATA"), "w") as f:
    f.write('{"tree_metadata": ')
  with entry_point("train.py") as module:
    status = cli.run_absl(
        module.main, module.__doc__, ["train.py", *tiny_args, f"--workdir={workdir}"]
    )
  _, err = capfd.readouterr()
  assert status == cli.EXIT_OK
  assert "Traceback" not in err and "Event loop is closed" not in err
  assert os.path.isdir(os.path.join(checkpoints, f"{latest}.unreadable"))


# --- eval.py: checkpoints, configs that do not match the run, outputs ----------------------------

EVAL_CASES = {
    "visual streams swapped": (
        ["--config.data.visual_streams=('clip_features','slowfast_features')"],
        "config.data.visual_streams",
    ),
    "another clip length": (["--config.data.clip_len=1.0"], "config.data.clip_len"),
    "another max_clips": (["--config.data.max_clips=30"], "config.data.max_clips"),
    "unknown checkpoint name": (["--checkpoint=newest"], "newest"),
    "missing checkpoint step": (["--checkpoint=999"], "step 999"),
    "unknown split": (["--split=dev"], "--split 'dev'"),
    "negative plots": (["--plots=-1"], "--plots"),
}


@pytest.mark.parametrize("case", sorted(EVAL_CASES))
def test_eval_refuses_before_any_work(case, trained_copy, tmp_path, capsys):
  _, workdir, tiny_args = trained_copy
  before = snapshot(workdir)
  extra, fragment = EVAL_CASES[case]
  output_dir = tmp_path / "eval_out"
  argv = [*tiny_args, f"--workdir={workdir}", f"--output_dir={output_dir}", *extra]
  status, _, err = run_entry("eval.py", argv, capsys)
  assert status == cli.EXIT_ERROR
  assert_one_line(err, fragment)
  assert snapshot(workdir) == before and not output_dir.exists()


def test_eval_output_that_would_replace_its_input(trained_copy, tmp_path, capsys):
  """An --output_dir holding the split's annotations under a name eval writes, or a file."""
  config, workdir, tiny_args = trained_copy
  folder = tmp_path / "annotations"
  folder.mkdir()
  val = folder / "submission.jsonl"
  shutil.copy(config.data.annotation_files["val"], val)
  before = snapshot(str(folder), workdir)
  argv = [
      f"--workdir={workdir}",
      *tiny_args,
      f"--config.data.annotation_files.val={val}",
      f"--output_dir={folder}",
  ]
  status, _, err = run_entry("eval.py", argv, capsys)
  assert status == cli.EXIT_ERROR
  assert_one_line(err, "would replace the input", str(val))
  a_file = tmp_path / "a_file"
  a_file.write_text("keep")
  status, _, err = run_entry("eval.py", [f"--workdir={workdir}", f"--output_dir={a_file}"], capsys)
  assert status == cli.EXIT_ERROR
  assert_one_line(err, str(a_file), "is a file")
  assert snapshot(str(folder), workdir) == before and a_file.read_text() == "keep"


def test_eval_without_config_uses_the_workdirs(trained_copy, tmp_path, capsys):
  _, workdir, _ = trained_copy
  out = tmp_path / "out"
  status, _, err = run_entry("eval.py", [f"--workdir={workdir}", f"--output_dir={out}"], capsys)
  assert status == cli.EXIT_OK, err
  assert (out / "submission.jsonl").exists() and (out / "metrics.json").exists()
  assert os.stat(out / "metrics.json").st_mode & 0o044 == 0o044  # readable by others (umask 022)


# --- predict.py -----------------------------------------------------------------------------------

PREDICT_CASES = {
    "negative nms iou": (["--nms_iou=-1"], "--nms_iou"),
    "top_k 0": (["--top_k=0"], "--top_k"),
    "stride past the window": (["--window_stride=1000"], "--window_stride"),
    "zero duration": (["--duration=0"], "--duration"),
    "no input": (["--vid=", "--features="], "--video or --features"),
    "output folder under a file": (["--output={queries}/p.jsonl"], "is a file"),
    "output is the queries file": (
        ["--output={queries}", "--queries_file={queries}"],
        "is also an input",
    ),
    "output is a folder": (["--output={tmp}"], "is a directory"),
    "workdir without config.json": (["--workdir={tmp}"], "config.json"),
}


@pytest.mark.parametrize("case", sorted(PREDICT_CASES))
def test_predict_refuses_before_any_work(case, trained_copy, tmp_path, capsys):
  config, workdir, _ = trained_copy
  queries = tmp_path / "queries.txt"
  queries.write_text("a person does something\n")
  before = snapshot(workdir, str(queries))
  extra, fragment = PREDICT_CASES[case]
  extra = [a.format(tmp=tmp_path, queries=queries) for a in extra]
  argv = [
      f"--workdir={workdir}",
      f"--features={config.data.feat_root}",
      "--vid=v0",
      "--qid=1",
      *extra,
  ]
  status, out, err = run_entry("predict.py", argv, capsys)
  assert status == cli.EXIT_ERROR
  assert_one_line(err, fragment)
  assert out == "" and snapshot(workdir, str(queries)) == before


# --- the module commands: score, C-QVal ---------------------------------------------------------


def _score_inputs(tmp_path, tiny_data_root):
  gt = tmp_path / "gt.jsonl"
  shutil.copy(os.path.join(tiny_data_root, "annotations", "val.jsonl"), gt)
  records = [json.loads(line) for line in open(gt)]
  preds = tmp_path / "preds.jsonl"
  preds.write_text(
      "".join(
          json.dumps({"qid": r["qid"], "vid": r["vid"], "pred_relevant_windows": [[0, 4, 1.0]]})
          + "\n"
          for r in records
      )
  )
  return str(preds), str(gt)


SCORE_CASES = {
    "metrics over the ground truth": ("--save_path={gt}", "is also an input"),
    "metrics over the submission": ("--save_path={preds}", "is also an input"),
    "metrics into a folder under a file": ("--save_path={gt}/m.json", "is a file"),
    "binary submission": ("--submission={binary}", "not a readable UTF-8"),
    "null where windows belong": ("--submission={nulls}", "pred_relevant_windows"),
}


@pytest.mark.parametrize("case", sorted(SCORE_CASES))
def test_score_cli(case, tmp_path, tiny_data_root, capsys):
  preds, gt = _score_inputs(tmp_path, tiny_data_root)
  binary = tmp_path / "binary.jsonl"
  binary.write_bytes(b"\xff\xfe\x00\x81garbage\n")
  nulls = tmp_path / "nulls.jsonl"
  first = json.loads(open(preds).readline())
  nulls.write_text(json.dumps({**first, "pred_relevant_windows": None}) + "\n")
  before = snapshot(str(tmp_path))
  option, fragment = SCORE_CASES[case]
  key, value = option.format(gt=gt, preds=preds, tmp=tmp_path, binary=binary, nulls=nulls).split(
      "="
  )
  options = {"--submission": preds, "--gt": gt, key: value}
  argv = [part for pair in options.items() for part in pair]
  capsys.readouterr()
  assert score_cli.main(argv) == cli.EXIT_ERROR
  out, err = capsys.readouterr()
  assert_one_line(err, fragment)
  assert out == "" and snapshot(str(tmp_path)) == before


def test_score_and_cqval_usage_and_outputs(tmp_path, tiny_data_root, capsys):
  capsys.readouterr()
  assert score_cli.main(["--gt", "x.jsonl"]) == cli.EXIT_USAGE
  assert_one_line(capsys.readouterr().err, "--submission is required", prefix="usage error: ")
  assert score_cli.main(["--evaluator=nope", "--submission=p", "--gt=g"]) == cli.EXIT_USAGE
  assert_one_line(
      capsys.readouterr().err,
      "--evaluator=nope",
      "<charades_sta|qvhighlights>",
      prefix="usage error: ",
  )
  assert score_cli.main(["--help"]) == cli.EXIT_OK
  assert "--submission: predictions" in capsys.readouterr().out
  preds, gt = _score_inputs(tmp_path, tiny_data_root)
  a_file = tmp_path / "a_file"
  a_file.write_text("keep")
  capsys.readouterr()
  assert cqval_cli.main(["--annotations", gt, "--out_dir", str(a_file / "sub")]) == cli.EXIT_ERROR
  assert_one_line(capsys.readouterr().err, str(a_file), "is a file")
  assert a_file.read_text() == "keep"


def test_verbose_adds_the_traceback(tmp_path, tiny_data_root, capsys):
  preds, gt = _score_inputs(tmp_path, tiny_data_root)
  assert score_cli.main(["--submission", preds, "--gt", gt, "--save_path", gt, "--verbose"]) == 1
  err = capsys.readouterr().err
  assert "Traceback" in err and err.splitlines()[-1].startswith("error: ")


# --- k below the number of windows: the k-sweep of docs/training.md ----------------------------------

K_SWEEP = (1, 3, 5, 8, 10, 20, 30)  # paper Tab. VII


def _k_config(root, k):
  config = tiny_config(root)
  config.model.num_queries = k
  config.data.max_windows = 5
  config.optim.learning_rate = 1e-3  # so that a few steps on one batch show the loss falling
  return config


def _five_windows(batch):
  """Every query of the batch gets 5 ground-truth windows (max_windows)."""
  starts = np.linspace(0.0, 0.8, 5, dtype=np.float32)
  windows = np.stack([starts, starts + 0.1], -1)
  batch["windows"] = np.broadcast_to(windows, batch["windows"].shape).copy()
  batch["window_mask"] = np.ones_like(batch["window_mask"])
  return batch


@pytest.mark.slow
@pytest.mark.parametrize("k", K_SWEEP)
def test_k_sweep_scores_queries_with_more_windows_than_k(tiny_data_root, k):
  """Every k of Tab. VII against 5 windows per query: the model's k moments and every loss term,
  matching included (k < 5 pairs each slot with one window, DETR's rectangular matching; k > 5
  leaves slots to the background), jitted and finite. Forward and loss only: the gradient would
  triple each compilation; k=1 trains below."""
  from lmr_jax.data import dataset, pipeline
  from lmr_jax.losses import losses
  from lmr_jax.training import state as state_lib
  from lmr_jax.training import train_step as train_step_lib

  config = _k_config(tiny_data_root, k)
  source = dataset.example_source(config.data, "train", with_captions=True, training=True)
  batch = _five_windows(dict(next(pipeline.train_batches(source, 4, seed=0)).arrays))
  model = state_lib.build_model(config)
  tx, _ = train_step_lib.make_optimizer(config.optim, 1)
  # Random parameters of the model's shapes: traced, not run op by op as an eager init would be.
  shapes = jax.eval_shape(lambda: state_lib.init_state(config, model, tx, batch).params)
  rng = np.random.default_rng(k)
  params = jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(s.dtype), shapes)

  @jax.jit
  def forward_and_loss(params, batch):
    outputs = model.apply({"params": params}, batch, train=False)
    return outputs, losses.total_loss(outputs, batch, config.loss)

  outputs, (loss, terms) = forward_and_loss(params, batch)
  assert outputs["pred_spans"].shape[-2] == k and outputs["pred_logits"].shape[-2] == k
  assert np.isfinite(float(loss)) and all(np.isfinite(float(v)) for v in terms.values())


@pytest.mark.slow
def test_fewer_queries_than_windows_train(tiny_data_root):
  """k=1 against 5 windows per query (it failed inside jit before): the loss falls on one batch."""
  config = _k_config(tiny_data_root, 1)
  _, step_metrics, batch, _ = train_on_one_batch(config, steps=6, edit_batch=_five_windows)
  losses = [m["loss"] for m in step_metrics]
  assert batch["window_mask"].sum(1).min() == 5
  assert all(np.isfinite(losses)) and min(losses[3:]) < losses[0], losses


# --- what a terminal shows -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_terminal_sees_one_line_and_no_banners(tiny_data_root, tmp_path):
  """A real process: a data error in train.py is exactly one stderr line, with no TensorFlow or absl
  banner or config dump before it, even without TF_CPP_MIN_LOG_LEVEL in the environment."""
  config = tiny_config(tiny_data_root)
  missing = tmp_path / "missing_train.jsonl"
  command = [
      sys.executable,
      "train.py",
      f"--config={TINY}",
      f"--workdir={tmp_path / 'w'}",
      *data_flags(config),
      f"--config.data.annotation_files.train={missing}",
  ]
  env = child_environment(num_cpu_devices=1)
  env.pop("TF_CPP_MIN_LOG_LEVEL")
  result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr
  assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {missing}")
  assert result.stdout == "" and not (tmp_path / "w").exists()


# --- the host allocator the entry points restart with ---------------------------------------------

ALLOCATOR_PROBE = """
import json, os
from lmr_jax import cli
cli.exec_with_tcmalloc()
maps = open("/proc/self/maps").read()
print(json.dumps({"loaded": "tcmalloc" in maps, "preload": os.environ.get("LD_PRELOAD", "")}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="LD_PRELOAD and /proc are Linux's")
@pytest.mark.parametrize("allocator", ["tcmalloc", "system"])
def test_entry_points_restart_with_tcmalloc_where_installed(allocator):
  """``cli.exec_with_tcmalloc``: the process restarted with tcmalloc loaded and a preload it had
  kept after it; nothing where the library is not installed or with ``LMR_ALLOCATOR=system``."""
  import ctypes.util  # noqa: PLC0415

  earlier = ctypes.util.find_library("m")  # a harmless preload the user had set
  env = dict(os.environ, LMR_ALLOCATOR=allocator, LD_PRELOAD=earlier)
  result = subprocess.run(
      [sys.executable, "-c", ALLOCATOR_PROBE], cwd=REPO, env=env, capture_output=True, text=True
  )
  assert result.returncode == 0, result.stderr
  probe = json.loads(result.stdout)
  library = ctypes.util.find_library(cli.TCMALLOC)
  if library is None or allocator == "system":
    assert probe == {"loaded": False, "preload": earlier}
  else:
    assert probe == {"loaded": True, "preload": f"{library}:{earlier}"}
