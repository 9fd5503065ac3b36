"""How every command-line entry point starts and ends: a quiet start-up and one line per user error.

Exit status: 0 on success and for ``--help``; 2 for a usage error (an unknown or malformed flag, a
missing required flag, a config file that does not load, an override of a key the config does not
have); 1 for any other user error (an ``LmrError``: bad data, config values, checkpoints, workdirs;
or an ``OSError`` on a user's path). Either is one line, ``usage error: ...`` or ``error: ...``, on
stderr. ``--verbose`` (or the environment variable ``LMR_DEBUG=1``) adds the traceback and prints the
config. Anything else is a bug and keeps its traceback.

Every command parses its flags with absl. The entry points (train.py, eval.py, predict.py, demo.py)
and ``lmr_jax.data.packed`` define theirs on absl's global FLAGS when run as scripts, for
ml_collections' ``--config`` and its ``--config.a.b=v`` overrides, and call ``run_absl``; the module
commands (``python -m lmr_jax.x``, ``python -m preprocess.x``) define theirs on a FlagValues of their
own inside ``run_command``, so importing them registers nothing. Lists are comma-separated
(``--annotations=a.jsonl,b.jsonl``); a repeatable flag is given once per value.

Importing this module changes nothing; the entry points call ``quiet_native_logs`` before they import
TensorFlow or JAX.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
import types
from collections.abc import Callable, Sequence

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
DEBUG_ENV = "LMR_DEBUG"
HELP_FLAGS = ("--help", "-h", "--helpshort", "--helpfull", "-?")


class UsageError(Exception):
  """A command line that cannot be run as given (exit status 2)."""


def quiet_native_logs() -> None:
  """Silences TensorFlow's C++ start-up banners (oneDNN notices, "All log messages before
  absl::InitializeLog()") unless the user set these variables. TensorFlow only feeds data here, so
  oneDNN's op rewrites are of no use to it."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


ALLOCATOR_ENV = "LMR_ALLOCATOR"  # "tcmalloc" (the default) or "system"
TCMALLOC = "tcmalloc_minimal"  # Debian/Ubuntu: libtcmalloc-minimal4; conda-forge: gperftools


def exec_with_tcmalloc() -> None:
  """Restarts this command (same interpreter, arguments, pid and environment) with tcmalloc
  preloaded, where the system has it and it is not loaded yet; returns where it does nothing.

  XLA's runtime allocates and frees its buffers on the host for every step; with glibc's malloc that
  cost 16-18 % of a CPU train step (docs/benchmark.md, "Host allocator"). The allocator is fixed when
  a process starts, hence the restart (as TensorFlow's and PyTorch's CPU launchers do). Only the
  entry points call it, first thing when run as scripts; ``LMR_ALLOCATOR=system`` keeps glibc's.
  """
  import ctypes.util  # noqa: PLC0415 - only the entry points' start needs it

  if sys.platform != "linux" or os.environ.get(ALLOCATOR_ENV, "tcmalloc") != "tcmalloc":
    return
  preload = os.environ.get("LD_PRELOAD", "")
  if "tcmalloc" in preload:
    return
  library = ctypes.util.find_library(TCMALLOC)
  if library is None:
    return
  env = dict(os.environ, LD_PRELOAD=":".join(filter(None, (library, preload))))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def debugging(argv: Sequence[str] = ()) -> bool:
  """True with ``--verbose`` on the command line or ``LMR_DEBUG`` set to anything but ''/0."""
  return "--verbose" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  if isinstance(error, OSError) and error.filename is not None and error.strerror:
    text = f"{error.filename}: {error.strerror}"
  line = text.splitlines()[0] if text else type(error).__name__
  return line if len(line) <= 1000 else line[:997] + "..."


def report(error: BaseException, prefix: str, argv: Sequence[str] = ()) -> None:
  """Prints ``{prefix}: {first line}`` to stderr, after the traceback when debugging."""
  if debugging(argv):
    traceback.print_exception(error)
  print(f"{prefix}: {_first_line(error)}", file=sys.stderr, flush=True)


def exit_code(body: Callable[[], int | None], argv: Sequence[str] = ()) -> int:
  """Runs ``body``; a user error becomes one line on stderr and exit status 1 (``UsageError``: 2)."""
  from lmr_jax.errors import LmrError  # noqa: PLC0415 - keeps this module free of imports at start

  try:
    return body() or EXIT_OK
  except UsageError as e:
    report(e, "usage error", argv)
    return EXIT_USAGE
  except (LmrError, OSError) as e:
    report(e, "error", argv)
    return EXIT_ERROR


def _global_flags(flag_values) -> list:
  """The flags the running script defined on absl's global FLAGS (not absl's own)."""
  module = sys.argv[0] if sys.argv and sys.argv[0] else "main"
  return flag_values.get_flags_for_module(module) or flag_values.get_key_flags_for_module(module)


def _own_flags(flag_values) -> list:
  """Every flag of a command's own FlagValues, once each (a short name is the same flag)."""
  found = {}
  for module_flags in flag_values.flags_by_module_dict().values():
    for flag in module_flags:
      found[flag.name] = flag
  return list(found.values())


def _shown(value) -> str:
  """A default as it is typed on the command line (lists comma-separated)."""
  if isinstance(value, (list, tuple)):
    return ",".join(map(str, value)) or "''"
  return repr(value) if value == "" else str(value)


def _absl_help(options, doc: str, positional: str | None = None) -> str:
  lines = [doc.strip(), ""]
  if positional:
    lines += [f"arguments: {positional} (after or among the flags)", ""]
  lines.append("flags:")
  for flag in sorted(options, key=lambda f: f.name):
    default = "" if flag.default is None else f" (default: {_shown(flag.default)})"
    lines.append(f"  --{flag.name}: {flag.help}{default}")
  lines.append("  --verbose: print tracebacks of errors and the config (also LMR_DEBUG=1)")
  return "\n".join(lines)


def _printable(text: str) -> str:
  """``text`` with control characters escaped, so that a message quoting it stays one line."""
  return text if text.isprintable() else repr(text)[1:-1]


def _unknown_override(argv: Sequence[str]) -> str | None:
  """The first ``--config.a.b=v`` whose key the config file does not have, as a usage message."""
  from lmr_jax import fileio  # noqa: PLC0415

  config_arg = next((a for a in argv if a.startswith("--config=")), None)
  if config_arg is None:
    return None
  try:
    config = fileio.load_config(config_arg.split("=", 1)[1])
  except Exception:  # noqa: BLE001 - the parse error itself is reported instead
    return None
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    key = arg[len("--config.") :].split("=", 1)[0]
    node = config
    for part in key.split("."):
      if not hasattr(node, "keys") or part not in node.keys():
        return (
            f"--config.{_printable(key)}: the config has no key '{_printable(part)}' "
            f"(see {config_arg[9:]})"
        )
      node = node[part]
  return None


def parse_absl_flags(
    argv: Sequence[str], flag_values=None, *, positional: bool = False
) -> list[str]:
  """Parses ``argv`` (program name first) into absl's flags and returns what is left, the program
  name first; every failure (including a config file that does not load or an override of an
  unknown key) is a one-line ``UsageError``, and so is any argument left over unless ``positional``.
  """
  from absl import flags  # noqa: PLC0415

  flag_values = flag_values or flags.FLAGS
  for arg in argv[1:]:  # config_flags defers a missing file's error to the first use of the config
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1].split(":", 1)[0]
      if not os.path.isfile(path):
        raise UsageError(f"{path}: no such config file (--config)")
  if flag_values.is_parsed():  # a second parse in one process (tests) starts from the defaults;
    flag_values.unparse_flags()  # only then: it logs to the root logger, configuring it
  argv = [a for a in argv if a != "--verbose"]
  saved_argv, sys.argv = sys.argv, argv  # config_flags finds the --config.x overrides in sys.argv
  try:
    rest = flag_values(argv)
  except Exception as e:  # noqa: BLE001 - configs are user code: any failure to load is a usage error
    message = _unknown_override(argv[1:])
    if message is None:
      lines = [line for line in str(e).splitlines() if line.strip()]
      # A config whose get_config raised: config_flags puts the traceback in the message.
      traced = lines and "Error whilst parsing config file" in lines[0]
      message = lines[-1].strip() if traced else _first_line(e).removeprefix("ERROR:").strip()
      if isinstance(e, flags.Error):
        message = message.replace("flag --", "--")
        missing = re.fullmatch(
            r"--(\w+)=None: Flag --\w+ must have a value other than None\.", message
        )
        if missing:
          message = f"--{missing.group(1)} is required"
    raise UsageError(message) from e
  finally:
    sys.argv = saved_argv
  if len(rest) > 1 and not positional:
    raise UsageError(f"unexpected arguments {rest[1:]}")
  return rest


def run_absl(main: Callable[[], int | None], doc: str, argv: Sequence[str] | None = None) -> int:
  """Parses absl flags for ``main`` (no arguments; it reads the flags), runs it, returns the exit
  status. ``--help`` prints ``doc`` and the flags (exit 0); absl logs INFO and up to stderr, with the
  config printed only when debugging."""
  from absl import flags  # noqa: PLC0415
  from absl import logging as absl_logging  # noqa: PLC0415

  argv = list(sys.argv if argv is None else argv)
  if any(a in HELP_FLAGS for a in argv[1:]):
    print(_absl_help(_global_flags(flags.FLAGS), doc))
    return EXIT_OK
  try:
    parse_absl_flags(argv)
  except UsageError as e:
    report(e, "usage error", argv)
    return EXIT_USAGE
  absl_logging.use_absl_handler()
  absl_logging.set_verbosity(absl_logging.INFO)
  # JAX's notes on the backends it did not find ("Unable to initialize backend 'tpu'") are noise.
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
  return exit_code(main, argv)


def run_command(
    define_flags: Callable,
    body: Callable[[types.SimpleNamespace], int | None],
    doc: str,
    argv: Sequence[str] | None = None,
    *,
    positional: str | None = None,
) -> int:
  """Runs a module command and returns its exit status. ``define_flags(flag_values)`` defines the
  command's flags on a FlagValues of its own (``flags.DEFINE_x(..., flag_values=flag_values)``);
  ``body(args)`` gets their values as attributes of ``args``, and with ``positional`` (its name in
  ``--help``) the other arguments as ``args.positional``; it raises ``UsageError`` for a bad
  combination of flags. ``argv`` leaves out the program name (None: ``sys.argv[1:]``). ``--help``
  prints ``doc`` and the flags (exit 0); a usage error is one line and exit status 2."""
  from absl import flags  # noqa: PLC0415

  flag_values = flags.FlagValues()
  define_flags(flag_values)
  argv = [sys.argv[0] if sys.argv else "main", *(sys.argv[1:] if argv is None else argv)]
  if any(a in HELP_FLAGS for a in argv[1:]):
    print(_absl_help(_own_flags(flag_values), doc, positional))
    return EXIT_OK
  try:
    rest = parse_absl_flags(argv, flag_values, positional=positional is not None)
  except UsageError as e:
    report(e, "usage error", argv)
    return EXIT_USAGE
  args = types.SimpleNamespace(**{f.name: f.value for f in _own_flags(flag_values)})
  if positional is not None:
    args.positional = rest[1:]
  return exit_code(lambda: body(args), argv)


def show_config(config, argv: Sequence[str] = ()) -> None:
  """The resolved config on stdout, only when debugging (the workdir keeps it in config.json)."""
  if debugging(argv or sys.argv):
    print(f"config:\n{config}", flush=True)
