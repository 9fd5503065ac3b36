"""Packed TFDS data: real TFDS on disk, examples bit-identical to the numpy path, clear errors."""

import copy
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import tiny_config
from lmr_jax.data.position import DataPosition
from lmr_jax.data import annotations as annotations_lib
from lmr_jax.data import dataset, packed, pipeline
from lmr_jax.data.annotations import DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def packed_dir(tiny_data_root, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("packed"))
  # A tiny shard size, so reading crosses shards.
  packed.pack(
      tiny_config(tiny_data_root).data,
      out,
      ("train", "val"),
      with_captions=True,
      shard_size_mb=0.03,
  )
  return out


def _packed_source(packed_dir, split, data, *, with_captions, training):
  """``dataset.example_source`` of ``data`` read from ``packed_dir``."""
  data = copy.deepcopy(data)
  data.packed_dir = packed_dir
  return dataset.example_source(data, split, with_captions=with_captions, training=training)


def _sources(root, packed_dir, split, training, **data_changes):
  config = tiny_config(root)
  config.data.update(data_changes)
  numpy_source = dataset.example_source(config.data, split, with_captions=True, training=training)
  packed_source = _packed_source(
      packed_dir, split, config.data, with_captions=True, training=training
  )
  return numpy_source, packed_source


def _rng(i, training):
  """The window-subset generator a training example gets (each source needs its own, same seed)."""
  return np.random.default_rng(i) if training else None


def _assert_identical(a: dict, b: dict):
  assert sorted(a) == sorted(b)
  for key in a:
    x, y = np.asarray(a[key]), np.asarray(b[key])
    assert (x.dtype, x.shape) == (y.dtype, y.shape), key
    assert x.tobytes() == y.tobytes(), key


def test_each_split_is_a_tfds_dataset(tiny_data_root, packed_dir):
  config = tiny_config(tiny_data_root)
  for split in ("train", "val"):
    path = packed.dataset_dir(packed_dir, split)
    builder = tfds.builder_from_directory(path)
    source = dataset.example_source(config.data, split, with_captions=True, training=False)
    assert builder.info.splits[split].num_examples == len(source)
    assert builder.info.metadata["settings"]["max_clips"] == config.data.max_clips
    assert {"dataset_info.json", "features.json", "metadata.json"} <= set(os.listdir(path))
  assert builder.info.splits["val"].num_shards > 1


@pytest.mark.parametrize(
    "split, training, max_windows",
    [
        ("train", True, 5),
        ("train", False, 5),
        ("val", False, 5),
        ("train", True, 1),  # fewer windows than most queries have: the random subset is the same
    ],
)
def test_examples_bit_identical_to_numpy_path(
    tiny_data_root, packed_dir, split, training, max_windows
):
  numpy_source, packed_source = _sources(
      tiny_data_root, packed_dir, split, training, max_windows=max_windows
  )
  assert packed_source.annotations == numpy_source.annotations
  assert packed_source.element_spec() == numpy_source.element_spec()
  if max_windows == 1:
    assert any(len(a.windows) > 1 for a in numpy_source.annotations)
  for i in range(len(numpy_source)):
    _assert_identical(
        packed_source.example(i, _rng(i, training)), numpy_source.example(i, _rng(i, training))
    )


def test_truncated_videos_drop_the_same_training_queries(tiny_data_root, tmp_path):
  config = tiny_config(tiny_data_root)
  config.data.max_clips = 8
  out = str(tmp_path)
  packed.pack(config.data, out, ["train"], with_captions=True)
  numpy_source, packed_source = _sources(tiny_data_root, out, "train", True, max_clips=8)
  all_queries = _packed_source(out, "train", config.data, with_captions=True, training=False)
  assert 0 < len(numpy_source) < len(all_queries)
  assert packed_source.annotations == numpy_source.annotations
  for i in range(len(numpy_source)):
    _assert_identical(
        packed_source.example(i, _rng(i, True)), numpy_source.example(i, _rng(i, True))
    )


def test_pipelines_yield_the_same_batches(tiny_data_root, packed_dir):
  numpy_val, packed_val = _sources(tiny_data_root, packed_dir, "val", training=False)
  pairs = zip(
      pipeline.eval_batches(packed_val, 4), pipeline.eval_batches(numpy_val, 4), strict=True
  )
  for packed_batch, numpy_batch in pairs:
    _assert_identical(packed_batch, numpy_batch)
  numpy_train, packed_train = _sources(tiny_data_root, packed_dir, "train", training=True)
  start = DataPosition(epoch=1, step=1)
  packed_it = pipeline.train_batches(packed_train, 4, seed=7, start=start)
  numpy_it = pipeline.train_batches(numpy_train, 4, seed=7, start=start)
  for _ in range(3):
    (packed_pos, _, packed_batch), (numpy_pos, _, numpy_batch) = next(packed_it), next(numpy_it)
    assert packed_pos == numpy_pos
    _assert_identical(packed_batch, numpy_batch)


def _assert_settings_error(packed_dir, data, with_captions, message):
  with pytest.raises(DataError) as e:
    _packed_source(packed_dir, "train", data, with_captions=with_captions, training=True)
  text = str(e.value)
  assert text.startswith(packed.dataset_dir(packed_dir, "train")) and message in text
  assert "\n" not in text


@pytest.mark.parametrize(
    "key, change",
    [
        ("max_clips", lambda v: v + 6),
        ("visual_dims", lambda v: (*v[:-1], v[-1] + 1)),
    ],
)
def test_other_data_settings_are_one_line_error(tiny_data_root, packed_dir, key, change):
  config = tiny_config(tiny_data_root)
  old = packed.packed_settings(config.data, True)[key]
  config.data[key] = change(config.data[key])
  new = packed.packed_settings(config.data, True)[key]
  _assert_settings_error(packed_dir, config.data, True, f"{key}={old!r} (config: {new!r})")


def test_other_caption_setting_is_one_line_error(tiny_data_root, packed_dir):
  _assert_settings_error(
      packed_dir, tiny_config(tiny_data_root).data, False, "with_captions=True (config: False)"
  )


def test_missing_packed_data_is_clear_error(tiny_data_root, packed_dir, tmp_path):
  data = tiny_config(tiny_data_root).data
  with pytest.raises(DataError, match=r"split 'train' is not packed \(packed splits in .*: none\)"):
    _packed_source(str(tmp_path / "nowhere"), "train", data, with_captions=True, training=True)
  with pytest.raises(DataError, match=r"packed splits in .*: \['train', 'val'\]\).*--splits=test"):
    _packed_source(packed_dir, "test", data, with_captions=True, training=False)
  with pytest.raises(DataError, match="already packed; delete it to repack"):
    packed.pack(data, packed_dir, ["val"], with_captions=True)


def test_bad_feature_file_fails_packing_and_leaves_nothing(tiny_data_root, tmp_path):
  root = str(tmp_path / "data")
  shutil.copytree(tiny_data_root, root)
  data = tiny_config(root).data
  vid = annotations_lib.load_annotations(data.annotation_files.train)[-1].vid
  bad = os.path.join(data.feat_root, "clip_features", f"{vid}.npz")
  with open(bad, "w") as f:
    f.write("not a zip")
  out = str(tmp_path / "packed")
  with pytest.raises(DataError, match=f"^{re.escape(bad)}: unreadable npz"):
    packed.pack(data, out, ["train", "val"], with_captions=True)
  with pytest.raises(DataError, match="is not packed"):
    _packed_source(out, "train", data, with_captions=True, training=True)


@pytest.mark.slow
def test_command_line_packs_an_unlabelled_split(tiny_data_root, tmp_path):
  config = tiny_config(tiny_data_root)
  out = str(tmp_path / "cli")
  overrides = [
      f"--config.data.feat_root={config.data.feat_root}",
      f"--config.data.annotation_files.test={config.data.annotation_files.test}",
  ]
  result = subprocess.run(
      [
          sys.executable,
          "-m",
          "lmr_jax.data.packed",
          "--config=configs/tiny.py",
          f"--out_dir={out}",
          "--splits=test",
          *overrides,
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      check=False,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.splitlines()[-1] == packed.dataset_dir(out, "test")  # after tfds' own lines
  numpy_test = dataset.example_source(config.data, "test", with_captions=True, training=False)
  packed_test = _packed_source(out, "test", config.data, with_captions=True, training=False)
  assert packed_test.annotations == numpy_test.annotations
  for i in range(len(numpy_test)):
    _assert_identical(packed_test.example(i), numpy_test.example(i))
