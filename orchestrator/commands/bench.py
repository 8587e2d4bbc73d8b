"""``sraq bench``: benchmarks that print numbers (never asserted in tests)."""

from __future__ import annotations

import time
import uuid

import click

from ledger import Keys, Ledger, NoteOp, StartOp, UpdateOp
from orchestrator.commands.bench_loop import bench_loop_cmd
from orchestrator.commands.bench_router import bench_router
from orchestrator.commands.common import connect, load_settings, percentile, print_json, run
from orchestrator.settings import Settings


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
        async for key in redis.scan_iter(match=keys.pattern(), count=1000):
            await redis.delete(key)
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


bench.add_command(bench_router)
bench.add_command(bench_loop_cmd)
