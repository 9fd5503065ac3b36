"""lmr_jax.fileio: the one JSON Lines reader and the atomic writers every output goes through."""

import gzip
import os
import stat

import pytest

from lmr_jax import fileio
from lmr_jax.errors import LmrError


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
