"""``sraq bench router``: the intent router against stand-in SGLang servers (numbers printed, never asserted).

Three phases, each with N concurrent conversations doing their turns one after another:

1. raw: the ``/generate`` body posted straight to a 150 ms student stand-in with aiohttp;
2. router: the same decisions through ``Router([sglang])`` — decision latency, and per decision the
   router + backend overhead (wall time minus the time spent inside the HTTP exchange);
3. cascade: a student that is below threshold on a share of turns (default 10%) and a 4 s teacher:
   decision p50/p99 and the escalation rate.

The stand-in servers run as subprocesses (``sraq intent stub-server``) so their CPU is not measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from intent.backend import DecisionRequest, Undecided
from intent.contract import ChatMessage, TaskInfo
from orchestrator.commands.common import percentile, print_json, run

if TYPE_CHECKING:
    from intent.router import Router

# aiohttp, numpy and the backends are imported inside the functions: ``sraq --help`` and every other
# command would otherwise pay for them at start-up.

TURNS = [
    "can you find me a hotel in Lisbon for next weekend",
    "actually make it only direct flights",
    "please cancel the dinner booking",
    "ok thanks",
    "how is the flight search going?",
    "also add a window seat",
    "never mind the present, I bought it",
    "what time is it in Tokyo",
]
TASKS = [
    TaskInfo(id="task-1", summary="Find flights to Porto in June", last_update="3 options found"),
    TaskInfo(id="task-2", summary="Book a table for dinner tonight"),
    TaskInfo(id="task-3", summary="Order a birthday present", status="completed"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stub:
    """A running stand-in server subprocess."""

    def __init__(self, url: str, pid: int) -> None:
        self.url = url
        self.pid = pid

    def cpu_s(self) -> float:
        """CPU seconds the server process has used (Linux /proc; 0.0 elsewhere)."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.asynccontextmanager
async def stub_process(*args: str) -> AsyncIterator[Stub]:
    """A ``sraq intent stub-server`` subprocess, yielded once ``/health`` is 200."""
    import aiohttp

    port = _free_port()
    cmd = [sys.executable, "-m", "orchestrator", "intent", "stub-server", "--port", str(port), *args]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(600):
                if proc.returncode is not None:
                    raise click.ClickException(f"stub server exited with {proc.returncode}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{url}/health") as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.1)
            else:
                raise click.ClickException("stub server did not become healthy")
        yield Stub(url, proc.pid)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout=10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def _request(conv: int, turn: int, deadline_s: float) -> DecisionRequest:
    return DecisionRequest(
        conversation_id=f"bench-{conv}",
        turn_id=f"bench-{conv}-{turn}",
        transcript=[
            ChatMessage(role="user", content="hi, I need some help planning a trip"),
            ChatMessage(role="assistant", content="Sure, what do you need?"),
            ChatMessage(role="user", content=TURNS[(conv + turn) % len(TURNS)] + f" (conversation {conv})"),
        ],
        tasks=TASKS,
        deadline=time.monotonic() + deadline_s,
    )


def _ms(values: Sequence[float]) -> dict[str, float]:
    return {"p50": round(percentile(list(values), 50), 3), "p99": round(percentile(list(values), 99), 3)}


async def _raw(url: str, conversations: int, turns: int) -> tuple[list[float], float]:
    """Latencies of direct ``/generate`` posts, and this process's CPU µs per request."""
    import aiohttp

    from intent.sglang import SGLangBackend, SGLangConfig
    from intent.sglang_wire import encoder

    builder = SGLangBackend(SGLangConfig(url=url))
    lat: list[float] = []
    connector = aiohttp.TCPConnector(limit=conversations + 10, keepalive_timeout=30)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def conversation(c: int) -> None:
            for t in range(turns):
                body = encoder.encode(builder.build_request(_request(c, t, 5.0)))
                t0 = time.perf_counter()
                async with http.post(f"{url}/generate", data=body, headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                lat.append((time.perf_counter() - t0) * 1000)

        cpu = time.process_time()
        await asyncio.gather(*(conversation(c) for c in range(conversations)))
        cpu = time.process_time() - cpu
    return lat, cpu / max(len(lat), 1) * 1e6


async def _through(router: Router, conversations: int, turns: int, deadline_s: float) -> dict[str, Any]:
    wall: list[float] = []
    overhead: list[float] = []
    undecided = 0

    async def conversation(c: int) -> None:
        nonlocal undecided
        for t in range(turns):
            t0 = time.perf_counter()
            try:
                d = await router.decide(_request(c, t, deadline_s))
            except Undecided:
                undecided += 1
                continue
            ms = (time.perf_counter() - t0) * 1000
            wall.append(ms)
            if d.transport_ms is not None and len(d.path) == 1:
                overhead.append(ms - d.transport_ms)

    await router.start()  # health, model info, warm-up
    try:
        cpu = time.process_time()
        await asyncio.gather(*(conversation(c) for c in range(conversations)))
        cpu = time.process_time() - cpu
    finally:
        await router.aclose()
    cpu_us = cpu / max(len(wall) + undecided, 1) * 1e6
    return {"wall": wall, "overhead": overhead, "undecided": undecided, "stats": router.stats(), "cpu_us": cpu_us}


async def _bench(conversations: int, turns: int, student_ms: float, teacher_ms: float, low: float) -> dict[str, Any]:
    from intent.openai_backend import OpenAIBackend, OpenAIConfig
    from intent.router import Router, Tier
    from intent.sglang import SGLangBackend, SGLangConfig

    async with stub_process("--latency-ms", str(student_ms)) as stub:
        await _raw(stub.url, 10, 2)  # warm the stub and the connection path
        stub_cpu = stub.cpu_s()
        raw, raw_cpu_us = await _raw(stub.url, conversations, turns)
        stub_cpu_ms = (stub.cpu_s() - stub_cpu) / max(len(raw), 1) * 1000
        router = Router([Tier(SGLangBackend(SGLangConfig(url=stub.url)), threshold=0.8, deadline_s=2.0)])
        direct = await _through(router, conversations, turns, 5.0)
    cascade_turns = max(2, turns // 4)
    async with (
        stub_process("--latency-ms", str(student_ms), "--low-confidence-rate", str(low), "--seed", "1") as student,
        stub_process("--latency-ms", str(teacher_ms)) as teacher,
    ):
        router = Router(
            [
                Tier(SGLangBackend(SGLangConfig(url=student.url)), threshold=0.8, deadline_s=1.0),
                Tier(
                    OpenAIBackend(OpenAIConfig(base_url=f"{teacher.url}/v1", model="teacher")),
                    threshold=0.0,
                    deadline_s=teacher_ms / 1000 * 3,
                ),
            ]
        )
        cascade = await _through(router, conversations, cascade_turns, teacher_ms / 1000 * 4)
    raw_ms, decision_ms = _ms(raw), _ms(direct["wall"])
    overhead = direct["overhead"]
    return {
        "conversations": conversations,
        "turns": conversations * turns,
        "student_ms": student_ms,
        "raw_http_ms": raw_ms,
        "decision_ms": decision_ms,
        "router_overhead_ms": {**_ms(overhead), "max": round(max(overhead, default=0.0), 3)},
        "decision_p99_minus_raw_p99_ms": round(decision_ms["p99"] - raw_ms["p99"], 3),
        "cpu_us_per_call": {"raw_http": round(raw_cpu_us, 1), "router": round(direct["cpu_us"], 1)},
        "stub_cpu_ms_per_request": round(stub_cpu_ms, 3),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "undecided": direct["undecided"],
        "cascade": {
            "turns": conversations * cascade_turns,
            "teacher_ms": teacher_ms,
            "low_confidence_rate": low,
            "decision_ms": _ms(cascade["wall"]),
            "escalation_rate": cascade["stats"]["escalation_rate"],
            "undecided": cascade["undecided"],
        },
    }


@click.command("router")
@click.option("--conversations", default=100, show_default=True)
@click.option("--turns", default=20, show_default=True, help="Turns per conversation (the cascade runs a quarter).")
@click.option("--student-ms", default=150.0, show_default=True)
@click.option("--teacher-ms", default=4000.0, show_default=True)
@click.option("--low-rate", default=0.1, show_default=True, help="Share of student decisions below threshold.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_router(
    conversations: int, turns: int, student_ms: float, teacher_ms: float, low_rate: float, as_json: bool
) -> None:
    """Router overhead and cascade latency against stand-in SGLang servers (no GPU involved).

    Example: sraq bench router --json
    """
    result = run(_bench(conversations, turns, student_ms, teacher_ms, low_rate))
    if as_json:
        print_json(result)
        return
    click.echo(f"raw /generate: {result['raw_http_ms']} ms; through the router: {result['decision_ms']} ms")
    click.echo(f"router overhead per decision: {result['router_overhead_ms']} ms")
    c = result["cascade"]
    head = f"cascade ({c['low_confidence_rate']:.0%} low, {c['teacher_ms']:.0f} ms teacher)"
    click.echo(f"{head}: {c['decision_ms']} ms, escalation rate {c['escalation_rate']:.3f}")
