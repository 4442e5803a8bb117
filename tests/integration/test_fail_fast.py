"""A provider that cannot work fails the deployment (and a bulk regrade) at start, with its
message, instead of failing every job: missing key, rejected key, unreachable endpoint,
unknown model. Errors raised inside grader replicas reach job errors with their type."""

import uuid

import pytest

from raygrade.config import ApiConfig, RaygradeArgs
from raygrade.errors import ConfigError
from raygrade.providers.openai_compat import check_provider
from raygrade.testing.fake_openai import fake_provider_config
from raygrade.testing.ports import free_port


def test_check_provider_passes_a_working_provider(fake):
    check_provider(fake_provider_config(fake.base_url))


@pytest.mark.parametrize("overrides, message", [
    ({"model": "gpt-nope"}, "model .gpt-nope. is not served at .*it lists: fake-grader"),
    ({"api_key_env": "RAYGRADE_TEST_WRONG_KEY"}, "rejected the API key from RAYGRADE_TEST_WRONG_KEY .HTTP 401"),
])
def test_check_provider_names_the_problem(fake, monkeypatch, overrides, message):
    monkeypatch.setenv("RAYGRADE_TEST_WRONG_KEY", "sk-not-this-one")
    with pytest.raises(ConfigError, match=message) as err:
        check_provider(fake_provider_config(fake.base_url, **overrides))
    assert "sk-not-this-one" not in err.value.message


def test_check_provider_unreachable_and_missing_key(monkeypatch):
    with pytest.raises(ConfigError, match="cannot be reached"):
        check_provider(fake_provider_config(f"http://127.0.0.1:{free_port()}/v1"), timeout_s=3)
    monkeypatch.delenv("RAYGRADE_TEST_UNSET_KEY", raising=False)
    hosted = fake_provider_config("http://127.0.0.1:1/v1").model_copy(
        update={"base_url": None, "api_key_env": "RAYGRADE_TEST_UNSET_KEY"})
    with pytest.raises(ConfigError, match="RAYGRADE_TEST_UNSET_KEY is not set"):
        check_provider(hosted)


def test_a_deployment_with_an_unknown_model_fails_with_the_message(serve_url, fake_openai):
    from ray import serve

    from raygrade.app import build_app

    args = RaygradeArgs(api=ApiConfig(auth="disabled"),
                        provider=fake_provider_config(fake_openai.base_url, model="gpt-nope"),
                        namespace=f"rg-ff-{uuid.uuid4().hex[:6]}",
                        deployment_options={"Grader": {"max_constructor_retry_count": 1,
                                                       "autoscaling_config": {"min_replicas": 1, "max_replicas": 1}}})
    try:
        with pytest.raises(Exception, match="Grader"):  # Serve's own summary; the details are in `serve status`
            serve.run(build_app(args), name="failfast", route_prefix="/failfast")
        status = serve.status().applications["failfast"]
        grader = status.deployments["Grader"]
        assert grader.status.value in ("DEPLOY_FAILED", "UNHEALTHY")
        assert "model 'gpt-nope' is not served" in grader.message and "ConfigError" in grader.message
    finally:
        serve.delete("failfast")
