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
    assert args.provider == local_vllm_provider(args.local_engine)
    names = {d["name"] for d in app["deployments"]}
    assert names <= {"RaygradeIngress", "Batcher", "Grader", "PageReader", "JobRegistry", "LocalVLLMServer"}
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
