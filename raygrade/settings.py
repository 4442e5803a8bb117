"""Environment overrides of the application's arguments: ``RAYGRADE_ARGS__*`` (pydantic-settings).

A deployment switches provider, store or budgets without editing ``serve_config.yaml``
(KubeRay: the pods' ``env``); :func:`resolve_args` is what :func:`raygrade.app.build_app`
and ``jobs/regrade.py --serve-config`` validate their ``args`` with.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic_settings import BaseSettings, SettingsConfigDict

from raygrade.config import RaygradeArgs
from raygrade.errors import ConfigError

#: Prefix of environment variables that override ``args`` at build time (``__`` separates levels).
ARGS_ENV_PREFIX = "RAYGRADE_ARGS__"


class _ArgsFromEnv(BaseSettings):
    """``RAYGRADE_ARGS__<FIELD>[__<FIELD>…]`` environment variables as a nested dict (pydantic-settings)."""

    model_config = SettingsConfigDict(env_prefix=ARGS_ENV_PREFIX, env_nested_delimiter="__", extra="forbid")

    provider: dict[str, Any] | None = None
    local_engine: dict[str, Any] | None = None
    batcher: dict[str, Any] | None = None
    store: dict[str, Any] | None = None
    namespace: str | None = None
    deployment_options: dict[str, Any] | None = None


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def env_overrides() -> tuple[dict[str, Any], set[str]]:
    """The ``args`` overrides set in the environment.

    ``RAYGRADE_ARGS__PROVIDER='{"name": "openai", ...}'`` (JSON) replaces ``args.provider``
    as a whole; ``RAYGRADE_ARGS__PROVIDER__BASE_URL=http://vllm:8000/v1`` sets one field
    (after any replacement). Values are validated with the rest of the args (``"true"``,
    ``"4096"`` are coerced). Read with pydantic-settings (case-insensitive names).

    Returns:
        ``(overrides, replaced)``: a nested dict, and the top-level fields replaced whole.

    Raises:
        ConfigError: a variable names no field of :class:`RaygradeArgs`, or holds invalid JSON.
    """
    names = {k.upper() for k in os.environ if k.upper().startswith(ARGS_ENV_PREFIX)}
    if not names:
        return {}, set()
    try:
        over = _ArgsFromEnv().model_dump(exclude_none=True)
    except Exception as exc:  # pydantic ValidationError / SettingsError: name the variables, not their values
        raise ConfigError(f"invalid {ARGS_ENV_PREFIX}* environment override: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0]}", param="environment") from None
    replaced = {f for f in _ArgsFromEnv.model_fields if ARGS_ENV_PREFIX + f.upper() in names}
    return over, replaced


def resolve_args(args: RaygradeArgs | dict[str, Any] | None) -> RaygradeArgs:
    """Validate builder ``args`` (a dict from YAML, or a model) with environment overrides applied.

    Overrides (:func:`env_overrides`) go over ``args``, so a deployment can switch
    provider, store or budgets without editing ``serve_config.yaml`` (KubeRay: the pods'
    ``env``). Without any ``RAYGRADE_ARGS__*`` variable, ``args`` are used as given.

    Raises:
        pydantic.ValidationError: unknown or invalid fields.
        ConfigError: an invalid override variable.
    """
    over, replaced = env_overrides()
    if isinstance(args, RaygradeArgs):
        if not over:
            return args
        args = args.model_dump(exclude_unset=True)
    base = {k: v for k, v in (args or {}).items() if k not in replaced}
    return RaygradeArgs.model_validate(_deep_merge(base, over))
