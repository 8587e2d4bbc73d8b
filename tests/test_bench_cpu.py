"""CPU accounting of ``sraq bench loop`` (orchestrator/bench_cpu.py) against real processes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.bench_cpu import children_cpu

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")

_BUSY = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass\ntime.sleep(30)"


def testchildren_cpu_counts_live_children_and_skips_excluded() -> None:
    before = children_cpu(frozenset())
    assert before is not None
    child = subprocess.Popen([sys.executable, "-c", _BUSY])
    try:
        deadline = time.monotonic() + 20
        used = 0.0
        while time.monotonic() < deadline:  # until the child has burnt its 0.4 s (it then sleeps)
            used = (children_cpu(frozenset()) or 0.0) - before
            if used >= 0.35:
                break
            time.sleep(0.05)
        assert 0.35 <= used < 5.0
        excluded = (children_cpu(frozenset({child.pid})) or 0.0) - before
        assert excluded < 0.1  # the same moment without that child: its CPU is not counted
    finally:
        child.kill()
        child.wait()
