"""One writer per workdir (lmr_jax/training/run_lock.py): a live holder stops a second writer with one
line naming it; a holder that is gone (dead pid on this host, silent on another) is taken over with a
warning; the lock is refreshed while held and removed on the way out, also after an error. The entry
points' use of it (train.py, eval.py into the workdir) is tested in tests/test_bad_input.py."""

import json
import logging
import os
import socket
import subprocess
import threading
import time

import pytest

from conftest import forge_lock
from lmr_jax.training import run_lock


def test_a_live_holder_stops_a_second_writer_and_a_dead_ones_lock_is_taken_over(tmp_path, caplog):
  child = subprocess.Popen(["sleep", "60"])
  path = forge_lock(tmp_path, child.pid)
  with pytest.raises(run_lock.WorkdirBusyError) as busy:
    run_lock.check_free(str(tmp_path))
  message = str(busy.value)
  assert "\n" not in message and message.startswith(f"{path}: the workdir is in use by training")
  assert f"pid {child.pid} on {socket.gethostname()}" in message
  with pytest.raises(run_lock.WorkdirBusyError):
    run_lock.acquire(str(tmp_path), "evaluation")
  assert json.load(open(path))["token"] == "forged"  # the holder's lock is untouched

  child.kill()
  child.wait()
  run_lock.check_free(str(tmp_path))  # gone: nothing to wait for
  with caplog.at_level(logging.WARNING):
    raw = run_lock.acquire(str(tmp_path), "evaluation")
  assert f"taking over the lock left by training (pid {child.pid}" in caplog.text
  holder = json.load(open(path))
  assert holder["command"] == "evaluation" and holder["pid"] == os.getpid()
  run_lock.release(str(tmp_path), raw)
  assert not os.path.exists(path) and os.listdir(tmp_path) == []


def test_a_holder_on_another_host_is_judged_by_its_refreshes(tmp_path, live_pid):
  # Its pid means nothing here (this live pid stands for one that may or may not run there).
  forge_lock(tmp_path, live_pid, host="another-host", age_s=run_lock.STALE_S / 2)
  with pytest.raises(run_lock.WorkdirBusyError, match="on another-host"):
    run_lock.acquire(str(tmp_path), "training")
  path = forge_lock(tmp_path, live_pid, host="another-host", age_s=run_lock.STALE_S + 5)
  raw = run_lock.acquire(str(tmp_path), "training")
  assert json.load(open(path))["host"] == socket.gethostname()
  run_lock.release(str(tmp_path), raw)

  # An unreadable lock (a torn copy) is judged by its age too.
  with open(path, "w") as f:
    f.write('{"command": "trai')
  with pytest.raises(run_lock.WorkdirBusyError, match="an unreadable lock"):
    run_lock.acquire(str(tmp_path), "training")
  os.utime(path, (0, 0))
  run_lock.release(str(tmp_path), run_lock.acquire(str(tmp_path), "training"))
  assert os.listdir(tmp_path) == []


def test_a_lock_left_by_this_pid_is_stale(tmp_path):
  """A restarted container often gets its predecessor's pid and hostname: our own pid in a lock we do
  not hold is a predecessor's."""
  forge_lock(tmp_path, os.getpid())
  run_lock.release(str(tmp_path), run_lock.acquire(str(tmp_path), "training"))


def test_the_lock_is_refreshed_while_held_and_removed_after_an_error(tmp_path, monkeypatch):
  monkeypatch.setattr(run_lock, "HEARTBEAT_S", 0.05)
  path = os.path.join(tmp_path, run_lock.LOCK_FILE)
  with pytest.raises(RuntimeError, match="a step failed"):
    with run_lock.hold(str(tmp_path), "training"):
      os.utime(path, (0, 0))
      deadline = time.time() + 10
      while os.stat(path).st_mtime == 0 and time.time() < deadline:
        time.sleep(0.02)
      assert os.stat(path).st_mtime > time.time() - 60  # refreshed by the heartbeat
      raise RuntimeError("a step failed")
  assert not os.path.exists(path)
  assert not [t for t in threading.enumerate() if t.name.startswith("lmr-lock")]


def test_release_leaves_a_lock_that_another_process_took(tmp_path, live_pid):
  raw = run_lock.acquire(str(tmp_path), "training")
  path = forge_lock(tmp_path, live_pid)  # taken over meanwhile (this one was judged stale)
  run_lock.release(str(tmp_path), raw)
  assert json.load(open(path))["pid"] == live_pid
  assert sorted(os.listdir(tmp_path)) == [run_lock.LOCK_FILE]  # nothing left aside
