"""The ledger state of recently active conversations, kept current by this instance's own commits.

A turn needs the conversation's snapshot (version, tasks, transcript) before it can be decided. Read
from Redis every time, that is a second round trip per turn (plus decoding up to ``transcript_max``
messages) on top of the commit. But while this instance holds a partition's lease, nobody else can
commit to that partition's conversations (commits are fenced), and every commit of ours returns what
it changed (new version, commit time, written tasks: see :class:`ledger.ApplyResult`). So the snapshot
after a commit is computed locally, and the next turn of the conversation needs one round trip only.

Why this stays correct:

* An entry is valid only under the lease token it was written under. A partition lost and taken
  again has a new fencing token, so whatever another owner wrote meanwhile is read from Redis.
* Every decided commit still carries the expected version: a write we did not see (an unfenced
  ``Ledger.apply`` from a tool) raises ``VersionConflict``, the entry is dropped and the turn is
  re-decided on a fresh read.
* A commit without a version check (task events, undecided fallbacks) is cached only when it moved
  the version by exactly one; a duplicate (the turn was committed before) drops the entry.
* Task-event turns always read fresh: whether the ledger accepts the event is decided on the
  snapshot, and a refused event is committed without a version check.
* A decision that names a task the cached ledger does not know (invalid against it) is made again on
  a fresh read before it counts as a failure.

Bounded (least recently used first out), so memory is ``limit`` conversations at most.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from intent import ChatMessage, TaskInfo
from ledger import ApplyResult, LedgerSnapshot, Message, task_order


@dataclass(slots=True)
class View:
    """A snapshot and its transcript as the intent layer sees it (converted once, then appended to).

    ``tasks`` is the router's view of the ledger's tasks, filled by the first turn that needs it and
    reused by the next turns of the conversation until a commit changes the snapshot.
    """

    snapshot: LedgerSnapshot
    chat: tuple[ChatMessage, ...]
    tasks: list[TaskInfo] | None = None

    @classmethod
    def of(cls, snapshot: LedgerSnapshot) -> View:
        return cls(snapshot, tuple(ChatMessage(role=m.role, content=m.content) for m in snapshot.transcript))


def advanced(view: View, result: ApplyResult, messages: Sequence[Message], transcript_max: int) -> View:
    """``view`` after a commit that moved its version by one (``result``, appending ``messages``).

    Mirrors the apply script: written tasks replace their old state (new ones join in task order),
    messages get the commit time, the transcript keeps its newest ``transcript_max`` messages.
    """
    snap = view.snapshot
    tasks = snap.tasks
    infos = view.tasks
    if result.tasks:
        written = {t.id: t for t in result.tasks}
        tasks = sorted([written.pop(t.id, t) for t in tasks] + list(written.values()), key=task_order)
        infos = None
    stamped = [Message(role=m.role, content=m.content, turn_id=m.turn_id, at=result.at, task_id=m.task_id)
               for m in messages]  # fmt: skip
    transcript = (snap.transcript + stamped)[-transcript_max:]
    chat = (view.chat + tuple(ChatMessage(role=m.role, content=m.content) for m in messages))[-transcript_max:]
    return View(
        LedgerSnapshot(
            conversation_id=snap.conversation_id,
            version=result.version,
            tasks=tasks,
            transcript=transcript,
            applied_turns=snap.applied_turns + 1,
        ),
        chat,
        infos,
    )


class SnapshotCache:
    """Per-conversation :class:`View` under a lease token, least recently used evicted first."""

    def __init__(self, limit: int, transcript_max: int) -> None:
        self.limit = limit
        self.transcript_max = transcript_max
        self._entries: OrderedDict[str, tuple[str, View]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, conversation_id: str, token: str) -> View | None:
        """The cached view, if one was stored under ``token``."""
        entry = self._entries.get(conversation_id)
        if entry is None or entry[0] != token:
            self.misses += 1
            return None
        self._entries.move_to_end(conversation_id)
        self.hits += 1
        return entry[1]

    def put(self, conversation_id: str, token: str, view: View) -> None:
        if self.limit <= 0:
            return
        self._entries[conversation_id] = (token, view)
        self._entries.move_to_end(conversation_id)
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)

    def committed(
        self, conversation_id: str, token: str, base: View, result: ApplyResult, messages: Sequence[Message]
    ) -> None:
        """Record a commit made on ``base``: advance the entry, or drop it when the commit does not
        follow ``base`` directly (a duplicate, or a write we did not see in between)."""
        if result.duplicate or result.version != base.snapshot.version + 1:
            self.drop(conversation_id)
            return
        self.put(conversation_id, token, advanced(base, result, messages, self.transcript_max))

    def peek(self, conversation_id: str) -> View | None:
        """The cached view whatever its token (for inspection and tests; does not count as a use)."""
        entry = self._entries.get(conversation_id)
        return None if entry is None else entry[1]

    def drop(self, conversation_id: str) -> None:
        self._entries.pop(conversation_id, None)
