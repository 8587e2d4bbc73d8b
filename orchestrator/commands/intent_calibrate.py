"""``sraq intent calibrate``: fit a tier's temperature on held-out rows and store it with its config.

The tier answers every row; each decision's uncalibrated action distribution (``Decision.action_probs``)
and the labelled action form one ``(probabilities, correct index)`` pair; :func:`fit_temperature` finds
T. Point ``SRAQ_SGLANG_CALIBRATION`` (or ``SRAQ_OPENAI_CALIBRATION``) at the written file.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import click

from intent.backend import Backend, BackendError, DecisionRequest, Undecided
from intent.calibration import fit_temperature
from intent.dataset import Example, load
from intent.errors import InvalidDecision
from orchestrator.commands.common import fail, load_settings, print_json, run


async def _collect(backend: Backend, examples: list[Example], concurrency: int, deadline_s: float) -> dict[str, Any]:
    rows: list[tuple[list[float], int]] = []
    failed = 0
    no_probs = 0
    sem = asyncio.Semaphore(concurrency)

    async def one(ex: Example) -> None:
        nonlocal failed, no_probs
        request = DecisionRequest(
            conversation_id=f"cal-{ex.id}",
            turn_id=ex.id,
            transcript=ex.transcript,
            tasks=ex.tasks,
            deadline=time.monotonic() + deadline_s,
        )
        async with sem:
            try:
                d = await backend.decide(request)
            except (BackendError, InvalidDecision, Undecided):
                failed += 1
                return
        if not d.action_probs or ex.action not in d.action_probs:
            no_probs += 1
            return
        actions = sorted(d.action_probs)
        rows.append(([d.action_probs[a] for a in actions], actions.index(ex.action)))

    try:
        await asyncio.gather(*(one(ex) for ex in examples))
    finally:
        await backend.aclose()
    return {"rows": rows, "failed": failed, "no_probs": no_probs}


@click.command("calibrate")
@click.argument("data", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--backend", "backend_name", type=click.Choice(["sglang", "openai"]), default="sglang", show_default=True)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the fit here.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Use only the first N rows.")
@click.option("--concurrency", type=click.IntRange(1), default=16, show_default=True)
@click.option("--deadline-ms", type=click.IntRange(1), default=30000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def calibrate_cmd(
    data: Path,
    backend_name: str,
    output: Path | None,
    limit: int | None,
    concurrency: int,
    deadline_ms: int,
    as_json: bool,
) -> None:
    """Fit the temperature of one tier on held-out rows (use rows the model was not trained on).

    Example: sraq intent calibrate data/test.jsonl --backend sglang --output sglang-calibration.json
    """
    from orchestrator.backends import BackendConfigError, build_backend

    loaded = load(data)
    examples = loaded.examples[:limit] if limit else loaded.examples
    if not examples:
        fail(f"{data}: no usable rows", 2)
    settings = load_settings()
    try:  # fit on raw probabilities: the tier's current calibration is not applied to action_probs
        backend = build_backend(settings.model_copy(update={"intent_tiers": backend_name, "embedded_processes": 0}))
    except BackendConfigError as exc:
        fail(str(exc), 2)
    got = run(_collect(backend, examples, concurrency, deadline_ms / 1000))
    if not got["rows"]:
        fail(f"no decision with log-probs out of {len(examples)} rows ({got['failed']} failed)", 1)
    cal = fit_temperature(got["rows"])
    if output is not None:
        cal.dump(output)
    result = {
        "rows": len(examples),
        "used": len(got["rows"]),
        "failed": got["failed"],
        "without_probs": got["no_probs"],
        "temperature": cal.temperature,
        "nll_before": cal.nll_before,
        "nll_after": cal.nll_after,
        "ece_before": cal.ece_before,
        "ece_after": cal.ece_after,
        "output": str(output) if output else None,
    }
    if as_json:
        print_json(result)
    else:
        click.echo(
            f"T={cal.temperature} on {len(got['rows'])} rows: ECE {cal.ece_before} -> {cal.ece_after}, "
            f"NLL {cal.nll_before} -> {cal.nll_after}" + (f"; wrote {output}" if output else "")
        )
