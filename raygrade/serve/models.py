"""The application's model deployments: one ``LLMServer`` (Ray's LLM serving library) per
self-hosted model, and for the embedded default an :class:`~raygrade.serve.embedded.EmbeddedLLMServer`.

Used by :func:`raygrade.app.build_app` and by ``jobs/regrade.py`` (which deploys the model
itself when no raygrade application runs on its cluster).
"""

from __future__ import annotations

from typing import Any

from raygrade.config import RaygradeArgs
from raygrade.selfhosted import import_serve_llm


def model_deployments(args: RaygradeArgs) -> dict[str, Any]:
    """``{model_id: bound LLMServer deployment}`` for every model ``args`` serves.

    Needs a Ray connection (Ray's builder reads the job's runtime environment).

    Raises:
        MissingDependencyError: Ray's LLM library or vLLM is not installed here.
    """
    engine = args.embedded_engine
    out: dict[str, Any] = {}
    for m in args.served_models():
        if engine is not None and m.model_id == engine.served_model_name:
            # The replica first writes the packaged model's folder on its own node.
            import_serve_llm()  # first, so that importing the server class leaves the caller's logging alone
            from raygrade.serve.embedded import EmbeddedLLMServer

            out[m.model_id] = m.deployment(server_cls=EmbeddedLLMServer, bind_kwargs={"engine": engine})
        else:
            out[m.model_id] = m.deployment()
    return out


def provider_model(args: RaygradeArgs) -> Any:
    """The :class:`~raygrade.selfhosted.ServedModelConfig` the provider grades with, or ``None``
    when the provider is not served in the application."""
    if not args.provider.served_in_app:
        return None
    return next(m for m in args.served_models() if m.model_id == args.provider.model)
