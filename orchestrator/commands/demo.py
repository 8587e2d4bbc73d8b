"""``sraq demo``: the complete local agent on the embedded defaults."""

from __future__ import annotations

import sys

import click

from orchestrator.commands.common import fail, load_settings, print_json, run
from orchestrator.local_redis import RedisServerError


@click.command("demo")
@click.option("--json", "as_json", is_flag=True, help="Human output on stderr; the summary as JSON on stdout.")
@click.option("--interactive", is_flag=True, help="Type turns into one conversation and watch its ledger.")
@click.option("--workers", default=2, show_default=True, help="Worker processes to start.")
@click.option("--tiers", default=None, help="Overrides SRAQ_INTENT_TIERS (default: embedded).")
@click.option("--redis-url", default=None, help="Overrides SRAQ_REDIS_URL.")
def demo(as_json: bool, interactive: bool, workers: int, tiers: str | None, redis_url: str | None) -> None:
    """Run a complete multi-threaded agent locally: Redis, an orchestrator and a worker pool.

    Plays three scripted conversations at once (tasks started, updated while running, cancelled,
    completed; a status question answered while tasks run; task callbacks), shows every decision
    live, prints the final ledgers and exits 0 when each conversation ended as expected.

    Example: sraq demo            (or: sraq demo --interactive)
    """
    from orchestrator.demo import run_demo
    from orchestrator.demo_interactive import run_interactive

    settings = load_settings(redis_url=redis_url, intent_tiers=tiers)
    try:
        if interactive:
            run(run_interactive(settings, workers=workers), settings)
            return
        result = run(run_demo(settings, as_json=as_json, workers=workers), settings)
    except RedisServerError as exc:
        fail(str(exc))
    except RuntimeError as exc:
        fail(str(exc))
    if as_json:
        print_json(result.summary())
    sys.exit(0 if result.ok else 1)
