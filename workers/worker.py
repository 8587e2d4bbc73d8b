"""The arq worker of ``sraq workers``: settings built from :class:`WorkerConfig`, run until a signal.

Choices (measured numbers in docs/workers.md):

* ``poll_delay`` defaults to 20 ms: arq has no blocking pop, a queued job waits up to one poll delay,
  and an abort is noticed at the next poll. Each idle worker costs ~2 Redis commands per poll.
* ``allow_abort_jobs=True``: cancel is arq's abort (the handler gets ``CancelledError``).
* per-run timeout is ours (``task_timeout_s``, inside ``run_task``) so a slow handler is retried /
  reported ``failed``; arq's ``job_timeout`` is 2 s longer as a backstop.
* the in-progress key (what keeps other workers off a running job) expires ``in_progress_s`` =
  task timeout + 3 s after the start instead of arq's fixed +10 s: a job whose worker was SIGKILLed
  runs again on any worker after that.
* ``max_tries`` is enforced by ``run_task`` (which reports ``failed``); arq's own limit is set far
  higher so arq never drops a job silently with the ledger still open.
* SIGTERM/SIGINT: stop picking jobs, let running ones finish for ``shutdown_grace_s``, then cancel
  the rest (arq re-queues them: another worker re-runs them with a new attempt).
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import structlog
from arq import Worker
from arq.connections import ArqRedis
from arq.worker import func

from ledger import Ledger
from ledger.turns import Publisher
from workers.config import WorkerConfig
from workers.queue import RUN_TASK, create_pool, deserialize, serialize
from workers.registry import HandlerRegistry
from workers.runner import CTX_KEY, WorkerRuntime, run_task

log = structlog.get_logger("sraq.workers.worker")

#: arq's per-function try limit; ours (``WorkerConfig.max_tries``) is enforced inside run_task
ARQ_MAX_TRIES = 1000
CLIENT_NAME_PREFIX = "sraq-worker"


class SraqWorker(Worker):
    """arq ``Worker`` whose in-progress expiry is ours rather than ``job_timeout + 10 s``.

    arq 0.28 computes ``in_progress_timeout_s`` once in ``__init__`` and has no option for it; it is a
    plain attribute read when a job starts.
    """

    def __init__(self, *, in_progress_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if in_progress_s <= self.job_timeout_s:
            raise ValueError("in_progress_s must exceed job_timeout")
        self.in_progress_timeout_s = in_progress_s


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_settings(config: WorkerConfig, registry: HandlerRegistry, *, pool: ArqRedis) -> dict[str, Any]:
    """The arq ``WorkerSettings`` (as keyword arguments of ``Worker``) for ``config``.

    The handler is resolved here, so a bad ``--handler`` fails at start-up, not at the first task.
    """
    handler = registry.resolve(config.handler)
    keys = config.keys()

    async def on_startup(ctx: dict[str, Any]) -> None:
        redis = ctx["redis"]
        ctx[CTX_KEY] = WorkerRuntime(
            config=config,
            keys=keys,
            redis=redis,
            ledger=Ledger(redis, keys),
            publisher=Publisher(redis, keys, max_content_bytes=config.max_content_bytes),
            handler=handler,
            handler_name=config.handler,
        )
        log.info(
            "worker_started",
            queue=keys.queue,
            handler=config.handler,
            max_jobs=config.max_jobs,
            poll_delay_s=config.poll_delay_s,
            in_progress_s=config.in_progress_s,
        )

    return {
        "functions": [
            func(
                run_task,
                name=RUN_TASK,
                timeout=config.job_timeout_s,
                max_tries=ARQ_MAX_TRIES,
                keep_result=config.keep_result_s,
            )
        ],
        "queue_name": keys.queue,
        "redis_pool": pool,
        "on_startup": on_startup,
        "max_jobs": config.max_jobs,
        "poll_delay": config.poll_delay_s,
        "job_timeout": config.job_timeout_s,
        "keep_result": config.keep_result_s,
        "allow_abort_jobs": True,
        "retry_jobs": True,
        "max_tries": ARQ_MAX_TRIES,
        "health_check_interval": config.health_check_interval_s,
        "job_completion_wait": config.shutdown_grace_s,
        "job_serializer": serialize,
        "job_deserializer": deserialize,
    }


async def serve(config: WorkerConfig, registry: HandlerRegistry, *, burst: bool = False) -> int:
    """Run one worker in the running loop until SIGTERM/SIGINT (or, with ``burst``, an empty queue).

    Returns the number of jobs that completed.
    """
    keys = config.keys()
    pool = create_pool(config.redis_url, keys, client_name=f"{CLIENT_NAME_PREFIX}:{worker_name()}")
    try:
        settings = worker_settings(config, registry, pool=pool)
    except BaseException:
        await pool.aclose()
        raise
    worker = SraqWorker(in_progress_s=config.in_progress_s, burst=burst, **settings)
    try:
        await worker.async_run()
    except asyncio.CancelledError:
        # a signal handler cancels arq's main task; only re-raise if *we* are being cancelled
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
        log.info("worker_stopping", completed=worker.jobs_complete, failed=worker.jobs_failed)
    except Exception:
        log.exception("worker_crashed")
        raise
    finally:
        # arq's close(): waits for the job tasks, deletes the health key, closes the pool
        await worker.close()
    return worker.jobs_complete


async def health(redis: ArqRedis, queue: str) -> str | None:
    """The health record the workers of ``queue`` write every ``health_check_interval_s`` (None if stale)."""
    raw: bytes | None = await redis.get(queue + ":health-check")
    return raw.decode() if raw is not None else None


async def live_workers(redis: ArqRedis) -> list[str]:
    """Names of connected worker processes (their Redis client names)."""
    clients = await redis.client_list()
    names = {c.get("name", "") for c in clients}
    return sorted(n for n in names if n.startswith(CLIENT_NAME_PREFIX + ":"))
