"""The frames between the orchestrator and its embedded-model processes (no pickle).

Each frame is a 4-byte big-endian length and a msgpack body (msgspec). The parent sends
:class:`WireRequest`; the child answers every request with one :class:`WireReply` carrying the same
id, in any order. The child's first frame is a ready reply with id 0 (model loaded).
"""

from __future__ import annotations

import struct

import msgspec

from intent.backend import Decision, DecisionRequest
from intent.contract import make_intent

HEADER = struct.Struct(">I")
#: A frame larger than this is refused (a request carries a transcript of at most a few hundred KiB).
MAX_FRAME = 64 * 1024 * 1024
READY_ID = 0


class WireRequest(msgspec.Struct, array_like=True, frozen=True):
    id: int
    request: DecisionRequest


class WireDecision(msgspec.Struct, array_like=True, frozen=True):
    """A :class:`Decision` of the embedded tier, with its intent as action + arguments."""

    action: str
    args: dict[str, str]
    confidence: float
    tier: str
    latency_ms: float
    raw: str
    confidence_source: str
    action_probs: dict[str, float] | None = None

    @classmethod
    def of(cls, d: Decision) -> WireDecision:
        return cls(d.intent.action.value, d.intent.args(), d.confidence, d.tier, d.latency_ms, d.raw,
                   d.confidence_source, d.action_probs)  # fmt: skip

    def decision(self) -> Decision:
        return Decision(
            intent=make_intent(self.action, self.args),
            confidence=self.confidence,
            tier=self.tier,
            latency_ms=self.latency_ms,
            raw=self.raw,
            confidence_source=self.confidence_source,
            action_probs=self.action_probs,
        )


class WireReply(msgspec.Struct, array_like=True, frozen=True):
    """One answer: a decision, or the error the backend raised (``kind``: backend | invalid)."""

    id: int
    decision: WireDecision | None = None
    error: str | None = None
    kind: str = "backend"


request_encoder = msgspec.msgpack.Encoder()
request_decoder = msgspec.msgpack.Decoder(WireRequest)
reply_decoder = msgspec.msgpack.Decoder(WireReply)


def frame(message: msgspec.Struct) -> bytes:
    body = request_encoder.encode(message)
    return HEADER.pack(len(body)) + body
