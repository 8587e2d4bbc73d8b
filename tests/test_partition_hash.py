"""The partition of a conversation never changes: across releases, processes and hash seeds.

A changed ``partition_of`` would move live conversations to other streams and keys (their ledgers
would look empty), so these values are pinned, computed once from blake2b(id, 8 bytes) mod P.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ledger import Keys, partition_of
from tests.orch_support import ROOT

PINNED: dict[int, dict[str, int]] = {
    16: {
        "conv-42": 4,
        "conv-1": 0,
        "user:alice@example.com": 15,
        "whatsapp:+351912345678": 7,
        "a": 15,
        "Z9._:@-x": 10,
        "c" * 128: 15,
    },
    7: {
        "conv-42": 3,
        "conv-1": 1,
        "user:alice@example.com": 5,
        "whatsapp:+351912345678": 0,
        "a": 2,
        "Z9._:@-x": 3,
        "c" * 128: 4,
    },
}

_CHILD = """
import json, sys
from ledger import partition_of
pinned = json.loads(sys.stdin.read())
print(json.dumps({p: {c: partition_of(c, int(p)) for c in ids} for p, ids in pinned.items()}))
"""


@pytest.mark.parametrize("partitions", sorted(PINNED))
def test_partition_of_is_pinned(partitions: int) -> None:
    expected = PINNED[partitions]
    assert {c: partition_of(c, partitions) for c in expected} == expected
    keys = Keys(prefix="any", partitions=partitions)
    assert {c: keys.partition_of(c) for c in expected} == expected


@pytest.mark.parametrize("seed", ["0", "1", "4242"])
def test_partition_of_is_the_same_under_another_hash_seed(seed: str) -> None:
    # str hash() is salted per process (PYTHONHASHSEED); the partition must not depend on it
    env = {**os.environ, "PYTHONHASHSEED": seed}
    payload = json.dumps({str(p): list(ids) for p, ids in PINNED.items()})
    res = subprocess.run(
        [sys.executable, "-c", _CHILD], input=payload, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert {int(p): parts for p, parts in json.loads(res.stdout).items()} == PINNED


def test_readme_redis_cli_example_uses_the_right_partition() -> None:
    # the README's hand-written XADD names conv-42's stream; it must be the one the orchestrator reads
    readme = (ROOT / "README.md").read_text()
    assert "conversation_id conv-42" in readme
    assert f"XADD 'sraq:{{{PINNED[16]['conv-42']}}}:turns'" in readme
