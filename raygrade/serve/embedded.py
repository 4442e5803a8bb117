"""``EmbeddedLLMServer``: Ray's ``LLMServer`` for the embedded default model.

The same deployment as any self-hosted model (:mod:`raygrade.selfhosted`), with one step
first: the replica converts the packaged model into its folder on *its own* node
(:func:`raygrade.engine.local_vllm.prepare_model`, cached), so the folder need not exist on
the node that built the application, and a replica placed on a fresh worker node works; and
the weights' dtype is the one *its* CPU computes natively (:func:`raygrade.selfhosted.native_cpu_dtype`).

Imported only when the application deploys the embedded model: importing Ray's LLM serving
library loads vLLM.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray.serve.llm.deployment import LLMServer

from raygrade.engine.local_vllm import prepare_model
from raygrade.selfhosted import NATIVE_DTYPE, LocalEngineConfig, native_cpu_dtype

# A child of Serve's logger: lines go to the replica's log file in the app's logging_config format.
logger = logging.getLogger(f"ray.serve.{__name__}")


class EmbeddedLLMServer(LLMServer):
    """An ``LLMServer`` whose model folder is written on the replica's node before vLLM starts.

    Args:
        llm_config: The model's ``LLMConfig`` (``model_source`` = the folder to fill).
        engine: The embedded engine's settings (which package, which cache folder).
        **kwargs: ``LLMServer``'s own keyword arguments.
    """

    async def __init__(self, llm_config: Any, *, engine: LocalEngineConfig, **kwargs: Any):  # type: ignore[misc]
        folder = await asyncio.to_thread(prepare_model, engine)
        if engine.engine_dtype == NATIVE_DTYPE:  # this node's CPU, not the one that built the application
            llm_config.update_engine_kwargs(dtype=native_cpu_dtype())
        logger.info("embedded model ready at %s; starting vLLM in %s", folder, llm_config.engine_kwargs.get("dtype"))
        await super().__init__(llm_config, **kwargs)
