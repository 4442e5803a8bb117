"""The Serve application builder, referenced as ``raygrade.app:build_app``.

Graph::

    HTTP → RaygradeIngress ─→ JobRegistry ─→ JobStore (SQLite on the head node | PostgreSQL)
                         └─→ Batcher ─→ PageReader (OCR, text-only models)
                                    └─→ Grader ×N (autoscaling) ─→ RateLimiterActor (one, cluster-wide)
                                                                └─→ provider: hosted API | vLLM server |
                                                                    LLMServer ×M (ray.serve.llm, via handle:
                                                                    args.models on GPU or CPU nodes, or the
                                                                    embedded default on one CPU bundle)

The same builder serves ``serve.run(build_app({...}))`` and ``serve_config.yaml``
(``import_path: raygrade.app:build_app`` + ``args:``), and so KubeRay's RayService.
"""

from __future__ import annotations

from typing import Any, cast

from ray.serve import Application
from ray.serve.deployment import Deployment

from raygrade.blobs import is_local
from raygrade.config import RaygradeArgs
from raygrade.serve.batcher import Batcher
from raygrade.serve.grader import Grader
from raygrade.serve.ingress import RaygradeIngress
from raygrade.serve.job_registry import JobRegistry
from raygrade.serve.models import model_deployments
from raygrade.serve.reader import PageReader
from raygrade.settings import resolve_args


def build_app(args: RaygradeArgs | dict[str, Any] | None = None) -> Application:
    """Build the raygrade Serve application (Serve's one-parameter builder contract).

    ``serve run serve_config.yaml`` / ``serve deploy`` call it with the application's
    ``args:`` dict; Python callers pass a dict or :class:`RaygradeArgs`. Environment
    variables ``RAYGRADE_ARGS__…`` override fields at build time
    (:func:`raygrade.settings.resolve_args`).

    Args:
        args: :class:`RaygradeArgs` or its dict form. ``None`` → defaults: OpenAI if
            ``OPENAI_API_KEY`` is set, else the embedded model on CPU. Per-deployment options
            from Python go in ``args.deployment_options``.

    With self-hosted models (``args.models``, or the embedded default), Ray's LLM builder
    reads the job's runtime environment: called outside a Ray driver, it starts a local Ray.

    Raises:
        pydantic.ValidationError: unknown or invalid fields in ``args``.
        ConfigError: an invalid ``RAYGRADE_ARGS__*`` variable.
        ValueError: ``deployment_options`` names an unknown deployment.
    """
    args = resolve_args(args)
    opts = args.deployment_options
    all_deployments = cast(tuple[Deployment, ...], (JobRegistry, PageReader, Grader, Batcher, RaygradeIngress))
    deployments = {d.name: d for d in all_deployments}
    if unknown := set(opts) - set(deployments):
        raise ValueError(f"unknown deployments {sorted(unknown)}; known: {sorted(deployments)}")

    def dep(d):
        return d.options(**opts[d.name]) if d.name in opts else d

    registry_dep, batcher_dep, ingress_dep = cast(tuple[Deployment, Deployment, Deployment],
                                                  (JobRegistry, Batcher, RaygradeIngress))
    on_head = {"num_cpus": 0, "resources": {"node:__internal_head__": 0.001}}
    if args.store.resolved_url().startswith("sqlite"):
        # The SQLite file lives on the head node: keep the store's only replica there.
        registry_dep = JobRegistry.options(ray_actor_options=on_head)
    else:
        # PostgreSQL serialises nothing the store's compare-and-swap writes need: scale out.
        registry_dep = JobRegistry.options(num_replicas=2)
    if is_local(args.store.resolved_blob_uri()):
        # Page images in a folder on the head node: the ingress writes them, the batcher reads them.
        batcher_dep, ingress_dep = (d.options(ray_actor_options=on_head)
                                    for d in cast(tuple[Deployment, ...], (Batcher, RaygradeIngress)))
    registry = dep(registry_dep).bind(args.store, args.namespace)
    reader = dep(PageReader).bind()
    # Self-hosted models (and the embedded default) on Ray's LLM serving library: one LLMServer
    # deployment each; graders get their handles (Serve routes to a replica on any node).
    models = model_deployments(args)  # {} without served models (Ray's LLM library is not imported then)
    grader_d = dep(Grader)
    grader = grader_d.bind(args.provider, args.batcher, args.namespace, models)
    batcher = dep(batcher_dep).bind(args, registry, reader, grader, grader_d.max_ongoing_requests)
    return dep(ingress_dep).bind(registry, batcher, args.store, args.api, args.namespace, args)


def __getattr__(name: str) -> Application:
    """``raygrade.app:app``: the application on its defaults (and environment overrides),
    built on first access, for ``serve build raygrade.app:app`` and ``serve run raygrade.app:app``."""
    if name == "app":
        return build_app(None)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
