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
    """Console-script entry point. Exit codes: 0 ok, 1 runtime failure, 2 bad usage or input.

    Usage errors print one line on stderr (scripts parse it; INTERFACES.md), not click's usage block.
    """
    try:
        code = cli.main(standalone_mode=False)
    except click.UsageError as exc:
        if exc.ctx is not None and type(exc).__name__ == "NoArgsIsHelpError":  # bare `sraq`, `sraq bench`
            click.echo(exc.ctx.get_help())
            sys.exit(0)
        path = exc.ctx.command_path if exc.ctx is not None else "sraq"
        click.echo(f"sraq: {exc.format_message()} (see '{path} --help')", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"sraq: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
