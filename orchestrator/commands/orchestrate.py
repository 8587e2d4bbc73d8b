"""``sraq orchestrator``: run the loop in the foreground until SIGTERM/SIGINT."""

from __future__ import annotations

import click

from orchestrator.commands.common import fail, load_settings, run
from orchestrator.logsetup import configure_logging
from orchestrator.settings import Settings


async def _serve(settings: Settings) -> int:
    # imported here: the backends pull in numpy/aiohttp, which other commands do not need
    from orchestrator.backends import BackendConfigError, build_backend
    from orchestrator.gc_policy import apply_gc_policy
    from orchestrator.runtime import Orchestrator

    try:
        backend = build_backend(settings)
    except BackendConfigError as exc:
        fail(str(exc), 2)
    apply_gc_policy(settings)  # after the model is loaded: it is frozen with the rest
    try:
        return await Orchestrator(settings, backend).run()
    finally:
        await backend.aclose()


@click.command("orchestrator")
@click.option("--redis-url", default=None, help="Overrides SRAQ_REDIS_URL.")
@click.option("--instance-id", default=None, help="Overrides SRAQ_INSTANCE_ID (default host-pid-random).")
@click.option("--metrics-port", type=int, default=None, help="Port of /metrics and /health (0 disables).")
@click.option("--tiers", default=None, help="Overrides SRAQ_INTENT_TIERS (e.g. embedded).")
@click.option("--grace", type=float, default=None, help="Shutdown grace period in seconds (SRAQ_GRACE_S).")
def orchestrator(
    redis_url: str | None, instance_id: str | None, metrics_port: int | None, tiers: str | None, grace: float | None
) -> None:
    """Run an orchestrator instance: take a share of the partitions, decide and commit every turn.

    Start several for more throughput or availability; they rebalance the partitions among
    themselves. Stops gracefully on SIGTERM/SIGINT (exit 0).

    Example: SRAQ_REDIS_URL=redis://localhost:6379/0 sraq orchestrator --metrics-port 9464
    """
    settings = load_settings(
        redis_url=redis_url, instance_id=instance_id, metrics_port=metrics_port, intent_tiers=tiers, grace_s=grace
    )
    try:
        configure_logging(settings.log_format, settings.log_level)
    except ValueError as exc:
        fail(str(exc), 2)
    code = run(_serve(settings), settings)
    raise SystemExit(code)
