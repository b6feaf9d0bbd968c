"""The CLI root: lazy subcommands and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from burstbench.cli import COMMANDS, main
from burstbench.errors import BurstbenchError, InputError


def test_help_lists_every_command_without_importing_them() -> None:
    code = (
        "import sys; from burstbench.cli import main; rc = main(['--help']);"
        "heavy = [m for m in ('polars', 'duckdb', 'scipy', 'aiohttp', 'plotly', 'numpy') if m in sys.modules];"
        "print('HEAVY', heavy); sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for name in COMMANDS:
        assert name in out
    assert "HEAVY []" in out


def test_burstbench_error_is_one_line_with_exit_code(monkeypatch, capsys) -> None:
    import click

    @click.command()
    def boom() -> None:
        raise InputError("bad value", path="t.csv", line=7, field="Request tokens")

    monkeypatch.setitem(COMMANDS, "boom", ("tests.unit.test_cli:_unused", "x"))
    from burstbench import cli

    monkeypatch.setattr(cli.LazyGroup, "get_command", lambda self, ctx, name: boom)
    rc = main(["boom"])
    err = capsys.readouterr().err
    assert rc == InputError.exit_code != 0
    assert err.strip() == "error: t.csv:7, field 'Request tokens': bad value"
    assert issubclass(InputError, BurstbenchError)


def test_unknown_command_is_a_usage_error(capsys) -> None:
    assert main(["no-such-command"]) == 2


def test_json_output_is_strict_json_even_with_non_finite_numbers(capsys) -> None:
    import json
    import math

    from burstbench.output import emit_json

    emit_json({"p99": math.inf, "rows": [math.nan, 1.5], "ok": True})
    line = capsys.readouterr().out
    assert json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}")) == {
        "p99": None, "rows": [None, 1.5], "ok": True}


def test_a_command_exit_code_reaches_the_shell(monkeypatch) -> None:
    import click

    from burstbench import cli

    @click.command()
    @click.pass_context
    def partial(ctx: click.Context) -> None:
        ctx.exit(3)

    monkeypatch.setattr(cli.LazyGroup, "get_command", lambda self, ctx, name: partial)
    assert main(["partial"]) == 3
