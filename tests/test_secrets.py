"""Credentials in a Redis URL never reach the output: ``redact_url`` and the CLI's unreachable-Redis line."""

from __future__ import annotations

import os

import pytest

from orchestrator.local_redis import free_port
from orchestrator.settings import redact_url
from tests.test_orchestrator_cli import sraq


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://default:s3cret@127.0.0.1:6399/0", "redis://***@127.0.0.1:6399/0"),
        ("redis://:s3cret@h:1/2", "redis://***@h:1/2"),
        ("rediss://s3cret@h.example:6380/0", "rediss://***@h.example:6380/0"),  # a bare user info may be a password
        ("redis://u:pa/ss#s3cret@h:1/0", "redis://***@h:1/0"),  # unencoded / and # in the password
        ("redis://u:s3cret@[::1]:6379/3", "redis://***@[::1]:6379/3"),
        ("unix://u:s3cret@/tmp/r.sock?db=1", "unix://***@/tmp/r.sock?db=1"),
        ("unix:///tmp/r.sock?db=0&password=s3cret", "unix:///tmp/r.sock?db=0&password=***"),
        ("redis://h/0?Username=bob&db=3", "redis://h/0?Username=***&db=3"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("unix:///tmp/r.sock?db=0", "unix:///tmp/r.sock?db=0"),
    ],
)
def test_redact_url_hides_user_info_and_keeps_host_port_db(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_unreachable_redis_line_has_no_password(redis_url: str, prefix: str) -> None:
    port = free_port()
    env = {**os.environ, "SRAQ_REDIS_URL": f"redis://default:s3cret@127.0.0.1:{port}/0", "SRAQ_PREFIX": prefix}
    res = sraq(env, "ledger", "x", "--json")
    assert res.returncode == 1, res.stderr
    assert "s3cret" not in res.stderr + res.stdout
    assert f"cannot reach Redis at redis://***@127.0.0.1:{port}/0" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
