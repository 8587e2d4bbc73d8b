"""``run_task``: the arq job that runs one dispatch of a task through the configured handler.

One run = one *attempt*: a per-task counter (``HINCRBY run attempt``) shared by every job of the task,
so arq retries, re-runs after a worker crash and re-dispatches all get a new, larger attempt. The
ledger keeps the largest attempt it has seen and refuses events of smaller ones.

Outcomes:

* handler returns      -> ``completed`` event with the result text;
* handler raises or exceeds ``task_timeout_s`` -> ``progress`` ("attempt N failed ...") and an arq
  ``Retry`` with exponential backoff, until ``max_tries`` runs; then a ``failed`` event
  (``PermanentTaskError``: ``failed`` at once);
* a run starting after ``max_tries`` (earlier runs died with their worker) -> ``failed`` at once;
* ``CancelledError`` (abort, or worker shutdown: arq re-queues those) -> no event, the stop time is
  recorded in the task's run record, the error propagates to arq;
* the task is already closed in the ledger (cancelled before the job started, or a duplicate) ->
  the handler is not called.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import structlog
from arq import Retry
from redis.asyncio import Redis

from ledger import Keys, Ledger
from ledger.turns import Publisher
from workers.config import WorkerConfig
from workers.context import PermanentTaskError, TaskContext, UpdateFeed
from workers.events import EventReporter
from workers.registry import Handler

log = structlog.get_logger("sraq.workers.runner")

#: key of our runtime in arq's worker ctx
CTX_KEY = "sraq"


@dataclass(slots=True)
class WorkerRuntime:
    """What every job of one worker process shares (built in arq's ``on_startup``)."""

    config: WorkerConfig
    keys: Keys
    redis: Redis
    ledger: Ledger
    publisher: Publisher
    handler: Handler
    handler_name: str


async def run_task(ctx: dict[str, Any], conversation_id: str, task_id: str, dispatch: int, explanation: str) -> str:
    """arq job function (registered as ``run_task``)."""
    rt: WorkerRuntime = ctx[CTX_KEY]
    job_id: str = ctx["job_id"]
    job_try: int = ctx["job_try"]
    task = await rt.ledger.task(conversation_id, task_id)
    if task is None or not task.is_open:
        status = "unknown" if task is None else task.status.value
        log.info("task_not_open", conversation_id=conversation_id, task_id=task_id, status=status, job=job_id)
        return f"skipped: task is {status}"
    tk = rt.keys.task(conversation_id, task_id)
    attempt = int(await rt.redis.hincrby(tk.run, "attempt", 1))  # type: ignore[misc]
    events = EventReporter(rt.publisher, conversation_id, task_id, attempt)
    if job_try > rt.config.max_tries:
        error = f"gave up: {job_try - 1} runs did not finish (worker lost?)"
        await events.failed(error)
        return f"failed: {error}"
    context = TaskContext(
        conversation_id=conversation_id,
        task_id=task_id,
        explanation=explanation,
        attempt=attempt,
        job_id=job_id,
        job_try=job_try,
        config=rt.config,
        feed=UpdateFeed(rt.redis, tk.updates),
        events=events,
    )
    await events.started()
    log.info("task_started", conversation_id=conversation_id, task_id=task_id, attempt=attempt, job=job_id)
    try:
        async with asyncio.timeout(rt.config.task_timeout_s):
            result = await rt.handler(context)
    except asyncio.CancelledError:
        stopped = {"stopped_at": repr(time.time()), "stopped_attempt": attempt}
        await asyncio.shield(rt.redis.hset(tk.run, mapping=stopped))  # type: ignore[arg-type]
        log.info("task_stopped", conversation_id=conversation_id, task_id=task_id, attempt=attempt, job=job_id)
        raise
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if isinstance(exc, TimeoutError):
            error = f"timed out after {rt.config.task_timeout_s:g}s"
        if job_try < rt.config.max_tries and not isinstance(exc, PermanentTaskError):
            delay = rt.config.backoff_s(job_try)
            await events.progress(f"attempt {attempt} failed ({error}); retrying in {delay:g}s")
            log.warning("task_retry", conversation_id=conversation_id, task_id=task_id, attempt=attempt, error=error)
            raise Retry(defer=delay) from exc
        log.warning("task_failed", conversation_id=conversation_id, task_id=task_id, attempt=attempt, error=error)
        await events.failed(error)
        await _expire_task_keys(rt, conversation_id, task_id)
        return f"failed: {error}"
    text = "" if result is None else str(result)
    await events.completed(text)
    await _expire_task_keys(rt, conversation_id, task_id)
    log.info("task_completed", conversation_id=conversation_id, task_id=task_id, attempt=attempt, job=job_id)
    return text


async def _expire_task_keys(rt: WorkerRuntime, conversation_id: str, task_id: str) -> None:
    """The task is done: its update stream and run record go away after ``keep_result_s``."""
    tk = rt.keys.task(conversation_id, task_id)
    ttl = max(1, int(rt.config.keep_result_s))
    async with rt.redis.pipeline(transaction=False) as pipe:
        pipe.expire(tk.updates, ttl)
        pipe.expire(tk.run, ttl)
        await pipe.execute()
