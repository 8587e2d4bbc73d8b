"""``sraq bench``: benchmarks that print numbers (never asserted in tests)."""

from __future__ import annotations

import time
import uuid

import click

from ledger import Keys, Ledger, NoteOp, StartOp, UpdateOp
from orchestrator.commands.bench_loop import bench_loop_cmd
from orchestrator.commands.bench_router import bench_router
from orchestrator.commands.common import connect, fail, load_settings, percentile, print_json, run
from orchestrator.handoff import bench_handoff as measure
from orchestrator.logsetup import configure_logging
from orchestrator.settings import Settings
from workers.queue import drop_deployment


@click.group()
def bench() -> None:
    """Benchmarks; each prints its figures (``--json`` for scripts)."""


async def _bench_apply(settings: Settings, n: int, conversations: int) -> dict[str, object]:
    redis = connect(settings)
    # an isolated prefix so a benchmark never touches real data
    keys = Keys(prefix=f"{settings.prefix}-bench-{uuid.uuid4().hex[:8]}", partitions=settings.partitions)
    ledger = Ledger(redis, keys, transcript_max=settings.transcript_max)
    lat: list[float] = []
    versions = dict.fromkeys(range(conversations), 0)
    try:
        for c in range(conversations):  # warm-up and script load
            await ledger.apply(f"bench-{c}", 0, f"w{c}", [StartOp("warm-up task")])
            versions[c] = 1
        started = time.perf_counter()
        for i in range(n):
            c = i % conversations
            op = UpdateOp("task-1", f"update {i}") if i % 2 else NoteOp("reply")
            t0 = time.perf_counter()
            res = await ledger.apply(f"bench-{c}", versions[c], f"t{i}", [op])
            lat.append((time.perf_counter() - t0) * 1000)
            versions[c] = res.version
        elapsed = time.perf_counter() - started
    finally:
        await drop_deployment(redis, keys)
        await redis.aclose()
    return {
        "applies": n,
        "conversations": conversations,
        "applies_per_s": round(n / elapsed, 1),
        "apply_ms": {"p50": round(percentile(lat, 50), 3), "p99": round(percentile(lat, 99), 3)},
    }


@bench.command("apply")
@click.option("-n", "--count", default=5000, show_default=True, help="Applies to run (sequential).")
@click.option("--conversations", default=50, show_default=True)
@click.option("--redis-url", default=None, help="Overrides SRAQ_REDIS_URL.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_apply(count: int, conversations: int, redis_url: str | None, as_json: bool) -> None:
    """Latency of one ledger apply (Lua CAS + audit + outbox) against Redis.

    Example: sraq bench apply -n 5000 --json
    """
    settings = load_settings(redis_url=redis_url)
    result = run(_bench_apply(settings, count, conversations), settings)
    if as_json:
        print_json(result)
    else:
        ms: dict[str, float] = result["apply_ms"]  # type: ignore[assignment]
        click.echo(f"{count} applies: p50 {ms['p50']} ms, p99 {ms['p99']} ms, {result['applies_per_s']} applies/s")


@bench.command("handoff")
@click.option("-n", "--iterations", default=100, show_default=True, help="Tasks started and cancelled (sequential).")
@click.option("--workers", "n_workers", default=4, show_default=True, help="Worker processes to start.")
@click.option("--poll-delay", type=float, default=None, help="Worker poll delay in s (SRAQ_WORKER_POLL_DELAY_S).")
@click.option("--redis-url", default=None, help="Overrides SRAQ_REDIS_URL.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_handoff(
    iterations: int, n_workers: int, poll_delay: float | None, redis_url: str | None, as_json: bool
) -> None:
    """Publish a start_task turn -> handler starts; cancel -> handler stops (real workers, no model time).

    Example: sraq bench handoff --json
    """
    if iterations < 1 or n_workers < 1:
        fail("--iterations and --workers must be >= 1", 2)
    settings = load_settings(redis_url=redis_url)
    configure_logging(settings.log_format, "warning")
    delay = poll_delay if poll_delay is not None else settings.worker_poll_delay_s
    result = run(measure(settings, iterations=iterations, workers=n_workers, poll_delay_s=delay), settings)
    if as_json:
        print_json(result)
    else:
        h: dict[str, float] = result["handoff_ms"]  # type: ignore[assignment]
        c: dict[str, float] = result["cancel_ms"]  # type: ignore[assignment]
        click.echo(
            f"{iterations} tasks, {n_workers} workers, poll {delay * 1000:g} ms: handoff p50 {h['p50']} ms "
            f"p99 {h['p99']} ms; cancel p50 {c['p50']} ms p99 {c['p99']} ms"
        )


bench.add_command(bench_router)
bench.add_command(bench_loop_cmd)
