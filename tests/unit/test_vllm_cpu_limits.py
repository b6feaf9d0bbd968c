"""``vllm-cpu serve``'s KV and scheduler limits: passed to vLLM, refused early when vLLM would refuse.

vLLM takes ~30 s to start before it rejects a KV cache too small for one request of
``--max-model-len``; the CLI says so at once, in one line, without starting anything.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from burstbench.errors import UsageError
from burstbench.testing.vllm_cpu import BLOCK_SIZE, VllmServer, check_limits


def test_limits_reach_vllms_command_line(tmp_path: Path) -> None:
    cmd = VllmServer(env=tmp_path, model=tmp_path, num_gpu_blocks=17, max_num_seqs=16,
                     max_num_batched_tokens=1024).command()
    for flag, value in (("--num-gpu-blocks-override", "17"), ("--max-num-seqs", "16"),
                        ("--max-num-batched-tokens", "1024"), ("--block-size", str(BLOCK_SIZE))):
        assert cmd[cmd.index(flag) + 1] == value
    assert "--num-gpu-blocks-override" not in VllmServer(env=tmp_path, model=tmp_path).command()


def test_a_cache_that_cannot_hold_one_request_is_refused() -> None:
    check_limits(1024, 9)  # 8 usable blocks of 128 tokens hold 1024
    with pytest.raises(UsageError, match="use at least 9"):
        check_limits(1024, 8)
    with pytest.raises(UsageError, match="--max-num-batched-tokens"):
        check_limits(1024, None, max_num_seqs=64, max_num_batched_tokens=32)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    p = subprocess.run([sys.executable, "-m", "burstbench", "vllm-cpu", "serve", "--num-gpu-blocks", "5",
                        "--max-model-len", "1024", "--env", "/nonexistent-env"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode != 0
    assert p.stderr.strip().count("\n") == 0 and "--num-gpu-blocks 5" in p.stderr and "at least 9" in p.stderr
