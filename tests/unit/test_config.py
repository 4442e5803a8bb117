"""serve_config.yaml and the builder args stay in sync with the config models."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from raygrade.config import ProviderConfig, RaygradeArgs, default_provider, local_vllm_provider

ROOT = Path(__file__).resolve().parents[2]


def test_serve_config_args_validate_and_match_the_embedded_default():
    cfg = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    app = cfg["applications"][0]
    assert app["import_path"] == "raygrade.app:build_app"
    args = RaygradeArgs.model_validate(app["args"])
    assert args.provider == RaygradeArgs(provider=local_vllm_provider(args.local_engine)).provider
    names = {d["name"] for d in app["deployments"]}
    assert names <= {"RaygradeIngress", "Batcher", "Grader", "PageReader", "JobRegistry"}
    assert cfg["http_options"]["host"] == "127.0.0.1"


def test_unknown_fields_are_rejected():
    with pytest.raises(ValidationError):
        RaygradeArgs.model_validate({"provider": {"modle": "x"}})


def test_default_provider_without_key_is_local_vllm(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    p = default_provider()
    assert p.kind == "local_vllm" and not p.supports_vision
    assert RaygradeArgs().local_engine is not None


def test_default_provider_with_key_is_hosted(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    p = default_provider()
    assert p.kind == "openai_compatible" and p.api_key().get_secret_value() == "sk-x"
    assert "sk-x" not in repr(p.api_key()) and RaygradeArgs().local_engine is None


def test_hosted_provider_without_key_fails_clearly(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    from raygrade.errors import ConfigError

    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        ProviderConfig().api_key()


def test_a_named_key_variable_that_is_unset_fails_for_any_endpoint(monkeypatch):
    from raygrade.errors import ConfigError

    monkeypatch.delenv("ROUTER_KEY", raising=False)
    p = ProviderConfig(base_url="https://openrouter.ai/api/v1", api_key_env="ROUTER_KEY")
    with pytest.raises(ConfigError, match="ROUTER_KEY"):
        p.api_key()
    assert ProviderConfig(base_url="http://vllm:8000/v1", api_key_env=None).api_key().get_secret_value() == "EMPTY"


def test_the_embedded_default_is_a_self_hosted_model_on_one_cpu_bundle(monkeypatch):
    """The embedded default deploys like any self-hosted model (ray.serve.llm, handle-called), on one
    CPU bundle the replica shares with its engine, with its own budget in the limiter."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    from raygrade.engine.local_vllm import model_dir

    args = RaygradeArgs()
    assert args.provider.served_in_app and args.embedded_engine is not None
    (model,) = args.served_models()
    assert model.model_id == args.provider.model == "smollm2-135m-instruct" and model.device == "cpu"
    assert model.model_source == str(model_dir(args.embedded_engine)) == args.provider.tokenizer_path
    assert model.deployment_name == "raygrade:smollm2-135m-instruct"
    assert args.provider.rate_limit.max_concurrent_requests == model.target_ongoing_requests
    cfg = model.llm_config()  # Ray's LLMConfig: built without Ray running
    assert cfg.placement_group_config == {"bundles": [{"CPU": 1.0}]}
    assert cfg.deployment_config["ray_actor_options"] == {"num_cpus": 0}
    assert cfg.engine_kwargs["max_model_len"] == 4096 and cfg.runtime_env["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "1"


def test_the_embedded_provider_and_engine_must_name_the_same_model(monkeypatch):
    provider = local_vllm_provider()
    with pytest.raises(ValidationError, match="local_engine serves"):
        RaygradeArgs(provider=provider, local_engine={"served_model_name": "other"})
    # a vLLM server at a URL is not the embedded model: nothing is deployed for it
    remote = RaygradeArgs(provider=provider.model_copy(update={"base_url": "http://vllm:8000/v1"}))
    assert not remote.provider.served_in_app and remote.served_models() == []
    # a self-hosted model may not take the embedded model's id
    with pytest.raises(ValidationError, match="unique"):
        RaygradeArgs(provider=provider, models=[{"model_id": provider.model, "model_source": "/m", "device": "cpu"}])


def test_building_a_served_models_config_leaves_the_callers_logging_alone():
    """Importing Ray's LLM library reconfigures the root logger (JSON at INFO); a driver such as
    `raygrade demo` keeps its own (checked in a fresh process: the library does it once)."""
    import subprocess
    import sys

    code = ("import logging, sys; logging.basicConfig(level=logging.WARNING, stream=sys.stdout); "
            "h = logging.getLogger().handlers[:]; "
            "from raygrade.engine.local_vllm import embedded_model; from raygrade.config import LocalEngineConfig; "
            "embedded_model(LocalEngineConfig()).llm_config(); import ray.serve.llm.deployment; "
            "r = logging.getLogger(); print(r.level, r.handlers == h)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "30 True", out.stderr[-2000:]
