"""The ``sim`` command: a thin layer over the library. One module per subcommand.

Bad input (``SimInputError``, click usage errors) exits with status 2 and a message naming the field;
``--json`` prints exactly one JSON object on stdout.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from sim.errors import SimInputError


class SimGroup(click.Group):
    """Turns input errors raised anywhere below into a message and exit status 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SimInputError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(2)


@click.group(cls=SimGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sim")
def main() -> None:
    """Simulate LLM training on GPU clusters: step time, where it goes, and what a run costs."""


def _register() -> None:
    from sim.cli import calibrate_cmd, estimate_cmd, experts_cmd, model_cmd, run_cmd, schedule_cmd

    main.add_command(calibrate_cmd.calibrate)
    main.add_command(estimate_cmd.estimate)
    main.add_command(experts_cmd.experts)
    main.add_command(model_cmd.model)
    main.add_command(run_cmd.run)
    main.add_command(schedule_cmd.schedule)
    main.add_command(__import__("sim.cli.validate_cmd", fromlist=["validate"]).validate)
    main.add_command(__import__("sim.cli.sweep_cmd", fromlist=["sweep"]).sweep)
    main.add_command(__import__("sim.cli.plan_cmd", fromlist=["plan"]).plan)


_register()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
