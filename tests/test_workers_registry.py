"""Handler registry (built-ins, entry points, settings paths), serializer, config arithmetic."""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec
import pytest

from tests import task_handlers
from workers.config import WorkerConfig
from workers.events import clip
from workers.handlers.demo import demo
from workers.queue import deserialize, serialize
from workers.registry import ENTRY_POINT_GROUP, HandlerError, HandlerRegistry, load_path


def test_builtins_resolve_lazily() -> None:
    registry = HandlerRegistry.discover()
    assert {"demo", "llm"} <= set(registry.names())
    assert registry.resolve("demo") is demo


def test_settings_paths_and_direct_paths() -> None:
    registry = HandlerRegistry.discover(["flaky = tests.task_handlers:fail_always"])
    assert registry.resolve("flaky") is task_handlers.fail_always
    assert registry.resolve("tests.task_handlers:hang_first") is task_handlers.hang_first


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", "unknown handler 'nope'"),
        ("tests.task_handlers:missing", "has no attribute"),
        ("no_such_module_xyz:f", "cannot import"),
        ("tests.task_handlers:ROOT", "has no attribute"),
        ("workers.events:clip", "must be an async function"),
    ],
)
def test_bad_handlers_fail_with_a_reason(spec: str, message: str) -> None:
    with pytest.raises(HandlerError, match=message):
        HandlerRegistry.discover().resolve(spec)


def test_bad_settings_path() -> None:
    with pytest.raises(HandlerError, match=r"name=package\.module:function"):
        HandlerRegistry.discover(["tests.task_handlers:fail_always"])
    with pytest.raises(HandlerError, match="must look like"):
        load_path("tests.task_handlers")


def test_entry_point_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A distribution declaring ``[sraq.handlers]`` entry points is picked up (real importlib.metadata)."""
    dist = tmp_path / "acme_handlers-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-handlers\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nacme = tests.task_handlers:first_update\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    registry = HandlerRegistry.discover()
    assert "acme" in registry.names()
    assert registry.resolve("acme") is task_handlers.first_update


def test_serializer_is_msgpack_not_pickle() -> None:
    payload = {"t": None, "f": "run_task", "a": ["c1", "task-1", 1, "x"], "k": {}, "et": 123}
    raw = serialize(payload)
    assert not raw.startswith(b"\x80")  # pickle protocol marker
    assert msgspec.msgpack.decode(raw) == payload == deserialize(raw)
    # arq stores an aborted job's CancelledError as its result: kept as text, not a serialization failure
    assert deserialize(serialize({"r": RuntimeError("x")})) == {"r": "RuntimeError: x"}


def test_config_timeouts_and_backoff() -> None:
    cfg = WorkerConfig(task_timeout_s=2.0, retry_backoff_s=0.5, retry_backoff_max_s=3.0)
    assert cfg.job_timeout_s > cfg.task_timeout_s
    assert cfg.in_progress_s > cfg.job_timeout_s
    assert [cfg.backoff_s(t) for t in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="max_jobs"):
        WorkerConfig(max_jobs=0)


def test_clip_keeps_utf8_boundaries() -> None:
    assert clip("short", 100) == "short"
    cut = clip("é" * 100, 51)
    assert len(cut.encode()) <= 51 and cut.endswith("[truncated]")
