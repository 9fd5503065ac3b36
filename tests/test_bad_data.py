"""Bad input fails when a split is built, in one line naming the file (and line or key), and changes
nothing: annotations, feature files, data config values, synthetic settings, and the checker command.

Every case corrupts a copy of the session's tiny synthetic dataset (the real on-disk layout) and builds
the val split as ``train_and_evaluate`` does, before it writes anything.
"""

import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from conftest import TINY_SYNTHETIC, tiny_config
from lmr_jax.data import annotations as annotations_lib
from lmr_jax.data import checks, dataset, features, synthetic
from lmr_jax.data.annotations import DataError
from lmr_jax.errors import ConfigError, LmrError

LINE = 2  # the annotation line the line-level cases corrupt (qid 31 of the tiny val split)


@pytest.fixture
def data_root(tiny_data_root, tmp_path):
  root = str(tmp_path / "data")
  shutil.copytree(tiny_data_root, root)
  return root


def _snapshot(root: str) -> dict[str, tuple]:
  """Every file and folder under ``root``: its bytes' digest and mtime (folders: None, mtime)."""
  found = {}
  for folder, dirs, files in os.walk(root):
    for name in dirs + files:
      path = os.path.join(folder, name)
      digest = None
      if os.path.isfile(path):
        with open(path, "rb") as f:
          digest = hashlib.sha256(f.read()).hexdigest()
      found[os.path.relpath(path, root)] = (digest, os.stat(path).st_mtime_ns)
  return found


def _raises_one_line(error_type, build, root: str | None) -> str:
  """Runs ``build``, which must raise ``error_type`` (an LmrError) with a one-line message, and leave
  every file under ``root`` (unless None) as it was; returns the message."""
  before = root and _snapshot(root)
  with pytest.raises(error_type) as caught:
    build()
  text = str(caught.value)
  assert isinstance(caught.value, LmrError) and text and "\n" not in text
  if root:
    assert _snapshot(root) == before
  return text


def _val_source(config, preload: bool = True):
  config.data.preload = preload
  return lambda: dataset.example_source(config.data, "val", with_captions=True, training=False)


# --- Annotations --------------------------------------------------------------------------------


def _edit_line(**changes):
  """Rewrites line LINE of an annotation file: each key set to its value, or to ``value(record)``."""

  def edit(path):
    with open(path) as f:
      lines = f.readlines()
    record = json.loads(lines[LINE - 1])
    for key, value in changes.items():
      record[key] = value(record) if callable(value) else value
    lines[LINE - 1] = json.dumps(record) + "\n"
    with open(path, "w") as f:
      f.writelines(lines)

  return edit


def _cut_line(path):
  """Line LINE ends in the middle of its JSON object."""
  with open(path) as f:
    lines = f.readlines()
  lines[LINE - 1] = lines[LINE - 1][:40] + "\n"
  with open(path, "w") as f:
    f.writelines(lines)


def _write_bytes(data: bytes):
  def edit(path):
    with open(path, "wb") as f:
      f.write(data)

  return edit


def _make_dir(path):
  os.remove(path)
  os.mkdir(path)


def _annotators(record):
  return [row[:2] for row in record["saliency_scores"]]


def _first_line_two_annotators(path):
  """Line 1 keeps 3 annotators per clip, line LINE gets 2: a file must not mix them."""
  _edit_line(saliency_scores=_annotators)(path)


ANNOTATION_CASES = {
    # name: (corrupt the val file, a line-level problem?, what the message says)
    "binary": (_write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe" * 8), False, "not a readable UTF-8"),
    "empty": (_write_bytes(b""), False, "empty annotation file"),
    "blank_lines": (_write_bytes(b"\n  \n"), False, "empty annotation file"),
    "directory": (_make_dir, False, "is a directory, not an annotation file"),
    "missing": (os.remove, False, "no such file"),
    "malformed_json": (_cut_line, True, "malformed JSON"),
    "windows_null": (_edit_line(relevant_windows=None), True, "'relevant_windows' must be a list"),
    "duration_null": (_edit_line(duration=None), True, "'duration' must be a positive number"),
    "clip_ids_null": (_edit_line(relevant_clip_ids=None), True, "'relevant_clip_ids' must be a"),
    "scores_null": (_edit_line(saliency_scores=None), True, "'saliency_scores' must be a list"),
    "query_null": (_edit_line(query=None), True, "empty query"),
    "scores_rows": (
        _edit_line(saliency_scores=lambda r: r["saliency_scores"][:-1]),
        True,
        "3 relevant_clip_ids but 2 saliency_scores",
    ),
    "annotators_in_query": (
        _edit_line(
            saliency_scores=lambda r: [r["saliency_scores"][0][:2]] + r["saliency_scores"][1:]
        ),
        True,
        "clip 16 has 3 saliency scores, clip 15 has 2",
    ),
    "annotators_in_file": (_first_line_two_annotators, True, "but line 1 has 3"),
    "clip_id_past_video": (
        _edit_line(relevant_clip_ids=lambda r: r["relevant_clip_ids"][:-1] + [22]),
        True,
        "relevant_clip_id 22 is past the video's 22 clips",
    ),
    "clip_id_repeated": (
        _edit_line(relevant_clip_ids=lambda r: r["relevant_clip_ids"][:1] * 3),
        True,
        "relevant_clip_ids repeat clip 1",
    ),
    "duration_vs_features": (
        _edit_line(duration=lambda r: 3 * r["duration"]),
        True,
        "has 22 (more than 1 off)",
    ),
    "window_past_duration": (
        _edit_line(relevant_windows=lambda r: [[30.0, r["duration"] + 2]]),
        True,
        "outside [0, duration=44.0]",
    ),
    "window_negative": (_edit_line(relevant_windows=[[-2.0, 4.0]]), True, "outside"),
    "window_reversed": (_edit_line(relevant_windows=[[8.0, 4.0]]), True, "is reversed or empty"),
    "qid_repeated": (_edit_line(qid=30), True, "duplicate qid 30 (first at line 1)"),
}


@pytest.mark.parametrize("case", sorted(ANNOTATION_CASES))
def test_bad_annotations_fail_the_split_in_one_line(data_root, case):
  corrupt, line_level, message = ANNOTATION_CASES[case]
  config = tiny_config(data_root)
  path = config.data.annotation_files.val
  corrupt(path)
  text = _raises_one_line(DataError, _val_source(config), data_root)
  assert message in text
  assert text.startswith(f"{path}:{LINE}: " if line_level else f"{path}: ")


# --- Feature files ------------------------------------------------------------------------------


def _feature(root, folder, name):
  return os.path.join(root, "features", folder, name)


def _npz(**arrays):
  def write(path):
    os.remove(path)
    with open(path, "wb") as f:  # np.savez would append .npz to a name without it
      np.savez(f, **arrays)

  return write


def _npy(path):
  array = np.load(path)["features"]
  with open(path, "wb") as f:
    np.save(f, array)


def _cut(rows):
  def cut(path):
    with np.load(path) as npz:
      arrays = dict(npz)
    _npz(**{k: v[:rows] for k, v in arrays.items()})(path)

  return cut


def _nan(path):
  array = np.load(path)["features"].astype(np.float32)
  array[3, 1] = np.nan
  _npz(features=array)(path)


def _zero_rows(key, rows):
  def zero(path):
    with np.load(path) as npz:
      arrays = dict(npz)
    arrays[key] = arrays[key].astype(np.float32)
    arrays[key][rows] = 0
    _npz(**arrays)(path)

  return zero


VIDEO = "syn_val_00000.npz"  # 22 clips of 2 s, the video of the val split's first two queries
FEATURE_CASES = {
    # name: (folder, file, corrupt it, what the message says, found without reading the values?)
    "missing_video": ("clip_features", VIDEO, os.remove, "missing feature file (vid", True),
    "missing_query": ("clip_text_features", "qid31.npz", os.remove, "missing feature file", True),
    "directory": (
        "slowfast_features",
        VIDEO,
        _make_dir,
        "is a directory, not a feature file",
        True,
    ),
    "npy_as_npz": ("clip_features", VIDEO, _npy, "a .npy file under an .npz name", True),
    "not_a_zip": (
        "clip_features",
        VIDEO,
        _write_bytes(b"not a zip"),
        "unreadable npz (not a zip",
        True,
    ),
    "truncated": ("clip_features", VIDEO, lambda p: os.truncate(p, 200), "unreadable npz", True),
    "missing_key": (
        "clip_features",
        VIDEO,
        _npz(feats=np.ones((22, 16))),
        "no key 'features'",
        True,
    ),
    "wrong_dim": (
        "caption_query_features",
        "qid31.npz",
        _npz(last_hidden_state=np.ones((5, 21))),
        "has shape (5, 21), expected (N, 20)",
        True,
    ),
    "strings": (
        "clip_features",
        VIDEO,
        _npz(features=np.array([["a"] * 16] * 22)),
        "not numbers",
        True,
    ),
    "no_rows": ("clip_features", VIDEO, _npz(features=np.ones((0, 16))), "is empty", True),
    "streams_differ": (
        "clip_features",
        VIDEO,
        _cut(11),
        "11 clips, but",
        True,
    ),
    "captions_short": ("caption_features", VIDEO, _cut(10), "10 captions of 2 s cover 20 s", True),
    "video_vs_duration": ("", "", None, "duration 44 s is 22 clips of 2 s, but", True),
    "nan": ("clip_features", VIDEO, _nan, "NaN/inf values (first in row 3)", False),
    "zero_clip_row": (
        "slowfast_features",
        VIDEO,
        _zero_rows("features", [5, 9]),
        "key 'features' row 5 is all zeros (a failed extraction or an empty caption; 2 such rows)",
        False,
    ),
    "empty_caption_row": (
        "caption_features",
        VIDEO,
        _zero_rows("features", [0]),
        "row 0 is all zeros",
        False,
    ),
    "padding_only_query": (
        "clip_text_features",
        "qid31.npz",
        _zero_rows("last_hidden_state", slice(None)),
        "is all zeros (a query of only padding)",
        False,
    ),
}


def _shorten_video(root):
  """Every stream of the first val video cut to 12 of its 22 clips: the streams agree, but not with
  the 44 s the annotations say."""
  for folder in ("slowfast_features", "clip_features", "caption_features"):
    _cut(12)(_feature(root, folder, VIDEO))
  return _feature(root, "slowfast_features", VIDEO)


@pytest.mark.parametrize("preload", [True, False], ids=["preload", "headers"])
@pytest.mark.parametrize("case", sorted(FEATURE_CASES))
def test_bad_feature_files_fail_the_split_in_one_line(data_root, case, preload):
  folder, name, corrupt, message, from_headers = FEATURE_CASES[case]
  if corrupt is None:
    path = _shorten_video(data_root)
  else:
    path = _feature(data_root, folder, name)
    corrupt(path)
  config = tiny_config(data_root)
  if not preload and not from_headers:  # values are checked when an example first reads them
    source = _val_source(config, preload=False)()
    with pytest.raises(DataError) as error:
      for index in range(len(source)):
        source.example(index)
    assert message in str(error.value) and path in str(error.value)
    return
  text = _raises_one_line(DataError, _val_source(config, preload), data_root)
  assert message in text and os.path.join(data_root, "features") in text
  assert path in text


# --- Data config values -------------------------------------------------------------------------

DATA_CONFIG_CASES = {
    # name: (changes to config.data, the key the message names)
    "max_windows": ({"max_windows": 0}, "max_windows"),
    "max_clips": ({"max_clips": 0}, "max_clips"),
    "max_query_tokens": ({"max_query_tokens": -1}, "max_query_tokens"),
    "clip_len_zero": ({"clip_len": 0.0}, "clip_len"),
    "clip_len_negative": ({"clip_len": -2.0}, "clip_len"),
    "clip_len_nan": ({"clip_len": float("nan")}, "clip_len"),
    "caption_clip_len": ({"caption_clip_len": 0.0}, "caption_clip_len"),
    "query_dim": ({"query_dim": 0}, "query_dim"),
    "visual_dims": ({"visual_dims": (24,)}, "visual_dims"),
    "visual_dims_zero": ({"visual_dims": (24, 0)}, "visual_dims"),
    "visual_streams": ({"visual_streams": ()}, "visual_streams"),
    "feat_root": ({"feat_root": ""}, "feat_root"),
    "query_feat_dir": ({"query_feat_dir": ""}, "query_feat_dir"),
    "resident_dtype": ({"resident_dtype": "float16"}, "resident_dtype"),
    "synthetic_missing": ({"generate_synthetic": True}, "synthetic"),
    "synthetic_clip_len": (
        {"generate_synthetic": True, "synthetic": {"clip_len": 1.0}},
        "synthetic.clip_len",
    ),
}


@pytest.mark.parametrize("case", sorted(DATA_CONFIG_CASES))
def test_bad_data_config_is_a_config_error_naming_the_key(tiny_data_root, case):
  changes, key = DATA_CONFIG_CASES[case]
  config = tiny_config(tiny_data_root)
  config.data.update(changes)
  text = _raises_one_line(
      ConfigError, lambda: checks.check_data_config(config.data), tiny_data_root
  )
  assert f"config.data.{key}" in text
  # The loaders check it first, before reading (or generating) anything.
  for build in (lambda: dataset.prepare(config.data), _val_source(config)):
    assert _raises_one_line(ConfigError, build, tiny_data_root) == text


# --- Synthetic benchmark settings ---------------------------------------------------------------

SYNTHETIC_CASES = {
    # name: (changes to the tiny settings, the field the message names, plan draws allowed)
    "events_longer_than_video": (
        {"min_event_clips": 30, "max_event_clips": 30},
        "min_clips=20 cannot hold",
        None,
    ),
    "no_room_for_two_events": ({"min_clips": 6, "max_clips": 6}, "min_clips=6 cannot hold", None),
    "max_clips_below_min": ({"max_clips": 10}, "max_clips=10 must be an integer >= ", None),
    "event_range": ({"max_event_clips": 1}, "max_event_clips=1 must be", None),
    "one_core_event": ({"max_core_events": 1}, "max_core_events must be", None),
    "no_videos": ({"val_videos": 0}, "val_videos must be an integer >= 1", None),
    "probability": (
        {"repeated_scene_prob": 1.5},
        "repeated_scene_prob must be a probability",
        None,
    ),
    "clip_text_dims": ({"clip_dim": 8}, "clip_dim=8 must equal", None),
    "unknown_setting": ({"max_clip": 24}, "max_clip: no such synthetic setting", None),
    # Fits only with 2 core events of 2 clips and no other event (1 draw in 16): draws run out.
    "draws_run_out": (
        {"min_clips": 7, "max_clips": 7, "max_event_clips": 3, "max_core_events": 3},
        "draws of its events fit in 7 clips; raise min_clips",
        1,
    ),
}


@pytest.mark.parametrize("case", sorted(SYNTHETIC_CASES))
def test_bad_synthetic_settings_stop_in_one_line(tmp_path, monkeypatch, case):
  changes, message, draws = SYNTHETIC_CASES[case]
  if draws is not None:
    monkeypatch.setattr(synthetic, "MAX_PLAN_DRAWS", draws)
  root = tmp_path / "synthetic"
  config = tiny_config(str(root))
  config.data.generate_synthetic = True
  config.data.synthetic = dict(vars(TINY_SYNTHETIC), **changes)
  # Found up front (no draws case): nothing is written. Draws running out stop a write half-way,
  # which is never taken for finished data: the settings file that marks it done is not there.
  before = None if draws else str(tmp_path)
  text = _raises_one_line(ConfigError, lambda: dataset.prepare(config.data), before)
  assert message in text
  assert not (root / synthetic.SETTINGS_FILE).exists()
  if draws is None:
    assert not root.exists() and "config.data.synthetic." in text


# --- The checker command ------------------------------------------------------------------------


def _config_file(tmp_path, root: str) -> str:
  """A config file: configs/tiny.py reading ``root``."""
  path = tmp_path / "tiny_here.py"
  path.write_text(
      "from configs import tiny\n\n\n"
      "def get_config(arg=''):\n"
      "  config = tiny.get_config(arg).unlock()\n"
      f"  config.data.feat_root = {os.path.join(root, 'features')!r}\n"
      "  for split in config.data.annotation_files:\n"
      f"    config.data.annotation_files[split] = f'{root}/annotations/{{split}}.jsonl'\n"
      "  return config\n"
  )
  return str(path)


def _corrupt_clip_features(root):
  _npz(feats=np.ones((22, 16)))(_feature(root, "clip_features", VIDEO))


def _corrupt_line(root):
  _edit_line(duration=None)(os.path.join(root, "annotations", "val.jsonl"))


CLI_CASES = {
    # name: (corrupt the data, arguments ({config}, {root} filled in), exit status, stdout, stderr)
    "files_ok": (
        None,
        ["{root}/annotations/val.jsonl"],
        0,
        "10 queries, 5 videos, 10 labelled",
        "",
    ),
    "file_bad_line": (
        _corrupt_line,
        ["{root}/annotations/train.jsonl", "{root}/annotations/val.jsonl"],
        1,
        "train.jsonl: ",
        "error: {root}/annotations/val.jsonl:2: qid 31: 'duration' must be a positive number",
    ),
    "config_ok": (None, ["--config={config}"], 0, " val: 10 queries, 5 videos", ""),
    "config_split_bad_feature": (
        _corrupt_clip_features,
        ["--config={config}", "--split=val", "--split=train"],
        1,
        " train: ",
        "error: {root}/features/clip_features/syn_val_00000.npz: no key 'features'",
    ),
    "config_bad_line": (
        _corrupt_line,
        ["--config={config}", "--split=val"],
        1,
        "",
        "error: {root}/annotations/val.jsonl:2: qid 31: 'duration'",
    ),
    "config_unknown_split": (
        None,
        ["--config={config}", "--split=dev"],
        1,
        "",
        "error: config.data.annotation_files has no split 'dev'",
    ),
    "help": (None, ["--help"], 0, "flags:", ""),
    "nothing_to_check": (None, [], 2, "", "give annotation files, --config, or both"),
    "split_without_config": (None, ["--split=val"], 2, "", "--split needs --config"),
    "no_config_file": (None, ["--config={root}/nope.py"], 2, "", "nope.py: no such config file"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_annotation_checker_command(data_root, tmp_path, capsys, case):
  corrupt, args, status, out, err = CLI_CASES[case]
  if corrupt is not None:
    corrupt(data_root)
  config = _config_file(tmp_path, data_root)
  argv = [a.format(config=config, root=data_root) for a in args]
  before = _snapshot(data_root)
  code = annotations_lib.main(argv)
  captured = capsys.readouterr()
  assert _snapshot(data_root) == before
  assert code == status, captured
  assert out.format(root=data_root) in captured.out
  assert err.format(root=data_root) in captured.err
  if status == 1:
    errors = captured.err.strip().splitlines()
    assert errors and all(line.startswith("error: ") for line in errors)
    assert len(errors) == 1  # one bad split or file, one line


def test_zero_rows_are_padding_in_query_tokens_only(tmp_path):
  """A query's zero rows may be padding (some exporters pad to a fixed length); a clip's or caption's
  may not: they are a failed extraction or an empty caption, read as a real clip."""
  path = str(tmp_path / "qid1.npz")
  tokens = np.ones((6, 4), np.float32)
  tokens[4:] = 0
  np.savez(path, last_hidden_state=tokens)
  loaded = features.read_npz_array(path, "last_hidden_state", 4, "qid 1", zero_rows="some")
  np.testing.assert_array_equal(loaded, tokens)
  with pytest.raises(DataError, match="row 4 is all zeros"):
    features.read_npz_array(path, "last_hidden_state", 4, "qid 1")
