"""Configuration models (pydantic v2, unknown fields forbidden, loadable from YAML).

:class:`RaygradeArgs` is what :func:`raygrade.app.build_app` takes, i.e. the
``args:`` block of an application in ``serve_config.yaml``. Providers are in
:mod:`raygrade.config.provider`, their rate limits in :mod:`raygrade.config.rate_limit`, the
application's settings and presets in :mod:`raygrade.config.app`, self-hosted models in
:mod:`raygrade.selfhosted`.
"""

from raygrade.config.api import DEFAULT_TENANT, ApiConfig
from raygrade.config.app import (
    BatcherConfig,
    RaygradeArgs,
    StoreConfig,
    default_batcher,
    default_provider,
    default_store_url,
    local_vllm_batcher,
    local_vllm_provider,
    reference_similarity_provider,
)
from raygrade.config.provider import ImageTokenRule, ProviderConfig, RateLimitConfig
from raygrade.selfhosted import LocalEngineConfig, ServedModelConfig

__all__ = ["DEFAULT_TENANT", "ApiConfig", "BatcherConfig", "ImageTokenRule", "LocalEngineConfig", "ProviderConfig",
           "RateLimitConfig", "RaygradeArgs", "ServedModelConfig", "StoreConfig", "default_batcher", "default_provider",
           "default_store_url", "local_vllm_batcher", "local_vllm_provider", "reference_similarity_provider"]
