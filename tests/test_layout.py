"""The tree's shape: imports run one way (tests/import_graph.py), functions stay short, and importing a
module changes nothing outside it."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

import import_graph

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAX_BODY_LINES = 60
REASON = "Long because"


def test_lmr_jax_has_no_import_cycle_and_no_upward_arrow():
  graph = import_graph.module_graph()
  assert "lmr_jax.training.trainer" in graph and len(graph) > 40  # the graph is really read
  assert import_graph.violations(graph) == []


def test_the_checker_sees_cycles_and_upward_arrows():
  graph = {
      "lmr_jax.training.trainer": {"lmr_jax.evaluation.evaluators"},
      "lmr_jax.evaluation.evaluators": {"lmr_jax.training.metric_log"},
      "lmr_jax.training.metric_log": set(),
      "lmr_jax.data.dataset": {"lmr_jax.data.packed"},
      "lmr_jax.data.packed": {"lmr_jax.data.dataset"},
  }
  problems = import_graph.violations(graph)
  assert (
      "module cycle: lmr_jax.data.dataset -> lmr_jax.data.packed -> lmr_jax.data.dataset"
      in problems
  )
  assert any(
      p.startswith("package cycle: lmr_jax.evaluation -> lmr_jax.training") for p in problems
  )
  assert "upward arrow: lmr_jax.training.trainer -> lmr_jax.evaluation.evaluators" in problems


def test_long_functions_say_why():
  long = []
  for path in sorted((ROOT / "lmr_jax").rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        continue
      docstring = ast.get_docstring(node) or ""
      first = node.body[1] if docstring and len(node.body) > 1 else node.body[0]
      if node.end_lineno - first.lineno + 1 > MAX_BODY_LINES and REASON not in docstring:
        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
  assert long == []


def _help_text(call: ast.Call, position: int):
  """The help argument of a flag definition: the ``help`` keyword, else the positional at
  ``position``."""
  for keyword in call.keywords:
    if keyword.arg == "help":
      return keyword.value
  return call.args[position] if len(call.args) > position else None


def _is_empty(node) -> bool:
  return node is None or (isinstance(node, ast.Constant) and not str(node.value or "").strip())


def test_every_command_takes_absl_flags_and_every_flag_says_what_it_does():
  """One command-line style: no argparse parser anywhere (``argparse.Namespace`` is allowed: QD-DETR
  saves its options as one, which the port unpickles); absl's ``DEFINE_*`` in every command (lmr_jax,
  preprocess and the entry points) carry a help text, so ``--help`` describes every flag."""
  sources = [*(ROOT / "lmr_jax").rglob("*.py"), *(ROOT / "preprocess").rglob("*.py")]
  sources += [ROOT / name for name in ("train.py", "eval.py", "predict.py", "demo.py")]
  bare, argparse_users, flags_seen = [], [], 0
  for path in sorted(sources):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module == "argparse":
        if any(a.name != "Namespace" for a in node.names):
          argparse_users.append(str(path.relative_to(ROOT)))
      if isinstance(node, ast.Attribute) and node.attr in ("ArgumentParser", "parse_args"):
        argparse_users.append(str(path.relative_to(ROOT)))
      if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        continue
      name = node.func.attr
      if not name.startswith("DEFINE_"):
        continue
      # DEFINE_x(name, default, help, ...); DEFINE_enum(name, default, values, help, ...)
      help_node = _help_text(node, position=3 if "enum" in name else 2)
      flags_seen += 1
      if _is_empty(help_node):
        bare.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
  assert argparse_users == []
  assert flags_seen > 60  # the commands' flags are really read
  assert bare == []


# Functions that take more than four positional arguments, and why they may.
POSITIONAL_ARRAYS = {
    "__call__": "Flax modules take their arrays positionally, as the layers they mirror do",
    "_attention": "lax.map passes the chunked arrays as one tuple",
    "_find_augmenting_path": "the Hungarian algorithm's state arrays (u, v, p, way), as its textbook names them",
    "resident_steps": "a jitted step: its arrays are positional, as jit's donation counts them",
}


def test_helpers_with_more_than_four_arguments_take_them_by_keyword():
  positional = []
  for path in sorted([*(ROOT / "lmr_jax").rglob("*.py"), *(ROOT / "preprocess").rglob("*.py")]):
    for node in ast.walk(ast.parse(path.read_text())):
      if not isinstance(node, ast.FunctionDef) or node.name in POSITIONAL_ARRAYS:
        continue
      names = [a.arg for a in node.args.posonlyargs + node.args.args]
      if len(names) - (names[:1] in (["self"], ["cls"])) > 4:
        positional.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
  assert positional == []


@pytest.mark.slow
def test_importing_lmr_jax_changes_no_global_state():
  """Every module imported in a fresh process: no environment variable, sys.path entry or logging
  handler filter is added, and TensorFlow keeps its GPUs (tf.data hides them when it is first used).
  """
  modules = sorted(import_graph.module_graph())
  code = f"""
import logging, os, sys
from absl import logging as absl_logging
# The third-party libraries first: some of them set environment variables as they load.
import av, flax, jax, matplotlib, optax, orbax.checkpoint, tensorflow, tensorflow_datasets, torch
import transformers
import preprocess.captioners, preprocess.clip_features, preprocess.text_features, preprocess.video_io
env, path = dict(os.environ), list(sys.path)
filters = list(absl_logging.get_absl_handler().filters)
import importlib
for name in {modules!r}:
  importlib.import_module(name)
import tensorflow as tf
assert dict(os.environ) == env, set(os.environ.items()) ^ set(env.items())
assert sys.path == path, sys.path
assert list(absl_logging.get_absl_handler().filters) == filters
assert tf.config.get_visible_devices("GPU") == tf.config.list_physical_devices("GPU")
print("ok")
"""
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  result = subprocess.run(
      [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
