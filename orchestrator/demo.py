"""``sraq demo``: a complete local agent on the embedded defaults (no GPU, no API keys).

It uses ``SRAQ_REDIS_URL`` when reachable (under a fresh key prefix, so nothing else is touched),
otherwise a private ``redis-server``; starts an orchestrator and a worker pool as subprocesses (the
production code paths); plays the scripted conversations of :mod:`orchestrator.demo_script` at once;
prints every decision live with its tier, confidence and latency; prints each final ledger; checks
that every conversation ended in its expected state; and shuts everything down.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from redis.asyncio import Redis
from rich.console import Console

from ledger import Keys, Ledger, LedgerSnapshot
from ledger.turns import Publisher, make_turn
from orchestrator.commands.common import percentile
from orchestrator.decision_feed import follow
from orchestrator.demo_script import Conversation, Say, WaitTask, conversations
from orchestrator.local_redis import LocalRedis, free_port, redis_reachable
from orchestrator.settings import Settings, redact_url

STEP_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 20.0


@dataclass
class Child:
    name: str
    proc: asyncio.subprocess.Process
    log: Path


@dataclass
class DemoResult:
    ok: bool
    conversations: int
    turns: int
    decisions: dict[str, int]
    decision_ms: dict[str, float]
    max_concurrent_tasks: int
    problems: list[str] = field(default_factory=list)
    surprises: list[str] = field(default_factory=list)
    prefix: str = ""

    def summary(self) -> dict[str, object]:
        """The last line of ``sraq demo --json`` (INTERFACES.md)."""
        return {
            "ok": self.ok,
            "conversations": self.conversations,
            "turns": self.turns,
            "decisions": self.decisions,
            "decision_ms": self.decision_ms,
            "max_concurrent_tasks": self.max_concurrent_tasks,
            "problems": self.problems,
            "surprises": self.surprises,
            "prefix": self.prefix,
        }


class ProcessStack:
    """The orchestrator and worker subprocesses of the demo; ``stop()`` is idempotent."""

    def __init__(self, env: dict[str, str], workdir: Path, workers: int) -> None:
        self.env = env
        self.workdir = workdir
        self.workers = workers
        self.children: list[Child] = []
        self.metrics_port = free_port()

    async def _spawn(self, name: str, *args: str) -> None:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "orchestrator", *args,
                env=self.env, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
        self.children.append(Child(name, proc, log))

    async def start(self) -> None:
        await self._spawn("orchestrator", "orchestrator", "--metrics-port", str(self.metrics_port))
        for i in range(self.workers):
            await self._spawn(f"worker-{i + 1}", "workers", "--max-jobs", "10")
        await self._wait_healthy()

    async def _wait_healthy(self, within_s: float = 30.0) -> None:
        url = f"http://127.0.0.1:{self.metrics_port}/health"
        deadline = time.monotonic() + within_s
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                self._check_alive()
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"the orchestrator did not become healthy within {within_s:g}s; see {self.workdir}")

    def _check_alive(self) -> None:
        for child in self.children:
            if child.proc.returncode is not None:
                tail = child.log.read_text(errors="replace").strip().splitlines()[-5:]
                raise RuntimeError(f"{child.name} exited with {child.proc.returncode}: {' | '.join(tail)}")

    async def stop(self) -> dict[str, int]:
        """SIGTERM everyone, wait, SIGKILL stragglers; returns each child's exit code."""
        for child in self.children:
            if child.proc.returncode is None:
                child.proc.send_signal(signal.SIGTERM)
        codes: dict[str, int] = {}
        for child in self.children:
            try:
                codes[child.name] = await asyncio.wait_for(child.proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                child.proc.kill()
                codes[child.name] = await child.proc.wait()
        return codes


class DemoPlayer:
    """Plays the conversations against a running stack and collects what happened."""

    def __init__(self, redis: Redis, keys: Keys, console: Console, *, quiet: bool) -> None:
        self.redis = redis
        self.keys = keys
        self.ledger = Ledger(redis, keys)
        self.publisher = Publisher(redis, keys)
        self.console = console
        self.quiet = quiet
        self.waiters: dict[str, asyncio.Future[dict[str, object]]] = {}
        self.decisions: list[dict[str, object]] = []
        self.problems: list[str] = []
        self.surprises: list[str] = []
        self.max_running = 0
        self.turns = 0
        self.conv_ids: set[str] = set()
        self.titles: dict[str, str] = {}

    async def feed(self) -> None:
        """Resolve each published turn's future when its decision is committed; print every decision."""
        async for line in follow(self.redis, self.keys):
            conv = str(line["conversation_id"])
            if conv not in self.conv_ids:
                continue
            self.decisions.append(line)
            self._show(line)
            fut = self.waiters.pop(str(line["turn_id"]), None)
            if fut is not None and not fut.done():
                fut.set_result(line)

    def _show(self, d: dict[str, object]) -> None:
        if self.quiet:
            return
        args = d["args"] if isinstance(d["args"], dict) else {}
        detail = args.get("task_id", "")
        text = args.get("text") or args.get("explanation") or ""
        conf = d["confidence"]
        lat = d["latency_ms"]
        self.console.print(
            f"  [dim]{self.titles.get(str(d['conversation_id']), '')}[/dim] → [bold]{d['action']}[/bold]"
            f"{'(' + str(detail) + ')' if detail else ''} [cyan]{d['tier']}[/cyan]"
            f" conf={conf if conf is None else f'{conf:.2f}'} {'' if lat is None else f'{lat:.1f} ms'}"
            f"{'  ' + repr(str(text)[:70]) if text else ''}"
        )

    async def monitor(self) -> None:
        """Track the largest number of tasks running at the same moment across the conversations."""
        while True:
            running = 0
            for conv in self.conv_ids:
                snap = await self.ledger.snapshot(conv)
                running += sum(1 for t in snap.tasks if t.status.value == "running")
            self.max_running = max(self.max_running, running)
            await asyncio.sleep(0.05)

    async def play(self, conv: Conversation) -> None:
        for step in conv.steps:
            match step:
                case Say(text=text, expect=expect, channel=channel):
                    turn = make_turn(conv.id, text, channel=channel)
                    fut: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()
                    self.waiters[turn.turn_id] = fut
                    if not self.quiet:
                        self.console.print(f"[green]{conv.title}[/green] user: {text!r}")
                    await self.publisher.publish(turn)
                    self.turns += 1
                    try:
                        decision = await asyncio.wait_for(fut, STEP_TIMEOUT_S)
                    except TimeoutError:
                        self.problems.append(f"{conv.id}: no decision for {text!r} within {STEP_TIMEOUT_S:g}s")
                        return
                    args = decision["args"] if isinstance(decision["args"], dict) else {}
                    got = f"{decision['action']}({args.get('task_id', '')})" if step.task else str(decision["action"])
                    want = f"{expect}({step.task})" if step.task else expect
                    if got != want:
                        # the model's call, not a runtime failure: reported, and the end state decides
                        self.surprises.append(f"{conv.id}: {text!r} → {got} (script expected {want})")
                case WaitTask(task_id=task_id, statuses=statuses):
                    if not await self._wait_task(conv.id, task_id, statuses):
                        self.problems.append(f"{conv.id}: {task_id} never reached {'/'.join(statuses)}")
                        return

    async def _wait_task(self, conv: str, task_id: str, statuses: tuple[str, ...]) -> bool:
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while time.monotonic() < deadline:
            task = (await self.ledger.snapshot(conv)).task(task_id)
            if task is not None and task.status.value in statuses:
                return True
            if task is not None and task.status.is_terminal:
                return False
            await asyncio.sleep(0.05)
        return False


def _ledger_table(snap: LedgerSnapshot, title: str) -> object:
    from rich.table import Table

    table = Table(title=f"{title} — {snap.conversation_id} (ledger v{snap.version})", title_justify="left")
    for col in ("task", "status", "summary", "last update", "v"):
        table.add_column(col)
    for t in snap.tasks:
        table.add_row(t.id, t.status.value, t.summary[:50], (t.result or t.last_update)[:50], str(t.version))
    return table


@contextlib.asynccontextmanager
async def demo_stack(settings: Settings, console: Console, *, workers: int) -> AsyncIterator[tuple[Redis, Keys]]:
    """Redis (reachable or private), a fresh key prefix, an orchestrator and ``workers`` worker processes.

    On exit every child gets SIGTERM (SIGKILL after a timeout); a child that did not exit 0 raises.
    """
    run_id = uuid.uuid4().hex[:6]
    prefix = f"{settings.prefix}-demo-{run_id}"
    workdir = Path(tempfile.mkdtemp(prefix="sraq-demo-"))
    local: LocalRedis | None = None
    url = settings.redis_url
    if not redis_reachable(url):
        local = LocalRedis(data_dir=workdir / "redis").start()  # raises with the install hint
        url = local.url
        shown = redact_url(settings.redis_url)
        console.print(f"[dim]no Redis at {shown}; started a private redis-server at {url}[/dim]")
    env = {
        **os.environ,
        "SRAQ_REDIS_URL": url,
        "SRAQ_PREFIX": prefix,
        "SRAQ_PARTITIONS": str(settings.partitions),
        "SRAQ_INTENT_TIERS": settings.intent_tiers,
        "SRAQ_LOG_FORMAT": "json",
        "SRAQ_DEMO_STEPS": os.environ.get("SRAQ_DEMO_STEPS", "4"),
        "SRAQ_DEMO_STEP_S": os.environ.get("SRAQ_DEMO_STEP_S", "0.8"),
        "SRAQ_WORKER_HANDLER": "demo",
    }
    stack = ProcessStack(env, workdir, workers)
    redis = Redis.from_url(url)
    shown = redact_url(url)  # the user's URL may carry a password
    console.print(f"[bold]sraq[/bold]: tiers={settings.intent_tiers} redis={shown} prefix={prefix} logs={workdir}")
    try:
        await stack.start()
        yield redis, Keys(prefix=prefix, partitions=settings.partitions)
    finally:
        codes = await stack.stop()
        await redis.aclose()
        if local is not None:
            local.cleanup()
        bad = {name: code for name, code in codes.items() if code != 0}
        if bad:
            raise RuntimeError(f"processes did not exit cleanly: {bad} (logs in {workdir})")


async def run_demo(settings: Settings, *, as_json: bool, workers: int = 2) -> DemoResult:
    """Run the whole demo; never leaves a child process behind."""
    console = Console(stderr=as_json)
    run_id = uuid.uuid4().hex[:6]
    convs = conversations(run_id)
    problems: list[str] = []
    async with demo_stack(settings, console, workers=workers) as (redis, keys):
        player = DemoPlayer(redis, keys, console, quiet=False)
        player.conv_ids = {c.id for c in convs}
        player.titles = {c.id: c.title for c in convs}
        background = [
            asyncio.create_task(player.feed(), name="demo-feed"),
            asyncio.create_task(player.monitor(), name="demo-monitor"),
        ]
        try:
            await asyncio.gather(*(player.play(c) for c in convs))
            await asyncio.sleep(0.5)  # let the last task callbacks be decided
            for conv in convs:
                snap = await player.ledger.snapshot(conv.id)
                console.print(_ledger_table(snap, conv.title))
                for task_id, status in conv.expected.items():
                    task = snap.task(task_id)
                    got = task.status.value if task else "missing"
                    if got != status:
                        player.problems.append(f"{conv.id}: {task_id} is {got}, expected {status}")
        finally:
            for bg in background:
                bg.cancel()
            await asyncio.gather(*background, return_exceptions=True)
        problems = player.problems
        prefix = keys.prefix
    latencies = [float(str(d["latency_ms"])) for d in player.decisions if d["latency_ms"] is not None]
    counts = Counter(str(d["action"]) for d in player.decisions)
    result = DemoResult(
        ok=not problems,
        conversations=len(convs),
        turns=player.turns,
        decisions={a: counts.get(a, 0) for a in ("reply", "start_task", "update_task", "cancel_task", "noop")},
        decision_ms={"p50": round(percentile(latencies, 50), 3), "p99": round(percentile(latencies, 99), 3)},
        max_concurrent_tasks=player.max_running,
        problems=problems,
        surprises=player.surprises,
        prefix=prefix,
    )
    for surprise in result.surprises:
        console.print(f"[yellow]model disagreed with the script:[/yellow] {surprise}")
    for problem in result.problems:
        console.print(f"[red]problem:[/red] {problem}")
    console.print(
        f"[bold]{'OK' if result.ok else 'FAILED'}[/bold]: {result.conversations} conversations, "
        f"{result.turns} user turns, {len(player.decisions)} decisions {result.decisions}, "
        f"decision p50 {result.decision_ms['p50']} ms / p99 {result.decision_ms['p99']} ms, "
        f"up to {result.max_concurrent_tasks} tasks running at once"
    )
    return result
