"""Checkpoint restore sets a step aside only when its files are proven damaged; any other failure to
read (I/O, permissions, an API change) is an error naming the step and the cause, and nothing moves.
"""

import contextlib
import errno
import json
import logging
import os
import subprocess

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import charades as charades_config
from configs import qvh as qvh_config
from configs import synthetic as synthetic_config
from lmr_jax.data.position import DataPosition
from lmr_jax.errors import WriteError
from lmr_jax.training import checkpoint as checkpoint_lib


@flax.struct.dataclass
class _State:
  step: jax.Array
  params: dict


def _state(step: int) -> _State:
  return _State(step=jnp.asarray(step), params={"w": jnp.full((64, 8), float(step))})


@pytest.fixture
def workdir(tmp_path):
  """A workdir whose checkpoints/ holds steps 1 and 2 (params filled with the step number)."""
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), keep=3, best_metric="m")
  for step in (1, 2):
    checkpointer.save(_state(step), DataPosition(epoch=0, step=step))
  checkpointer.close()
  return str(tmp_path)


def _restore(workdir, which="latest", fail=None):
  """Restores ``which``; ``fail`` = {step: exception} makes orbax's read of those steps raise."""
  checkpointer = checkpoint_lib.Checkpointer(workdir, keep=3, best_metric="m")
  if fail:
    real_restore = checkpointer.latest.restore

    def restore(step, *args, **kwargs):
      if step in fail:
        raise fail[step]
      return real_restore(step, *args, **kwargs)

    checkpointer.latest.restore = restore
  try:
    return checkpointer.restore(which, _state(0))
  finally:
    checkpointer.close()


def _steps_on_disk(workdir):
  return sorted(os.listdir(os.path.join(workdir, "checkpoints")))


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.EIO, "Input/output error"),
        PermissionError(errno.EACCES, "Permission denied"),
        ValueError("UNAVAILABLE: Error reading local file: connection reset"),
        TypeError("restore() got an unexpected keyword argument 'args'"),  # an orbax API change
    ],
    ids=["io", "permission", "unavailable", "api"],
)
def test_a_failure_that_is_not_damage_is_an_error_and_moves_nothing(workdir, error):
  before = _steps_on_disk(workdir)
  with pytest.raises(checkpoint_lib.CheckpointError) as raised:
    _restore(workdir, fail={2: error})
  message = str(raised.value)
  assert not isinstance(raised.value, checkpoint_lib.UnreadableCheckpointError)
  assert f"{os.sep}checkpoints{os.sep}2: could not be read ({type(error).__name__}" in message
  assert "\n" not in message
  assert _steps_on_disk(workdir) == before == ["1", "2"]


def test_damage_reported_by_tensorstore_sets_the_step_aside_and_says_so(workdir, caplog):
  error = ValueError('DATA_LOSS: Error decoding local file "manifest.ocdbt"')
  with caplog.at_level(logging.WARNING):
    state, position = _restore(workdir, fail={2: error})
  assert int(state.step) == 1 and position == DataPosition(epoch=0, step=1)
  np.testing.assert_array_equal(np.asarray(state.params["w"]), 1.0)
  assert _steps_on_disk(workdir) == ["1", "2.unreadable"]
  messages = [r.getMessage() for r in caplog.records]
  assert any("2: unreadable checkpoint (ValueError: DATA_LOSS" in m for m in messages)
  assert any("resuming from step 1, not the latest step 2" in m for m in messages)


def _truncate_arrays(step_dir):
  for directory, _, names in os.walk(os.path.join(step_dir, "state")):
    if os.sep + "d" in directory:
      for name in names:
        path = os.path.join(directory, name)
        with open(path, "r+b") as f:
          f.truncate(os.path.getsize(path) // 2)


def _remove_metadata(step_dir):
  os.remove(os.path.join(step_dir, "state", "_METADATA"))


@pytest.mark.parametrize("damage", [_truncate_arrays, _remove_metadata])
def test_real_damage_is_recognised(workdir, damage):
  damage(os.path.join(workdir, "checkpoints", "2"))
  with pytest.raises(checkpoint_lib.UnreadableCheckpointError, match=r"2: unreadable checkpoint"):
    _restore(workdir, which="2")
  assert _steps_on_disk(workdir) == ["1", "2"]  # a named step is never moved


def test_every_step_damaged_is_an_error_not_a_fresh_start(workdir):
  for step in ("1", "2"):
    _truncate_arrays(os.path.join(workdir, "checkpoints", step))
  with pytest.raises(
      checkpoint_lib.CheckpointError, match=r"no readable checkpoint in .*checkpoints"
  ):
    _restore(workdir)
  assert _steps_on_disk(workdir) == ["1.unreadable", "2.unreadable"]


def test_quieting_orbax_twice_adds_one_filter():
  from absl import logging as absl_logging  # noqa: PLC0415

  handler = absl_logging.get_absl_handler()
  before = len(handler.filters)
  checkpoint_lib.quiet_orbax_logs()
  checkpoint_lib.quiet_orbax_logs()
  assert len(handler.filters) <= before + 1
  assert sum(isinstance(f, checkpoint_lib._DropOrbaxInfo) for f in handler.filters) == 1


def test_config_of_a_run_saved_before_a_key_existed_gets_the_value_it_trained_with(tmp_path):
  """A config.json written before ``model.decoder_memory``, ``model.clip_positions`` and
  ``eval_protocol`` existed loads with the values those runs trained (and were scored) with, so
  eval.py, resuming and the probe read it as it was."""
  config = synthetic_config.get_config("")
  saved = json.loads(config.to_json_best_effort())
  for key in checkpoint_lib.KEYS_BEFORE_ADDED:
    *parents, name = key.split(".")
    node = saved
    for part in parents:
      node = node[part]
    del node[name]
  (tmp_path / checkpoint_lib.CONFIG_FILE).write_text(json.dumps(saved))
  loaded = checkpoint_lib.load_config(str(tmp_path))
  assert loaded.model.decoder_memory == "video_and_captions"
  assert loaded.model.clip_positions == "normalized"
  assert loaded.eval_protocol == "lmr"
  assert loaded.model.saliency_tokens == "video"


def test_the_synthetic_default_is_the_papers_model_and_its_variants_combine():
  """Eq. 5 over the video tokens and the decoder reading them (Sec. III-C), with DETR's raw-index
  clip positions where the real-data configs keep QD-DETR's normalised code (docs/fidelity.md, "Clip
  positions"); `:sum` is the named extension. Variants combine: model switches and the data's scene
  strength, which names the data folder."""
  default = synthetic_config.get_config("")
  model = default.model
  paper = (model.saliency_tokens, model.decoder_memory, model.clip_positions)
  assert paper == ("video", "video", "index")
  for real_data in (qvh_config, charades_config):
    real_model = real_data.get_config("").model
    assert (real_model.decoder_memory, real_model.clip_positions) == ("video", "normalized")
  both = synthetic_config.get_config("sum,scene=0.3")
  assert both.data.synthetic.visual_scene == 0.3 and both.model.saliency_tokens == "sum"
  assert both.data.feat_root == "data/synthetic_scene0.3/features"
  assert default.data.feat_root == "data/synthetic/features"
  for unknown in ("hard", "eq5"):  # Eq. 5 is the default, not a variant
    with pytest.raises(ValueError, match=f"unknown synthetic variant '{unknown}'"):
      synthetic_config.get_config(unknown)


# --- a disk that refuses a save -------------------------------------------------------------------


def _assert_refused_save_keeps_step_2(workdir, error, code):
  message = str(error)
  assert "\n" not in message
  assert message.startswith(f"{workdir}/checkpoints/3: not written (checkpoint; the last complete")
  assert "the last complete one is step 2)" in message and f"({errno.errorcode[code]})" in message
  state, position = _restore(workdir)
  assert int(state.step) == 2 and float(state.params["w"][0, 0]) == 2.0 and position.step == 2


def test_a_save_the_disk_refuses_is_one_line_and_keeps_the_last_step(workdir, monkeypatch):
  checkpointer = checkpoint_lib.Checkpointer(workdir, keep=3, best_metric="m")
  # tensorstore's error as orbax raises it, with the OS's reason in its text
  refused = ValueError(
      "OUT_OF_RANGE: Error writing local file: [OS error: No space left on device]"
  )
  monkeypatch.setattr(checkpointer.latest, "save", lambda *a, **k: (_ for _ in ()).throw(refused))
  with pytest.raises(WriteError) as error:
    checkpointer.save(_state(3), DataPosition(epoch=0, step=3))
  checkpointer.close()
  _assert_refused_save_keeps_step_2(workdir, error.value, errno.ENOSPC)


@pytest.fixture
def small_filesystem(tmp_path):
  """A 4 MiB tmpfs (root and mount(8) needed; skipped elsewhere), unmounted after the test."""
  mount_point = tmp_path / "small_fs"
  mount_point.mkdir()
  mounted = subprocess.run(
      ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)], capture_output=True
  )
  if mounted.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
  try:
    yield mount_point
  finally:
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_disk_that_really_fills_up_keeps_the_last_step_and_the_save_resumes(small_filesystem):
  workdir = str(small_filesystem / "workdir")
  checkpointer = checkpoint_lib.Checkpointer(workdir, keep=3, best_metric="m")
  for step in (1, 2):
    checkpointer.save(_state(step), DataPosition(epoch=0, step=step))
  ballast = small_filesystem / "ballast"
  with open(ballast, "wb", buffering=0) as f:  # fill the disk to the last page
    with contextlib.suppress(OSError):
      while True:
        f.write(b"\0" * 4096)
  with pytest.raises(WriteError) as error:
    checkpointer.save(_state(3), DataPosition(epoch=0, step=3))
  checkpointer.close()
  _assert_refused_save_keeps_step_2(workdir, error.value, errno.ENOSPC)

  ballast.unlink()  # space is back: the same save goes through, and restores
  checkpointer = checkpoint_lib.Checkpointer(workdir, keep=3, best_metric="m")
  checkpointer.save(_state(3), DataPosition(epoch=0, step=3))
  checkpointer.close()
  state, position = _restore(workdir)
  assert int(state.step) == 3 and float(state.params["w"][0, 0]) == 3.0 and position.step == 3
