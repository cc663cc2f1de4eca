"""The ``sim`` command: a thin layer over the library. One module per subcommand.

Bad input (``SimInputError``, click usage errors) exits with status 2 and a message naming the field; an
impossible result (``SimBugError``) or running out of memory exits with status 1 and asks for a bug report;
``--json`` prints exactly one JSON object on stdout.

Subcommands load lazily: ``sim --help`` and ``sim run`` import only what they use (no pandas, matplotlib or
torch unless the command needs them). :data:`COMMANDS` names each command's module and its one-line help, so
listing the commands imports none of them (``tests/test_speed_invariants.py`` checks the lines match).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from sim.errors import SimBugError, SimInputError

#: name -> (module under ``sim.cli``, attribute, the command's help text: its docstring's first paragraph)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "calibrate": ("calibrate_cmd", "calibrate", "Write a calibration table that `sim run --calibration FILE` reads."),
    "estimate": ("estimate_cmd", "estimate",
                 "Estimate a whole training run of WORKLOAD: GPU-hours, days, dollars, energy and CO2 per phase."),
    "experts": ("experts_cmd", "experts", "Expert load and its balancing over training steps for WORKLOAD."),
    "model": ("model_cmd", "model",
              "Architecture arithmetic for WORKLOAD (a job file, or a model file under workloads/models)."),
    "run": ("run_cmd", "run", "Simulate one training step of WORKLOAD and report where the time goes."),
    "schedule": ("schedule_cmd", "schedule",
                 "Build pipeline schedule NAME and run it with uniform chunk durations and no communication."),
    "plan": ("plan_cmd", "plan",
             "Recommend the cheapest ways to train WORKLOAD on --tokens within --deadline-days and --budget-usd."),
    "sweep": ("sweep_cmd", "sweep",
              "Sweep the configurations SPEC describes: prune, rank, simulate the best in detail, price them."),
    "validate": ("validate_cmd", "validate",
                 "Run published cases (all, or CASES: families, file stems, case names, globs or case files) and "
                 "report\n    predicted, measured and the signed error predicted / measured - 1."),
}


class SimGroup(click.Group):
    """Loads a subcommand's module only when that command runs (or its own help is asked for); turns input
    errors raised anywhere below into a message and exit status 2, bugs into exit status 1."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        spec = COMMANDS.get(cmd_name)
        if spec is None:
            return None
        module, attr, _ = spec
        cmd = getattr(importlib.import_module(f"sim.cli.{module}"), attr)
        self.commands[cmd_name] = cmd
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from :data:`COMMANDS`, without importing the commands."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max((len(n) for n in names), default=0)
        rows = [(name, (self.commands[name] if name in self.commands
                        else click.Command(name, help=COMMANDS[name][2])).get_short_help_str(limit))
                for name in names]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SimInputError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(2)
        except SimBugError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(1)
        except MemoryError:
            click.echo("error: internal error (a simulator bug): out of memory although the work budget "
                       "(--max-memory) allowed this work; its estimate is wrong, please report the command line",
                       err=True)
            ctx.exit(1)


@click.group(cls=SimGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sim")
def main() -> None:
    """Simulate LLM training on GPU clusters: step time, where it goes, and what a run costs."""


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
