"""The README's tour, executed: every fenced bash block after a ``<!-- tour -->`` line, in
order, as one bash script in an empty directory, against the servers the tour starts itself.

Why one script: the tour is written for one shell (``$T``, ``$URL`` and the run ids carry
from block to block), so it runs the way a reader pastes it. The only change is ``$PORT``,
set to a free port so the tour's servers cannot collide with anything on 8000. The script
runs in its own process group, which the test kills at the end, so a server the tour started
is stopped even when a step fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MARK = "<!-- tour -->"
TOUR_TIMEOUT_S = 600  # the tour takes ~3 min on two busy cores; this only bounds a hang

pytestmark = pytest.mark.slow


def tour_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, body) of each ```bash block whose previous non-blank line is the mark."""
    lines = text.splitlines()
    out = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            prev = next((ln.strip() for ln in reversed(lines[:i]) if ln.strip()), "")
            j = next(k for k in range(i + 1, len(lines)) if lines[k].strip() == "```")
            if prev == MARK:
                out.append((i + 1, "\n".join(lines[i + 1:j])))
            i = j
        i += 1
    return out


def test_the_marks_pick_the_tour_and_nothing_after_development():
    text = README.read_text(encoding="utf-8")
    blocks = tour_blocks(text)
    assert len(blocks) >= 6 and text.count(MARK) - text.count(f"`{MARK}`") == len(blocks)
    dev = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith("## Development"))
    tour = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith("## A tour"))
    assert all(tour < line < dev for line, _ in blocks)
    # the tour names no file it does not make or find through `burstbench trace examples`
    body = "\n".join(b for _, b in blocks)
    assert "burstbench/data" not in body
    first_serve = body.index("burstbench serve")
    assert body.index("burstbench run") > first_serve


def test_trace_examples_prints_the_folder_of_the_shipped_samples():
    from click.testing import CliRunner

    from burstbench.cli import root

    res = CliRunner().invoke(root, ["trace", "examples"])
    assert res.exit_code == 0
    folder = Path(res.output.strip())
    assert folder.is_absolute() and (folder / "README.md").is_file()
    names = {p.name for p in folder.iterdir()}
    # every sample the tour reads is there
    tour = "\n".join(b for _, b in tour_blocks(README.read_text(encoding="utf-8")))
    assert set(re.findall(r"\$T/([\w.]+)", tour)) <= names


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _repo_state() -> set[str]:
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return set(out.splitlines())


def test_the_tour_runs_as_written_in_an_empty_directory(tmp_path):
    script = "set -euo pipefail\n" + "\n".join(
        f"# README.md:{line}\n{body}" for line, body in tour_blocks(README.read_text(encoding="utf-8")))
    work = tmp_path / "tour"
    work.mkdir()
    env = {**os.environ, "PORT": str(_free_port()),
           # the burstbench of this interpreter, as a reader's activated virtual environment gives
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    before = _repo_state()
    # output to a file, not a pipe: a server left behind by a failed step would hold a pipe open
    with open(tmp_path / "tour.log", "w") as log:
        proc = subprocess.Popen(["bash", "-c", script], cwd=work, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=TOUR_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the tour's servers, if a step failed before its kill
            proc.wait()
    out = (tmp_path / "tour.log").read_text(errors="replace")
    tail = "\n".join(re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", out).splitlines()[-40:])
    assert proc.returncode == 0, f"the tour stopped (exit {proc.returncode}):\n{tail}"
    made = {p.name for p in work.iterdir()}
    assert {"report.html", "twin-report.html", "twin.yaml", "results.duckdb"} <= made, made
    assert (work / "report.html").stat().st_size > 100_000
    assert _repo_state() == before  # nothing written into the repository
