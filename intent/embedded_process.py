"""The embedded tier in child processes: its CPU time off the orchestrator's event loop.

The embedded model is pure Python/numpy CPU work (tenths of a millisecond per decision). Run inline,
it holds the event loop that also reads streams and commits turns, so the process's throughput is
bound by model + loop time on one core. :class:`ProcessEmbeddedBackend` runs the same
:class:`~intent.embedded.EmbeddedBackend` in ``processes`` children (``python -m
intent.embedded_worker``) and exchanges msgpack frames with them over pipes (no pickle), so the model
runs on another core while the loop goes on. The decisions are the same, byte for byte; a contract
test runs both implementations on the dataset. The requests made during one event-loop iteration go
to a child in one pipe write, and the child answers everything it read in one write: under load, a
few system calls per batch of decisions instead of per decision.

Failure: a child that exits or sends garbage fails its pending decisions with
:class:`~intent.backend.BackendError` (the orchestrator commits a safe ``undecided`` noop, the router
escalates) and is replaced on the next decision; a child that cannot start raises ``BackendError``
at once, at most one start attempt per second. ``aclose()`` closes the children's stdin (they exit),
waits briefly, then kills; idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import time
from dataclasses import dataclass, field

import structlog

from intent.backend import BackendError, Decision, DecisionRequest
from intent.embedded import NAME
from intent.embedded_wire import HEADER, MAX_FRAME, READY_ID, WireReply, WireRequest, frame, reply_decoder
from intent.errors import InvalidDecision

log = structlog.get_logger("sraq.intent.embedded")
#: Back-pressure: above this many unsent bytes to a child, a decision waits for the pipe to drain.
_HIGH_WATER = 1 << 20


@dataclass(slots=True, eq=False)
class _Child:
    proc: asyncio.subprocess.Process
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    pending: dict[int, asyncio.Future[Decision]] = field(default_factory=dict)
    reader: asyncio.Task[None] | None = None
    alive: bool = True
    #: request frames of this event-loop iteration, written together by :meth:`flush`
    outbox: list[bytes] = field(default_factory=list)
    #: writes to the child's stdin so far (each carries one or more requests)
    writes: int = 0

    def send(self, data: bytes) -> None:
        """Queue a request frame; the first one of an iteration schedules the write of them all."""
        if not self.outbox:
            asyncio.get_running_loop().call_soon(self.flush)
        self.outbox.append(data)

    def flush(self) -> None:
        stdin = self.proc.stdin
        data, self.outbox = b"".join(self.outbox), []
        if data and stdin is not None and not stdin.is_closing():
            stdin.write(data)
            self.writes += 1

    def fail(self, error: BaseException) -> None:
        self.alive = False
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(error)
        self.pending.clear()


class ProcessEmbeddedBackend:
    """:class:`~intent.embedded.EmbeddedBackend` decisions computed in child processes."""

    name = NAME

    def __init__(self, model_path: str | None = None, *, processes: int = 1, start_timeout: float = 60.0) -> None:
        if processes < 1:
            raise ValueError("processes must be >= 1")
        self.model_path = model_path
        self.processes = processes
        self.start_timeout = start_timeout
        self._children: list[_Child] = []
        self._ids = itertools.count(READY_ID + 1)
        self._spawn_lock = asyncio.Lock()
        self._last_failed_start = 0.0
        self._closed = False

    async def start(self) -> None:
        """Start every child and wait until each has loaded the model (idempotent)."""
        async with self._spawn_lock:
            while len(self._live()) < self.processes:
                await self._spawn()

    async def decide(self, request: DecisionRequest) -> Decision:
        child = await self._child()
        rid = next(self._ids)
        fut: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        child.pending[rid] = fut
        stdin = child.proc.stdin
        assert stdin is not None
        # written with the other requests of this event-loop iteration: one pipe write for all of them
        child.send(frame(WireRequest(rid, request)))
        try:
            if stdin.transport.get_write_buffer_size() > _HIGH_WATER:
                await stdin.drain()
            return await fut
        finally:
            child.pending.pop(rid, None)  # cancelled or timed out: a late reply is dropped

    async def aclose(self) -> None:
        """Stop every child (stdin closed, then killed after 2 s). Idempotent."""
        self._closed = True
        children, self._children = self._children, []
        for child in children:
            await self._stop(child)

    # ------------------------------------------------------------------ children

    def _live(self) -> list[_Child]:
        self._children = [c for c in self._children if c.alive]
        return self._children

    async def _child(self) -> _Child:
        """The least busy live child; missing ones are (re)started, unless a start just failed and
        some child is still serving."""
        if len(self._live()) < self.processes:
            async with self._spawn_lock:
                missing = len(self._live()) < self.processes
                recently_failed = time.monotonic() - self._last_failed_start < 1.0
                if missing and not (recently_failed and self._live()):
                    await self._spawn()
        return min(self._live(), key=lambda c: len(c.pending))

    async def _spawn(self) -> None:
        if self._closed:
            raise BackendError(NAME, "backend is closed")
        if time.monotonic() - self._last_failed_start < 1.0:
            raise BackendError(NAME, "embedded worker failed to start less than a second ago")
        args = [sys.executable, "-m", "intent.embedded_worker"]
        if self.model_path:
            args += ["--model", self.model_path]
        try:
            proc = await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
            )
        except OSError as exc:
            self._last_failed_start = time.monotonic()
            raise BackendError(NAME, f"cannot start the embedded worker: {exc}") from None
        child = _Child(proc)
        child.reader = asyncio.create_task(self._read(child), name=f"embedded-reader:{proc.pid}")
        ready = asyncio.create_task(child.ready.wait(), name=f"embedded-ready:{proc.pid}")
        try:
            async with asyncio.timeout(self.start_timeout):
                await asyncio.wait({child.reader, ready}, return_when=asyncio.FIRST_COMPLETED)
            if not child.ready.is_set():
                raise BackendError(NAME, f"embedded worker exited while loading (code {proc.returncode})")
        except BaseException as exc:
            self._last_failed_start = time.monotonic()
            await self._stop(child)
            if isinstance(exc, TimeoutError):
                raise BackendError(NAME, f"embedded worker not ready after {self.start_timeout:.0f}s") from None
            raise
        finally:
            ready.cancel()
        self._children.append(child)
        log.info("embedded_worker_started", pid=proc.pid)

    async def _read(self, child: _Child) -> None:
        """Resolve the child's replies; on EOF or a bad frame, fail what is pending and stop it."""
        stdout = child.proc.stdout
        assert stdout is not None
        error: BackendError
        try:
            while True:
                (size,) = HEADER.unpack(await stdout.readexactly(HEADER.size))
                if size > MAX_FRAME:
                    raise ValueError(f"frame of {size} bytes")
                reply = reply_decoder.decode(await stdout.readexactly(size))
                if reply.id == READY_ID:
                    child.ready.set()
                    continue
                _resolve(child.pending.pop(reply.id, None), reply)
        except asyncio.IncompleteReadError:
            code = await child.proc.wait()
            error = BackendError(NAME, f"embedded worker {child.proc.pid} exited (code {code})")
            if not self._closed:
                log.warning("embedded_worker_exited", pid=child.proc.pid, code=code, pending=len(child.pending))
        except Exception as exc:  # a corrupt frame: reported and the child replaced, never swallowed
            log.error("embedded_worker_failed", pid=child.proc.pid, error=repr(exc), exc_info=exc)
            error = BackendError(NAME, f"embedded worker {child.proc.pid} sent a bad frame: {exc}")
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()
        child.fail(error)

    async def _stop(self, child: _Child) -> None:
        child.alive = False
        stdin = child.proc.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()
        try:
            async with asyncio.timeout(2.0):
                await child.proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()
            await child.proc.wait()
        if child.reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await child.reader
        child.fail(BackendError(NAME, "backend closed"))


def _resolve(fut: asyncio.Future[Decision] | None, reply: WireReply) -> None:
    if fut is None or fut.done():
        return  # the caller gave up (deadline, cancellation)
    if reply.decision is not None:
        fut.set_result(reply.decision.decision())
    elif reply.kind == "invalid":
        fut.set_exception(InvalidDecision(reply.error or "invalid decision"))
    else:
        fut.set_exception(BackendError(NAME, reply.error or "unknown error"))
