"""Self-hosted model settings (no Ray, no vLLM): what ``args.models`` accepts and refuses."""

import json

import pytest
from pydantic import ValidationError

from raygrade.config import RaygradeArgs
from raygrade.selfhosted import ServedModelConfig

SERVE_LLM = {"kind": "serve_llm", "model": "vlm", "api_key_env": None, "supports_vision": True,
             "image_token_rule": "qwen2-vl", "check_on_start": False}


def test_a_serve_llm_provider_must_name_a_configured_model():
    args = RaygradeArgs.model_validate({"provider": SERVE_LLM, "models": [{"model_id": "vlm", "model_source": "/m"}]})
    assert args.models[0].device == "gpu" and args.models[0].min_replicas == 1
    with pytest.raises(ValidationError, match="not among models"):
        RaygradeArgs.model_validate({"provider": SERVE_LLM, "models": [{"model_id": "other", "model_source": "/m"}]})
    with pytest.raises(ValidationError, match="unique"):
        RaygradeArgs.model_validate({"provider": SERVE_LLM, "models": [{"model_id": "vlm", "model_source": "/a"},
                                                                       {"model_id": "vlm", "model_source": "/b"}]})


@pytest.mark.parametrize("bad, match", [
    ({"min_replicas": 3, "max_replicas": 2}, "min_replicas"),
    ({"device": "cpu", "accelerator_type": "H100"}, "accelerator_type"),
    ({"gpus_per_replica": 0}, "greater than or equal"),
    ({"engine_kwargs": {"dtype": "native"}}, "device 'cpu' only"),
    ({"unknown": 1}, "Extra inputs"),
])
def test_model_settings_are_checked(bad, match):
    with pytest.raises(ValidationError, match=match):
        ServedModelConfig.model_validate({"model_id": "m", "model_source": "/m", **bad})


def test_a_self_hosted_model_gets_its_capacity_as_its_budget():
    models = [{"model_id": "vlm", "model_source": "/m", "max_replicas": 3, "target_ongoing_requests": 8}]
    args = RaygradeArgs.model_validate({"provider": SERVE_LLM, "models": models})
    assert args.provider.rate_limit.max_concurrent_requests == 24
    explicit = {**SERVE_LLM, "rate_limit": {"max_concurrent_requests": 5}}
    assert RaygradeArgs.model_validate({"provider": explicit, "models": models}
                                       ).provider.rate_limit.max_concurrent_requests == 5


def test_self_hosted_models_get_whitespace_free_structured_output_unless_they_say_otherwise():
    """A small model on CPU padded schema-constrained JSON with whitespace until max_tokens; every
    self-hosted model now defaults to xgrammar without free whitespace, online and in vllm-batch."""
    from raygrade.selfhosted import STRUCTURED_OUTPUTS, ServedModelConfig

    m = ServedModelConfig(model_id="m", model_source="/m", device="cpu")
    cmd = m.batch_command("in.jsonl", "out.jsonl")
    assert json.loads(cmd[cmd.index("--structured-outputs-config") + 1]) == STRUCTURED_OUTPUTS
    own = ServedModelConfig(model_id="m", model_source="/m", device="cpu",
                            engine_kwargs={"structured_outputs_config": {"backend": "guidance"}})
    cmd = own.batch_command("in.jsonl", "out.jsonl")
    assert json.loads(cmd[cmd.index("--structured-outputs-config") + 1]) == {"backend": "guidance"}


AVX2_EPYC = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx f16c fma avx2 bmi2 sha_ni\n"
AVX512 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_vnni\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"
ARM_OLD = "processor\t: 0\nFeatures\t: fp asimd crc32\n"


@pytest.mark.parametrize("cpuinfo, machine, dtype", [
    (AVX2_EPYC, "x86_64", "float32"),  # bfloat16 emulated: 4-6x slower here (measured)
    (AVX512, "x86_64", "bfloat16"),
    (ARM_BF16, "aarch64", "bfloat16"),
    (ARM_OLD, "aarch64", "float32"),
    (AVX512, "ppc64le", "auto"),
])
def test_the_native_cpu_dtype_follows_the_cpus_flags(cpuinfo, machine, dtype):
    from raygrade.selfhosted import native_cpu_dtype

    assert native_cpu_dtype(cpuinfo, machine) == dtype


def test_cpu_models_run_in_their_native_dtype_unless_they_name_one(monkeypatch):
    """vLLM's ``auto`` would take bfloat16 on every x86 CPU; a CPU model without a ``dtype`` gets
    the one its CPU computes natively, online and in vllm-batch; a GPU model is left to vLLM."""
    import raygrade.selfhosted as selfhosted

    monkeypatch.setattr(selfhosted, "native_cpu_dtype", lambda: "float32")
    cmd = ServedModelConfig(model_id="m", model_source="/m", device="cpu").batch_command("in", "out")
    assert cmd[cmd.index("--dtype") + 1] == "float32"
    named = ServedModelConfig(model_id="m", model_source="/m", device="cpu", engine_kwargs={"dtype": "bfloat16"})
    cmd = named.batch_command("in", "out")
    assert cmd[cmd.index("--dtype") + 1] == "bfloat16"
    assert "--dtype" not in ServedModelConfig(model_id="m", model_source="/m").batch_command("in", "out")
    assert selfhosted.resolve_dtype({"dtype": "native", "max_model_len": 8}) == {"dtype": "float32", "max_model_len": 8}
    assert selfhosted.LocalEngineConfig().dtype == "native"


def test_the_embedded_engine_keeps_a_dtype_named_in_its_engine_kwargs():
    """``local_engine.engine_kwargs.dtype`` wins over ``local_engine.dtype`` in the deployment and on
    the replica (which resolves ``native`` again only when that is what was asked)."""
    from raygrade.engine.local_vllm import embedded_model
    from raygrade.selfhosted import LocalEngineConfig

    named = LocalEngineConfig(engine_kwargs={"dtype": "bfloat16"})
    assert named.engine_dtype == "bfloat16" and embedded_model(named).engine_kwargs["dtype"] == "bfloat16"
    assert LocalEngineConfig().engine_dtype == "native" == embedded_model(LocalEngineConfig()).engine_kwargs["dtype"]
    assert LocalEngineConfig(dtype="float32").engine_dtype == "float32"
