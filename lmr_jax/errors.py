"""The one error base class: every error a user can fix (bad data, config, checkpoint, options) is an
``LmrError`` whose message is one line naming the file and line, key or step. Entry points catch it and
print ``error: <message>``; anything else is a bug and keeps its traceback."""


class LmrError(ValueError):
  """A problem with the user's input; the message is one line that says what to fix."""


class ConfigError(LmrError):
  """A config value that cannot run (names the ``config.`` key)."""


class WriteError(LmrError):
  """A file or checkpoint the disk refused (full, over quota, I/O error, read-only): the message
  names the path and the cause. What was written before stays whole, and the same command resumes
  once the disk is fixed (``fileio.disk_fault`` tells such errors apart)."""
