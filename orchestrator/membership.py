"""Instance heartbeat, partition leases with fencing tokens, and rebalancing.

* Every instance writes a heartbeat (``ZADD {prefix}:instances now id``) each ``lease_ms / 3``. An instance
  whose heartbeat is older than ``lease_ms`` is dead and is removed by whoever notices.
* Partition ``p`` is owned through ``{prefix}:{p}:lease`` whose value is a fencing token. Acquiring is one
  Lua step (``INCR {p}:fence`` then ``SET lease token NX PX lease_ms``), so tokens only ever grow;
  renewing is a compare-and-``PEXPIRE``, releasing a compare-and-``DEL``. The ledger's apply script
  refuses every write whose token is not the lease's current value, so a paused stale owner can never
  commit.
* Rebalancing is deterministic: with ``n`` live instances sorted by id, partition ``p`` belongs to
  instance ``p mod n``. Each instance takes its share when the lease is free and releases partitions
  that belong to someone else (after draining them), so 2 instances x 16 partitions own 8 each, and a
  survivor takes every partition of a dead peer once that peer's leases expire.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from redis.asyncio import Redis

from ledger import Keys

_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token, 'PX', ARGV[1])
return token
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def default_instance_id() -> str:
    """``host-pid-random``: unique per process, so a restarted process never inherits pending entries."""
    host = socket.gethostname().split(".")[0][:24] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def assignment(partitions: int, live: Iterable[str], me: str) -> set[int]:
    """The partitions instance ``me`` should own given the live instances (deterministic, equal shares)."""
    members = sorted(set(live) | {me})
    index = members.index(me)
    return {p for p in range(partitions) if p % len(members) == index}


@dataclass(slots=True)
class Lease:
    """A held partition lease. ``valid_until`` is a local monotonic bound: past it we stop writing."""

    partition: int
    token: str
    valid_until: float


class Membership:
    """Heartbeat and lease operations of one instance. Pure Redis calls; the runtime drives the ticks."""

    def __init__(self, redis: Redis, keys: Keys, instance_id: str, lease_ms: int) -> None:
        self.redis = redis
        self.keys = keys
        self.instance_id = instance_id
        self.lease_ms = lease_ms
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def heartbeat(self) -> tuple[list[str], float | None]:
        """Record this instance as alive, drop dead ones; returns the live instance ids and the
        seconds until the first other instance counts as dead if it stays silent (None: none)."""
        now = int(time.time() * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self.keys.instances, {self.instance_id: now})
            pipe.zremrangebyscore(self.keys.instances, "-inf", now - self.lease_ms)
            pipe.zrange(self.keys.instances, 0, -1, withscores=True)
            _, _, members = await pipe.execute()
        me = self.instance_id.encode()
        peers = [score for member, score in members if member != me]
        silent = (min(peers) + self.lease_ms - now) / 1000 if peers else None
        return [m.decode() for m, _ in members], silent

    async def expiries(self, partitions: list[int]) -> float | None:
        """Seconds until the first of these partitions' leases (held by others) runs out: 0 if one is
        gone already (it expired since we tried), None if none will (no lease, or one without a TTL,
        which only a hand-written key has: waking early for it would spin)."""
        if not partitions:
            return None
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in partitions:
                pipe.pttl(self.keys.partition(p).lease)
            ttls = [int(t) for t in await pipe.execute()]
        held = [t for t in ttls if t >= 0]
        if held:
            return min(held) / 1000
        return 0.0 if -2 in ttls else None

    async def leave(self) -> None:
        """Remove this instance from the live set (graceful shutdown)."""
        await self.redis.zrem(self.keys.instances, self.instance_id)

    async def acquire(self, partition: int) -> Lease | None:
        """Take the partition's lease if it is free; returns it with a new fencing token, else None."""
        pk = self.keys.partition(partition)
        started = time.monotonic()
        token = await self._acquire(keys=[pk.lease, pk.fence], args=[self.lease_ms])
        if token is None:
            return None
        return Lease(partition, str(int(token)), started + self.lease_ms / 1000)

    async def renew(self, leases: list[Lease]) -> list[Lease]:
        """Extend every lease still holding its token (one round trip); returns the ones lost."""
        if not leases:
            return []
        started = time.monotonic()
        async with self.redis.pipeline(transaction=False) as pipe:
            for lease in leases:
                pk = self.keys.partition(lease.partition)
                await self._renew(keys=[pk.lease], args=[lease.token, self.lease_ms], client=pipe)
            replies = await pipe.execute()
        lost = []
        for lease, ok in zip(leases, replies, strict=True):
            if int(ok) == 1:
                lease.valid_until = started + self.lease_ms / 1000
            else:
                lost.append(lease)
        return lost

    async def release(self, lease: Lease) -> bool:
        """Give the partition up if we still hold it (compare-and-delete)."""
        pk = self.keys.partition(lease.partition)
        return bool(await self._release(keys=[pk.lease], args=[lease.token]))

    async def owner_token(self, partition: int) -> str | None:
        raw = await self.redis.get(self.keys.partition(partition).lease)
        return raw.decode() if raw is not None else None
