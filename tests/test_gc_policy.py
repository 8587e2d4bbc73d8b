"""The collector policy: scalar-only structs kept by the caches are untracked, and the policy applies."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

from intent.contract import ChatMessage, TaskInfo
from ledger import Message, Task, TaskStatus
from ledger.turns import make_turn


def test_cached_structs_are_not_tracked_by_the_collector() -> None:
    task = Task(
        id="task-1", summary="s", status=TaskStatus.PENDING, last_update="queued", version=1, attempt=1,
        created_at=0, updated_at=0, created_by_turn="t", updated_by_turn="t",
    )  # fmt: skip
    values = [
        task,
        Message(role="user", content="hi"),
        make_turn("c1", "hi"),
        ChatMessage(role="user", content="hi"),
        TaskInfo(id="task-1", summary="s"),
    ]
    assert [type(v).__name__ for v in values if gc.is_tracked(v)] == []
    # a container still is: the policy relies on the structs, not on luck
    assert gc.is_tracked([task])


def test_apply_gc_policy_sets_thresholds_and_freezes() -> None:
    # in a child process: the collector is process-wide and the test session must keep its own
    code = (
        "import gc, json; from orchestrator.settings import Settings; "
        "from orchestrator.gc_policy import apply_gc_policy; "
        "t = apply_gc_policy(Settings(gc_gen0_threshold=5000)); "
        "print(json.dumps([list(t), gc.get_freeze_count(), gc.get_threshold()]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    thresholds, frozen, now = json.loads(out.stdout)
    assert thresholds == [5000, 20, 100] == now and frozen > 1000
    off = code.replace("Settings(gc_gen0_threshold=5000)", "Settings(gc_gen0_threshold=0, gc_freeze=False)")
    out = subprocess.run([sys.executable, "-c", off], capture_output=True, text=True, check=True, timeout=60)
    thresholds, frozen, _now = json.loads(out.stdout)
    assert thresholds == [700, 10, 10] and frozen == 0  # Python's defaults left alone
