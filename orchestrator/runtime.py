"""The Orchestrator: membership ticks, one PartitionWorker per owned partition, graceful shutdown.

Control loop (every ``lease_ms / 3``): heartbeat, renew every held lease in one round trip (a refused
renewal aborts that partition at once), abort partitions whose lease ran out locally (Redis
unreachable for a whole lease), release partitions that now belong to another live instance (drain
first), and acquire free partitions of this instance's share.

Shutdown (``stop()``, SIGTERM, SIGINT): stop reading everywhere, keep renewing leases while in-flight
turns finish (at most ``grace_s``), cancel what is left (uncommitted turns stay pending for the next
owner), release the leases, leave the live set, close the HTTP endpoint. ``start()`` and ``stop()`` are
idempotent. Redis connection loss is retried with backoff everywhere; no turn is acknowledged
without being committed, so none is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from enum import Enum

import structlog
from redis.asyncio import Redis

from intent.backend import Backend
from ledger import Ledger
from ledger.streams import group_row, trim_bound
from orchestrator.lanes import Capacity
from orchestrator.membership import Lease, Membership, assignment, default_instance_id
from orchestrator.metrics import Metrics, MetricsServer
from orchestrator.partition import GROUP, TRANSIENT, PartitionWorker
from orchestrator.router_metrics import register_router_metrics
from orchestrator.settings import Settings
from orchestrator.snapshots import SnapshotCache
from orchestrator.turn_processor import TurnProcessor, TurnRecord
from workers.dispatcher import Dispatcher
from workers.queue import create_pool

log = structlog.get_logger("sraq.orchestrator")

#: Longest wait for cancelled lanes to unwind during shutdown.
CANCEL_DEADLINE_S = 5.0


class State(str, Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


def connect_redis(settings: Settings) -> Redis:
    """The loop's client: bytes replies, keepalive, no per-read socket timeout.

    A per-read timeout costs an ``asyncio.timeout`` on every reply of the hot path; a hung Redis is
    instead bounded by the control loop (each tick has a deadline; leases not renewed in time abort
    their partitions, which cancels the stuck turns; they stay pending for the next owner).
    """
    # TCP keepalive notices a silently dead peer; a Unix socket (unix://, the fastest way to a Redis on
    # the same host) has no such option and its connection class refuses it
    keepalive = {} if settings.redis_url.startswith("unix:") else {"socket_keepalive": True}
    client: Redis = Redis.from_url(settings.redis_url, socket_connect_timeout=2.0, **keepalive)
    return client


class Orchestrator:
    """One orchestrator instance. ``await start()`` ... ``await stop()``, or ``await run()`` (signals)."""

    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        *,
        redis: Redis | None = None,
        observer: Callable[[TurnRecord], None] | None = None,
    ) -> None:
        self.settings = settings
        self.keys = settings.keys()
        self.instance_id = settings.instance_id or default_instance_id()
        self.backend = backend
        self.observer = observer
        self.metrics = Metrics()
        register_router_metrics(self.metrics.registry, backend)
        self.capacity = Capacity(settings.max_in_flight)
        self.partitions: dict[int, PartitionWorker] = {}
        self.state = State.NEW
        self.metrics_port: int | None = None
        self.failure: BaseException | None = None
        self._redis = redis
        self._own_redis = redis is None
        self._server: MetricsServer | None = None
        self._control: asyncio.Task[None] | None = None
        self._shutdown: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        #: seconds from the last tick until membership can next change (see _control_loop)
        self._next_change: float | None = None
        #: control ticks begun (heartbeat, renewals, rebalance): about one per lease_ms / 3
        self.ticks = 0
        self._control_done = False
        self._stopped = asyncio.Event()
        self._last_tick = 0.0
        self._grace = settings.grace_s
        #: the outbox relay of the owned partitions (``SRAQ_RELAY_OUTBOX``; workers/dispatcher.py)
        self.dispatcher: Dispatcher | None = None
        self.log = log.bind(instance=self.instance_id)

    # ------------------------------------------------------------------ lifecycle

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            raise RuntimeError("orchestrator not started")
        return self._redis

    async def _warm_up(self) -> None:
        """Health check and warm-up of the model tiers (``start()`` of a cascade or a server tier).

        A tier that is down at start-up is not fatal: the cascade escalates past it per turn, and
        the failure is logged so an operator sees it at once.
        """
        start = getattr(self.backend, "start", None)
        if start is None:
            return
        try:
            await start()
        except Exception as exc:
            self.log.warning("tier_warm_up_failed", backend=self.backend.name, error=str(exc))

    async def start(self) -> None:
        """Register, take this instance's share of partitions, start reading. Idempotent."""
        if self.state is not State.NEW:
            return
        s = self.settings
        if self._redis is None:
            self._redis = connect_redis(s)
        self.ledger = Ledger(self.redis, self.keys, transcript_max=s.transcript_max)
        if s.relay_outbox:
            pool = create_pool(s.redis_url, self.keys, client_name=f"sraq-relay:{self.instance_id}")
            self.dispatcher = Dispatcher(
                pool,
                self.keys,
                consumer=self.instance_id,
                partitions=(),
                claim_idle_ms=s.dispatcher_claim_idle_ms,
                keep_result_s=s.task_keep_result_s,
                fed=True,
            )
        self.processor = TurnProcessor(
            self.ledger,
            self.backend,
            self.metrics,
            cache=SnapshotCache(s.snapshot_cache, s.transcript_max),
            decision_timeout_ms=s.decision_timeout_ms,
            conflict_retries=s.conflict_retries,
            observer=self.observer,
            # the commits hand their outbox entries to the relay (no blocking read of its own)
            outbox_feed=self.dispatcher,
        )
        self.membership = Membership(self.redis, self.keys, self.instance_id, s.lease_ms)
        self.metrics.in_flight.set_function(lambda: self.capacity.in_flight)
        try:
            if s.metrics_port:
                self._server = MetricsServer(self.metrics, self.health, s.metrics_host, s.metrics_port)
                self.metrics_port = await self._server.start()
            if self.dispatcher is not None:
                await self.dispatcher.start()
            await self._warm_up()
            self.state = State.RUNNING
            await self._tick()
        except BaseException:
            self.state = State.STOPPING
            await self._close()
            raise
        self._control = asyncio.create_task(self._control_loop(), name="orchestrator:control")
        self.log.info(
            "orchestrator_started", partitions=sorted(self.partitions), metrics_port=self.metrics_port,
            backend=getattr(self.backend, "name", type(self.backend).__name__),
            loop=event_loop_name(),  # the design requires uvloop: say which one runs
        )  # fmt: skip

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop (idempotent): finish in-flight turns within ``grace`` seconds, release leases."""
        if grace is not None:
            self._grace = min(self._grace, grace)
        if self.state is State.NEW:
            self.state = State.STOPPED
            self._stopped.set()
            return
        if self._shutdown is None:
            self._shutdown = asyncio.create_task(self._stop(), name="orchestrator:shutdown")
        await asyncio.shield(self._shutdown)

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT (or a fatal error), stop gracefully; returns an exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            await self.start()
            await self._stopped.wait()
            if self._shutdown is not None:
                await self._shutdown
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        return 1 if self.failure is not None else 0

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._shutdown is not None:
            self.log.warning("second_signal_cancelling_now", signal=sig.name)
            self._grace = 0.0
            self._wake.set()
            return
        self.log.info("signal_received", signal=sig.name, grace_s=self._grace)
        self._spawn(self.stop(), "orchestrator:signal-stop")

    def _spawn(self, coro: object, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)  # type: ignore[arg-type]
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.log.error("background_task_failed", task=task.get_name(), error=repr(exc), exc_info=exc)

    async def _stop(self) -> None:
        self.state = State.STOPPING
        self.log.info("orchestrator_stopping", partitions=sorted(self.partitions), in_flight=self.capacity.in_flight)
        self._wake.set()
        workers = list(self.partitions.values())
        for worker in workers:
            worker.stop_reading()
        # the control loop keeps renewing leases while in-flight turns finish
        results = await asyncio.gather(*(w.drain(self._grace) for w in workers), return_exceptions=True)
        leftover = [w for w, ok in zip(workers, results, strict=True) if ok is not True]
        if leftover:
            self.log.warning("grace_expired_cancelling", partitions=[w.partition for w in leftover])
            await self._abort_all(leftover)
        if self._control is not None:
            # a flag, not cancel(): the loop must not be interrupted halfway through a renewal
            self._control_done = True
            self._wake.set()
            await self._control
        # aborts and releases still running: one shared deadline, then cancelled
        pending = [t for t in self._background if not t.get_name().endswith("signal-stop") and not t.done()]
        if pending:
            _done, late = await asyncio.wait(pending, timeout=CANCEL_DEADLINE_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self._release_all()
        await self._close()
        self.log.info("orchestrator_stopped")

    async def _stop_relay(self) -> None:
        if self.dispatcher is not None:
            relay, self.dispatcher = self.dispatcher, None
            try:
                await relay.stop()
            finally:
                await relay.pool.aclose()

    async def _abort_all(self, workers: list[PartitionWorker]) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CANCEL_DEADLINE_S):
                await asyncio.gather(*(w.abort() for w in workers))

    async def _release_all(self) -> None:
        leases = [w.lease for w in self.partitions.values()]
        self.partitions.clear()
        self.metrics.owned.set(0)
        # bounded: a hung Redis must not hold the shutdown (the leases then simply expire)
        with contextlib.suppress(*TRANSIENT):
            async with asyncio.timeout(2.0):
                for lease in leases:
                    await self.membership.release(lease)
                await self.membership.leave()

    async def _close(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CANCEL_DEADLINE_S):  # a hung Redis must not hold the shutdown
                await self._stop_relay()
        if self._server is not None:
            await self._server.stop()
        if self._own_redis and self._redis is not None:
            await self._redis.aclose()
        self.state = State.STOPPED
        self._stopped.set()

    # ------------------------------------------------------------------ control loop

    async def _control_loop(self) -> None:
        interval = self.settings.lease_ms / 3000
        failures = 0
        while not self._control_done:
            # the next tick: the regular one, or sooner when a silent peer is about to count as dead
            # or a lease this instance wants runs out (so a takeover is not a whole interval late)
            wait = interval if self._next_change is None else min(interval, max(0.0, self._next_change))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            if self._control_done:
                return
            self._wake.clear()
            try:
                async with asyncio.timeout(self.settings.lease_ms / 1000):
                    await self._tick()
                failures = 0
            except TRANSIENT as exc:
                failures += 1
                self.metrics.redis_errors.inc()
                self.log.warning("tick_failed", error=str(exc), failures=failures)
                self._expire_leases()
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                self.log.error("control_loop_failed", error=repr(exc), exc_info=exc)
                self.failure = exc
                self._spawn(self.stop(grace=0), "orchestrator:failure-stop")
                return

    async def _tick(self) -> None:
        # (reset first: a tick that fails must not leave an early wake behind for every retry)
        self._next_change = None
        self.ticks += 1
        live, silent_peer = await self.membership.heartbeat()
        held = [w.lease for w in self.partitions.values() if not w.lost]
        for lease in await self.membership.renew(held):
            self._abort(lease.partition, "renewal refused")
        self._expire_leases()
        self._last_tick = time.monotonic()
        if self.state is State.RUNNING:
            desired = assignment(self.keys.partitions, live, self.instance_id)
            for p, worker in list(self.partitions.items()):
                if p not in desired and not worker.stopping:
                    worker.stop_reading()
                    self._spawn(self._release(worker), f"release:p{p}")
            missing = []
            for p in sorted(desired - set(self.partitions)):
                got = await self.membership.acquire(p)
                if got is None:
                    missing.append(p)
                elif self.state is State.RUNNING:
                    self._start_partition(got)
            # wake again as soon as something can change: a peer's heartbeat or a wanted lease runs
            # out (+ a few ms, so the expiry has happened in Redis by then)
            due = [t for t in (silent_peer, await self.membership.expiries(missing)) if t is not None]
            if due:
                self._next_change = min(due) + 0.005
        self.metrics.owned.set(len(self.partitions))
        if self.dispatcher is not None:
            await self.dispatcher.set_partitions(p for p, w in self.partitions.items() if not w.lost)
        await self._observe_streams()

    def _start_partition(self, lease: Lease) -> None:
        s = self.settings
        worker = PartitionWorker(
            redis=self.redis,
            keys=self.keys,
            lease=lease,
            consumer=self.instance_id,
            capacity=self.capacity,
            processor=self.processor,
            metrics=self.metrics,
            read_batch=s.read_batch,
            read_block_ms=s.read_block_ms,
            max_deliveries=s.max_deliveries,
            max_content_bytes=s.max_content_bytes,
            on_failure=self._worker_failed,
        )
        self.partitions[lease.partition] = worker
        worker.start()
        self.log.info("partition_acquired", partition=lease.partition, token=lease.token)

    def _worker_failed(self, worker: PartitionWorker, exc: BaseException) -> None:
        if self.partitions.get(worker.partition) is worker:
            self._abort(worker.partition, repr(exc))

    def _expire_leases(self) -> None:
        now = time.monotonic()
        for p, worker in list(self.partitions.items()):
            if now > worker.lease.valid_until:
                self._abort(p, "lease expired (not renewed in time)")

    def _abort(self, partition: int, reason: str) -> None:
        worker = self.partitions.get(partition)
        if worker is None or worker.aborting:
            return
        worker.aborting = True
        worker.lost = True
        self.metrics.lease_losses.inc()
        self.log.warning("partition_aborted", partition=partition, reason=reason)
        self._spawn(self._finish_abort(worker), f"abort:p{partition}")

    async def _finish_abort(self, worker: PartitionWorker) -> None:
        try:
            await worker.abort()
            with contextlib.suppress(*TRANSIENT):
                async with asyncio.timeout(self.settings.lease_ms / 1000):
                    await self.membership.release(worker.lease)  # no-op unless we still hold it
        finally:
            if self.partitions.get(worker.partition) is worker:
                del self.partitions[worker.partition]

    async def _release(self, worker: PartitionWorker) -> None:
        """Hand a partition to its new owner: drain, then release the lease."""
        try:
            if not await worker.drain(self._grace):
                await worker.abort()
            with contextlib.suppress(*TRANSIENT):
                async with asyncio.timeout(self.settings.lease_ms / 1000):
                    await self.membership.release(worker.lease)
        finally:
            if self.partitions.get(worker.partition) is worker:
                del self.partitions[worker.partition]
        self.log.info("partition_released", partition=worker.partition)

    async def _observe_streams(self) -> None:
        """Lag and pending entries of the owned turn streams (metrics), and, with ``trim_turns``, the
        entries the group is done with trimmed away (:func:`ledger.streams.trim_bound`): one pipeline
        to look, one to trim, per control tick."""
        if not self.partitions:
            return
        owned = sorted(self.partitions)
        streams = [self.keys.partition(p).turns for p in owned]
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xinfo_groups(stream)
                pipe.xpending(stream, GROUP)
            replies = await pipe.execute(raise_on_error=False)
        bounds: list[tuple[str, bytes | str]] = []
        for p, stream, groups, pending in zip(owned, streams, replies[::2], replies[1::2], strict=True):
            if isinstance(groups, Exception):
                continue
            group = group_row(groups, GROUP)
            if group is None:
                continue
            if group.get("lag") is not None:
                self.metrics.stream_lag.labels(str(p)).set(int(group["lag"]))
            self.metrics.pending.labels(str(p)).set(int(group.get("pending", 0)))
            bound = trim_bound(group, None if isinstance(pending, Exception) else pending)
            if self.settings.trim_turns and bound is not None:
                bounds.append((stream, bound))
        if bounds:
            async with self.redis.pipeline(transaction=False) as pipe:
                for stream, bound in bounds:
                    pipe.xtrim(stream, minid=bound, approximate=True)
                trimmed = await pipe.execute(raise_on_error=False)
            self.metrics.turns_trimmed.inc(sum(n for n in trimmed if isinstance(n, int)))

    # ------------------------------------------------------------------ health

    def health(self) -> tuple[bool, dict[str, object]]:
        age = time.monotonic() - self._last_tick if self._last_tick else None
        ok = self.state is State.RUNNING and age is not None and age * 1000 < self.settings.lease_ms
        relay_failed = self.dispatcher is not None and self.dispatcher.failed.is_set()
        ok = ok and not relay_failed
        return ok, {
            "ok": ok,
            "instance": self.instance_id,
            "state": self.state.value,
            "partitions": sorted(self.partitions),
            "in_flight": self.capacity.in_flight,
            "last_tick_ms_ago": None if age is None else round(age * 1000, 1),
            "relay": None if self.dispatcher is None else sorted(self.dispatcher.partitions),
        }


def event_loop_name() -> str:
    """The running event loop's implementation: ``uvloop`` or ``asyncio`` (its top-level package)."""
    return type(asyncio.get_running_loop()).__module__.partition(".")[0]
