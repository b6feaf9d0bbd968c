"""``burstbench report``: parse flags, call ``build_report``, print where the file is."""

from __future__ import annotations

from pathlib import Path

import click

from burstbench.outfile import check_output, force_option
from burstbench.output import emit_json


@click.command("report")
@click.argument("store", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.argument("trace", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("report.html"),
              show_default=True, help="HTML file to write.")
@click.option("--run", "run_ids", multiple=True, metavar="ID",
              help="Run id, unique id prefix or label to include; repeat for several. Default: every run.")
@click.option("--slo", default=None, metavar="SPEC", help="SLOs, e.g. ttft=500ms,tpot=50ms,e2el=10s.")
@click.option("--target", type=float, default=0.9, show_default=True,
              help="Attainment a run needs to pass its SLO (fraction).")
@click.option("--twin", "twin", multiple=True, type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="A twin.yaml from calibrate, or the --json output of whatif or plan; repeat for several.")
@click.option("--title", default="burstbench report", show_default=True, help="Report title.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as one JSON object.")
@force_option
def report(store: Path | None, trace: Path | None, out: Path, run_ids: tuple[str, ...], slo: str | None,
           target: float, twin: tuple[Path, ...], title: str, as_json: bool, force: bool) -> None:
    """Write a self-contained HTML report (works offline) for a results store, a trace and
    the digital twin's results.

    \b
    Examples:
      burstbench report results.duckdb -o report.html --slo ttft=500ms,tpot=50ms
      burstbench report results.duckdb trace.parquet --run 20260101T1200 --run 20260101T1300
      burstbench report results.duckdb $(burstbench trace examples)/burstgpt_v1_head400.csv
      burstbench whatif twin.yaml --trace T.parquet --hardware h200 --slo ttft=500ms --json > whatif.json
      burstbench report results.duckdb --twin twin.yaml --twin whatif.json -o report.html
    """
    from burstbench.output import console as make_console
    from burstbench.reports.build import build_report

    check_output(out, kind="html", inputs=[store, trace, *twin], force=force)
    console = make_console()
    with console.status("building report") as status:
        res = build_report(
            store, out, trace=trace, twin=twin, run_ids=run_ids or None, slo=slo, target=target, title=title,
            progress=lambda msg: status.update(f"report: {msg}"),
        )
    mb = res.bytes / 1e6
    console.print(f"wrote {res.path} ({mb:.1f} MB, {res.figures} figures, {len(res.runs)} runs"
                  f"{f', {res.sweep_steps} sweep steps' if res.sweep_steps else ''}) in {res.seconds:.1f} s")
    if as_json:
        emit_json(res.to_json())
