"""``sraq intent train`` and ``sraq intent eval``: fit the embedded tier; measure any tier."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from intent.backend import Backend, BackendError
from intent.embedded import EmbeddedBackend
from intent.evaluation import RowResult, baseline_regressions, compare, evaluate_backend, load_predictions, report
from orchestrator.backends import BackendConfigError, build_backend
from orchestrator.commands.common import fail, load_settings, print_json, run
from orchestrator.commands.dataset import load_or_fail
from orchestrator.settings import Settings

BACKENDS = ("embedded", "sglang", "openai", "cascade")


def register(group: click.Group) -> None:
    """Attach ``train`` and ``eval`` to the ``intent`` group."""
    group.add_command(train_cmd)
    group.add_command(eval_cmd)


@click.command("train")
@click.argument("data", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the model artefact (JSON, loads without pickle).",
)
@click.option(
    "--folds",
    type=click.IntRange(2, 20),
    default=5,
    show_default=True,
    help="Cross-validation folds (choice of C and calibration).",
)
@click.option("--seed", type=int, default=13, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the training summary as JSON.")
def train_cmd(data: tuple[Path, ...], output: Path, folds: int, seed: int, as_json: bool) -> None:
    """Train the embedded tier on labelled rows and write a pickle-free artefact.

    Example: sraq intent train data/train.jsonl -o intent/data/embedded_model.json
    """
    from intent.training import train  # scikit-learn is imported only when training

    result = load_or_fail(data)
    t0 = time.perf_counter()
    try:
        model = train(result.examples, folds=folds, seed=seed, log=lambda m: click.echo(m, err=True))
    except ValueError as exc:
        fail(str(exc), 2)
    model.info["data"] = [str(p) for p in data]
    model.info["train_seconds"] = round(time.perf_counter() - t0, 1)
    output.parent.mkdir(parents=True, exist_ok=True)
    model.save(output)
    summary = {"output": str(output), "bytes": output.stat().st_size, **model.info}
    if as_json:
        print_json(summary)
    else:
        click.echo(f"wrote {output} ({summary['bytes']} bytes): {json.dumps(model.info, ensure_ascii=False)}")


def build_eval_backend(name: str, settings: Settings, model: Path | None) -> Backend:
    """The backend to evaluate: the embedded tier (optionally another artefact) or the router's factory.

    ``cascade`` evaluates the configured ``SRAQ_INTENT_TIERS``; ``sglang``/``openai`` evaluate that one tier.
    """
    if name == "embedded":
        return EmbeddedBackend.load(model or settings.embedded_model)
    tiers = settings.intent_tiers if name == "cascade" else name
    try:
        return build_backend(settings.model_copy(update={"intent_tiers": tiers, "embedded_processes": 0}))
    except BackendConfigError as exc:
        fail(f"cannot build backend {name!r}: {exc}", 2)


async def _evaluate(backend: Backend, examples: list[Any], progress: bool) -> list[RowResult]:
    try:
        if not progress:
            return await evaluate_backend(backend, examples)
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            job = bar.add_task(f"eval {backend.name}", total=len(examples))
            return await evaluate_backend(backend, examples, on_row=lambda _: bar.advance(job))
    finally:
        await backend.aclose()


@click.command("eval")
@click.argument("data", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--backend", "backend_name", type=click.Choice(BACKENDS), default="embedded", show_default=True)
@click.option(
    "--model",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Embedded model artefact (default: SRAQ_EMBEDDED_MODEL, else the shipped model).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object (stable contract).")
@click.option(
    "--plot",
    "plot_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write confusion/reliability/latency PNGs here (needs the 'plot' extra).",
)
@click.option(
    "--compare",
    "compare_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Predictions of another run (--save-predictions file, or rows with id + final).",
)
@click.option(
    "--save-predictions",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write this run's per-row predictions (JSONL) for a later --compare.",
)
@click.option(
    "--baseline",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Saved report; exit 1 if any action's F1, task-id accuracy or valid rate fell.",
)
@click.option("--tolerance", type=click.FloatRange(0.0, 1.0), default=0.02, show_default=True)
@click.option("--limit", type=click.IntRange(1), default=None, help="Evaluate only the first N rows.")
def eval_cmd(
    data: Path,
    backend_name: str,
    model: Path | None,
    as_json: bool,
    plot_dir: Path | None,
    compare_path: Path | None,
    save_predictions: Path | None,
    baseline: Path | None,
    tolerance: float,
    limit: int | None,
) -> None:
    """Accuracy, per-action P/R/F1, task-id accuracy, calibration, selective accuracy and latency of a tier.

    Example: sraq intent eval data/test.jsonl --backend embedded --json
    """
    result = load_or_fail([data], allow_invalid=True)
    examples = result.examples[:limit] if limit else result.examples
    settings = load_settings()
    try:
        backend = build_eval_backend(backend_name, settings, model)
    except BackendError as exc:
        fail(str(exc), 2)
    rows = run(_evaluate(backend, examples, progress=sys.stderr.isatty()))
    rep: dict[str, Any] = report(rows, cascade=backend_name == "cascade")
    rep["backend"] = backend_name
    rep["data"] = str(data)
    rep["skipped_rows"] = len(result.issues)
    if save_predictions is not None:
        save_predictions.parent.mkdir(parents=True, exist_ok=True)
        save_predictions.write_text("".join(json.dumps(_row_json(r)) + "\n" for r in rows), "utf-8")
    if compare_path is not None:
        try:
            other = load_predictions(compare_path.read_text("utf-8").splitlines(), examples)
        except ValueError as exc:
            fail(f"--compare {compare_path}: {exc}", 2)
        rep["compare"] = {"path": str(compare_path), **compare(rows, other)}
    regressions: list[str] = []
    if baseline is not None:
        try:
            base = json.loads(baseline.read_text("utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            fail(f"--baseline {baseline}: {exc}", 2)
        regressions = baseline_regressions(rep, base, tolerance)
        rep["baseline"] = {"path": str(baseline), "tolerance": tolerance, "regressions": regressions}
    if plot_dir is not None:
        _plot(rows, rep, plot_dir, backend_name)
    if as_json:
        print_json(rep)
    else:
        _print_human(rep)
    for problem in regressions:
        click.echo(f"sraq: regression: {problem}", err=True)
    if regressions:
        sys.exit(1)


def _row_json(row: RowResult) -> dict[str, Any]:
    import msgspec

    out: dict[str, Any] = msgspec.to_builtins(row)
    return out


def _plot(rows: list[RowResult], rep: dict[str, Any], plot_dir: Path, title: str) -> None:
    from intent import plots

    if not plots.available():
        click.echo("sraq: --plot skipped: matplotlib is not installed (pip install 'sraq[plot]')", err=True)
        rep["plots"] = []
        return
    written = plots.write_plots(rows, rep, plot_dir, title)
    rep["plots"] = [str(p) for p in written]
    click.echo(f"wrote {', '.join(map(str, written))}", err=True)


def _print_human(rep: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"[bold]{rep['backend']}[/] on {rep['data']}: {rep['rows']} rows, accuracy {rep['accuracy']:.3f}, "
        f"macro-F1 {rep['macro_f1']:.3f}, task-id accuracy {rep['task_id_accuracy']:.3f} "
        f"({rep['task_id_rows']} rows), valid {rep['valid_rate']:.3f}, ECE {rep['ece']:.3f}"
    )
    table = Table("action", "precision", "recall", "F1", "support")
    for action, m in rep["per_action"].items():
        table.add_row(action, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"]))
    console.print(table)
    sel = ", ".join(f"{float(k):.0%}: {v:.3f}" for k, v in rep["selective_accuracy"].items())
    console.print(f"selective accuracy (coverage: accuracy) {sel}")
    lat = rep["latency_ms"]
    console.print(f"latency ms p50 {lat['p50']:.3f}  p95 {lat['p95']:.3f}  p99 {lat['p99']:.3f}")
    if rep["escalation_rate"] is not None:
        console.print(f"escalation rate {rep['escalation_rate']:.3f}")
    labels = list(rep["confusion"])
    cols = labels + sorted({p for row in rep["confusion"].values() for p in row} - set(labels))
    conf = Table("expected \\ predicted", *cols)
    for t in labels:
        conf.add_row(t, *(str(rep["confusion"][t].get(p, 0)) for p in cols))
    console.print(conf)
    if "compare" in rep:
        c = rep["compare"]
        console.print(
            f"agreement with {c['path']}: {c['agreement']:.3f} on {c['rows']} rows; F1 deltas "
            f"{c['per_action_f1_delta']}"
        )
