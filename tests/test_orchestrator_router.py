"""The orchestrator warms its cascade up at start and exports the router's counters on /metrics."""

from __future__ import annotations

import aiohttp

from intent.backend import BackendError
from intent.router import Router, Tier
from orchestrator.local_redis import free_port
from orchestrator.runtime import Orchestrator
from orchestrator.scripted import ScriptedBackend
from tests.orch_support import loop_settings


class StartCounting(ScriptedBackend):
    """The test suite's scripted tier, with a ``start()`` that can fail like a server that is down."""

    def __init__(self, name: str, *, down: bool) -> None:
        super().__init__()
        self.name = name
        self.down = down
        self.started = 0

    async def start(self) -> None:
        self.started += 1
        if self.down:
            raise BackendError(self.name, "connection refused")


async def test_tiers_warm_up_and_router_metrics_are_exported(redis_url: str, prefix: str) -> None:
    first, second = StartCounting("first", down=False), StartCounting("second", down=True)
    router = Router([Tier(first, threshold=0.5), Tier(second)])
    port = free_port()
    orch = Orchestrator(loop_settings(redis_url, prefix, metrics_port=port, metrics_host="127.0.0.1"), router)
    await orch.start()  # a tier that is down at start-up is logged, not fatal
    try:
        assert (first.started, second.started) == (1, 1)
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            text = await resp.text()
    finally:
        await orch.stop()
    for name in ("sraq_router_escalations", "sraq_router_undecided", "sraq_router_escalation_rate"):
        assert name in text, name
