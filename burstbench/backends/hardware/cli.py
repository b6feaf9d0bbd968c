"""``burstbench profile``: measure this machine into a hardware profile JSON."""

from __future__ import annotations

from pathlib import Path

import click

from burstbench.errors import UsageError
from burstbench.outfile import check_output, force_option
from burstbench.output import emit_json, results_console


@click.command("profile")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the profile JSON here (serve/simulate accept it with --hardware).")
@click.option("--quick", is_flag=True, help="Small sizes, about 2 s instead of about 20 s.")
@click.option("--name", default=None, help="Profile name (default: cpu-<arch>-<threads>t or the GPU name).")
@click.option("--json", "as_json", is_flag=True, help="Print the profile as one JSON object on stdout.")
@click.option("--list", "list_presets", is_flag=True,
              help="List the bundled hardware presets instead of measuring.")
@force_option
def profile(output: Path | None, quick: bool, name: str | None, as_json: bool, list_presets: bool,
            force: bool) -> None:
    """Measure GEMM throughput and memory bandwidth of this machine.

    Derives the efficiency curves the reference engine's cost model uses and writes a
    hardware profile JSON. On a machine with torch and a CUDA GPU the GPU is measured;
    otherwise the CPU (numpy). The machine should be otherwise idle.

    \b
    Example:
      burstbench profile -o myhost.json
      burstbench simulate trace.parquet --model llama-3.1-8b --hardware myhost.json -o r.duckdb
      burstbench profile --list
    """
    if list_presets:
        _list_presets(as_json)
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.text import Text

    from burstbench.backends.hardware.profiler import profile_machine
    from burstbench.output import console as make_console

    if output is not None:
        check_output(output, kind="json", force=force)
        if not output.parent.exists():
            raise UsageError(f"-o {output}: folder {output.parent} does not exist")
    console = make_console()
    busy = _busy_before()
    with Progress(
        TextColumn("[bold]profile[/]"),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task("starting", total=1.0)
        phase = {"gemm": 0.0, "bw": 0.0}
        said: list[str] = []

        def progress(desc: str, frac: float) -> None:
            key = "bw" if desc.startswith("bandwidth") else "gemm"
            phase[key] = frac
            done = 0.6 * phase["gemm"] + 0.4 * phase["bw"]
            bar.update(task, description=desc, completed=done)
            if not console.is_terminal and desc not in said:  # a log gets one line per step, not a bar
                said.append(desc)
                console.print(Text(f"profile: {desc} ({done:.0%} done)"), soft_wrap=True)

        hw = profile_machine(quick=quick, name=name, progress=progress)
    if output is not None:
        try:
            hw.write(output)
        except OSError as exc:
            raise UsageError(f"-o {output}: cannot write ({exc.strerror}); choose another path") from exc
    out = results_console(as_json)  # the measured figures are the result
    out.print(
        f"{hw.name} ({hw.kind}): peak {hw.peak_flops / 1e9:.1f} GFLOP/s, "
        f"memory bandwidth {hw.mem_bandwidth / 1e9:.1f} GB/s "
        f"(η_B {hw.bandwidth_efficiency(1):.2f}), memory {hw.memory_bytes / 2**30:.1f} GiB"
    )
    curve = ", ".join(f"{int(x)}:{y:.2f}" for x, y in hw.flops_efficiency.points)
    out.print(f"η_F(tokens): {curve}")
    if hw.kind == "cpu":
        console.print("no GPU measured (torch with CUDA not available); this is the CPU")
    if busy:
        console.print(Text(busy, style="yellow"), soft_wrap=True)
    if output is not None:
        console.print(f"wrote {output}")
    if as_json:
        emit_json(hw.to_dict())


def _busy_before() -> str | None:
    """A warning when other work loads the CPUs as the profile starts, else None.

    What a busy machine leaves to the GEMMs is what the profile records: the committed
    CPU profile of issue 12, measured at load 12-15 on 2 cores, put the peak at 14.4
    GFLOP/s where the same machine idle measured 185.5, and a twin fitted from it had to
    push its FLOP/s scale against its bound. Measured before the profile's own threads
    start, so its own load does not count."""
    import os

    if not hasattr(os, "getloadavg"):
        return None
    load = os.getloadavg()[0]
    cpus = os.cpu_count() or 1
    if load <= cpus / 2:
        return None
    return (f"warning: load average {load:.1f} on {cpus} CPUs as the profile started: the figures are what "
            "other work left over; profile again on an idle machine")


def _list_presets(as_json: bool) -> None:
    from rich.table import Table

    from burstbench.backends.hardware.profile import list_hardware, load_hardware

    rows = []
    for preset in list_hardware():
        hw = load_hardware(preset)
        rows.append({
            "name": hw.name,
            "peak_tflops": hw.peak_flops / 1e12,
            "mem_bandwidth_tbps": hw.mem_bandwidth / 1e12,
            "memory_gib": hw.memory_bytes / 2**30,
            "link_gbps": hw.link_bandwidth / 1e9,
        })
    if as_json:
        emit_json({"hardware": rows})
        return
    table = Table("preset", "bf16 TFLOP/s", "HBM TB/s", "memory GiB", "link GB/s (eff.)")
    for r in rows:
        table.add_row(r["name"], f"{r['peak_tflops']:.0f}", f"{r['mem_bandwidth_tbps']:.2f}",
                      f"{r['memory_gib']:.1f}", f"{r['link_gbps']:.0f}")
    results_console().print(table)
