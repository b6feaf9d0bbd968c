"""``burstbench profile``: measure this machine into a hardware profile JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from burstbench.errors import UsageError


@click.command("profile")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the profile JSON here (serve/simulate accept it with --hardware).")
@click.option("--quick", is_flag=True, help="Small sizes, about 2 s instead of about 20 s.")
@click.option("--name", default=None, help="Profile name (default: cpu-<arch>-<threads>t or the GPU name).")
@click.option("--json", "as_json", is_flag=True, help="Print the profile as one JSON object on stdout.")
def profile(output: Path | None, quick: bool, name: str | None, as_json: bool) -> None:
    """Measure GEMM throughput and memory bandwidth of this machine.

    Derives the efficiency curves the reference engine's cost model uses and writes a
    hardware profile JSON. On a machine with torch and a CUDA GPU the GPU is measured;
    otherwise the CPU (numpy). The machine should be otherwise idle.

    \b
    Example:
      burstbench profile -o myhost.json
      burstbench simulate trace.parquet --model llama-3.1-8b --hardware myhost.json -o r.duckdb
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from burstbench.backends.hardware.profiler import profile_machine

    if output is not None:
        if output.exists() and output.is_dir():
            raise UsageError(f"-o {output}: is a directory; give a file name")
        if not output.parent.exists():
            raise UsageError(f"-o {output}: folder {output.parent} does not exist")
    console = Console(stderr=True)
    with Progress(
        TextColumn("[bold]profile[/]"),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("starting", total=1.0)
        phase = {"gemm": 0.0, "bw": 0.0}

        def progress(desc: str, frac: float) -> None:
            key = "bw" if desc.startswith("bandwidth") else "gemm"
            phase[key] = frac
            bar.update(task, description=desc, completed=0.6 * phase["gemm"] + 0.4 * phase["bw"])

        hw = profile_machine(quick=quick, name=name, progress=progress)
    if output is not None:
        try:
            hw.write(output)
        except OSError as exc:
            raise UsageError(f"-o {output}: cannot write ({exc.strerror}); choose another path") from exc
    console.print(
        f"[bold]{hw.name}[/] ({hw.kind}): peak {hw.peak_flops / 1e9:.1f} GFLOP/s, "
        f"memory bandwidth {hw.mem_bandwidth / 1e9:.1f} GB/s "
        f"(η_B {hw.bandwidth_efficiency(1):.2f}), memory {hw.memory_bytes / 2**30:.1f} GiB"
    )
    curve = ", ".join(f"{int(x)}:{y:.2f}" for x, y in hw.flops_efficiency.points)
    console.print(f"η_F(tokens): {curve}")
    if hw.kind == "cpu":
        console.print("no GPU measured (torch with CUDA not available); this is the CPU")
    if output is not None:
        console.print(f"wrote {output}")
    if as_json:
        sys.stdout.write(json.dumps(hw.to_dict()) + "\n")
