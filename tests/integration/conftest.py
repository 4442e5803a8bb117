import uuid

import pytest

from raygrade.config import BatcherConfig, ProviderConfig, RaygradeArgs, RateLimitConfig
from raygrade.engine.local_vllm import free_port
from raygrade.testing.fake_openai import FakeOpenAIServer


@pytest.fixture(scope="session")
def fake_openai():
    srv = FakeOpenAIServer(api_key="sk-test", latency_s=0.02).start()
    yield srv
    srv.stop()


@pytest.fixture
def fake(fake_openai):
    fake_openai.reset()
    yield fake_openai
    fake_openai.reset()


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             namespace=f"raygrade-tests-{uuid.uuid4().hex[:8]}")
    yield
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def serve_url(ray_cluster):
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
    return f"http://127.0.0.1:{port}"


def fake_provider(base_url: str, **over) -> ProviderConfig:
    cfg = dict(name="fake", base_url=base_url, api_key_env="RAYGRADE_FAKE_KEY", model="fake-grader",
               supports_vision=True, image_token_rule="gpt-4o", context_window=16_000, max_completion_tokens=4_000,
               rate_limit=RateLimitConfig(rpm=6_000, tpm=4_000_000), max_retries=2)
    cfg.update(over)
    return ProviderConfig(**cfg)


@pytest.fixture(scope="session")
def fake_app(serve_url, fake_openai):
    """The raygrade app on the fake provider, at ``{serve_url}/fake``."""
    from ray import serve

    from raygrade.app import build_app

    args = RaygradeArgs(provider=fake_provider(fake_openai.base_url),
                        batcher=BatcherConfig(max_students_per_request=4, max_images_per_request=6),
                        namespace=f"rg-test-{uuid.uuid4().hex[:8]}")
    serve.run(build_app(args), name="fake", route_prefix="/fake")
    return f"{serve_url}/fake"

