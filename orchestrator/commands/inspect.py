"""``sraq ledger``, ``sraq audit``, ``sraq tail``: read the state and decisions the loop committed."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import signal

import click
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from ledger import Ledger
from ledger.turns import CONVERSATION_ID_RE
from orchestrator.commands.common import connect, fail, load_settings, print_json, run
from orchestrator.decision_feed import follow
from orchestrator.settings import Settings


def _check_conversation(conversation: str) -> None:
    if not CONVERSATION_ID_RE.match(conversation):
        fail(f"invalid conversation id {conversation[:40]!r}", 2)


def _when(epoch_ms: float) -> str:
    return dt.datetime.fromtimestamp(epoch_ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


async def _ledger(settings: Settings, conversation: str) -> dict[str, object]:
    redis = connect(settings)
    try:
        snap = await Ledger(redis, settings.keys()).snapshot(conversation)
    finally:
        await redis.aclose()
    return {
        "conversation_id": snap.conversation_id,
        "version": snap.version,
        "tasks": [
            {
                "id": t.id,
                "status": t.status.value,
                "summary": t.summary,
                "last_update": t.last_update,
                "version": t.version,
                "attempt": t.attempt,
                "result": t.result,
            }
            for t in snap.tasks
        ],
        "applied_turns": snap.applied_turns,
    }


@click.command("ledger")
@click.argument("conversation")
@click.option("--redis-url", default=None, help="Overrides SRAQ_REDIS_URL.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def ledger_cmd(conversation: str, redis_url: str | None, as_json: bool) -> None:
    """Show a conversation's task ledger (version, tasks, applied turns).

    Example: sraq ledger conv-1 --json
    """
    _check_conversation(conversation)
    settings = load_settings(redis_url=redis_url)
    out = run(_ledger(settings, conversation), settings)
    if as_json:
        print_json(out)
        return
    table = Table(title=f"{conversation} · version {out['version']} · {out['applied_turns']} turns applied")
    for col in ("task", "status", "summary", "last update", "v"):
        table.add_column(col)
    for t in out["tasks"]:  # type: ignore[attr-defined]
        table.add_row(t["id"], t["status"], t["summary"], t["last_update"], str(t["version"]))
    Console().print(table)


async def _audit(settings: Settings, conversation: str, task: str | None) -> list[dict[str, object]]:
    redis = connect(settings)
    try:
        entries = await Ledger(redis, settings.keys()).audit(conversation, task_id=task)
    finally:
        await redis.aclose()
    return [
        {
            "turn_id": e.turn_id,
            "op": e.op,
            "task_id": e.task_id,
            "action": e.action,
            "tier": e.tier,
            "confidence": e.confidence,
            "ledger_version": e.ledger_version,
            "at": e.at,  # epoch ms (the contract's default unit; it was seconds before)
            "reason": e.reason,
            "latency_ms": e.latency_ms,
            "task_version": e.task_version,
            "status_before": e.before.status.value if e.before else None,
            "status_after": e.after.status.value if e.after else None,
        }
        for e in entries
    ]


@click.command("audit")
@click.argument("conversation")
@click.option("--task", "task", default=None, help="Only the entries of this task id.")
@click.option("--redis-url", default=None, help="Overrides SRAQ_REDIS_URL.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list, oldest first.")
def audit_cmd(conversation: str, task: str | None, redis_url: str | None, as_json: bool) -> None:
    """Show a conversation's audit trail: who changed what, from which turn and decision.

    Example: sraq audit conv-1 --task task-1 --json
    """
    _check_conversation(conversation)
    settings = load_settings(redis_url=redis_url)
    rows = run(_audit(settings, conversation, task), settings)
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"audit of {conversation}" + (f" · {task}" if task else ""))
    for col in ("at (UTC)", "v", "turn", "op", "task", "action", "tier", "conf", "status"):
        table.add_column(col)
    for r in rows:
        conf = r["confidence"]
        status = f"{r['status_before'] or '-'} → {r['status_after'] or '-'}" if r["task_id"] else ""
        table.add_row(
            _when(float(r["at"])),  # type: ignore[arg-type]
            str(r["ledger_version"]), str(r["turn_id"]), str(r["op"]), str(r["task_id"] or ""),
            str(r["action"]), str(r["tier"] or ""), f"{conf:.2f}" if isinstance(conf, float) else "", status,
        )  # fmt: skip
    Console().print(table)


async def _tail(settings: Settings, as_json: bool, from_start: bool, count: int | None) -> None:
    redis: Redis = connect(settings)
    keys = settings.keys()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    console = Console()
    seen = 0
    try:
        async for line in follow(redis, keys, from_start=from_start, stop=stop):
            if as_json:
                click.echo(json.dumps(line, ensure_ascii=False))
            else:
                _print_decision(console, line)
            seen += 1
            if count is not None and seen >= count:
                return
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await redis.aclose()


def _print_decision(console: Console, d: dict[str, object]) -> None:
    args = d["args"] or {}
    detail = "; ".join(f"{k}={v}" for k, v in args.items()) if isinstance(args, dict) else ""
    style = "red" if d["event"] == "decision_failed" else "green"
    conf = d["confidence"]
    console.print(
        f"[bold]{d['conversation_id']}[/] {d['turn_id']} → [{style}]{d['action']}[/] {detail} "
        f"[dim]tier={d['tier']} conf={conf if conf is None else round(float(conf), 2)} "  # type: ignore[arg-type]
        f"{d['latency_ms']} ms{' reason=' + str(d['reason']) if d['reason'] else ''}[/]",
        highlight=False,
        markup=True,
    )


@click.command("tail")
@click.option("--from-start", is_flag=True, help="Replay the retained decisions first.")
@click.option("--count", type=int, default=None, help="Exit after this many decisions.")
@click.option("--redis-url", default=None, help="Overrides SRAQ_REDIS_URL.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per decision per line.")
def tail_cmd(from_start: bool, count: int | None, redis_url: str | None, as_json: bool) -> None:
    """Follow the decisions of every partition as they are committed (until Ctrl-C).

    Example: sraq tail --json
    """
    settings = load_settings(redis_url=redis_url)
    run(_tail(settings, as_json, from_start, count), settings)
