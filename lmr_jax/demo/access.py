"""Who may use the demo and how much it takes: the login file, the loopback check, the limits' flags'
defaults. demo.py serves on 127.0.0.1 unless told otherwise; on any other address it warns, and a
login (``--auth_file``, never a password on the command line, where ``ps`` shows it) guards the page.
"""

from __future__ import annotations

import ipaddress
import os

from lmr_jax.errors import LmrError

MAX_QUEUE = 8  # requests waiting for the model; more are told the server is busy


class AccessError(LmrError):
  """A login file that cannot be used (missing, malformed, no user)."""


def read_auth_file(path: str) -> list[tuple[str, str]]:
  """(user, password) pairs from ``path``: one ``user:password`` per line (the password may hold
  colons; blank lines and ``#`` comments are skipped); every problem is one line naming the file and
  line, never the password."""
  if not os.path.isfile(path):
    raise AccessError(f"{path}: no such login file (--auth_file)")
  pairs = []
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise AccessError(f"{path}: unreadable login file ({type(e).__name__})") from None
  for number, line in enumerate(lines, 1):
    line = line.strip()
    if not line or line.startswith("#"):
      continue
    user, colon, password = line.partition(":")
    if not colon or not user.strip() or not password:
      raise AccessError(f"{path}:{number}: expected user:password (--auth_file)")
    pairs.append((user.strip(), password))
  if not pairs:
    raise AccessError(f"{path}: no user:password line (--auth_file)")
  return pairs


def is_loopback(host: str) -> bool:
  """Whether ``host`` serves this machine only (127.0.0.0/8, ::1, localhost)."""
  if host == "localhost":
    return True
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:  # a host name: it may resolve to any interface
    return False
