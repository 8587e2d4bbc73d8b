"""``sraq dataset validate | stats | split | export``: the labelled decision data."""

from __future__ import annotations

import json
from pathlib import Path

import click

from intent.dataset import LoadResult, load
from intent.export import PromptLayout, export_rows
from intent.prompt import OutputFormat
from intent.splits import dataset_stats, duplicate_warnings, stratified_split
from orchestrator.commands.common import fail, print_json

_out_path = click.Path(dir_okay=False, path_type=Path)
_files = click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))


def load_or_fail(files: tuple[Path, ...] | list[Path], *, allow_invalid: bool = False) -> LoadResult:
    """Load rows; every problem row is printed on stderr; exit 2 unless ``allow_invalid``."""
    try:
        result = load(list(files))
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read dataset: {exc}", 2)
    for issue in result.issues:
        click.echo(f"sraq: {issue}", err=True)
    if result.issues and not allow_invalid:
        fail(f"{len(result.issues)} invalid row(s) (listed above); fix them or pass --allow-invalid", 2)
    if result.issues:
        click.echo(f"sraq: skipping {len(result.issues)} invalid row(s) listed above", err=True)
    if not result.examples:
        fail("no valid rows", 2)
    return result


@click.group()
def dataset() -> None:
    """Labelled decision rows (either reference row format): check, summarise, split, export."""


@dataset.command("validate")
@_files
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def validate_cmd(files: tuple[Path, ...], as_json: bool) -> None:
    """Check every row; exit 2 when any row is invalid (each printed with its line number and reason).

    Example: sraq dataset validate data/authored/*.jsonl
    """
    result = load(list(files))
    warnings = duplicate_warnings(result.examples)
    if as_json:
        print_json(
            {
                "rows": len(result.examples) + len(result.issues),
                "valid": len(result.examples),
                "issues": [{"source": i.source, "line": i.line, "reason": i.reason} for i in result.issues],
                "warnings": warnings,
            }
        )
    else:
        for issue in result.issues:
            click.echo(f"ERROR {issue}")
        for warning in warnings:
            click.echo(f"warning: {warning}")
        click.echo(f"{len(result.examples)} valid row(s), {len(result.issues)} invalid, {len(warnings)} warning(s)")
    if result.issues:
        raise SystemExit(2)


@dataset.command("stats")
@_files
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def stats_cmd(files: tuple[Path, ...], as_json: bool) -> None:
    """Counts per action, style, domain, channel, ledger size; multi-turn and task-position shares."""
    result = load_or_fail(files, allow_invalid=True)
    stats = dataset_stats(result.examples)
    if as_json:
        print_json(stats)
        return
    for key, value in stats.items():
        click.echo(f"{key:28} {json.dumps(value, ensure_ascii=False)}")


@dataset.command("split")
@_files
@click.option(
    "--train",
    "train_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("data/train.jsonl"),
    show_default=True,
    help="Where the training rows go.",
)
@click.option(
    "--test",
    "test_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("data/test.jsonl"),
    show_default=True,
    help="Where the test rows go.",
)
@click.option("--test-fraction", type=click.FloatRange(0.01, 0.99), default=0.2, show_default=True)
@click.option("--seed", type=int, default=13, show_default=True, help="Shuffle seed (same rows + seed = same split).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def split_cmd(
    files: tuple[Path, ...], train_path: Path, test_path: Path, test_fraction: float, seed: int, as_json: bool
) -> None:
    """Deterministic train/test split, stratified by action; rows are copied verbatim.

    Example: sraq dataset split data/authored/batch_*.jsonl --train data/train.jsonl --test data/test.jsonl
    """
    result = load_or_fail(files)
    train_idx, test_idx = stratified_split(result.examples, test_fraction, seed)
    out: dict[str, object] = {"seed": seed, "test_fraction": test_fraction}
    for name, path, idx in (("train", train_path, train_idx), ("test", test_path, test_idx)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(result.raw_lines[i] + "\n" for i in idx), "utf-8")
        counts: dict[str, int] = {}
        for i in idx:
            counts[result.examples[i].action] = counts.get(result.examples[i].action, 0) + 1
        out[name] = {"path": str(path), "rows": len(idx), "actions": dict(sorted(counts.items()))}
    if as_json:
        print_json(out)
    else:
        for name in ("train", "test"):
            info = out[name]
            assert isinstance(info, dict)
            click.echo(f"{name}: {info['rows']} rows -> {info['path']}  {info['actions']}")


@dataset.command("export")
@click.argument("data", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["call", "json"]),
    default="call",
    show_default=True,
    help="How the assistant's final decision is written.",
)
@click.option(
    "--prompt",
    "layout",
    type=click.Choice(["project", "reference"]),
    default="project",
    show_default=True,
    help="project: the tiers' own prompt (intent.prompt); reference: system message + '## Ongoing tasks:' JSON.",
)
@click.option(
    "--thinking/--no-thinking",
    default=True,
    show_default=True,
    help="Put the row's reasoning in the assistant message's 'thinking' field.",
)
def export_cmd(data: Path, output: Path, output_format: str, layout: str, thinking: bool) -> None:
    """Chat fine-tuning JSONL ({"messages": [...]}) with the decision prompt, for any SFT/LoRA stack.

    Example: sraq dataset export data/train.jsonl -o build/train_chat.jsonl --format json
    """
    result = load_or_fail([data])
    fmt: OutputFormat = "json" if output_format == "json" else "call"
    prompt_layout: PromptLayout = "reference" if layout == "reference" else "project"
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", encoding="utf-8") as fh:
        for row in export_rows(result.examples, fmt, thinking=thinking, layout=prompt_layout):
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    click.echo(f"wrote {len(result.examples)} row(s) to {output}", err=True)
