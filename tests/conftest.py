"""Shared fixtures: a private redis-server for the session (AOF on), a unique key prefix per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from ledger import Keys, Ledger
from orchestrator.local_redis import LocalRedis


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``SRAQ_TEST_REDIS_URL`` when set, else a private redis-server on a free port."""
    override = os.environ.get("SRAQ_TEST_REDIS_URL")
    if override:
        yield override
        return
    with LocalRedis() as server:
        yield server.url


@pytest.fixture
def prefix() -> str:
    """Tests isolate by key prefix, never by flushing the database."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def keys(prefix: str) -> Keys:
    return Keys(prefix=prefix, partitions=4)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def ledger(redis: Redis, keys: Keys) -> Ledger:
    return Ledger(redis, keys, transcript_max=5)
