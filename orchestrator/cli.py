"""The ``sraq`` command line. Each command group lives in ``orchestrator/commands/``."""

from __future__ import annotations

import sys

import click

from orchestrator.commands import bench, intent_cli


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="sraq")
def cli() -> None:
    """sraq: real-time intent decisions over Redis streams, a task ledger and arq workers.

    Configuration comes from SRAQ_* environment variables (see the README's table); most commands
    also take flags.
    """


cli.add_command(bench.bench)
cli.add_command(intent_cli.intent)


def main() -> None:
    """Console-script entry point. Exit codes: 0 ok, 1 runtime failure, 2 bad usage or input."""
    try:
        cli.main(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
