"""Shared fixtures: a tiny synthetic dataset in the real layout and a tiny config that reads it."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tempfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

from lmr_jax.data import synthetic  # noqa: E402

# Four CPU devices for the whole session: the tiny config (num_devices 0 = all) trains data-parallel
# in every test, and tests/test_parallel.py compares it with one device.
jax.config.update("jax_num_cpu_devices", 4)
# Every train_and_evaluate call jits its step anew; the persistent cache turns the repeats into loads.
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="lmr_test_jax_cache_"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

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


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("tiny_synthetic"))
  synthetic.generate(TINY_SYNTHETIC, root)
  return root


def tiny_config(root: str, arg: str = ""):
  """configs/tiny.py pointed at ``root`` (unlocked so tests can change fields)."""
  from configs import tiny

  config = tiny.get_config(arg).unlock()
  config.data.feat_root = os.path.join(root, "features")
  for split in config.data.annotation_files:
    config.data.annotation_files[split] = os.path.join(root, "annotations", f"{split}.jsonl")
  return config
