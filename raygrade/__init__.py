"""raygrade: a grading cluster on Ray.

What users import is here (loaded on first use, so ``import raygrade`` stays light):

- the HTTP API's clients: :class:`Client`, :class:`AsyncClient` (and their transport errors);
- the Serve application: :func:`build_app` (``serve_config.yaml``'s ``raygrade.app:build_app``)
  and its arguments :class:`RaygradeArgs`, :class:`ProviderConfig`, :class:`RateLimitConfig`,
  :class:`BatcherConfig`, :class:`StoreConfig`;
- bulk regrades: :func:`run_regrade`, :class:`RegradeConfig`;
- the wire types of :mod:`raygrade.protocol` (:class:`GradingJob`, :class:`JobStatus`, …);
- the exception tree of :mod:`raygrade.errors` (:class:`RaygradeError` and its subclasses).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("Client", "AsyncClient", "APIConnectionError", "APIStatusError"), "raygrade.client"),
    "build_app": "raygrade.app",
    **dict.fromkeys(("RaygradeArgs", "ProviderConfig", "RateLimitConfig", "BatcherConfig", "StoreConfig"),
                    "raygrade.config"),
    **dict.fromkeys(("RegradeConfig", "RegradeSummary", "run_regrade"), "raygrade.bulk"),
    **dict.fromkeys(("Assessment", "Question", "Submission", "GradingJob", "JobOptions", "JobState", "JobStatus",
                     "JobResults", "GradeResult", "GradingErrorItem", "ImagePage", "TextPage", "ReviewItem",
                     "ReviewList", "TeacherReview"), "raygrade.protocol"),
    **dict.fromkeys(("RaygradeError", "ConfigError", "MissingDependencyError", "InvalidRequestError", "NotFoundError",
                     "ConflictError", "StorageError", "ProviderError", "RateLimitedError"), "raygrade.errors"),
}
__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "Assessment",
    "AsyncClient",
    "BatcherConfig",
    "Client",
    "ConfigError",
    "ConflictError",
    "GradeResult",
    "GradingErrorItem",
    "GradingJob",
    "ImagePage",
    "InvalidRequestError",
    "JobOptions",
    "JobResults",
    "JobState",
    "JobStatus",
    "MissingDependencyError",
    "NotFoundError",
    "ProviderConfig",
    "ProviderError",
    "Question",
    "RateLimitConfig",
    "RateLimitedError",
    "RaygradeArgs",
    "RaygradeError",
    "RegradeConfig",
    "RegradeSummary",
    "ReviewItem",
    "ReviewList",
    "StorageError",
    "StoreConfig",
    "Submission",
    "TeacherReview",
    "TextPage",
    "build_app",
    "run_regrade",
]

if TYPE_CHECKING:
    from raygrade.app import build_app
    from raygrade.bulk import RegradeConfig, RegradeSummary, run_regrade
    from raygrade.client import APIConnectionError, APIStatusError, AsyncClient, Client
    from raygrade.config import BatcherConfig, ProviderConfig, RateLimitConfig, RaygradeArgs, StoreConfig
    from raygrade.errors import (
        ConfigError,
        ConflictError,
        InvalidRequestError,
        MissingDependencyError,
        NotFoundError,
        ProviderError,
        RateLimitedError,
        RaygradeError,
        StorageError,
    )
    from raygrade.protocol import (
        Assessment,
        GradeResult,
        GradingErrorItem,
        GradingJob,
        ImagePage,
        JobOptions,
        JobResults,
        JobState,
        JobStatus,
        Question,
        ReviewItem,
        ReviewList,
        Submission,
        TeacherReview,
        TextPage,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'raygrade' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return [*__all__, "__version__"]
