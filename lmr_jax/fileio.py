"""Files as the whole tree reads and writes them: JSON Lines in, atomic writes out.

Every writer goes through ``atomic_file``: the bytes land in a temporary file in the same folder, are
fsynced and renamed over the target, so a crash or a full disk leaves the old file or the new one, never
half of either. ``.gz`` paths are read and written gzip-compressed.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import importlib.util
import json
import math
import os
import tempfile
from collections.abc import Iterator, Sequence

from lmr_jax.errors import ConfigError, LmrError, WriteError


def is_number(x) -> bool:
  """A finite int or float (not a bool) within float range: what JSON numbers in our files must be
  (JSON integers have no size limit; one past ~1.8e308 cannot become a float)."""
  if not isinstance(x, (int, float)) or isinstance(x, bool):
    return False
  try:
    return math.isfinite(x)
  except OverflowError:
    return False


def open_text(path: str, mode: str = "r"):
  if str(path).endswith(".gz"):
    return gzip.open(path, mode + "t", encoding="utf-8")
  return open(path, mode, encoding="utf-8")


def read_jsonl(
    path: str | os.PathLike, error: type[LmrError] = LmrError, what: str = "JSON Lines file"
) -> list[tuple[dict, str]]:
  """(object, "path:line") for every non-blank line of ``path``; at least one.

  A missing or undecodable file, a malformed line or a line that is not a JSON object is one
  ``error`` line naming the file (and line); ``what`` says in that message what the file should be.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise error(f"{path}: no such file (expected: {what})")
  records = []
  try:
    with open_text(path) as f:
      for line_number, line in enumerate(f, 1):
        if not line.strip():
          continue
        where = f"{path}:{line_number}"
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          raise error(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(record, dict):
          raise error(f"{where}: expected a JSON object, got {type(record).__name__}")
        records.append((record, where))
  except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as e:
    raise error(f"{path}: not a readable UTF-8 {what} ({e})") from None
  if not records:
    raise error(f"{path}: empty {what}")
  return records


def _umask() -> int:
  """The process umask, read without changing it (os.umask can only be read by setting it)."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except OSError:
    pass
  return 0o022


# What the disk, not the user's input, refused: a full disk, a quota, an I/O error, a read-only mount,
# a file over the filesystem's size limit.
DISK_FAULTS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG})
_DISK_FAULT_TEXTS = tuple(os.strerror(code) for code in sorted(DISK_FAULTS))


def disk_fault(error: BaseException) -> str | None:
  """The disk fault behind ``error`` (``"No space left on device (ENOSPC)"``), looking through what it
  was raised from, and through the text of libraries that report one in a message of their own
  (tensorstore under orbax, TensorFlow's file writers); None for any other error."""
  seen = []
  while error is not None and error not in seen and len(seen) < 8:
    seen.append(error)
    if isinstance(error, OSError) and error.errno in DISK_FAULTS:
      return f"{os.strerror(error.errno)} ({errno.errorcode[error.errno]})"
    text = str(error)
    for code, message in zip(sorted(DISK_FAULTS), _DISK_FAULT_TEXTS):
      if message in text:
        return f"{message} ({errno.errorcode[code]})"
    error = error.__cause__ or error.__context__
  return None


def write_error(path: str | os.PathLike, fault: str, what: str = "") -> WriteError:
  """The one-line error for a write the disk refused."""
  what = f" ({what})" if what else ""
  return WriteError(
      f"{os.fspath(path)}: not written{what}: {fault}; what was written before is intact: fix the "
      "disk (free space, quota) and run the same command again"
  )


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator:
  """A binary file object whose content replaces ``path`` only when the block finishes; a disk fault
  on the way is a WriteError naming ``path``, with ``path`` as it was and no temporary file left."""
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  tmp = None
  try:
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=os.path.basename(path))
    with os.fdopen(fd, "wb") as f:
      yield f
      f.flush()
      os.fchmod(
          f.fileno(), 0o666 & ~_umask()
      )  # mkstemp makes 0600; a plain open() respects the umask
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException as e:
    if tmp is not None:
      with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fault = disk_fault(e) if isinstance(e, OSError) else None
    if fault:
      raise write_error(path, fault) from None
    raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  data = text.encode("utf-8")
  with atomic_file(path) as f:
    f.write(gzip.compress(data, mtime=0) if str(path).endswith(".gz") else data)


def write_json(path: str | os.PathLike, obj, **dumps_kwargs) -> None:
  atomic_write_text(path, json.dumps(obj, **{"indent": 2, **dumps_kwargs}) + "\n")


def write_jsonl(path: str | os.PathLike, records: Sequence[dict]) -> None:
  atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
  """One line added to a log; a line is written whole with one write call, and where the disk
  refuses it (a WriteError) the log is cut back to its earlier lines."""
  line = (json.dumps(record) + "\n").encode("utf-8")
  try:
    size = os.path.getsize(path)
  except FileNotFoundError:
    size = 0
  try:
    with open(path, "ab") as f:
      f.write(line)
      f.flush()
  except OSError as e:
    fault = disk_fault(e)
    if not fault:
      raise
    with contextlib.suppress(OSError):
      os.truncate(path, size)
    raise write_error(path, fault, "a log line") from None


def load_config(spec: str):
  """``path/to/config.py[:arg]`` -> ``get_config(arg)``, as ml_collections' config_flags reads it."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("lmr_config", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except ModuleNotFoundError as e:  # the configs import their siblings as ``configs.base``
    raise ConfigError(f"{path}: cannot import {e.name!r}; run from the repository root") from None
  return module.get_config(arg)


def _same_file(a: str, b: str) -> bool:
  try:
    return os.path.samefile(a, b)
  except OSError:  # one of them does not exist (yet)
    return os.path.realpath(a) == os.path.realpath(b)


def check_writable_folder(path: str, what: str) -> None:
  """``path`` is a folder that can be written, or can be created: its nearest existing ancestor is
  a folder in which a file can really be made (a permission test alone passes for root)."""
  probe = os.path.abspath(path)
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    raise LmrError(f"{path}: {probe} is a file, not a folder ({what})")
  try:
    with tempfile.TemporaryFile(dir=probe):
      pass
  except OSError as e:
    raise LmrError(f"{path}: cannot write in {probe} ({e.strerror}) ({what})") from None


def check_output_file(path: str, inputs: Sequence[str] = (), what: str = "output") -> None:
  """Before any work: ``path`` can be written (it is not a folder; its folder exists or can be made,
  as ``atomic_file`` makes it) and is none of ``inputs``, so an output never overwrites what the
  command reads."""
  if os.path.isdir(path):
    raise LmrError(f"{path}: is a directory, not a file ({what})")
  check_writable_folder(os.path.dirname(os.path.abspath(path)), what)
  for source in inputs:
    if source and _same_file(path, source):
      raise LmrError(f"{path}: is also an input ({source}); choose another {what} path")


def check_output_dir(
    path: str, inputs: Sequence[str] = (), names: Sequence[str] = (), what: str = "output folder"
) -> None:
  """Before any work: ``path`` is a writable folder or can be made one, and none of the ``names``
  the command writes there is an input."""
  check_writable_folder(path, what)
  for name in names:
    for source in inputs:
      if source and _same_file(os.path.join(path, name), source):
        raise LmrError(f"{path}: writing {name} there would replace the input {source}")
