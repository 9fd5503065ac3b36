r"""QD-DETR's own pipeline against the port: does a ported checkpoint score what QD-DETR printed?

  python -m lmr_jax.port.compare_qd_detr --qd_detr_root=../QD-DETR --workdir=/tmp/qd_detr_compare

On synthetic data in the QVHighlights layout (``lmr_jax.data.synthetic``: by default 200 train and
60 val videos, events of 3-20 clips, seed 5), it

1. trains public QD-DETR with its own ``qd_detr/train.py`` (``--epochs`` epochs on the CPU, its
   defaults otherwise, evaluating every 5 epochs) and lets it run its own ``inference.py`` on the
   best checkpoint, which writes ``hl_val_submission.jsonl`` and its metrics;
2. ports ``model_best.ckpt`` (``lmr_jax.port.qd_detr``) and evaluates it with ``eval.py``'s code
   twice: with QD-DETR's evaluation protocol, which the port writes into the workdir
   (``eval_protocol="qd_detr"``), and with ours (``"lmr"``);
3. compares each with QD-DETR's files: every brief metric, and per query the windows, scores and
   saliency; and scores the two differences apart (QD-DETR's batch-mixing T2V mask alone, its
   records alone: post-processing, rounding, float16 saliency). It writes
   ``{workdir}/comparison.json`` and ``comparison.md``, prints the tables, and exits 1 when the
   compatible protocol falls short: a brief metric off by more than ``--tolerance``, a query with
   other windows, or a score off by more than its 4th decimal.

QD-DETR (Moon et al., CVPR 2023; github.com/wjun0830/QD-DETR, MIT) is not a dependency: as the
parity fixtures' maker does, the script runs a checkout (``--qd_detr_root``, the folder holding
``qd_detr/``) with a Python that has torch and QD-DETR's own imports (``--qd_detr_python``, default
this one; missing ones are named with the pip command). Two shims make its code run here and
nothing else: ``Tensor.cuda`` is the identity on the CPU (its transformer calls it
unconditionally), and ``argparse.Namespace`` is allowed to its ``torch.load`` (torch >= 2.6 loads
``weights_only`` and refuses the options QD-DETR saves in its own checkpoints).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import subprocess
import sys

import numpy as np
from absl import flags

from lmr_jax import cli, fileio
from lmr_jax.errors import LmrError

if __name__ == "__main__":  # run as a command: quiet before TensorFlow and JAX are imported; as a
  cli.quiet_native_logs()  # library module, importing it changes no environment variable

# What QD-DETR's code imports beyond the standard library (its README's requirements).
QD_DETR_IMPORTS = ("torch", "tqdm", "easydict", "sklearn", "pandas", "tabulate", "tensorboard")
_PIP_NAMES = {"sklearn": "scikit-learn"}
# Runs one of QD-DETR's scripts as ``python qd_detr/x.py`` would, with the two shims of the docstring.
_BOOTSTRAP = """\
import argparse, runpy, sys, torch
torch.Tensor.cuda = lambda self, *args, **kwargs: self
if hasattr(torch.serialization, "add_safe_globals"):  # torch >= 2.4
  torch.serialization.add_safe_globals([argparse.Namespace])
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
QD_DETR_SUBMISSION = "hl_val_submission.jsonl"  # what its inference.py writes for the val split
PROTOCOLS = ("qd_detr", "lmr")


class CompareError(LmrError):
  """QD-DETR's checkout or its run cannot give the files to compare."""


@dataclasses.dataclass(frozen=True)
class Data:
  """The generated data QD-DETR and the port both read."""

  feat_root: str
  train: str  # annotation files
  val: str


def check_checkout(root: str, python: str) -> None:
  """``root`` is a QD-DETR checkout and ``python`` can import what its code imports."""
  if not os.path.isfile(os.path.join(root, "qd_detr", "train.py")):
    raise CompareError(f"{root}: no qd_detr/train.py here; --qd_detr_root takes a QD-DETR checkout")
  probe = "import importlib.util as u; print(' '.join(m for m in {!r} if u.find_spec(m) is None))"
  try:
    found = subprocess.run(
        [python, "-c", probe.format(QD_DETR_IMPORTS)], capture_output=True, text=True, check=True
    )
  except (OSError, subprocess.CalledProcessError) as e:
    raise CompareError(f"--qd_detr_python {python}: cannot run it ({e})") from None
  missing = found.stdout.split()
  if missing:
    names = " ".join(_PIP_NAMES.get(m, m) for m in missing)
    raise CompareError(
        f"--qd_detr_python {python} cannot import {', '.join(missing)}, which QD-DETR's code "
        f"needs: {python} -m pip install {names}"
    )


def write_data(folder: str, settings: dict) -> Data:
  """The synthetic benchmark with ``settings`` in ``folder`` (reused when made with the same)."""
  import ml_collections  # noqa: PLC0415

  from lmr_jax.data import synthetic  # noqa: PLC0415

  feat_root = os.path.join(folder, "features")
  synthetic.ensure(ml_collections.ConfigDict({"feat_root": feat_root, "synthetic": settings}))
  annotations = os.path.join(folder, "annotations")
  return Data(feat_root, *(os.path.join(annotations, f"{s}.jsonl") for s in ("train", "val")))


def qd_detr_train_args(data: Data, results_root: str, *, epochs: int, seed: int) -> list[str]:
  """Its ``scripts/train.sh`` for QVHighlights (SlowFast + CLIP, CLIP text, video_tef, batch 32)
  on ``data``, on the CPU, for ``epochs`` epochs."""
  f = data.feat_root
  return [
      *("--dset_name", "hl", "--ctx_mode", "video_tef"),
      *("--train_path", data.train, "--eval_path", data.val, "--eval_split_name", "val"),
      *("--v_feat_dirs", f"{f}/slowfast_features", f"{f}/clip_features", "--v_feat_dim", "2816"),
      *("--t_feat_dir", f"{f}/clip_text_features", "--t_feat_dim", "512", "--bsz", "32"),
      *("--results_root", results_root, "--exp_id", "compare"),
      *("--n_epoch", str(epochs), "--seed", str(seed), "--device", "-1", "--num_workers", "0"),
  ]


def run_qd_detr(root: str, python: str, args: list[str], log_path: str) -> None:
  """``python qd_detr/train.py ARGS`` in the checkout (with the shims), its output into
  ``log_path``; a failure names the log and its last line."""
  env = dict(
      os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
  )
  with open(log_path, "w") as log:
    done = subprocess.run(
        [python, "-c", _BOOTSTRAP, "qd_detr/train.py", *args],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        check=False,
    )
  if done.returncode:
    with open(log_path, errors="replace") as f:
      lines = [line.strip() for line in f if line.strip()]
    last = lines[-1] if lines else "(no output)"
    raise CompareError(f"QD-DETR's train.py failed (exit {done.returncode}, {log_path}): {last}")


def qd_detr_results(results_root: str) -> str:
  """The results folder QD-DETR's run made under ``results_root`` (it adds a time stamp)."""
  found = sorted(glob.glob(os.path.join(results_root, "hl-video_tef-compare-*")))
  if not found or not os.path.exists(os.path.join(found[-1], QD_DETR_SUBMISSION)):
    raise CompareError(f"{results_root}: QD-DETR's run left no {QD_DETR_SUBMISSION}")
  return found[-1]


def port_config(port_dir: str, data: Data, protocol: str):
  """The ported workdir's config on ``data`` with ``protocol``."""
  from lmr_jax.training import checkpoint as checkpoint_lib  # noqa: PLC0415

  config = checkpoint_lib.load_config(port_dir)
  with config.unlocked():
    config.data.feat_root = data.feat_root
    config.data.annotation_files.train = data.train
    config.data.annotation_files.val = data.val
    config.eval_protocol = protocol
  return config


def evaluate_port(port_dir: str, data: Data, protocol: str) -> str:
  """eval.py's evaluation of the ported checkpoint on ``data``'s val split with ``protocol``;
  returns the folder holding its submission.jsonl and metrics.json."""
  from lmr_jax.commands import evaluate  # noqa: PLC0415

  output_dir = os.path.join(port_dir, "eval", f"val_{protocol}")
  config = port_config(port_dir, data, protocol)
  evaluate.evaluate_checkpoint(config, port_dir, "best", "val", output_dir=output_dir)
  return output_dir


def attribute_differences(port_dir: str, data: Data) -> dict[str, dict]:
  """The ported checkpoint's brief metrics with QD-DETR's two evaluation differences apart: its
  batch-mixing T2V mask (the model's outputs) and its records (post-processing, rounding, float16
  saliency), in the four combinations; keys "{mixed|per_row} masks, {qd_detr|lmr} records"."""
  import jax  # noqa: PLC0415

  from lmr_jax.data import dataset, pipeline  # noqa: PLC0415
  from lmr_jax.evaluation import evaluators, predictions  # noqa: PLC0415
  from lmr_jax.training import train_step  # noqa: PLC0415
  from lmr_jax.training import state as state_lib  # noqa: PLC0415

  config = port_config(port_dir, data, "qd_detr")
  to_records = {p: predictions.records_for(port_config(port_dir, data, p)) for p in PROTOCOLS}
  source = dataset.example_source(config.data, "val", with_captions=False, training=False)
  by_qid = {a.qid: a for a in source.annotations}
  params, _ = state_lib.restore_on_one_device(config, port_dir, "best", source.element_spec())
  results = {}
  for masks, mixed in (("mixed", True), ("per_row", False)):
    step = train_step.jit_eval_step(state_lib.build_model(config, eval_protocol=mixed))
    records = {p: [] for p in PROTOCOLS}
    for batch in pipeline.eval_batches(source, config.eval_batch_size):
      outputs = jax.device_get(step(params, batch))
      for p in PROTOCOLS:
        records[p] += to_records[p](outputs, batch, by_qid)
    for p in PROTOCOLS:
      scored = evaluators.score(records[p], source.annotations, config.evals)
      results[f"{masks} masks, {p} records"] = scored["brief"]
  return results


def _by_qid(path: str) -> dict[int, dict]:
  return {r["qid"]: r for r, _ in fileio.read_jsonl(path, CompareError, "a submission file")}


def compare_submissions(theirs_path: str, ours_path: str) -> dict:
  """Per-query agreement of two submission files of the same queries: how many have the same
  windows (in the same order), the same scores, the same saliency, and the largest differences."""
  theirs, ours = _by_qid(theirs_path), _by_qid(ours_path)
  if set(theirs) != set(ours):
    raise CompareError(f"{ours_path}: not the queries of {theirs_path}")
  same = {"windows": 0, "scores": 0, "saliency": 0, "top1_window": 0}
  worst = {"score": 0.0, "saliency": 0.0}
  for qid, a in theirs.items():
    b = ours[qid]
    wa, wb = np.asarray(a["pred_relevant_windows"]), np.asarray(b["pred_relevant_windows"])
    sa, sb = np.asarray(a["pred_saliency_scores"]), np.asarray(b["pred_saliency_scores"])
    if wa.shape != wb.shape or sa.shape != sb.shape:
      raise CompareError(f"{ours_path}: qid {qid} has other shapes than in {theirs_path}")
    same["windows"] += bool(np.array_equal(wa[:, :2], wb[:, :2]))
    same["top1_window"] += bool(np.array_equal(wa[0, :2], wb[0, :2]))
    same["scores"] += bool(np.array_equal(wa[:, 2], wb[:, 2]))
    same["saliency"] += bool(np.array_equal(sa, sb))
    worst["score"] = max(worst["score"], float(np.abs(wa[:, 2] - wb[:, 2]).max()))
    worst["saliency"] = max(worst["saliency"], float(np.abs(sa - sb).max()))
  return {"queries": len(theirs), "same": same, "max_abs_diff": worst}


def compare_metrics(theirs: dict, ours: dict) -> dict[str, dict]:
  """{metric: {qd_detr, ours, diff}} over QD-DETR's brief metrics."""
  return {
      k: {"qd_detr": v, "ours": ours.get(k), "diff": None if k not in ours else ours[k] - v}
      for k, v in theirs.items()
  }


def _metric_table(metrics: dict[str, dict], columns: dict[str, dict[str, float]]) -> list[str]:
  """Markdown rows: each of QD-DETR's brief ``metrics`` (``compare_metrics``), its value, then
  each column's."""
  lines = ["| metric | QD-DETR | " + " | ".join(columns) + " |"]
  lines.append("|---|---|" + "---|" * len(columns))
  for name, row in metrics.items():
    cells = [f"{values[name]:.2f}" for values in columns.values()]
    lines.append(f"| {name} | {row['qd_detr']:.2f} | " + " | ".join(cells) + " |")
  return lines


def report_markdown(report: dict) -> str:
  """The comparison as markdown: the metrics of each protocol, its per-query agreement, and the
  differences apart (``attribution``) when present."""
  protocols = report["protocols"]
  metrics = protocols[PROTOCOLS[0]]["metrics"]
  ours = {
      f"port, {p}": {k: v["ours"] for k, v in protocols[p]["metrics"].items()} for p in PROTOCOLS
  }
  lines = _metric_table(metrics, ours) + [""]
  for p in PROTOCOLS:
    q = protocols[p]["queries"]
    n, same, worst = q["queries"], q["same"], q["max_abs_diff"]
    lines.append(
        f"- {p}: of {n} queries, windows equal {same['windows']} (top-1 {same['top1_window']}), "
        f"scores equal {same['scores']} (largest difference {worst['score']:.4g}), saliency "
        f"equal {same['saliency']} (largest difference {worst['saliency']:.4g})"
    )
  if report.get("attribution"):
    lines += [""] + _metric_table(metrics, report["attribution"])
  return "\n".join(lines) + "\n"


def build_report(qd_detr_dir: str, eval_dirs: dict[str, str], attribution: dict | None) -> dict:
  """QD-DETR's val submission and metrics against each protocol's (and ``attribution``, the
  brief metrics of ``attribute_differences``)."""
  with open(os.path.join(qd_detr_dir, QD_DETR_SUBMISSION.replace(".jsonl", "_metrics.json"))) as f:
    theirs = json.load(f)["brief"]
  protocols = {}
  for protocol, folder in eval_dirs.items():
    with open(os.path.join(folder, "metrics.json")) as f:
      ours = json.load(f)["brief"]
    protocols[protocol] = {
        "metrics": compare_metrics(theirs, ours),
        "queries": compare_submissions(
            os.path.join(qd_detr_dir, QD_DETR_SUBMISSION), os.path.join(folder, "submission.jsonl")
        ),
    }
  return {"qd_detr_results": qd_detr_dir, "protocols": protocols, "attribution": attribution}


def _define_flags(flag_values) -> None:
  define = {int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string}
  for name, default, help_text in (
      ("qd_detr_root", None, "a QD-DETR checkout (the folder holding qd_detr/)"),
      ("workdir", None, "folder for the data, QD-DETR's results, the port and the comparison"),
      ("qd_detr_python", sys.executable, "a Python with torch and QD-DETR's imports"),
      ("epochs", 5, "QD-DETR training epochs (it evaluates every 5)"),
      ("seed", 2018, "QD-DETR's --seed (its default)"),
      ("data_seed", 5, "seed of the generated data"),
      ("train_videos", 200, "generated train videos"),
      ("val_videos", 60, "generated val videos"),
      ("min_event_clips", 3, "fewest clips per generated event"),
      ("max_event_clips", 20, "most clips per generated event"),
      ("tolerance", 0.01, "largest brief-metric difference the compatible protocol may show"),
  ):
    define[type(default) if default is not None else str](
        name, default, help_text, flag_values=flag_values
    )


def _compare(args) -> int:
  if not args.qd_detr_root or not args.workdir:
    raise cli.UsageError("--qd_detr_root and --workdir are required")
  if args.epochs < 5:  # its train.py evaluates, and keeps a best checkpoint, every 5 epochs
    raise cli.UsageError(f"--epochs {args.epochs}: QD-DETR evaluates every 5 epochs; give >= 5")
  root = os.path.abspath(args.qd_detr_root)
  check_checkout(root, args.qd_detr_python)
  workdir = os.path.abspath(args.workdir)
  port_dir = os.path.join(workdir, "port")
  if os.path.exists(port_dir):
    raise CompareError(f"{port_dir}: exists; give a new --workdir (the data in it is reused)")
  settings = {
      "seed": args.data_seed,
      "train_videos": args.train_videos,
      "val_videos": args.val_videos,
      "test_videos": 1,  # neither side reads the test split
      "min_event_clips": args.min_event_clips,
      "max_event_clips": args.max_event_clips,
  }
  data = write_data(os.path.join(workdir, "data"), settings)
  results_root = os.path.join(workdir, "qd_detr")
  os.makedirs(results_root, exist_ok=True)
  train_args = qd_detr_train_args(data, results_root, epochs=args.epochs, seed=args.seed)
  print(f"training QD-DETR for {args.epochs} epochs (log: {results_root}/train.log)")
  run_qd_detr(root, args.qd_detr_python, train_args, os.path.join(results_root, "train.log"))
  qd_detr_dir = qd_detr_results(results_root)

  from lmr_jax.port import qd_detr  # noqa: PLC0415 - imports JAX; after QD-DETR's run

  qd_detr.port_checkpoint(os.path.join(qd_detr_dir, "model_best.ckpt"), port_dir)
  eval_dirs = {p: evaluate_port(port_dir, data, p) for p in PROTOCOLS}
  report = build_report(qd_detr_dir, eval_dirs, attribute_differences(port_dir, data))
  fileio.write_json(os.path.join(workdir, "comparison.json"), report, indent=2)
  table = report_markdown(report)
  fileio.atomic_write_text(os.path.join(workdir, "comparison.md"), table)
  print(table)
  problems = disagreements(report["protocols"]["qd_detr"], args.tolerance)
  if problems:
    print(f"eval_protocol='qd_detr' does not reproduce QD-DETR: {'; '.join(problems)}")
    return 1
  return 0


def disagreements(compared: dict, tolerance: float) -> list[str]:
  """Where one protocol's comparison falls short of QD-DETR's numbers: a brief metric off by more
  than ``tolerance``, a query with other windows, a score off by more than its last written digit.
  """
  problems = [
      f"{k} {v['ours']} against {v['qd_detr']}"
      for k, v in compared["metrics"].items()
      if v["diff"] is None or abs(v["diff"]) > tolerance
  ]
  queries = compared["queries"]
  if queries["same"]["windows"] < queries["queries"]:
    problems.append(f"windows differ in {queries['queries'] - queries['same']['windows']} queries")
  if queries["max_abs_diff"]["score"] > 1e-4 + 1e-9:
    problems.append(f"a score differs by {queries['max_abs_diff']['score']:.4g}")
  return problems


def main(argv=None) -> int:
  return cli.run_command(_define_flags, _compare, __doc__, argv)


if __name__ == "__main__":
  sys.exit(main())
