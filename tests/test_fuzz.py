"""The parsers under fuzz (hypothesis): annotation files, submission and ground-truth files, and the
command line's config overrides. Whatever the input, a parser succeeds or raises one ``LmrError`` (a
``UsageError`` for the command line) whose message is one line: never another exception, never a
traceback. Each property runs ``EXAMPLES`` generated inputs, derandomised so CI sees the same ones.
"""

import json
import os
import tempfile

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import REPO
from lmr_jax import cli
from lmr_jax.data import queries
from lmr_jax.errors import LmrError
from lmr_jax.evaluation import submission

EXAMPLES = 300
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# JSON values as a file may hold them: huge and negative integers, floats with their extremes,
# strings with any character, nesting.
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _number():
  return st.integers(-5, 200) | st.floats(-5, 200, allow_nan=False) | VALUES


def _window():
  return st.lists(_number(), min_size=0, max_size=3) | VALUES


# Records near the real format (the keys the parsers read, each value sometimes well-formed and
# sometimes anything), so the fuzz reaches the checks past the first missing key.
ANNOTATION = st.fixed_dictionaries(
    {
        "qid": st.integers(-3, 50) | VALUES,
        "query": st.text(max_size=20) | VALUES,
        "duration": _number(),
        "vid": st.text(max_size=10) | VALUES,
    },
    optional={
        "relevant_windows": st.lists(_window(), max_size=3) | VALUES,
        "relevant_clip_ids": st.lists(st.integers(-2, 100) | VALUES, max_size=4) | VALUES,
        "saliency_scores": st.lists(
            st.lists(st.integers(-1, 5) | VALUES, max_size=4) | VALUES, max_size=4
        )
        | VALUES,
    },
)
SUBMISSION = st.fixed_dictionaries(
    {"qid": st.integers(-3, 50) | VALUES},
    optional={
        "query": st.text(max_size=20) | VALUES,
        "vid": st.text(max_size=10) | VALUES,
        "pred_relevant_windows": st.lists(
            st.lists(_number(), min_size=0, max_size=4) | VALUES, max_size=3
        )
        | VALUES,
        "pred_saliency_scores": st.lists(_number(), max_size=5) | VALUES,
        "relevant_windows": st.lists(_window(), max_size=3) | VALUES,
        "relevant_clip_ids": st.lists(st.integers(-2, 100) | VALUES, max_size=4) | VALUES,
        "saliency_scores": st.lists(st.lists(st.integers(-1, 5), max_size=3) | VALUES, max_size=4)
        | VALUES,
        "duration": _number(),
    },
)


def _lines(records):
  """A file's text: JSON lines of the records, sometimes with a line that is not JSON or not an
  object, or bytes that are not UTF-8."""
  return st.lists(
      records.map(json.dumps)
      | st.sampled_from(["", "{", "[1, 2]", "null", '"text"', "{'qid': 1}"])
      | st.text(max_size=30),
      max_size=4,
  ).map("\n".join)


def _file(text_or_bytes) -> str:
  fd, path = tempfile.mkstemp(suffix=".jsonl")
  with os.fdopen(fd, "wb") as f:
    f.write(text_or_bytes if isinstance(text_or_bytes, bytes) else text_or_bytes.encode("utf-8"))
  return path


def _one_line(error: BaseException) -> None:
  assert str(error).strip() and "\n" not in str(error).strip(), repr(str(error))


def _parses_or_one_lmr_error(parse, content) -> None:
  path = _file(content)
  try:
    parse(path)
  except LmrError as e:
    _one_line(e)
  finally:
    os.unlink(path)


@FUZZ
@given(_lines(ANNOTATION) | st.binary(max_size=60))
@example('{"qid": 1, "query": "q", "vid": "v", "duration": 1' + "0" * 400 + "}")  # past float range
def test_annotation_files_parse_or_fail_in_one_line(content):
  _parses_or_one_lmr_error(queries.load_annotations, content)


@FUZZ
@given(_lines(SUBMISSION) | st.binary(max_size=60))
def test_submission_files_parse_or_fail_in_one_line(content):
  _parses_or_one_lmr_error(submission.read_submission, content)


@FUZZ
@given(_lines(SUBMISSION | ANNOTATION))
def test_ground_truth_files_parse_or_fail_in_one_line(content):
  _parses_or_one_lmr_error(submission.read_ground_truth, content)


def _config_keys():
  """Every dotted key of configs/tiny.py, the overrides a user would write."""
  from configs import tiny  # noqa: PLC0415

  def walk(node, prefix):
    for key in node.keys():
      value = node[key]
      if hasattr(value, "keys"):
        yield from walk(value, f"{prefix}{key}.")
      else:
        yield f"{prefix}{key}"

  return sorted(walk(tiny.get_config(), ""))


OVERRIDE_VALUES = (
    st.sampled_from(
        [
            "0",
            "-1",
            "1e9",
            "nan",
            "inf",
            "True",
            "none",
            "None",
            "()",
            "(1,",
            "[]",
            "''",
            "a,b",
            "'x'",
        ]
    )
    | st.integers().map(str)
    | st.floats().map(str)
    | st.text(max_size=16)
)


@pytest.fixture(scope="module")
def config_keys():
  return _config_keys()


@FUZZ
@given(data=st.data())
def test_config_overrides_parse_or_fail_in_one_line(config_keys, data):
  """``--config.<key>=<value>`` for the config's own keys and made-up ones: the parse succeeds
  and the config then passes or fails preflight with a ConfigError, or the parse is one UsageError.
  """
  from absl import flags  # noqa: PLC0415
  from ml_collections import config_flags  # noqa: PLC0415

  from lmr_jax.commands import preflight  # noqa: PLC0415

  key = data.draw(st.sampled_from(config_keys) | st.text(min_size=1, max_size=10))
  value = data.draw(OVERRIDE_VALUES)
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True)
  tiny = os.path.join(REPO, "configs", "tiny.py")
  argv = ["train.py", f"--config={tiny}", f"--config.{key}={value}"]
  cwd = os.getcwd()
  os.chdir(REPO)  # the configs import configs.base
  try:
    cli.parse_absl_flags(argv, flag_values)
    preflight.check_config(flag_values["config"].value)
  except (cli.UsageError, LmrError) as e:
    _one_line(e)
  finally:
    os.chdir(cwd)
