"""The Serve application builder, referenced as ``raygrade.app:build_app``.

Graph::

    HTTP → RaygradeIngress ─→ JobRegistry ─→ JobStore (SQLite on the head node | PostgreSQL)
                         └─→ Batcher ─→ PageReader (OCR, text-only models)
                                    └─→ Grader ×N (autoscaling) ─→ TokenBucketActor (one, cluster-wide)
                                                                └─→ provider: hosted API | vLLM (GPU) |
                                                                    LocalVLLMServer (embedded CPU vLLM)

The same builder serves ``serve.run(build_app({...}))`` and ``serve_config.yaml``
(``import_path: raygrade.app:build_app`` + ``args:``), and so KubeRay's RayService.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from raygrade.config import RaygradeArgs
from raygrade.serve.batcher import Batcher
from raygrade.serve.engine import LocalVLLMServer
from raygrade.serve.grader import Grader
from raygrade.serve.ingress import RaygradeIngress
from raygrade.serve.job_registry import JobRegistry
from raygrade.serve.reader import PageReader


def build_app(args: RaygradeArgs | dict[str, Any] | None = None, *,
              deployment_options: dict[str, dict[str, Any]] | None = None) -> Application:
    """Build the raygrade Serve application.

    Args:
        args: :class:`RaygradeArgs` or its dict form (from YAML). ``None`` → defaults:
            OpenAI if ``OPENAI_API_KEY`` is set, else the embedded CPU vLLM.
        deployment_options: Per-deployment ``.options(...)`` from Python, e.g.
            ``{"Grader": {"autoscaling_config": {"min_replicas": 4, "max_replicas": 8}}}``
            (``serve_config.yaml`` does the same with its ``deployments:`` list).

    Raises:
        pydantic.ValidationError: unknown or invalid fields in ``args``.
        ValueError: ``deployment_options`` names an unknown deployment.
    """
    args = args if isinstance(args, RaygradeArgs) else RaygradeArgs.model_validate(args or {})
    opts = dict(deployment_options or {})
    deployments = {d.name: d for d in (LocalVLLMServer, JobRegistry, PageReader, Grader, Batcher, RaygradeIngress)}
    if unknown := set(opts) - set(deployments):
        raise ValueError(f"unknown deployments {sorted(unknown)}; known: {sorted(deployments)}")

    def dep(d):
        return d.options(**opts[d.name]) if d.name in opts else d

    engine = dep(LocalVLLMServer).bind(args.local_engine) if args.local_engine is not None else None
    registry_dep = JobRegistry
    if args.store.resolved_url().startswith("sqlite"):
        # The SQLite file lives on the head node: keep the store's only replica there.
        registry_dep = JobRegistry.options(ray_actor_options={"num_cpus": 0,
                                                              "resources": {"node:__internal_head__": 0.001}})
    registry = dep(registry_dep).bind(args.store, args.namespace)
    reader = dep(PageReader).bind()
    grader = dep(Grader).bind(args.provider, args.batcher, args.namespace, engine)
    batcher = dep(Batcher).bind(args, registry, reader, grader, engine)
    return dep(RaygradeIngress).bind(registry, batcher)
