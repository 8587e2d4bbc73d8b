"""Every Redis key sraq writes, built in one place from a configurable prefix.

Layout (``P`` partitions, hash tag ``{p}`` so one partition lives in one Redis Cluster slot)::

    {prefix}:{p}:turns                   stream of incoming turns (consumer group ``orchestrator``)
    {prefix}:{p}:outbox                  stream of dispatch entries for workers (group ``dispatcher``)
    {prefix}:{p}:decisions               stream of committed decisions (``sraq tail``)
    {prefix}:{p}:dead                    dead-letter stream (malformed or undeliverable turns)
    {prefix}:{p}:errors                  hash: turn entry id -> last processing error (until it is done)
    {prefix}:{p}:lease                   partition lease; value = fencing token
    {prefix}:{p}:fence                   fencing-token counter
    {prefix}:{p}:c:{conv}:meta           hash: version, next_task, applied_turns
    {prefix}:{p}:c:{conv}:tasks          hash: task id -> task JSON
    {prefix}:{p}:c:{conv}:transcript     list of message JSON, capped
    {prefix}:{p}:c:{conv}:audit          stream, append-only audit trail
    {prefix}:{p}:c:{conv}:applied        sorted set: turn id -> applied-at ms * 1024 + sequence (apply.lua)
    {prefix}:{p}:c:{conv}:results        hash: turn id -> stored apply result
    {prefix}:conversations:{p}           set of conversation ids seen in partition p
    {prefix}:{p}:c:{conv}:t:{task}:updates  stream of task updates delivered to the running handler
    {prefix}:{p}:c:{conv}:t:{task}:run      hash: dispatch generation, job id, run attempts, stop time
    {prefix}:instances                   sorted set of live orchestrator instances (heartbeat)
    {prefix}:queue                       the arq job queue (arq's own ``arq:job:*`` keys are global)

Tests isolate themselves by using a unique prefix, never by flushing the database.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

DEFAULT_PREFIX = "sraq"
DEFAULT_PARTITIONS = 16


def partition_of(conversation_id: str, partitions: int) -> int:
    """Stable partition of a conversation: the first 8 bytes of its BLAKE2b digest modulo P.

    Python's ``hash()`` is salted per process, so it cannot be used across processes.
    """
    digest = hashlib.blake2b(conversation_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions


@dataclass(frozen=True, slots=True)
class ConversationKeys:
    """The keys of one conversation; all share the partition's hash tag."""

    conversation_id: str
    partition: int
    meta: str
    tasks: str
    transcript: str
    audit: str
    applied: str
    results: str


@dataclass(frozen=True, slots=True)
class TaskKeys:
    """The worker-side keys of one task (dispatch state and live updates); in the partition's slot."""

    conversation_id: str
    task_id: str
    partition: int
    updates: str
    run: str


@dataclass(frozen=True, slots=True)
class PartitionKeys:
    """The per-partition keys (streams, lease)."""

    partition: int
    turns: str
    outbox: str
    decisions: str
    dead: str
    #: turn entry id -> the last error processing it raised (kept for a later owner's dead letter)
    errors: str
    lease: str
    fence: str
    conversations: str


@dataclass(frozen=True, slots=True)
class Keys:
    """Key builder for one deployment (a prefix and a partition count)."""

    prefix: str = DEFAULT_PREFIX
    partitions: int = DEFAULT_PARTITIONS

    def __post_init__(self) -> None:
        if not self.prefix or any(c in self.prefix for c in "{} \n"):
            raise ValueError(f"invalid key prefix {self.prefix!r}")
        if not 1 <= self.partitions <= 16384:
            raise ValueError(f"partitions must be in 1..16384, got {self.partitions}")

    def partition_of(self, conversation_id: str) -> int:
        return partition_of(conversation_id, self.partitions)

    def partition(self, p: int) -> PartitionKeys:
        if not 0 <= p < self.partitions:
            raise ValueError(f"partition {p} out of range 0..{self.partitions - 1}")
        return _partition_keys(self.prefix, p)

    def conversation(self, conversation_id: str) -> ConversationKeys:
        return _conversation_keys(self.prefix, self.partitions, conversation_id)

    def task(self, conversation_id: str, task_id: str) -> TaskKeys:
        """Keys of one task: its update stream (read by the handler) and its dispatch/run record."""
        ck = self.conversation(conversation_id)
        base = f"{ck.meta.removesuffix(':meta')}:t:{task_id}"
        return TaskKeys(
            conversation_id=conversation_id,
            task_id=task_id,
            partition=ck.partition,
            updates=f"{base}:updates",
            run=f"{base}:run",
        )

    @property
    def queue(self) -> str:
        """Name of the arq queue (sorted set) the dispatcher enqueues into and workers poll."""
        return f"{self.prefix}:queue"

    @property
    def instances(self) -> str:
        return f"{self.prefix}:instances"

    @property
    def rebalance(self) -> str:
        """Pub/sub-free marker bumped when membership changes (read by instances on heartbeat)."""
        return f"{self.prefix}:membership"

    def all_partitions(self) -> list[PartitionKeys]:
        return [self.partition(p) for p in range(self.partitions)]

    def pattern(self) -> str:
        """A SCAN pattern matching every key of this deployment (and no other's)."""
        return f"{glob_escape(self.prefix)}:*"


def glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis glob pattern (``SCAN MATCH``, ``KEYS``): a prefix such as
    ``a*`` must not match another deployment's keys in a pattern that deletes them."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


# Key builders are on every turn's path (several times per turn): the strings are built once per
# prefix/partition/conversation and reused (bounded, so a stream of one-off conversations cannot grow
# memory without limit).


@functools.lru_cache(maxsize=4096)
def _partition_keys(prefix: str, p: int) -> PartitionKeys:
    base = f"{prefix}:{{{p}}}"
    return PartitionKeys(
        partition=p,
        turns=f"{base}:turns",
        outbox=f"{base}:outbox",
        decisions=f"{base}:decisions",
        dead=f"{base}:dead",
        errors=f"{base}:errors",
        lease=f"{base}:lease",
        fence=f"{base}:fence",
        conversations=f"{base}:conversations",
    )


@functools.lru_cache(maxsize=65536)
def _conversation_keys(prefix: str, partitions: int, conversation_id: str) -> ConversationKeys:
    p = partition_of(conversation_id, partitions)
    base = f"{prefix}:{{{p}}}:c:{conversation_id}"
    return ConversationKeys(
        conversation_id=conversation_id,
        partition=p,
        meta=f"{base}:meta",
        tasks=f"{base}:tasks",
        transcript=f"{base}:transcript",
        audit=f"{base}:audit",
        applied=f"{base}:applied",
        results=f"{base}:results",
    )
