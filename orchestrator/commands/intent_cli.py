"""``sraq intent``: the SGLang-compatible stand-in server and a one-shot decision for debugging.

Other intent commands (``intent train``, ``intent eval``) live in their own modules and register
themselves onto :data:`intent` with ``intent.add_command(...)``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
import uuid

import click

from intent.backend import Backend, BackendError, DecisionRequest, TierAttempt, Undecided
from intent.contract import ChatMessage, TaskInfo
from intent.errors import InvalidDecision
from intent.prompt import render_chat, render_harmony
from orchestrator.commands.common import fail, load_settings, print_json, run
from orchestrator.commands.intent_calibrate import calibrate_cmd

# The stand-in server (aiohttp.web) and the backends (openai) are imported inside the commands:
# every other ``sraq`` command would otherwise pay ~1.5 s of imports at start-up.


@click.group()
def intent() -> None:
    """Intent decision tiers: the stand-in model server, one-shot decisions, train the embedded model, evaluate."""


@intent.command("stub-server")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=30000, show_default=True, type=int)
@click.option("--latency-ms", default=150.0, show_default=True, type=float, help="Fixed latency per request.")
@click.option(
    "--latency", "latency_spec", default=None, help="Overrides --latency-ms: uniform:2000:12000, lognormal:150:0.3"
)
@click.option(
    "--error-rate", default=0.0, type=click.FloatRange(0, 1), help="Share of requests answered with HTTP 500."
)
@click.option("--timeout-rate", default=0.0, type=click.FloatRange(0, 1), help="Share of requests that hang.")
@click.option(
    "--malformed-rate", default=0.0, type=click.FloatRange(0, 1), help="Share of outputs that break the grammar."
)
@click.option("--low-confidence-rate", default=0.0, type=click.FloatRange(0, 1), help="Share of decisions with p~0.45.")
@click.option("--chat-logprobs", type=click.Choice(["yes", "null", "reject"]), default="yes", show_default=True)
@click.option(
    "--brain",
    type=click.Choice(["keywords", "embedded"]),
    default="keywords",
    show_default=True,
    help="Who decides: deterministic keyword rules, or the embedded CPU tier.",
)
@click.option("--model-path", default="sraq/stub-gpt-oss", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
def stub_server(
    host: str,
    port: int,
    latency_ms: float,
    latency_spec: str | None,
    error_rate: float,
    timeout_rate: float,
    malformed_rate: float,
    low_confidence_rate: float,
    chat_logprobs: str,
    brain: str,
    model_path: str,
    seed: int,
) -> None:
    """Run the SGLang-compatible STAND-IN server (keyword rules, not a model) until SIGTERM.

    It serves /generate (streaming and not), /v1/chat/completions, /health, /model_info and
    /get_model_info, validates requests like SGLang 0.5.23 and always honours the request's grammar.

    Example: sraq intent stub-server --port 30000 --latency-ms 150
    """
    from intent.stub_server import Latency, StubConfig, serve

    try:
        latency = Latency.parse(latency_spec) if latency_spec else Latency(kind="fixed", a=latency_ms)
    except ValueError as exc:
        fail(str(exc), 2)
    config = StubConfig(
        model_path=model_path,
        latency=latency,
        error_rate=error_rate,
        timeout_rate=timeout_rate,
        malformed_rate=malformed_rate,
        low_confidence_rate=low_confidence_rate,
        chat_logprobs=chat_logprobs,  # type: ignore[arg-type]
        brain=brain,  # type: ignore[arg-type]
        seed=seed,
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        click.echo(f"sraq stub server (a stand-in, not a model) on http://{host}:{port}", err=True)
        await serve(host, port, config, stop)

    try:
        run(main())
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc}", 1)


def _task(spec: str) -> TaskInfo:
    """``task-1=Find flights`` or ``task-1:completed=Find flights``."""
    head, eq, summary = spec.partition("=")
    task_id, _, status = head.partition(":")
    if not eq or not task_id.strip():
        raise click.BadParameter(f"{spec!r}: use ID[:STATUS]=SUMMARY")
    return TaskInfo(id=task_id.strip(), summary=summary.strip(), status=status.strip() or "running")


def _message(spec: str) -> ChatMessage:
    role, sep, content = spec.partition(":")
    if not sep or role.strip() not in ("user", "assistant", "tool", "system"):
        raise click.BadParameter(f"{spec!r}: use ROLE: TEXT with ROLE user|assistant|tool")
    return ChatMessage(role=role.strip(), content=content.strip())


def path_json(a: TierAttempt) -> dict[str, object]:
    """One step of a decision's path as JSON."""
    return {
        "tier": a.tier,
        "outcome": a.outcome,
        "latency_ms": round(a.latency_ms, 2),
        "confidence": a.confidence,
        "detail": a.detail,
    }


@intent.command("decide")
@click.argument("text")
@click.option("--task", "tasks", multiple=True, help="An open task: ID[:STATUS]=SUMMARY (repeatable).")
@click.option("--history", multiple=True, help="Earlier message ROLE: TEXT (repeatable, oldest first).")
@click.option("--backend", "backend_name", default="cascade", show_default=True, help="cascade|sglang|openai|embedded")
@click.option("--deadline-ms", default=20000, show_default=True, type=int)
@click.option("--show-prompt", type=click.Choice(["none", "harmony", "chat"]), default="none", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def decide(
    text: str,
    tasks: tuple[str, ...],
    history: tuple[str, ...],
    backend_name: str,
    deadline_ms: int,
    show_prompt: str,
    as_json: bool,
) -> None:
    """Decide one turn with the configured tiers and print the decision (and the prompt).

    Example: sraq intent decide "actually make it direct flights" --task "task-1=Flights to Porto" --show-prompt harmony
    """
    try:
        request = DecisionRequest(
            conversation_id="cli",
            turn_id=f"cli-{uuid.uuid4().hex[:8]}",
            transcript=[*(_message(h) for h in history), ChatMessage(role="user", content=text)],
            tasks=[_task(t) for t in tasks],
            deadline=None,
        )
    except click.BadParameter as exc:
        fail(exc.format_message(), 2)
    from orchestrator.backends import BackendConfigError, build_backend

    settings = load_settings()
    if show_prompt == "harmony":
        click.echo(render_harmony(request, settings.sglang_format), err=True)
    elif show_prompt == "chat":
        click.echo(json.dumps(render_chat(request), ensure_ascii=False, indent=2), err=True)
    try:
        tiers = settings.intent_tiers if backend_name == "cascade" else backend_name
        backend: Backend = build_backend(settings.model_copy(update={"intent_tiers": tiers, "embedded_processes": 0}))
    except BackendConfigError as exc:
        fail(str(exc), 2)

    async def once() -> dict[str, object]:
        req = DecisionRequest(
            conversation_id=request.conversation_id,
            turn_id=request.turn_id,
            transcript=request.transcript,
            tasks=request.tasks,
            deadline=time.monotonic() + deadline_ms / 1000,
        )
        try:
            d = await backend.decide(req)
        finally:
            await backend.aclose()
        return {
            "action": d.intent.action.value,
            "args": d.intent.args(),
            "tier": d.tier,
            "confidence": round(d.confidence, 4),
            "confidence_source": d.confidence_source,
            "latency_ms": round(d.latency_ms, 2),
            "cached_tokens": d.cached_tokens,
            "raw": d.raw,
            "path": [path_json(a) for a in d.path],
        }

    try:
        result = run(once())
    except Undecided as exc:
        fail(f"undecided: {exc.reason}", 1)
    except (BackendError, InvalidDecision) as exc:
        fail(f"decision failed: {exc}", 1)
    if as_json:
        print_json(result)
    else:
        click.echo(f"{result['action']} {json.dumps(result['args'], ensure_ascii=False)}")
        click.echo(f"tier={result['tier']} confidence={result['confidence']} latency={result['latency_ms']} ms")
    sys.stdout.flush()


intent.add_command(calibrate_cmd)
