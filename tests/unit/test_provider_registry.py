"""The provider seam: every kind has its traits and (when it calls a model) its adapter, and no
code outside the registry and the config picks behaviour by comparing ``kind`` strings."""

import ast
import typing
from pathlib import Path

import pytest
from support.source import parse_source

from raygrade.config import ProviderConfig, RaygradeArgs, default_batcher, reference_similarity_provider
from raygrade.config.provider import PROVIDER_KINDS, ProviderKind
from raygrade.errors import ConfigError
from raygrade.providers.openai_compat import OpenAICompatibleProvider
from raygrade.providers.registry import ADAPTERS, build_chat_provider, check_on_start
from raygrade.testing.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
#: The two places allowed to name provider kinds in comparisons.
OWNERS = {ROOT / "raygrade" / "config" / "provider.py", ROOT / "raygrade" / "providers" / "registry.py"}


def test_every_kind_has_traits_and_every_model_kind_an_adapter():
    kinds = set(typing.get_args(ProviderKind))
    assert set(PROVIDER_KINDS) == kinds
    assert set(ADAPTERS) == {k for k in kinds if PROVIDER_KINDS[k].calls_model}


def test_no_kind_branches_outside_the_registry():
    kinds = set(typing.get_args(ProviderKind))
    found = []
    for path in [*ROOT.glob("raygrade/**/*.py"), *ROOT.glob("jobs/*.py"), *ROOT.glob("benchmarks/*.py")]:
        if path in OWNERS:
            continue
        for node in ast.walk(parse_source(path)):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            names_kind = any(isinstance(s, ast.Attribute) and s.attr == "kind" for s in sides)
            consts = {c.value for s in sides for c in ast.walk(s) if isinstance(c, ast.Constant)}
            if names_kind and consts & kinds:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, f"branch on a provider kind outside the registry: {found}"


def test_adapters_by_kind(monkeypatch):
    monkeypatch.setenv("RG_TEST_KEY", "sk-x")
    hosted = ProviderConfig(api_key_env="RG_TEST_KEY", base_url="http://127.0.0.1:9/v1")
    assert isinstance(build_chat_provider(hosted), OpenAICompatibleProvider)
    remote_vllm = ProviderConfig(kind="local_vllm", base_url="http://127.0.0.1:9/v1", api_key_env=None,
                                 model="m")
    assert not remote_vllm.served_in_app and isinstance(build_chat_provider(remote_vllm), OpenAICompatibleProvider)
    with pytest.raises(ConfigError, match="deployment handle"):
        build_chat_provider(ProviderConfig(kind="serve_llm", model="m", api_key_env=None))
    with pytest.raises(ConfigError, match="calls no model"):
        build_chat_provider(reference_similarity_provider())
    monkeypatch.delenv("RG_TEST_KEY")
    with pytest.raises(ConfigError, match="RG_TEST_KEY is not set"):
        build_chat_provider(hosted)


def test_the_start_up_check_runs_only_where_the_kind_has_one_and_it_is_on(monkeypatch):
    monkeypatch.setenv("RG_TEST_KEY", "sk-x")
    down = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ConfigError, match="cannot be reached"):
        check_on_start(ProviderConfig(api_key_env="RG_TEST_KEY", base_url=down))
    check_on_start(ProviderConfig(api_key_env="RG_TEST_KEY", base_url=down, check_on_start=False))
    check_on_start(ProviderConfig(kind="local_vllm", base_url=down, api_key_env=None, model="m"))  # no check
    check_on_start(reference_similarity_provider())


def test_kind_traits_drive_the_config():
    assert default_batcher(reference_similarity_provider()).max_students_per_request == 64
    embedded = RaygradeArgs()  # no OPENAI_API_KEY in the unit tier's environment: the embedded model
    if embedded.provider.kind == "local_vllm":
        assert embedded.provider.embedded and embedded.batcher.completion_tokens_per_item == 256
    with pytest.raises(ValueError, match="needs api_key_env"):
        ProviderConfig(api_key_env=None)
    with pytest.raises(ValueError, match="'serve_llm' names model 'x'"):
        RaygradeArgs(provider=ProviderConfig(kind="serve_llm", model="x", api_key_env=None))
