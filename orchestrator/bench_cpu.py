"""Where the CPUs went during a ``sraq bench loop`` phase: CPU milliseconds per turn, per process.

On a small machine the orchestrator shares its cores with the model's child process(es), Redis and
the benchmark's own client, and latency at a fixed rate is mostly queueing for a core. Wall-clock
figures alone cannot say which of them to make cheaper; CPU time per turn can, and it moves far less
with the machine's mood than latency does (it counts work, not waiting).

* ``orchestrator``: this process (all its threads), from :func:`time.process_time`;
* ``model_processes``: this process's other children (the embedded model's workers), from
  ``/proc/<pid>/stat`` (Linux; omitted elsewhere). The benchmark's client is excluded by pid;
* ``redis``: the server's ``used_cpu_user + used_cpu_sys`` from ``INFO cpu`` (all its clients: run
  the benchmark on a Redis nobody else is using);
* ``client``: reported by the client process itself (``cpu_s`` in its JSON), fixed-rate phase only.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def children_cpu(exclude: frozenset[int]) -> float | None:
    """CPU seconds used so far by this process's live children not in ``exclude``; None without /proc."""
    me = os.getpid()
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    total = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile, or not ours to read
            continue
        # the command name (2nd field) may contain spaces and parentheses: split after the last ")"
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == me:  # ppid
            total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / _TICKS


async def _redis_cpu(redis: Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@dataclass(frozen=True, slots=True)
class CpuSample:
    """Cumulative CPU seconds of each party at one moment."""

    orchestrator: float
    model_processes: float | None
    redis: float

    @classmethod
    async def take(cls, redis: Redis, exclude: frozenset[int] = frozenset()) -> CpuSample:
        return cls(time.process_time(), children_cpu(exclude), await _redis_cpu(redis))


def per_turn(before: CpuSample, after: CpuSample, turns: int, client_cpu_s: float | None = None) -> dict[str, float]:
    """CPU milliseconds per turn of each party between two samples (and the client's, if given)."""

    def ms(seconds: float) -> float:
        return round(seconds * 1000 / turns, 4)

    out = {"orchestrator": ms(after.orchestrator - before.orchestrator)}
    if before.model_processes is not None and after.model_processes is not None:
        out["model_processes"] = ms(after.model_processes - before.model_processes)
    out["redis"] = ms(after.redis - before.redis)
    if client_cpu_s is not None:
        out["client"] = ms(client_cpu_s)
    return out
