"""Turns: the wire message of the partition turn streams, its validation and the publisher.

A turn is stored in its partition's stream as one field ``turn`` holding msgpack-encoded
:class:`Turn`. Entries written by hand (``redis-cli XADD <stream> * conversation_id c1 role user
content "hi"``) are accepted too: :func:`decode_entry` reads plain fields as a fallback, and anything
invalid raises :class:`InvalidTurn`, which the orchestrator moves to the dead-letter stream.
"""

from __future__ import annotations

import re
import time
import uuid
from enum import Enum

import msgspec
from redis.asyncio import Redis

from ledger.keys import Keys
from ledger.models import TaskEvent

CONVERSATION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
TURN_ID_RE = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
DEFAULT_MAX_CONTENT_BYTES = 16 * 1024


class Role(str, Enum):
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class Turn(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One turn of a conversation (scalar fields only: untracked by the garbage collector).

    ``turn_id`` is the client's idempotency key (generated when absent). Task events from workers
    have ``role=tool`` and carry ``task_id``, ``event`` and ``attempt``.
    """

    turn_id: str
    conversation_id: str
    role: Role
    content: str
    channel: str = "chat"
    ts: float = 0.0
    task_id: str | None = None
    event: TaskEvent | None = None
    attempt: int | None = None

    @property
    def is_task_event(self) -> bool:
        return self.task_id is not None and self.event is not None

    @property
    def transcript_text(self) -> str:
        """The content as transcripts show it: task events read ``[task-3 completed] <text>``.

        This is the convention of the reference data, so every intent tier sees task callbacks the
        way it was trained on them; the ledger itself records the bare text.
        """
        if self.task_id is not None and self.event is not None:
            return f"[{self.task_id} {self.event.value}] {self.content}".rstrip()
        return self.content


class InvalidTurn(ValueError):
    """A turn that fails validation; ``reason`` is one clear sentence."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def new_turn_id() -> str:
    return uuid.uuid4().hex


def validate_turn(turn: Turn, *, max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES) -> Turn:
    """Check ids, role, content (text, valid UTF-8, size) and consistency; returns the turn or raises
    InvalidTurn.

    ``Turn(...)`` itself checks no types (a msgspec struct validates only when decoded), so a Python
    caller's ``Turn(role="robot")`` or bytes content is caught here, before anything is written.
    """
    if not isinstance(turn.conversation_id, str) or not CONVERSATION_ID_RE.match(turn.conversation_id):
        raise InvalidTurn(
            f"invalid conversation id {str(turn.conversation_id)[:40]!r}: 1-128 chars of letters, digits and "
            "._:@- starting with a letter or digit"
        )
    if not isinstance(turn.turn_id, str) or not TURN_ID_RE.match(turn.turn_id):
        raise InvalidTurn(f"invalid turn id {str(turn.turn_id)[:40]!r}: 1-128 chars of letters, digits and ._:@-")
    if type(turn.role) is not Role:  # decoded turns always hold the enum; a Python caller may pass a str
        try:
            Role(turn.role)
        except ValueError:
            raise InvalidTurn(f"unknown role {turn.role!r}; use one of user, assistant, tool") from None
    if not isinstance(turn.content, str):
        raise InvalidTurn(f"content must be text (str), not {type(turn.content).__name__}")
    try:  # one encode checks both (this runs for every turn the orchestrator reads)
        size = len(turn.content.encode("utf-8"))
    except UnicodeEncodeError as exc:  # a lone surrogate, e.g. undecodable bytes read with surrogateescape
        raise InvalidTurn(f"content is not valid UTF-8 (character {exc.start}: {turn.content[exc.start]!r})") from None
    if size > max_content_bytes:
        raise InvalidTurn(f"content is {size} bytes; the limit is {max_content_bytes}")
    if not isinstance(turn.channel, str) or not turn.channel or len(turn.channel) > 32:
        raise InvalidTurn("channel must be 1-32 characters")
    try:
        turn.channel.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidTurn("channel is not valid UTF-8") from None
    if (turn.task_id is None) != (turn.event is None):
        raise InvalidTurn("task events need both task_id and event")
    if turn.event is not None and turn.role != Role.TOOL:
        raise InvalidTurn("task events must have role 'tool'")
    return turn


def make_turn(
    conversation_id: str,
    content: str,
    *,
    role: Role | str = Role.USER,
    turn_id: str | None = None,
    channel: str = "chat",
    task_id: str | None = None,
    event: TaskEvent | str | None = None,
    attempt: int | None = None,
    max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES,
) -> Turn:
    """Build and validate a turn from loose inputs (CLI, files, Python callers)."""
    try:
        role_ = Role(role)
    except ValueError:
        raise InvalidTurn(f"unknown role {role!r}; use one of user, assistant, tool") from None
    try:
        event_ = TaskEvent(event) if event is not None else None
    except ValueError:
        raise InvalidTurn(f"unknown task event {event!r}") from None
    if not isinstance(content, str):
        raise InvalidTurn("content must be text")
    turn = Turn(
        turn_id=turn_id or new_turn_id(),
        conversation_id=conversation_id,
        role=role_,
        content=content,
        channel=channel,
        ts=time.time(),
        task_id=task_id,
        event=event_,
        attempt=attempt,
    )
    return validate_turn(turn, max_content_bytes=max_content_bytes)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Turn)


def encode_turn(turn: Turn) -> dict[str, bytes]:
    """Stream fields of a turn."""
    return {"turn": _encoder.encode(turn)}


_PLAIN_FIELDS = ("turn_id", "conversation_id", "role", "content", "channel", "task_id", "event", "attempt")


def decode_entry(fields: dict[bytes, bytes], *, max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES) -> Turn:
    """Decode and validate a stream entry; raises InvalidTurn with the reason."""
    raw = fields.get(b"turn")
    if raw is not None:
        try:
            turn = _decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise InvalidTurn(f"undecodable turn payload: {exc}") from None
        return validate_turn(turn, max_content_bytes=max_content_bytes)
    # hand-written entry (redis-cli XADD): plain UTF-8 fields
    plain: dict[str, str] = {}
    for name, value in fields.items():
        try:
            key, text = name.decode("utf-8"), value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidTurn("entry is not valid UTF-8") from None
        plain[key] = text
    unknown = set(plain) - set(_PLAIN_FIELDS)
    if unknown:
        raise InvalidTurn(f"unknown fields {sorted(unknown)}")
    for required in ("conversation_id", "content"):
        if required not in plain:
            raise InvalidTurn(f"missing field {required!r}")
    attempt = plain.get("attempt")
    if attempt is not None and not attempt.isdigit():
        raise InvalidTurn("attempt must be a positive integer")
    return make_turn(
        plain["conversation_id"],
        plain["content"],
        role=plain.get("role", "user"),
        turn_id=plain.get("turn_id") or None,
        channel=plain.get("channel", "chat"),
        task_id=plain.get("task_id"),
        event=plain.get("event"),
        attempt=int(attempt) if attempt else None,
        max_content_bytes=max_content_bytes,
    )


class Publisher:
    """Appends turns to the partition stream of their conversation (Python API of ``sraq publish``)."""

    def __init__(self, redis: Redis, keys: Keys, *, max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES) -> None:
        self.redis = redis
        self.keys = keys
        self.max_content_bytes = max_content_bytes

    def stream_of(self, conversation_id: str) -> str:
        return self.keys.partition(self.keys.partition_of(conversation_id)).turns

    async def publish(self, turn: Turn) -> str:
        """Validate and XADD one turn; returns the stream entry id."""
        validate_turn(turn, max_content_bytes=self.max_content_bytes)
        entry_id: bytes = await self.redis.xadd(self.stream_of(turn.conversation_id), encode_turn(turn))  # type: ignore[arg-type]
        return entry_id.decode()

    async def publish_many(self, turns: list[Turn]) -> list[str]:
        """Publish in order with one pipelined round trip (order within a conversation is kept)."""
        if len(turns) == 1:
            # a plain command: over a held connection (``single_connection_client``) it skips the pool
            # checkout that a pipeline always takes
            return [await self.publish(turns[0])]
        for turn in turns:
            validate_turn(turn, max_content_bytes=self.max_content_bytes)
        async with self.redis.pipeline(transaction=False) as pipe:
            for turn in turns:
                pipe.xadd(self.stream_of(turn.conversation_id), encode_turn(turn))  # type: ignore[arg-type]
            ids: list[bytes] = await pipe.execute()
        return [i.decode() for i in ids]

    async def say(self, conversation_id: str, content: str, **kwargs: object) -> Turn:
        """Convenience: build, validate and publish a turn; returns it."""
        turn = make_turn(conversation_id, content, max_content_bytes=self.max_content_bytes, **kwargs)  # type: ignore[arg-type]
        await self.publish(turn)
        return turn
