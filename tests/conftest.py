"""Shared fixtures: a tiny synthetic dataset in the real layout and a tiny config that reads it."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Tests compile many small programs and run each a few times, so XLA:CPU's compile time is most of
# the suite (docs/testing.md): its LLVM back end at -O0, the classic loop emitters instead of the
# MLIR fusion emitters, one codegen thread per module (pytest's workers already fill the cores) --
# together about half the compile time of a train step. Set before JAX starts its backend, inherited
# by every subprocess a test starts; a flag the user sets in XLA_FLAGS is kept.
_TEST_XLA_FLAGS = {
    "--xla_backend_optimization_level": "0",
    "--xla_cpu_use_fusion_emitters": "false",
    "--xla_cpu_parallel_codegen_split_count": "1",
}
_user_xla_flags = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = " ".join(
    [_user_xla_flags]
    + [f"{flag}={value}" for flag, value in _TEST_XLA_FLAGS.items() if flag not in _user_xla_flags]
).strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import contextlib  # noqa: E402
import fcntl  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

from lmr_jax.data import synthetic  # noqa: E402

# Four CPU devices for the whole session: the tiny config (num_devices 0 = all) trains data-parallel
# in every test, and tests/test_parallel.py compares it with one device.
jax.config.update("jax_num_cpu_devices", 4)
# Every train_and_evaluate call jits its step anew; the persistent cache turns the repeats into loads.
# One cache per test run: pytest-xdist's workers (same PYTEST_XDIST_TESTRUNUID) share it, so a step
# one worker compiled is a load for the other, and the environment passes it to every subprocess a
# test starts (train.py, eval.py, ...), not only to those started with child_environment().
_XDIST_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")
if _XDIST_RUN:
  _CACHE_DIR = os.path.join(tempfile.gettempdir(), f"lmr_test_jax_cache_{_XDIST_RUN}")
  os.makedirs(_CACHE_DIR, exist_ok=True)
else:
  _CACHE_DIR = tempfile.mkdtemp(prefix="lmr_test_jax_cache_")
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")

TINY_SYNTHETIC = synthetic.SyntheticConfig(
    seed=3,
    train_videos=12,
    val_videos=5,
    test_videos=3,
    min_clips=20,
    max_clips=24,
    min_event_clips=2,
    max_event_clips=3,
    slowfast_dim=24,
    clip_dim=16,
    text_dim=16,
    caption_dim=20,
)


def _made_once(tmp_path_factory, name: str, make) -> str:
  """A directory that ``make(path)`` filled, made once per test run: with pytest-xdist the first
  worker to ask makes it in the run's shared temporary directory (under a lock) and the others wait
  for it; without xdist it is the session's ``mktemp(name)``."""
  if not _XDIST_RUN:
    path = str(tmp_path_factory.mktemp(name))
    make(path)
    return path
  path = os.path.join(str(tmp_path_factory.getbasetemp().parent), name)
  with open(path + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.exists(path + ".done"):
      shutil.rmtree(path, ignore_errors=True)
      os.makedirs(path)
      make(path)
      open(path + ".done", "w").close()
  return path


def _workers_own(tmp_path_factory, made_once: str, name: str) -> str:
  """The workdir under a ``_made_once`` folder, copied for this xdist worker (what one worker's tests
  write there, evaluations say, no other worker sees); without xdist the folder's own."""
  workdir = os.path.join(made_once, "workdir")
  if not _XDIST_RUN:
    return workdir
  copy = str(tmp_path_factory.mktemp(name))
  shutil.copytree(workdir, copy, dirs_exist_ok=True)
  return copy


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory):
  return _made_once(
      tmp_path_factory, "tiny_synthetic", lambda root: synthetic.generate(TINY_SYNTHETIC, root)
  )


@pytest.fixture(scope="session")
def tiny_trained(tiny_data_root, tmp_path_factory):
  """(config, workdir, final metrics) of one training run of configs/tiny.py on the session's 4
  devices (2 epochs, a checkpoint every 3 steps and per epoch), shared by the tests that read a trained
  workdir. Trained once per test run; each xdist worker gets its own copy of the workdir."""
  from lmr_jax.commands import train as train_lib  # noqa: PLC0415 - after the JAX settings above

  config = tiny_config(tiny_data_root)

  def train(path):
    metrics = train_lib.train_and_evaluate(config, os.path.join(path, "workdir"))
    with open(os.path.join(path, "metrics.pickle"), "wb") as f:
      pickle.dump(metrics, f)

  trained = _made_once(tmp_path_factory, "tiny_trained", train)
  with open(os.path.join(trained, "metrics.pickle"), "rb") as f:
    metrics = pickle.load(f)
  return config, _workers_own(tmp_path_factory, trained, "tiny_workdir"), metrics


CLIP_ONLY_MAX_CLIPS = 12
# The tiny CLIP's projection and text width, and the tiny Llama's embedding width.
CLIP_ONLY_DIM = 16
# Synthetic features with the tiny preprocess models' dims, so one model serves both input paths.
CLIP_ONLY_DATA = synthetic.SyntheticConfig(
    seed=5,
    train_videos=8,
    val_videos=3,
    test_videos=2,
    min_clips=8,
    max_clips=CLIP_ONLY_MAX_CLIPS,
    min_event_clips=2,
    max_event_clips=3,
    slowfast_dim=4,
    clip_dim=CLIP_ONLY_DIM,
    text_dim=CLIP_ONLY_DIM,
    caption_dim=CLIP_ONLY_DIM,
)
TINY_HF_MODELS = ("llama", "llama_sharded", "clip", "llava_next_video", "llava")


@pytest.fixture(scope="session")
def clip_only_trained(tmp_path_factory):
  """(config, workdir) of a CLIP-only tiny model trained for one epoch on CLIP_ONLY_DATA, which
  takes raw videos through the tiny preprocessing models (``tiny_hf_models``): predict.py's and
  demo.py's tests. Trained once per test run; each xdist worker gets its own copy of the workdir."""
  from lmr_jax.commands import train as train_lib  # noqa: PLC0415 - after the JAX settings above

  def config_at(root):
    config = tiny_config(os.path.join(root, "data"))
    config.data.visual_streams, config.data.visual_dims = ("clip_features",), (CLIP_ONLY_DIM,)
    config.data.query_dim = config.data.caption_dim = CLIP_ONLY_DIM
    config.data.max_clips = CLIP_ONLY_MAX_CLIPS
    config.num_epochs = 1
    return config

  def train(root):
    synthetic.generate(CLIP_ONLY_DATA, os.path.join(root, "data"))
    train_lib.train_and_evaluate(config_at(root), os.path.join(root, "workdir"))

  trained = _made_once(tmp_path_factory, "clip_only_trained", train)
  return config_at(trained), _workers_own(tmp_path_factory, trained, "clip_only_workdir")


@pytest.fixture(scope="session")
def tiny_hf_models(tmp_path_factory):
  """{name: path} of the tiny random Hugging Face checkpoints (tests/tiny_models.py) with
  CLIP_ONLY_DIM-wide CLIP and Llama, built once per test run."""
  import pathlib  # noqa: PLC0415

  from tiny_models import build_checkpoints  # noqa: PLC0415 - torch, only for the tests that need it

  root = _made_once(
      tmp_path_factory,
      "tiny_hf_models",
      lambda path: build_checkpoints(pathlib.Path(path), clip_projection_dim=CLIP_ONLY_DIM),
  )
  return {name: pathlib.Path(root) / name for name in TINY_HF_MODELS}


def train_on_one_batch(config, steps: int = 8, edit_batch=lambda batch: batch):
  """(train state, each step's metrics as {name: float}, batch, train source): ``steps`` jitted train
  steps of ``config`` on the first training batch of 4 (as ``edit_batch`` returns it), the same
  dropout key each step. A step's metrics (loss terms, loss, grad_norm) are at the params before it.
  """
  from lmr_jax.data import dataset, pipeline  # noqa: PLC0415 - after the JAX settings above
  from lmr_jax.training import state as state_lib  # noqa: PLC0415
  from lmr_jax.training import train_step as train_step_lib  # noqa: PLC0415

  source = dataset.example_source(config.data, "train", with_captions=True, training=True)
  batch = edit_batch(dict(next(pipeline.train_batches(source, 4, seed=0)).arrays))
  model = state_lib.build_model(config)
  tx, _ = train_step_lib.make_optimizer(config.optim, 100)
  state = state_lib.init_state(config, model, tx, batch)
  step = train_step_lib.jit_train_step(model, tx, config.loss)
  step_metrics = []
  for _ in range(steps):
    state, metrics = step(state, batch, jax.random.key(0))
    step_metrics.append({name: float(value) for name, value in metrics.items()})
  return state, step_metrics, batch, source


def restore_checkpoint(config, workdir: str, which: str = "latest", num_devices: int | None = None):
  """(train state, DataPosition) of ``which`` checkpoint ('latest', 'best' or a step) of ``workdir``,
  laid out for ``config`` on ``num_devices`` devices (default ``config.num_devices``)."""
  from lmr_jax.data import dataset  # noqa: PLC0415 - after the JAX settings above
  from lmr_jax.training import checkpoint as checkpoint_lib  # noqa: PLC0415
  from lmr_jax.training import parallel  # noqa: PLC0415
  from lmr_jax.training import state as state_lib  # noqa: PLC0415
  from lmr_jax.training import train_step as train_step_lib  # noqa: PLC0415

  source = dataset.example_source(config.data, "train", with_captions=True, training=True)
  model = state_lib.build_model(config)
  tx, _ = train_step_lib.make_optimizer(config.optim, 1)
  mesh = parallel.make_mesh(config.num_devices if num_devices is None else num_devices)
  abstract, _ = state_lib.sharded_state_layout(
      config, model, tx, mesh, batch=state_lib.zeros_batch(source.element_spec(), config.batch_size)
  )
  checkpointer = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints, config.best_metric)
  try:
    return checkpointer.restore(which, abstract)
  finally:
    checkpointer.close()


def logged_train_losses(workdir: str) -> dict[int, float]:
  """{step: train loss} of ``workdir``'s metrics log; the last record of a step wins (steps re-run
  after a kill are logged again)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r["train/loss"] for r in map(json.loads, f) if "train/loss" in r}


def tiny_config(root: str, arg: str = ""):
  """configs/tiny.py pointed at ``root`` (unlocked so tests can change fields)."""
  from configs import tiny

  config = tiny.get_config(arg).unlock()
  config.data.feat_root = os.path.join(root, "features")
  for split in config.data.annotation_files:
    config.data.annotation_files[split] = os.path.join(root, "annotations", f"{split}.jsonl")
  return config


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_command(config, workdir: str, keys=()) -> list[str]:
  """``python train.py`` on configs/tiny.py with ``config``'s data paths and its values of ``keys``
  as command-line overrides (run it from REPO)."""
  overrides = [f"--config.data.feat_root={config.data.feat_root}"]
  overrides += [
      f"--config.data.annotation_files.{split}={path}"
      for split, path in config.data.annotation_files.items()
  ]
  overrides += [f"--config.{key}={config[key]}" for key in keys]
  return [
      sys.executable,
      "train.py",
      "--config=configs/tiny.py",
      f"--workdir={workdir}",
  ] + overrides


def forge_lock(workdir, pid: int, *, host: str = "", command: str = "training", age_s: float = 0):
  """Writes the lock a holder with ``pid`` on ``host`` (default: this one) would have written,
  last refreshed ``age_s`` ago."""
  from lmr_jax.training import run_lock  # noqa: PLC0415 - after the JAX settings above

  path = os.path.join(workdir, run_lock.LOCK_FILE)
  record = {
      "command": command,
      "host": host or socket.gethostname(),
      "pid": pid,
      "boot": run_lock._boot_id(),
      "started": "2026-12-06T00:00:00+00:00",
      "token": "forged",
  }
  with open(path, "w") as f:
    json.dump(record, f)
  stamp = time.time() - age_s
  os.utime(path, (stamp, stamp))
  return path


@pytest.fixture
def live_pid():
  """The pid of a live process (a ``sleep``) for the length of a test: a lock holder that runs."""
  child = subprocess.Popen(["sleep", "600"])
  yield child.pid
  child.kill()
  child.wait()


def child_environment(num_cpu_devices: int = 4, **variables) -> dict[str, str]:
  """The environment of a child training process: this session's compile cache (so it loads the
  executables this process compiled) and ``num_cpu_devices`` CPU devices."""
  return dict(
      os.environ,
      JAX_NUM_CPU_DEVICES=str(num_cpu_devices),
      JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      TF_CPP_MIN_LOG_LEVEL="3",
      **variables,
  )


@contextlib.contextmanager
def entry_point(script: str):
  """``script`` (train.py, eval.py, predict.py) loaded as a module in this process; the absl flags it
  defines are removed again on exit, so that entry points defining the same flag names can each be
  tested in one pytest process."""
  before = set(flags.FLAGS)
  spec = importlib.util.spec_from_file_location(
      f"{os.path.splitext(script)[0]}_entry_point", os.path.join(REPO, script)
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  try:
    yield module
  finally:
    for name in set(flags.FLAGS) - before:
      delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()


# With pytest-xdist (`-n 3 --dist loadfile`) each module runs whole on one worker, in this order: the
# longest modules first, so that the workers finish together instead of one starting a
# several-minute module at the end. Without xdist the order is pytest's own.
SLOW_MODULES_FIRST = (
    "test_parallel.py",
    "test_predict.py",
    "test_demo.py",
    "test_model.py",
    "test_faults.py",
    "test_resident.py",
    "test_bad_input.py",
    "test_training.py",
    "test_precision.py",
    "test_port.py",
    "test_benchmark.py",
)


# The fast tier, `pytest -m "not slow"` (docs/testing.md): what trains, starts processes, drives a
# browser or compiles whole train steps is marked slow, by hand (`pytest.mark.slow`) or here, for
# every test that reads a trained workdir or the tiny Hugging Face models through these fixtures
# (directly or through another fixture), so that a new test using them needs no mark of its own.
SLOW_FIXTURES = frozenset({"tiny_trained", "clip_only_trained", "tiny_hf_models"})


def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    if SLOW_FIXTURES & set(item.fixturenames):
      item.add_marker(pytest.mark.slow)
  if os.environ.get("PYTEST_XDIST_WORKER"):
    rank = {name: i for i, name in enumerate(SLOW_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
