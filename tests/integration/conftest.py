import os
import uuid

import pytest

from raygrade.config import ApiConfig, BatcherConfig, RaygradeArgs, StoreConfig
from raygrade.testing.fake_openai import FakeOpenAIServer, fake_provider_config
from raygrade.testing.ports import free_port


@pytest.fixture(scope="session")
def fake_openai():
    srv = FakeOpenAIServer(api_key="sk-test", latency_s=0.02, hang_s=6.0).start()  # fake_app times out at 3 s
    yield srv
    srv.stop()


@pytest.fixture
def fake(fake_openai):
    fake_openai.reset()
    yield fake_openai
    fake_openai.reset()


@pytest.fixture(scope="session")
def postgres():
    """One PostgreSQL server on 127.0.0.1 for the session (``.ci/run`` installs Debian's
    package); skipped where none is installed, except in CI, where that is a failure."""
    from support.postgres import PostgresServer, find_pg_bin

    if find_pg_bin() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (.ci/run installs Debian's postgresql package)")
        pytest.skip("PostgreSQL not installed")
    srv = PostgresServer().start()
    yield srv
    srv.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A fresh, empty store URL on each back end."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/jobs.db"
    return request.getfixturevalue("postgres").create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    # Ray's metrics agent serves Prometheus text on this port (tests/integration/test_metrics.py).
    os.environ["RAYGRADE_TEST_METRICS_PORT"] = str(free_port())
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             namespace=f"raygrade-tests-{uuid.uuid4().hex[:8]}",
             _metrics_export_port=int(os.environ["RAYGRADE_TEST_METRICS_PORT"]))
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


@pytest.fixture(scope="session")
def fake_app(serve_url, fake_openai):
    """The raygrade app on the fake provider, at ``{serve_url}/fake``."""
    from ray import serve

    from raygrade.app import build_app

    # Webhook receivers in tests listen on loopback: allowed here explicitly (never by default).
    args = RaygradeArgs(api=ApiConfig(auth="disabled"),
                        provider=fake_provider_config(fake_openai.base_url, timeout_s=3.0),
                        batcher=BatcherConfig(max_students_per_request=4, max_images_per_request=6),
                        store=StoreConfig(webhook_allowed_networks=["127.0.0.0/8", "::1/128"]),
                        namespace=f"rg-test-{uuid.uuid4().hex[:8]}")
    serve.run(build_app(args), name="fake", route_prefix="/fake")
    return f"{serve_url}/fake"

