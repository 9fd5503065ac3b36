"""One writer per workdir: ``hold(workdir, command)`` keeps ``{workdir}/lock.json`` while a command
writes there, and a second writer stops with one line naming the holder.

The lock file records the holder (command, host, pid, boot, start time) and is created whole or not at
all (written aside, then hard-linked into place, which fails where a lock exists: also on NFS). A lock
whose holder is gone is taken over with a warning: on the holder's own host (and boot) when its pid no
longer runs; from another host, when the holder has not refreshed the file's modification time for
``STALE_S`` (a live holder refreshes it every ``HEARTBEAT_S`` from a daemon thread). On a multi-host
run process 0 holds the lock for all (the others share its workdir and write nothing it does not).
Read-only uses (predict.py, demo.py, eval.py writing elsewhere) need no lock.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import jax

from lmr_jax.errors import LmrError

LOCK_FILE = "lock.json"
HEARTBEAT_S = 60.0
STALE_S = 600.0  # a holder on another host silent this long is gone (ten heartbeats missed)
_BOOT_ID = "/proc/sys/kernel/random/boot_id"


class WorkdirBusyError(LmrError):
  """Another live process holds the workdir's lock."""


def _boot_id() -> str:
  try:
    with open(_BOOT_ID) as f:
      return f.read().strip()
  except OSError:  # not Linux: the pid check alone decides on this host
    return ""


def _pid_runs(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's live process
    return True
  return True


def _read(path: str) -> tuple[bytes, dict | None] | None:
  """(raw bytes, the holder or None where unreadable), or None where there is no lock."""
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except (FileNotFoundError, NotADirectoryError):  # no lock (or no workdir: checked elsewhere)
    return None
  try:
    holder = json.loads(raw)
  except ValueError:
    return raw, None
  return raw, holder if isinstance(holder, dict) else None


def describe(holder: dict | None) -> str:
  """The holder as the error and the warning name it."""
  if holder is None:
    return "an unreadable lock"
  return (
      f"{holder.get('command', '?')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
      f"since {holder.get('started', '?')})"
  )


def _is_stale(holder: dict | None, age_s: float) -> bool:
  """Whether the holder is gone: on this host and boot by its pid, elsewhere by the file's age."""
  if (
      holder is not None
      and holder.get("host") == socket.gethostname()
      and holder.get("boot") == _boot_id()
      and isinstance(holder.get("pid"), int)
  ):
    return holder["pid"] == os.getpid() or not _pid_runs(holder["pid"])
  return age_s > STALE_S


def _create(path: str, raw: bytes) -> bool:
  """Puts ``raw`` at ``path`` whole, unless a file is there; True when it did."""
  aside = f"{path}.{uuid.uuid4().hex}.new"
  with open(aside, "wb") as f:
    f.write(raw)
    f.flush()
    os.fsync(f.fileno())
  try:
    os.link(aside, path)
  except FileExistsError:
    return False
  finally:
    os.unlink(aside)
  return True


def _remove_if(path: str, raw: bytes) -> bool:
  """Removes the lock at ``path`` if its bytes are still ``raw`` (judged stale, or ours); True when
  this call removed it. Moved aside first, so that of two processes only one removes it, and put
  back if it turns out to be another one."""
  aside = f"{path}.{uuid.uuid4().hex}.old"
  try:
    os.rename(path, aside)
  except FileNotFoundError:
    return False
  with open(aside, "rb") as f:
    moved = f.read()
  if moved != raw:
    with contextlib.suppress(FileExistsError):
      os.link(aside, path)  # someone's fresh lock: back where it was (unless a newer one is there)
    os.unlink(aside)
    return False
  os.unlink(aside)
  return True


def _busy(path: str, holder: dict | None) -> WorkdirBusyError:
  return WorkdirBusyError(
      f"{path}: the workdir is in use by {describe(holder)}; wait for it to end or stop it "
      "(a lock left by a killed process is taken over), or use another --workdir"
  )


def _stale_lock(path: str) -> tuple[bytes, dict | None] | None:
  """The lock at ``path`` (its bytes and holder) when its holder is gone, None when there is none;
  raises WorkdirBusyError when a live process holds it."""
  found = _read(path)
  if found is None:
    return None
  try:
    age_s = time.time() - os.stat(path).st_mtime
  except FileNotFoundError:
    return None
  if not _is_stale(found[1], age_s):
    raise _busy(path, found[1])
  return found


def check_free(workdir: str) -> None:
  """Raises WorkdirBusyError where a live process holds the lock of ``workdir``, so that a second
  writer stops before its slow start; a stale lock is left for ``acquire`` to take over."""
  if jax.process_index() == 0:
    _stale_lock(os.path.join(workdir, LOCK_FILE))


def acquire(workdir: str, command: str) -> bytes:
  """Creates ``{workdir}/lock.json`` for this process (taking over a stale one, with a warning);
  returns its bytes. Raises WorkdirBusyError naming a live holder."""
  path = os.path.join(workdir, LOCK_FILE)
  record = {
      "command": command,
      "host": socket.gethostname(),
      "pid": os.getpid(),
      "boot": _boot_id(),
      "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "token": uuid.uuid4().hex,
  }
  raw = json.dumps(record).encode()
  for _ in range(5):  # another process may take or drop the lock between our looks
    if _create(path, raw):
      return raw
    stale = _stale_lock(path)
    if stale is not None and _remove_if(path, stale[0]):
      logging.warning(
          "%s: taking over the lock left by %s, which is gone", path, describe(stale[1])
      )
  raise WorkdirBusyError(f"{path}: other processes keep taking the workdir's lock; try again")


def release(workdir: str, raw: bytes) -> None:
  """Removes the lock if it is still this process's."""
  _remove_if(os.path.join(workdir, LOCK_FILE), raw)


def _heartbeat(path: str, raw: bytes, stop: threading.Event) -> None:
  while not stop.wait(HEARTBEAT_S):
    found = _read(path)
    if found is None or found[0] != raw:
      logging.warning("%s: the lock is no longer this process's", path)
      return
    with contextlib.suppress(OSError):  # a full disk or a lost mount: try again next beat
      os.utime(path)


@contextlib.contextmanager
def hold(workdir: str, command: str) -> Iterator[None]:
  """Holds the lock of ``workdir`` (a folder) for the block (process 0 of a multi-host run; the
  others hold none); refreshes it every ``HEARTBEAT_S`` and removes it on the way out."""
  if jax.process_index() != 0:
    yield
    return
  raw = acquire(workdir, command)
  stop = threading.Event()
  beat = threading.Thread(
      target=_heartbeat,
      args=(os.path.join(workdir, LOCK_FILE), raw, stop),
      name="lmr-lock-heartbeat",
      daemon=True,
  )
  beat.start()
  try:
    yield
  finally:
    stop.set()
    beat.join()  # no refresh after the lock is gone
    release(workdir, raw)
