"""The ``burstbench`` command line: a click root whose subcommands load lazily.

Each package contributes its own commands (``burstbench.traces.cli`` and so on);
the root only knows their import paths, so ``burstbench --help`` imports click and
nothing else and answers at once. Errors a user can cause (``BurstbenchError``)
print as one line on stderr and exit with the error's code.
"""

from __future__ import annotations

import importlib
import sys

import click

from burstbench import __version__
from burstbench.errors import BurstbenchError
from burstbench.output import clean, error_line, shorten

# name -> ("module:attribute", short help shown by --help without importing the module)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("burstbench.demo:demo", "Run the whole pipeline on the bundled reference engine."),
    "trace": ("burstbench.traces.cli:trace", "Ingest, characterise, fit and synthesise traces."),
    "run": ("burstbench.loadgen.cli:run", "Send a trace to an OpenAI-compatible endpoint."),
    "serve": ("burstbench.backends.reference.cli:serve", "Serve the reference engine over HTTP."),
    "simulate": (
        "burstbench.backends.reference.cli:simulate",
        "Run a trace through the reference engine in virtual time.",
    ),
    "profile": ("burstbench.backends.hardware.cli:profile", "Measure this machine's hardware."),
    "analyze": ("burstbench.analysis.cli:analyze", "Metrics, SLO attainment and goodput."),
    "sweep": ("burstbench.analysis.cli:sweep", "Sweep rates or search the max goodput rate."),
    "report": ("burstbench.reports.cli:report", "Write a self-contained HTML report."),
    "calibrate": ("burstbench.twin.cli:calibrate", "Fit the reference engine to a measured run (twin.yaml)."),
    "whatif": ("burstbench.twin.cli:whatif", "Replay a trace through the twin under a changed deployment."),
    "plan": ("burstbench.twin.cli:plan", "Cheapest fleet meeting an SLO target at the trace's peak."),
    "vllm-cpu": ("burstbench.testing.vllm_cpu_cli:vllm_cpu", "Install, build a tiny model for and serve a real vLLM on CPU."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when invoked (or asked for help)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target[0].split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("burstbench"):
                # The command is planned (DESIGN section 7) but not built yet.
                return _missing_command(cmd_name, target[1])
            raise
        return getattr(module, attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _missing_command(name: str, help_text: str) -> click.Command:
    def callback() -> None:
        raise click.UsageError(f"'{name}' is not available in this build of burstbench")

    return click.Command(name, callback=callback, help=help_text)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="burstbench")
def root() -> None:
    """burstbench: workload traces, load generation and a reference engine for LLM serving.

    \b
    Example:
      burstbench demo
      burstbench trace stats $(burstbench trace examples)/azure_llm_2023_conv.csv
    """


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the click root, mapping BurstbenchError to one line and an exit code."""
    try:
        # without standalone mode click returns ctx.exit()'s code instead of exiting
        rv = root.main(args=argv, prog_name="burstbench", standalone_mode=False)
    except BurstbenchError as exc:
        click.echo(error_line(exc), err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.message = shorten(clean(exc.message))  # it may quote a flag's value back
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
