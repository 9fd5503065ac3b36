"""lmr_jax.fileio: the one JSON Lines reader and the atomic writers every output goes through."""

import errno
import gzip
import os
import stat

import pytest

from lmr_jax import fileio
from lmr_jax.errors import LmrError, WriteError


class _MyError(LmrError):
  pass


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
  path = tmp_path / "out.txt"
  fileio.atomic_write_text(path, "old\n")
  with pytest.raises(RuntimeError, match="disk full"):
    with fileio.atomic_file(path) as f:
      f.write(b"half of the new")
      raise RuntimeError("disk full")
  assert path.read_text() == "old\n"
  assert os.listdir(tmp_path) == ["out.txt"]  # no temporary file left behind


def test_written_files_respect_the_umask(tmp_path):
  previous = os.umask(0o027)
  try:
    fileio.atomic_write_text(tmp_path / "a.json", "{}")
  finally:
    os.umask(previous)
  assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == 0o640


def test_jsonl_round_trip_plain_and_gzip(tmp_path):
  records = [{"qid": 1, "query": "a cat"}, {"qid": 2, "query": "ein Hund über"}]
  for name in ("r.jsonl", "r.jsonl.gz"):
    fileio.write_jsonl(tmp_path / name, records)
    assert [r for r, _ in fileio.read_jsonl(tmp_path / name)] == records
    assert [w for _, w in fileio.read_jsonl(tmp_path / name)] == [
        f"{tmp_path / name}:1",
        f"{tmp_path / name}:2",
    ]
  with gzip.open(tmp_path / "r.jsonl.gz", "rt") as f:  # really gzip
    assert f.readline().startswith('{"qid": 1')


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file (expected: log)"),
        (b'{"a": 1}\n\n{"a": \n', ":3: malformed JSON"),
        (b"[1, 2]\n", ":1: expected a JSON object, got list"),
        (b"\n \n", "empty log"),
        (b"\xff\xfe\x00\x01", "not a readable UTF-8 log"),
    ],
)
def test_bad_jsonl_is_one_line_of_the_callers_error(tmp_path, content, message):
  path = tmp_path / "x.jsonl"
  if content is not None:
    path.write_bytes(content)
  with pytest.raises(_MyError) as e:
    fileio.read_jsonl(path, _MyError, "log")
  assert str(e.value).startswith(str(path)) and message in str(e.value)
  assert "\n" not in str(e.value)


def test_numbers_are_finite_non_bool():
  assert fileio.is_number(1) and fileio.is_number(2.5)
  assert not any(fileio.is_number(x) for x in (True, float("nan"), float("inf"), "1", None))
  assert fileio.is_number(10**308) and not fileio.is_number(-(10**400))  # JSON ints are unbounded


# --- disk faults: one WriteError naming the path, nothing earlier lost --------------------------


def _refuse(code: int):
  def refuse(*args, **kwargs):
    raise OSError(code, os.strerror(code))

  return refuse


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EDQUOT])
def test_a_disk_fault_in_an_atomic_write_keeps_the_old_file(tmp_path, monkeypatch, code):
  path = tmp_path / "submission.jsonl"
  path.write_text("old\n")
  monkeypatch.setattr(os, "fsync", _refuse(code))
  with pytest.raises(WriteError) as error:
    fileio.write_jsonl(path, [{"qid": 1}])
  message = str(error.value)
  assert "\n" not in message and message.startswith(f"{path}: not written")
  assert f"{os.strerror(code)} ({errno.errorcode[code]})" in message
  assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["submission.jsonl"]


def test_other_os_errors_in_an_atomic_write_are_not_disk_faults(tmp_path, monkeypatch):
  monkeypatch.setattr(os, "fsync", _refuse(errno.EBADF))
  with pytest.raises(OSError) as error:
    fileio.write_json(tmp_path / "a.json", {})
  assert not isinstance(error.value, WriteError) and os.listdir(tmp_path) == []


def test_a_log_line_the_disk_refuses_is_cut_back(tmp_path, monkeypatch):
  path = tmp_path / "metrics.jsonl"
  fileio.append_jsonl(path, {"step": 1})

  class HalfWritten:  # the disk fills in the middle of the line

    def __init__(self, *args, **kwargs):
      self.f = open(*args, **kwargs)  # noqa: SIM115 - closed in __exit__

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      self.f.close()

    def write(self, data):
      self.f.write(data[: len(data) // 2])
      self.f.flush()
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self):
      pass

  monkeypatch.setattr(fileio, "open", HalfWritten, raising=False)
  with pytest.raises(WriteError, match=r"metrics.jsonl: not written \(a log line\): No space left"):
    fileio.append_jsonl(path, {"step": 2, "loss": 1.0})
  monkeypatch.undo()
  assert [r for r, _ in fileio.read_jsonl(path)] == [{"step": 1}]


def test_disk_faults_are_found_through_wrapping_errors():
  try:
    try:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError as e:
      raise RuntimeError("save failed") from e
  except RuntimeError as wrapped:
    assert fileio.disk_fault(wrapped) == "No space left on device (ENOSPC)"
  # tensorstore (under orbax) and TensorFlow put the cause in their own message
  text = Exception("OUT_OF_RANGE: Error writing file: [OS error: Disk quota exceeded]")
  assert fileio.disk_fault(text) == "Disk quota exceeded (EDQUOT)"
  assert fileio.disk_fault(ValueError("No such file or directory")) is None
