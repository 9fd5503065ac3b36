"""Who may use the demo (lmr_jax/demo/access.py): the login file and the loopback check. The limits
and the login over HTTP are tested on a served page in tests/test_demo_synthetic.py."""

import pytest

from lmr_jax.demo import access


def test_the_login_file_gives_users_and_passwords(tmp_path):
  path = tmp_path / "logins"
  path.write_text("# the lab\nalice:s3cret:with:colons\n\n  bob : pw \n")
  assert access.read_auth_file(str(path)) == [("alice", "s3cret:with:colons"), ("bob", " pw")]


@pytest.mark.parametrize(
    "text, message",
    [
        ("alice\n", "logins:1: expected user:password"),
        ("alice:pw\n:hunter2\n", "logins:2: expected user:password"),
        ("bob:\n", "logins:1: expected user:password"),
        ("# nobody\n\n", "logins: no user:password line"),
    ],
)
def test_a_bad_login_file_is_one_line_without_the_password(tmp_path, text, message):
  path = tmp_path / "logins"
  path.write_text(text)
  with pytest.raises(access.AccessError) as error:
    access.read_auth_file(str(path))
  assert message in str(error.value) and "hunter2" not in str(error.value)
  with pytest.raises(access.AccessError, match="no such login file"):
    access.read_auth_file(str(tmp_path / "missing"))


def test_loopback_addresses():
  assert all(access.is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "localhost"))
  assert not any(access.is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.4", "lab-server"))
