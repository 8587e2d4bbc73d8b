"""Helpers shared by CLI commands: settings, one-line errors, JSON output, Redis reachability."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Coroutine
from typing import Any, NoReturn, TypeVar

import click
import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from orchestrator.settings import Settings, redact_url

T = TypeVar("T")


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one clear line on stderr and exit (1 runtime failure, 2 bad usage/input)."""
    click.echo(f"sraq: {message}", err=True)
    sys.exit(code)


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        fail(f"bad configuration: {'.'.join(map(str, first['loc']))}: {first['msg']}", 2)


def redis_hint(url: str, exc: BaseException) -> str:
    """The one line printed when Redis is unreachable (the URL's credentials redacted)."""
    reason = str(exc).split("\n")[0] or type(exc).__name__
    return (
        f"cannot reach Redis at {redact_url(url)}: {reason}; start one with 'redis-server' "
        "or 'docker compose up redis', or set SRAQ_REDIS_URL"
    )


def run(coro: Coroutine[Any, Any, T], settings: Settings | None = None) -> T:
    """Run ``coro`` on uvloop (when available); Redis connection failures become one clear line."""
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a core dependency on POSIX
        runner = asyncio.run
    try:
        return runner(coro)  # type: ignore[no-any-return]
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        if settings is None:
            raise
        fail(redis_hint(settings.redis_url, exc), 1)


def connect(settings: Settings) -> aioredis.Redis:
    client: aioredis.Redis = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=2.0)
    return client


def print_json(data: object) -> None:
    click.echo(json.dumps(data, ensure_ascii=False))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for an empty list."""
    if not values:
        return 0.0
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return float(ordered[k])
