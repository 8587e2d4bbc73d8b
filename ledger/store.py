"""The task ledger: atomic, idempotent, version-checked applies and consistent reads over Redis."""

from __future__ import annotations

import importlib.resources
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.asyncio import Redis

from ledger.errors import (
    InvalidOp,
    LeaseLost,
    LedgerError,
    StaleAttempt,
    TaskClosed,
    UnknownTask,
    VersionConflict,
)
from ledger.keys import ConversationKeys, Keys
from ledger.models import (
    Ack,
    ApplyResult,
    AuditEntry,
    DecisionEvent,
    DecisionMeta,
    LedgerSnapshot,
    Message,
    Op,
    OutboxRecord,
    Relay,
    Task,
)
from ledger.resp import exchange, pack_evalsha, reloading

#: At least this many applied turn ids are remembered per conversation ...
APPLIED_KEEP = 10_000
#: ... and every turn id applied within this window, whichever set is larger.
APPLIED_TTL_MS = 24 * 3600 * 1000
DECISIONS_MAX = 100_000

_APPLY_LUA = importlib.resources.files("ledger").joinpath("lua/apply.lua").read_text("utf-8")
# The snapshot of one conversation, atomically (the batched read of snapshot_many).
_SNAPSHOT_LUA = """
local m = redis.call('HMGET', KEYS[1], 'version', 'applied_turns')
return {m[1], m[2], redis.call('HVALS', KEYS[2]), redis.call('LRANGE', KEYS[3], 0, -1)}
"""


@dataclass(frozen=True, slots=True)
class ApplyCall:
    """The arguments of one :meth:`Ledger.apply`, for :meth:`Ledger.apply_many`."""

    conversation_id: str
    expected_version: int | None
    turn_id: str
    ops: Sequence[Op]
    decision: DecisionMeta | None = None
    messages: Sequence[Message] = ()
    fencing_token: str | None = None
    ack: Ack | None = None
    event: DecisionEvent | None = None
    relay: Relay | None = None


class _ApplyRequest(msgspec.Struct, omit_defaults=True):
    conv: str
    turn: str
    expected: int
    ops: Sequence[Op]
    transcript_max: int
    applied_keep: int
    applied_ttl_ms: int
    decisions_max: int
    decision: DecisionMeta | None = None
    token: str = ""
    ack: dict[str, str] | None = None
    relay: Relay | None = None


class _UnstampedMessage(msgspec.Struct):
    """A transcript message as the apply script receives it: a JSON object it closes with its ``at``."""

    role: str
    content: str
    turn_id: str
    task_id: str | None


def _unstamped(message: Message) -> bytes:
    return _encoder.encode(_UnstampedMessage(message.role, message.content, message.turn_id, message.task_id))


_task_decoder = msgspec.json.Decoder(Task)
_messages_decoder = msgspec.json.Decoder(list[Message])
_encoder = msgspec.json.Encoder()


@dataclass(slots=True)
class _Reject:
    """Maps a Lua rejection tuple to a typed exception."""

    conversation_id: str
    expected: int
    partition: int

    def error(self, reply: list[bytes | int]) -> LedgerError:
        kind = _text(reply[0])
        match kind:
            case "conflict":
                return VersionConflict(self.conversation_id, self.expected, int(reply[1]))
            case "unknown":
                return UnknownTask(self.conversation_id, _text(reply[1]))
            case "closed":
                return TaskClosed(self.conversation_id, _text(reply[1]), _text(reply[2]))
            case "stale":
                return StaleAttempt(self.conversation_id, _text(reply[1]), int(reply[2]), int(reply[3]))
            case "lease":
                return LeaseLost(self.partition)
            case _:
                return InvalidOp(_text(reply[1]) if len(reply) > 1 else kind)


def _text(value: bytes | int | str) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def _csv(value: bytes | int | str) -> list[str]:
    text = _text(value)
    return text.split(",") if text else []


class Ledger:
    """Per-conversation task ledger.

    ``redis`` must be a ``redis.asyncio.Redis`` created with ``decode_responses=False``.
    """

    def __init__(self, redis: Redis, keys: Keys, *, transcript_max: int = 50) -> None:
        if transcript_max < 1:
            raise ValueError("transcript_max must be >= 1")
        self.redis = redis
        self.keys = keys
        self.transcript_max = transcript_max
        # register_script handles NOSCRIPT (e.g. after a Redis restart) by re-sending the body.
        self._apply_script = redis.register_script(_APPLY_LUA)
        self._snapshot_script = redis.register_script(_SNAPSHOT_LUA)

    def _script_keys(self, ck: ConversationKeys) -> list[str]:
        pk = self.keys.partition(ck.partition)
        return [
            ck.meta, ck.tasks, ck.transcript, ck.audit, ck.applied, ck.results,
            pk.outbox, pk.lease, pk.turns, pk.decisions, pk.conversations,
        ]  # fmt: skip

    async def apply(
        self,
        conversation_id: str,
        expected_version: int | None,
        turn_id: str,
        ops: Sequence[Op],
        *,
        decision: DecisionMeta | None = None,
        messages: Sequence[Message] = (),
        fencing_token: str | None = None,
        ack: Ack | None = None,
        event: DecisionEvent | None = None,
        relay: Relay | None = None,
    ) -> ApplyResult:
        """Apply ``ops`` atomically for ``turn_id``.

        * Same ``turn_id`` again: returns the earlier result (``duplicate=True``), changes nothing.
        * ``expected_version`` differs from the ledger's: raises :class:`VersionConflict`
          (``None`` skips the check, for deterministic events that must apply whatever the version).
        * Unknown or closed tasks, stale attempts: typed :class:`LedgerError`, nothing changed.
        * ``fencing_token``: the partition lease must hold exactly this token, else :class:`LeaseLost`.
        * ``ack``: the turn's stream entry is acknowledged in the same step (also for duplicates).
        * ``event``: published on the partition's decisions stream with the new ledger version.
        * ``relay``: the outbox entries the apply writes are read for this relay in the same step
          and returned in ``ApplyResult.delivered`` (nothing is read if its group does not exist).
        """
        call = ApplyCall(
            conversation_id, expected_version, turn_id, ops, decision=decision, messages=messages,
            fencing_token=fencing_token, ack=ack, event=event, relay=relay,
        )  # fmt: skip
        keys, args, reject = self._prepare(call)
        reply = await self._apply_script(keys=keys, args=args)
        return _result(reply, reject)

    def _prepare(self, call: ApplyCall) -> tuple[list[str], list[bytes], _Reject]:
        """The script's keys and arguments (request, event, messages: see ledger/lua/apply.lua)."""
        if not call.turn_id:
            raise InvalidOp("turn_id is required")
        if not call.ops:
            raise InvalidOp("at least one op is required")
        ck = self.keys.conversation(call.conversation_id)
        ack = call.ack
        if ack is not None and ack.stream != self.keys.partition(ck.partition).turns:
            raise InvalidOp("ack must name the conversation's partition turn stream")
        request = _ApplyRequest(
            conv=call.conversation_id,
            turn=call.turn_id,
            expected=-1 if call.expected_version is None else call.expected_version,
            ops=call.ops,
            transcript_max=self.transcript_max,
            applied_keep=APPLIED_KEEP,
            applied_ttl_ms=APPLIED_TTL_MS,
            decisions_max=DECISIONS_MAX,
            decision=call.decision,
            token=call.fencing_token or "",
            ack={"group": ack.group, "id": ack.entry_id} if ack else None,
            relay=call.relay,
        )
        reject = _Reject(call.conversation_id, request.expected, ck.partition)
        args = [_encoder.encode(request), _encoder.encode(call.event) if call.event else b""]
        args += [_unstamped(m) for m in call.messages]
        return self._script_keys(ck), args, reject

    async def apply_many(self, calls: Sequence[ApplyCall]) -> list[ApplyResult | Exception]:
        """Several independent applies in one pipelined round trip (each atomic on its own).

        Returns, per call, its result or the exception :meth:`apply` would have raised (a
        :class:`LedgerError`, or a Redis error). Connection failures raise for the whole batch.
        """
        prepared: list[tuple[list[str], list[bytes], _Reject] | Exception] = []
        for call in calls:
            try:
                prepared.append(self._prepare(call))
            except LedgerError as exc:
                prepared.append(exc)
        sha = self._apply_script.sha
        replies = await self._pipelined(
            [(sha, p[0], p[1]) for p in prepared if not isinstance(p, Exception)], _APPLY_LUA
        )
        out: list[ApplyResult | Exception] = []
        it = iter(replies)
        for p in prepared:
            if isinstance(p, Exception):
                out.append(p)
                continue
            reply = next(it)
            if isinstance(reply, Exception):
                out.append(reply)
                continue
            try:
                out.append(_result(reply, p[2]))
            except LedgerError as exc:
                out.append(exc)
        return out

    async def snapshot_many(self, conversation_ids: Sequence[str]) -> list[LedgerSnapshot]:
        """The snapshots of several conversations in one pipelined round trip (each one atomic)."""
        sha = self._snapshot_script.sha
        calls: list[tuple[str, list[str], list[bytes]]] = []
        for conv in conversation_ids:
            ck = self.keys.conversation(conv)
            calls.append((sha, [ck.meta, ck.tasks, ck.transcript], []))
        replies = await self._pipelined(calls, _SNAPSHOT_LUA)
        out = []
        for conv, reply in zip(conversation_ids, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply
            version, applied, raw_tasks, raw_messages = reply
            out.append(_snapshot(conv, version, applied, raw_tasks, raw_messages))
        return out

    async def _pipelined(self, calls: list[tuple[str, list[str], list[bytes]]], body: str) -> list[Any]:
        """EVALSHA each call in one pipelined write; loads the script once on NOSCRIPT.

        Returns one reply per call, a ``ResponseError`` instance in place of a failed call's reply.
        """
        return await reloading(
            self.redis, body, [pack_evalsha(sha, keys, args) for sha, keys, args in calls], self._send
        )

    async def _send(self, packed: bytes, count: int) -> list[Any]:
        """Write ``count`` packed commands on one pooled connection and read their replies
        (:func:`ledger.resp.exchange`: what redis-py's pipeline does, minus its per-command bookkeeping)."""
        pool = self.redis.connection_pool
        # Not ``pool.get_connection()``: besides connecting, it probes every connection for unread data
        # (a non-blocking read under a timeout: ~15 µs here, once per commit at a steady rate). This
        # path never hands a connection back with replies unread (it reads them all or closes it), and
        # neither does redis-py; a connection the server closed meanwhile fails this round trip with a
        # ConnectionError, which the callers retry, and is closed here.
        conn = pool.get_available_connection()  # type: ignore[no-untyped-call]
        try:
            if not conn.is_connected:
                await conn.connect()
            return await exchange(conn, packed, count)
        finally:
            await pool.release(conn)

    async def snapshot(self, conversation_id: str) -> LedgerSnapshot:
        """Version, tasks and transcript of a conversation in one round trip (MULTI/EXEC)."""
        ck = self.keys.conversation(conversation_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hmget(ck.meta, ["version", "applied_turns"])
            pipe.hvals(ck.tasks)
            pipe.lrange(ck.transcript, 0, -1)
            (version, applied), raw_tasks, raw_messages = await pipe.execute()
        return _snapshot(conversation_id, version, applied, raw_tasks, raw_messages)

    async def audit(
        self, conversation_id: str, *, task_id: str | None = None, count: int | None = None
    ) -> list[AuditEntry]:
        """The audit trail of a conversation (or of one task), oldest first."""
        ck = self.keys.conversation(conversation_id)
        entries = await self.redis.xrange(ck.audit, count=count)
        out = [_audit_entry(eid, fields) for eid, fields in entries]
        if task_id is not None:
            out = [e for e in out if e.task_id == task_id]
        return out

    async def task(self, conversation_id: str, task_id: str) -> Task | None:
        """One task as committed (one HGET), or None when the conversation has no such task."""
        raw: bytes | None = await self.redis.hget(self.keys.conversation(conversation_id).tasks, task_id)  # type: ignore[misc]
        return _task_decoder.decode(raw) if raw is not None else None

    async def was_applied(self, conversation_id: str, turn_id: str) -> bool:
        ck = self.keys.conversation(conversation_id)
        exists: bool = await self.redis.hexists(ck.results, turn_id)  # type: ignore[misc]
        return exists


def _result(reply: list[Any], reject: _Reject) -> ApplyResult:
    if _text(reply[0]) != "ok":
        raise reject.error(reply)
    duplicate = bool(int(reply[4]))
    return ApplyResult(
        version=int(reply[1]),
        created=_csv(reply[2]),
        touched=_csv(reply[3]),
        duplicate=duplicate,
        at=0 if duplicate else int(reply[5]),
        tasks=[] if duplicate else [_task_decoder.decode(raw) for raw in reply[7:]],
        delivered=[] if duplicate else [_outbox_record(e) for e in reply[6]],
    )


def _outbox_record(entry: list[Any]) -> OutboxRecord:
    """One entry of an ``XREADGROUP`` reply made inside the apply script: [id, [field, value, ...]]."""
    flat = entry[1]
    return entry[0], dict(zip(flat[::2], flat[1::2], strict=True))


def _snapshot(
    conversation_id: str, version: Any, applied: Any, raw_tasks: list[bytes], raw_messages: list[bytes]
) -> LedgerSnapshot:
    tasks = sorted((_task_decoder.decode(r) for r in raw_tasks), key=task_order)
    return LedgerSnapshot(
        conversation_id=conversation_id,
        version=int(version or 0),
        tasks=tasks,
        # one decoder call for the whole list: per-message calls cost more than the parsing itself
        transcript=_messages_decoder.decode(b"[" + b",".join(raw_messages) + b"]"),
        applied_turns=int(applied or 0),
    )


def task_order(task: Task) -> tuple[int, str]:
    """Sort key of tasks: by their number (task-2 before task-10), then id."""
    num = task.id.rpartition("-")[2]
    return (int(num) if num.isdigit() else 1 << 62, task.id)


def _opt_float(raw: bytes) -> float | None:
    return float(raw) if raw else None


def _opt_str(raw: bytes) -> str | None:
    return raw.decode("utf-8") if raw else None


def _audit_entry(entry_id: bytes, fields: dict[bytes, bytes]) -> AuditEntry:
    def f(name: str) -> bytes:
        return fields.get(name.encode(), b"")

    before, after = f("before"), f("after")
    tv = f("tv")
    return AuditEntry(
        entry_id=entry_id.decode(),
        turn_id=f("turn").decode("utf-8"),
        op=f("op").decode(),
        task_id=_opt_str(f("task")),
        action=f("action").decode(),
        tier=_opt_str(f("tier")),
        confidence=_opt_float(f("conf")),
        latency_ms=_opt_float(f("lat")),
        reason=_opt_str(f("reason")),
        ledger_version=int(f("lv")),
        task_version=int(tv) if tv else None,
        at=float(f("at")),  # epoch ms as the script wrote it, like Task.created_at and Message.at
        before=_task_decoder.decode(before) if before else None,
        after=_task_decoder.decode(after) if after else None,
        raw=_opt_str(f("raw")),
    )
