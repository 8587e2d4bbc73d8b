"""Trimming what a consumer group is done with, for the streams the runtime consumes (turns, outbox).

A stream read by a consumer group keeps every entry after it was acknowledged unless someone trims
it: the turn streams and the outboxes would grow for as long as the deployment runs. What is safe
to drop is what the group has delivered and acknowledged: every entry before the oldest pending one,
or, with nothing pending, before the group's last-delivered id. Entries past that bound (pending,
or not delivered yet) are never touched, so trimming never turns a pending entry into a dead letter.
The ledger keeps what the entries said (transcript, audit trail), so the streams need not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def trim_bound(group: Mapping[str, Any] | None, pending: Mapping[str, Any] | None) -> bytes | str | None:
    """The id before which every entry was delivered to the group and acknowledged, or None.

    ``group``: the group's row of ``XINFO GROUPS`` (redis-py's dict); ``pending``: the group's
    ``XPENDING`` summary (``{"pending", "min", ...}``), needed only when the group has pending entries.
    Trim with ``XTRIM stream MINID ~ bound`` (entries with smaller ids go; approximate: whole nodes).
    """
    if group is None:
        return None
    if int(group.get("pending") or 0):
        if pending is None or not int(pending.get("pending") or 0):
            return None  # the summary is older or newer than the row: wait for the next look
        bound = pending.get("min")
    else:
        bound = group.get("last-delivered-id")
    if not bound or bound in (b"0-0", "0-0"):
        return None
    bound_id: bytes | str = bound
    return bound_id


def group_row(groups: list[Mapping[str, Any]], name: str) -> Mapping[str, Any] | None:
    """The ``XINFO GROUPS`` row of group ``name`` (names come back as bytes or str)."""
    return next((g for g in groups if g.get("name") in (name, name.encode())), None)
