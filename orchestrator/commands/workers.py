"""``sraq workers`` (arq worker pool) and ``sraq dispatcher`` (outbox relay)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from typing import Any

import click
import structlog

from orchestrator.commands.common import fail, load_settings, run
from orchestrator.logsetup import configure_logging
from orchestrator.settings import Settings
from workers.config import WorkerConfig
from workers.dispatcher import Dispatcher
from workers.queue import create_pool
from workers.registry import HandlerError, HandlerRegistry
from workers.worker import health, live_workers, serve

LOG_LEVELS = click.Choice(["debug", "info", "warning", "error"], case_sensitive=False)


def worker_config(settings: Settings, **overrides: Any) -> WorkerConfig:
    """The worker-side configuration derived from the one ``Settings`` object (plus CLI flags)."""
    api_key = settings.task_llm_api_key or settings.openai_api_key
    values: dict[str, Any] = {
        "redis_url": settings.redis_url,
        "prefix": settings.prefix,
        "partitions": settings.partitions,
        "handler": settings.worker_handler,
        "handler_paths": tuple(p.strip() for p in settings.handler_paths.split(",") if p.strip()),
        "max_jobs": settings.worker_max_jobs,
        "poll_delay_s": settings.worker_poll_delay_s,
        "task_timeout_s": settings.task_timeout_s,
        "max_tries": settings.task_max_tries,
        "retry_backoff_s": settings.task_retry_backoff_s,
        "shutdown_grace_s": settings.worker_shutdown_grace_s,
        "health_check_interval_s": settings.worker_health_interval_s,
        "keep_result_s": settings.task_keep_result_s,
        "dispatcher_claim_idle_ms": settings.dispatcher_claim_idle_ms,
        "demo_steps": settings.demo_steps,
        "demo_step_s": settings.demo_step_s,
        "llm_base_url": settings.task_llm_base_url or settings.openai_base_url,
        "llm_model": settings.task_llm_model or settings.openai_model,
        "llm_api_key": api_key.get_secret_value() if api_key is not None else None,
        "llm_timeout_s": settings.task_llm_timeout_s,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return WorkerConfig(**values)
    except ValueError as exc:
        fail(f"bad configuration: {exc}", 2)


def setup_logging(settings: Settings, level: str | None) -> None:
    """Ours through structlog (orchestrator/logsetup.py), arq's through stdlib logging; both on stderr."""
    lvl = (level or settings.log_level).lower()
    try:
        configure_logging(settings.log_format, lvl)
    except ValueError as exc:
        fail(str(exc), 2)
    logging.basicConfig(
        level=logging.getLevelName(lvl.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


def parse_partitions(spec: str | None, total: int) -> list[int] | None:
    """``"0-3,8"`` -> [0, 1, 2, 3, 8]; None means all partitions."""
    if not spec:
        return None
    out: set[int] = set()
    try:
        for part in spec.split(","):
            lo, sep, hi = part.strip().partition("-")
            out.update(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        fail(f"bad --partitions {spec!r}: use e.g. 0-3,8", 2)
    bad = [p for p in out if not 0 <= p < total]
    if bad:
        fail(f"partition {bad[0]} out of range 0..{total - 1}", 2)
    return sorted(out)


@click.command("workers")
@click.option("--max-jobs", type=int, default=None, help="Jobs run at once by this process (SRAQ_WORKER_MAX_JOBS).")
@click.option("--handler", default=None, help="Task handler: a registered name or module:function.")
@click.option("--poll-delay", type=float, default=None, help="Seconds between queue polls (SRAQ_WORKER_POLL_DELAY_S).")
@click.option("--burst", is_flag=True, help="Exit once the queue is empty.")
@click.option("--check", is_flag=True, help="Print the pool's health record; exit 1 if no live worker wrote one.")
@click.option("--list-handlers", is_flag=True, help="Print the registered handler names and exit.")
@click.option("--redis-url", default=None, help="Overrides SRAQ_REDIS_URL.")
@click.option("--log-level", type=LOG_LEVELS, default=None, help="Overrides SRAQ_LOG_LEVEL.")
def workers(
    max_jobs: int | None,
    handler: str | None,
    poll_delay: float | None,
    burst: bool,
    check: bool,
    list_handlers: bool,
    redis_url: str | None,
    log_level: str | None,
) -> None:
    """Run an arq worker process for sraq tasks (several may run against one Redis).

    Example: sraq workers --max-jobs 20 --handler demo
    """
    settings = load_settings(redis_url=redis_url)
    config = worker_config(settings, max_jobs=max_jobs, handler=handler, poll_delay_s=poll_delay)
    try:
        registry = HandlerRegistry.discover(config.handler_paths)
        if list_handlers:
            click.echo("\n".join(registry.names()))
            return
        registry.resolve(config.handler)
    except HandlerError as exc:
        fail(str(exc), 2)
    if check:
        sys.exit(run(_check(config), settings))
    setup_logging(settings, log_level)
    run(serve(config, registry, burst=burst), settings)


async def _check(config: WorkerConfig) -> int:
    pool = create_pool(config.redis_url, config.keys())
    try:
        record = await health(pool, config.keys().queue)
        names = await live_workers(pool)
    finally:
        await pool.aclose()
    click.echo(f"queue {config.keys().queue}: {record or 'no health record'}; {len(names)} worker process(es)")
    return 0 if record else 1


@click.command("dispatcher")
@click.option("--partitions", default=None, help="Partitions to relay, e.g. 0-7 (default: all).")
@click.option("--consumer", default=None, help="Consumer name in the outbox group (default: host:pid).")
@click.option("--redis-url", default=None, help="Overrides SRAQ_REDIS_URL.")
@click.option("--log-level", type=LOG_LEVELS, default=None, help="Overrides SRAQ_LOG_LEVEL.")
def dispatcher(partitions: str | None, consumer: str | None, redis_url: str | None, log_level: str | None) -> None:
    """Relay ledger outbox entries to the arq queue (start, update, cancel) until SIGTERM.

    The orchestrator relays the partitions it owns itself; run this when it does not, or as a spare
    (several relays share the work through one consumer group; a dispatch never runs twice).
    """
    settings = load_settings(redis_url=redis_url)
    config = worker_config(settings)
    setup_logging(settings, log_level)
    sys.exit(run(_relay(config, parse_partitions(partitions, config.partitions), consumer), settings))


async def _relay(config: WorkerConfig, partitions: list[int] | None, consumer: str | None) -> int:
    keys = config.keys()
    name = consumer or f"{socket.gethostname()}:{os.getpid()}"
    pool = create_pool(config.redis_url, keys, client_name=f"sraq-dispatcher:{name}")
    relay = Dispatcher(
        pool,
        keys,
        consumer=name,
        partitions=partitions,
        claim_idle_ms=config.dispatcher_claim_idle_ms,
        keep_result_s=config.keep_result_s,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log = structlog.get_logger("sraq.dispatcher")
    try:
        await pool.ping()
        await relay.start()
        log.info("dispatcher_started", consumer=name, partitions=sorted(relay.partitions))
        waiters = [
            asyncio.create_task(stop.wait(), name="dispatcher-stop"),
            asyncio.create_task(relay.failed.wait(), name="dispatcher-failed"),
        ]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
    finally:
        await relay.stop()
        await pool.aclose()
    log.info("dispatcher_stopped", **dict(relay.stats))
    return 1 if relay.error is not None else 0
