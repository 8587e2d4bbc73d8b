"""``sraq bench loop``: orchestration overhead per turn, saturated throughput, and the bare floor."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from orchestrator.commands.common import fail, load_settings, print_json, run
from orchestrator.local_redis import LocalRedis, RedisServerError, redis_reachable
from orchestrator.logsetup import configure_logging
from orchestrator.settings import Settings, redact_url

if TYPE_CHECKING:  # the backends and the loop are imported when the command runs (fast CLI start)
    from intent.backend import Backend
    from orchestrator.benchloop import LoopBenchConfig


def _backend(settings: Settings, name: str | None) -> Backend:
    """``--backend`` or embedded, falling back to the scripted test/bench router if embedded cannot load."""
    from orchestrator.backends import BackendConfigError, build_backend

    names = [name] if name else ["embedded", "scripted"]
    last: BackendConfigError | None = None
    for n in names:
        try:
            return build_backend(settings.model_copy(update={"intent_tiers": n}))
        except BackendConfigError as exc:
            last = exc
    fail(str(last), 2)


async def _run(settings: Settings, backend: Backend, cfg: LoopBenchConfig) -> dict[str, object]:
    from orchestrator.benchloop import bench_loop

    try:
        return await bench_loop(settings, backend, cfg)
    finally:
        await backend.aclose()


@click.command("loop")
@click.option("--turns", default=10_000, show_default=True, help="Turns of the saturated and floor phases.")
@click.option("--conversations", default=200, show_default=True)
@click.option("--rate", default=1000.0, show_default=True, help="Offered turns/s of the overhead phase.")
@click.option("--seconds", "rate_seconds", default=3.0, show_default=True, help="Length of the overhead phase.")
@click.option(
    "--warmup",
    "warmup_seconds",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds of turns published at --rate before the measured ones (left out of the figures).",
)
@click.option(
    "--client-nice",
    default=10,
    show_default=True,
    type=click.IntRange(0, 19),
    help="Nice value of the fixed-rate phase's client (it yields CPU to the orchestrator, as a remote client would).",
)
@click.option("--backend", "backend_name", default=None, help="Router tier (default: embedded, else scripted).")
@click.option("--redis-url", default=None, help="Overrides SRAQ_REDIS_URL (a private redis-server if unreachable).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_loop_cmd(
    turns: int, conversations: int, rate: float, rate_seconds: float, warmup_seconds: float, client_nice: int,
    backend_name: str | None, redis_url: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Overhead per turn excluding model time (at --rate), saturated throughput of one process,
    and the floor (bare XREADGROUP + Lua apply + XACK) with the ratio. Prints; asserts nothing.

    Example: sraq bench loop --json
    """
    if turns < 1 or conversations < 1 or rate <= 0 or rate_seconds <= 0:
        fail("--turns, --conversations, --rate and --seconds must be positive", 2)
    settings = load_settings(redis_url=redis_url)
    configure_logging("json", "warning")  # stderr; never mixed into the JSON on stdout
    import gc

    from orchestrator.benchloop import LoopBenchConfig
    from orchestrator.gc_policy import apply_gc_policy

    backend = _backend(settings, backend_name)
    # the collector as `sraq orchestrator` runs it (after the model is loaded, so it is frozen)
    thresholds = apply_gc_policy(settings)
    frozen = gc.get_freeze_count()
    cfg = LoopBenchConfig(
        turns=turns,
        conversations=conversations,
        rate=rate,
        rate_seconds=rate_seconds,
        client_nice=client_nice,
        warmup_seconds=warmup_seconds,
    )
    server: LocalRedis | None = None
    redis_note = redact_url(settings.redis_url)  # printed in the JSON: never the password
    if not redis_reachable(settings.redis_url):
        try:
            server = LocalRedis().start()
        except RedisServerError as exc:
            fail(f"Redis at {redact_url(settings.redis_url)} is unreachable and no private one could start: {exc}", 1)
        # same host by construction: the Unix socket spares every round trip the TCP stack
        settings = settings.model_copy(update={"redis_url": server.unix_url or server.url})
        redis_note = f"private redis-server (AOF everysec) at {redact_url(settings.redis_url)}"
    try:
        result = run(_run(settings, backend, cfg), settings)
    finally:
        if server is not None:
            server.cleanup()
    result["redis"] = redis_note
    result["gc"] = {"thresholds": list(thresholds), "frozen_objects": frozen}
    if as_json:
        print_json(result)
        return
    at_rate: dict[str, object] = result["at_rate"]  # type: ignore[assignment]
    click.echo(
        f"backend {result['backend']}: saturated {result['throughput_turns_per_s']} turns/s "
        f"(without model {result['throughput_without_model_turns_per_s']}); "
        f"floor {result['floor_turns_per_s']} turns/s; ratio {result['ratio_to_floor']} "
        f"(without model {result['ratio_to_floor_without_model']})\n"
        f"overhead excluding model at {at_rate['offered_turns_per_s']} turns/s: {result['overhead_ms']} "
        f"(read-to-commit {at_rate['processing_ms']})"
    )
