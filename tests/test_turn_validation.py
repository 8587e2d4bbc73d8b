"""Publish-time validation through the Python API: role, content type, UTF-8 (nothing refused is written)."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from ledger import Keys
from ledger.turns import InvalidTurn, Publisher, Role, Turn, decode_entry, make_turn


def _turn(**fields: Any) -> Turn:
    base: dict[str, Any] = {"turn_id": "t1", "conversation_id": "c1", "role": Role.USER, "content": "hi"}
    return Turn(**{**base, **fields})


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"role": "robot"}, "unknown role 'robot'"),
        ({"role": None}, "unknown role None"),
        ({"content": b"hi"}, "content must be text (str), not bytes"),
        ({"content": None}, "content must be text (str), not NoneType"),
        ({"content": "half a pair \ud800 here"}, "content is not valid UTF-8"),
        ({"content": "bad byte \udcff"}, "content is not valid UTF-8"),  # undecodable input read with surrogateescape
        ({"channel": "voice\ud800"}, "channel is not valid UTF-8"),
        ({"conversation_id": 42}, "invalid conversation id"),
    ],
)
async def test_publish_refuses_a_bad_turn_and_writes_nothing(
    redis: Redis, keys: Keys, fields: dict[str, Any], reason: str
) -> None:
    publisher = Publisher(redis, keys)
    bad = _turn(**fields)
    with pytest.raises(InvalidTurn) as refused:
        await publisher.publish(bad)
    assert refused.value.reason.startswith(reason), refused.value.reason
    with pytest.raises(InvalidTurn):  # the batch path too, with a good turn before it
        await publisher.publish_many([_turn(turn_id="ok"), bad])
    assert sum([await redis.xlen(pk.turns) for pk in keys.all_partitions()]) == 0


async def test_publish_accepts_every_role_given_as_enum_or_str(redis: Redis, keys: Keys) -> None:
    publisher = Publisher(redis, keys)
    turns = [_turn(turn_id=f"t-{r.value}", role=r) for r in Role] + [_turn(turn_id="t-str", role="tool")]
    await publisher.publish_many(turns)
    entries = await redis.xrange(keys.partition(keys.partition_of("c1")).turns)
    decoded = [decode_entry(fields) for _id, fields in entries]
    assert [t.role for t in decoded] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.TOOL]


def test_make_turn_refuses_the_same() -> None:
    with pytest.raises(InvalidTurn, match="unknown role"):
        make_turn("c1", "hi", role="robot")
    with pytest.raises(InvalidTurn, match="not valid UTF-8"):
        make_turn("c1", "x\ud800")
    with pytest.raises(InvalidTurn, match="content must be text"):
        make_turn("c1", b"hi")  # type: ignore[arg-type]
