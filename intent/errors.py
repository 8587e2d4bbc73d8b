"""Typed errors of the intent contract."""

from __future__ import annotations


class InvalidDecision(ValueError):
    """A model output (or any input) that is not a valid decision.

    ``reason`` is a short human-readable explanation; ``raw`` is the offending text when known.
    """

    def __init__(self, reason: str, raw: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw
