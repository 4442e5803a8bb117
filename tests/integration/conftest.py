import os
import sys
import uuid
from pathlib import Path

import pytest
from support.shared_cluster import TRACING

from raygrade.config import ApiConfig, BatcherConfig, RaygradeArgs, StoreConfig
from raygrade.testing.fake_openai import FakeOpenAIServer, fake_provider_config
from raygrade.testing.ports import free_port


@pytest.fixture(scope="session")
def fake_openai():
    # fake_app times out at 6 s: a 2 s answer (test_jobs_api's cancel) stays far from it on a machine whose
    # cores a CPU vLLM engine fills (a 3 s timeout once failed five in a row there, opening the circuit
    # breaker of every later test on the worker); a `timeout` fault holds a request past it.
    srv = FakeOpenAIServer(api_key="sk-test", latency_s=0.02, hang_s=9.0).start()
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


#: This pytest-xdist worker ("gw0", "gw1", …), or "" when the tests run in one process.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")


def _shared() -> bool:
    from support.shared_cluster import SHARED_DIR_ENV

    return bool(WORKER and os.environ.get(SHARED_DIR_ENV))


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the session; under pytest-xdist, one for every worker
    (:mod:`support.shared_cluster`), each worker in a namespace of its own."""
    import ray

    namespace = f"raygrade-tests-{WORKER or 'main'}-{uuid.uuid4().hex[:8]}"
    # As after `. .venv/bin/activate`: a job's `python` (`ray job submit -- python ...`) is the one on the
    # raylet's PATH, and the raylet inherits this process's environment.
    venv_bin = str(Path(sys.executable).parent)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != venv_bin:
        os.environ["PATH"] = f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"
    if _shared():
        from support.shared_cluster import connect

        info = connect(namespace)
        os.environ["RAYGRADE_TEST_METRICS_PORT"] = str(info["metrics_port"])
        os.environ["RAYGRADE_TEST_SERVE_PORT"] = str(info["serve_port"])
        os.environ["RAYGRADE_TEST_DASHBOARD_URL"] = info["dashboard_url"]
        yield
        ray.shutdown()  # the controller stops the cluster once every worker is done
        return
    # Ray's metrics agent serves Prometheus text on this port (tests/integration/test_metrics.py).
    os.environ["RAYGRADE_TEST_METRICS_PORT"] = str(free_port())
    ctx = ray.init(address="local", num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1",
                   dashboard_port=free_port(), log_to_driver=False, namespace=namespace,
                   _metrics_export_port=int(os.environ["RAYGRADE_TEST_METRICS_PORT"]))
    os.environ["RAYGRADE_TEST_DASHBOARD_URL"] = f"http://{ctx.dashboard_url}"
    yield
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def serve_url(ray_cluster):
    """Serve's HTTP address on 127.0.0.1 (started here, or by the worker that started the shared cluster)."""
    from ray import serve

    if _shared():
        return f"http://127.0.0.1:{os.environ['RAYGRADE_TEST_SERVE_PORT']}"
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False},
                    tracing_config=TRACING)
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def fake_store_url(tmp_path_factory):
    """The store of :func:`fake_app`: this process's own SQLite file (under pytest-xdist the
    workers share one cluster, whose replicas would otherwise share ``RAYGRADE_HOME``'s store,
    and a test that sets the default tenant's quota there would refuse another worker's jobs)."""
    return f"sqlite:///{tmp_path_factory.mktemp('fake-store')}/jobs.db"


@pytest.fixture(scope="session")
def fake_app(serve_url, fake_openai, fake_store_url):
    """The raygrade app on the fake provider, at ``{serve_url}/fake`` (``/fakegw0``… under pytest-xdist)."""
    from ray import serve

    from raygrade.app import build_app

    # Webhook receivers in tests listen on loopback: allowed here explicitly (never by default).
    args = RaygradeArgs(api=ApiConfig(auth="disabled"),
                        provider=fake_provider_config(fake_openai.base_url, timeout_s=6.0),
                        # share_wait_s: jobs with batch_across_jobs posted together surely meet (test_jobs_api.py)
                        batcher=BatcherConfig(max_students_per_request=4, max_images_per_request=6, share_wait_s=2.0),
                        store=StoreConfig(url=fake_store_url, webhook_allowed_networks=["127.0.0.0/8", "::1/128"]),
                        namespace=f"rg-test-{uuid.uuid4().hex[:8]}")
    name = f"fake{WORKER}"  # workers share one Serve instance
    serve.run(build_app(args), name=name, route_prefix=f"/{name}")
    return f"{serve_url}/{name}"

