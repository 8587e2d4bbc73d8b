"""The ``sraq`` command line. Each command group lives in ``orchestrator/commands/``."""

from __future__ import annotations

import sys

import click

from orchestrator.commands import (
    bench,
    dataset,
    demo,
    inspect,
    intent_cli,
    intent_train_eval,
    orchestrate,
    publish,
    workers,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="sraq")
def cli() -> None:
    """sraq: real-time intent decisions over Redis streams, a task ledger and arq workers.

    Configuration comes from SRAQ_* environment variables (see the README's table); most commands
    also take flags.
    """


cli.add_command(bench.bench)
cli.add_command(dataset.dataset)
cli.add_command(intent_cli.intent)
intent_train_eval.register(intent_cli.intent)
cli.add_command(orchestrate.orchestrator)
cli.add_command(publish.publish)
cli.add_command(inspect.ledger_cmd)
cli.add_command(inspect.audit_cmd)
cli.add_command(inspect.tail_cmd)
cli.add_command(workers.workers)
cli.add_command(workers.dispatcher)
cli.add_command(demo.demo)


def main() -> None:
    """Console-script entry point. Exit codes: 0 ok, 1 runtime failure, 2 bad usage or input."""
    try:
        cli.main(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
