"""The embedded tier in child processes: the same decisions as inline, failures typed, no leaks."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from intent.backend import BackendError, Decision, DecisionRequest
from intent.dataset import load
from intent.embedded import EmbeddedBackend
from intent.embedded_process import ProcessEmbeddedBackend
from intent.errors import InvalidDecision
from orchestrator.backends import build_backend
from orchestrator.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def _requests(n: int) -> list[DecisionRequest]:
    examples = load([ROOT / "data/test.jsonl"]).examples[:n]
    return [
        DecisionRequest(conversation_id=f"c{i}", turn_id=f"t{i}", transcript=e.transcript, tasks=e.tasks)
        for i, e in enumerate(examples)
    ]


@pytest.fixture
async def process_backend() -> AsyncIterator[ProcessEmbeddedBackend]:
    backend = ProcessEmbeddedBackend(processes=2)
    await backend.start()
    try:
        yield backend
    finally:
        await backend.aclose()


def _same(a: Decision, b: Decision) -> bool:
    """Identical decisions; the floats may differ in the last bits (numpy's dot products take
    different SIMD paths depending on how the arrays happen to be aligned in each process)."""
    if (a.intent, a.tier, a.raw, a.confidence_source) != (b.intent, b.tier, b.raw, b.confidence_source):
        return False
    probs_a, probs_b = a.action_probs or {}, b.action_probs or {}
    return (
        abs(a.confidence - b.confidence) <= 1e-9
        and probs_a.keys() == probs_b.keys()
        and all(abs(probs_a[k] - probs_b[k]) <= 1e-9 for k in probs_a)
    )


async def test_same_decisions_as_inline(process_backend: ProcessEmbeddedBackend) -> None:
    inline = EmbeddedBackend.load()
    requests = _requests(120)
    remote = await asyncio.gather(*(process_backend.decide(r) for r in requests))  # concurrently, 2 children
    for request, decision in zip(requests, remote, strict=True):
        assert _same(decision, inline.decide_sync(request)), request.turn_id
    assert {d.intent.action.value for d in remote} >= {"reply", "start_task", "noop"}
    # requested in one event-loop iteration: one pipe write per child, not one per decision
    assert sum(c.writes for c in process_backend._children) == 2


def test_worker_answers_every_complete_frame_and_keeps_the_rest() -> None:
    from intent.embedded_wire import HEADER, WireRequest, frame, reply_decoder
    from intent.embedded_worker import _answer_complete

    backend = EmbeddedBackend.load()
    frames = [frame(WireRequest(i + 1, r)) for i, r in enumerate(_requests(3))]
    data = frames[0] + frames[1] + frames[2][: len(frames[2]) // 2]  # two and a half frames
    replies, rest = _answer_complete(backend, data)
    assert [reply_decoder.decode(r[HEADER.size :]).id for r in replies] == [1, 2]
    assert rest == frames[2][: len(frames[2]) // 2]
    replies, rest = _answer_complete(backend, rest + frames[2][len(frames[2]) // 2 :])
    assert [reply_decoder.decode(r[HEADER.size :]).id for r in replies] == [3] and rest == b""


async def test_errors_cross_the_process_boundary_typed(process_backend: ProcessEmbeddedBackend) -> None:
    empty = DecisionRequest(conversation_id="c", turn_id="t", transcript=[], tasks=[])
    with pytest.raises(BackendError, match="empty transcript"):
        await process_backend.decide(empty)
    assert not issubclass(BackendError, InvalidDecision)
    ok = await process_backend.decide(_requests(1)[0])  # the child survived the error
    assert ok.tier == "embedded"


async def test_a_killed_child_fails_its_decisions_and_is_replaced() -> None:
    backend = ProcessEmbeddedBackend(processes=1)
    await backend.start()
    try:
        requests = _requests(60) * 20
        child = backend._children[0]
        pending = [asyncio.ensure_future(backend.decide(r)) for r in requests]
        await asyncio.sleep(0.05)
        os.kill(child.proc.pid, signal.SIGKILL)
        results = await asyncio.gather(*pending, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        assert failed and all(isinstance(r, BackendError) and "exited" in str(r) for r in failed)
        # the next decision starts a new child (a start attempt is allowed once a second at most)
        await asyncio.sleep(1.1)
        decision = await backend.decide(requests[0])
        assert decision.tier == "embedded" and backend._children[0].proc.pid != child.proc.pid
    finally:
        await backend.aclose()
    assert all(c.proc.returncode is not None for c in [child])


async def test_close_is_idempotent_and_leaves_no_process() -> None:
    backend = ProcessEmbeddedBackend(processes=2)
    await backend.start()
    children = list(backend._children)
    assert len(children) == 2
    await backend.aclose()
    await backend.aclose()
    assert all(c.proc.returncode is not None for c in children)
    with pytest.raises(BackendError, match="closed"):
        await backend.decide(_requests(1)[0])


async def test_a_bad_artefact_is_refused_at_build_and_start(tmp_path: Path) -> None:
    bad = tmp_path / "model.json"
    bad.write_text('{"format": "something else"}')
    with pytest.raises(Exception, match="embedded model"):
        build_backend(Settings(intent_tiers="embedded", embedded_model=str(bad)))
    backend = ProcessEmbeddedBackend(str(bad))
    with pytest.raises(BackendError, match="exited while loading"):
        await backend.start()
    await backend.aclose()


def test_the_setting_selects_inline_or_child_processes() -> None:
    assert isinstance(build_backend(Settings(intent_tiers="embedded", embedded_processes=0)), EmbeddedBackend)
    # the default: one child where two CPUs are there (this machine and CI), inline on a single CPU
    expected = ProcessEmbeddedBackend if len(os.sched_getaffinity(0)) >= 2 else EmbeddedBackend
    assert Settings().embedded_processes == (1 if expected is ProcessEmbeddedBackend else 0)
    assert isinstance(build_backend(Settings(intent_tiers="embedded")), expected)
    assert isinstance(build_backend(Settings(intent_tiers="embedded", embedded_processes=1)), ProcessEmbeddedBackend)


async def test_orchestrator_decides_through_the_child(redis_url: str, prefix: str, redis: Redis) -> None:
    from ledger.turns import Publisher, make_turn
    from orchestrator.runtime import Orchestrator
    from orchestrator.turn_processor import TurnRecord
    from tests.orch_support import loop_settings, wait_until

    settings = loop_settings(redis_url, prefix, intent_tiers="embedded", embedded_processes=1)
    backend = build_backend(settings)
    records: list[TurnRecord] = []
    orch = Orchestrator(settings, backend, observer=records.append)
    await orch.start()  # warms the tier up: the child is running before the first turn
    try:
        assert isinstance(backend, ProcessEmbeddedBackend) and len(backend._children) == 1
        publisher = Publisher(redis, settings.keys())
        for i, text in enumerate(["can you book a table for two at 8 tonight", "thanks!", "is it booked yet?"]):
            await publisher.publish(make_turn("child-conv", text, turn_id=f"c{i}"))

        async def done() -> bool:
            return len(records) == 3

        await wait_until(done, 20, "three decisions")
    finally:
        await orch.stop()
        await backend.aclose()
    assert [r.turn_id for r in records] == ["c0", "c1", "c2"]
    assert all(r.tier == "embedded" and r.reason is None for r in records)
    assert records[0].action == "start_task"


async def test_backend_contract_holds_for_the_process_variant(process_backend: ProcessEmbeddedBackend) -> None:
    # the one contract suite of the embedded tier, run against this implementation too
    from tests.test_embedded import test_backend_contract as embedded_backend_contract

    await embedded_backend_contract(process_backend)  # type: ignore[arg-type]


async def test_the_child_exits_when_its_orchestrator_is_killed(redis_url: str, prefix: str, tmp_path: Path) -> None:
    """SIGKILL of the orchestrator closes the child's stdin: it exits, no orphan keeps running."""
    from tests.orch_support import Instance, wait_until

    inst = Instance(
        redis_url, prefix, tmp_path, "parent", SRAQ_INTENT_TIERS="embedded", SRAQ_EMBEDDED_PROCESSES="1"
    ).start()
    try:

        async def healthy() -> bool:
            return bool(inst.partitions())

        await wait_until(healthy, 30, "the orchestrator to own its partitions")
        assert inst.proc is not None
        children = _children(inst.proc.pid)
        assert len(children) == 1 and b"intent.embedded_worker" in _cmdline(children[0])
    finally:
        inst.kill()

    async def gone() -> bool:
        return _exited(children[0])

    await wait_until(gone, 10, "the orphaned child to exit")


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def _exited(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"  # exited, waiting to be reaped by init
