"""Shared fixtures. Unit tests need none of these; integration tests share one local
Ray cluster, one Serve instance on 127.0.0.1 and one fake OpenAI server per session."""

import os
import tempfile

# Set before Ray starts: workers inherit the environment of the cluster's first driver.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAYGRADE_FAKE_KEY", "sk-test")
os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
# The job store's SQLite file (and anything else under RAYGRADE_HOME) goes to a temporary folder,
# one per pytest-xdist worker (a worker inherits the controller's environment, so its own folder
# replaces the controller's).
if os.environ.get("PYTEST_XDIST_WORKER") or "RAYGRADE_HOME" not in os.environ:
    os.environ["RAYGRADE_HOME"] = tempfile.mkdtemp(prefix=f"raygrade-tests-{os.environ.get('PYTEST_XDIST_WORKER', '')}")
os.environ.setdefault("RAYGRADE_WEBHOOK_SECRET", "whsec_" + "dGVzdC1zZWNyZXQtZm9yLXdlYmhvb2tz")

import pytest  # noqa: E402

#: Tests that start a real CPU vLLM engine (marker ``slow``): run one after another on one
#: pytest-xdist worker (each takes most of the machine's CPU and 6–7 GB), first, while the
#: other worker runs every other file.
ENGINE_GROUP = "cpu-engine"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Group tests for ``--dist loadgroup`` (pyproject's addopts): a file's tests stay on one
    worker (they share its module fixtures and one Ray cluster per worker) unless the file names
    its group (files that need the same fixed port share one), the engine tests all on one; the
    engine tests are collected first so their worker starts with them."""
    for item in items:
        slow = item.get_closest_marker("slow") is not None
        if slow or item.get_closest_marker("xdist_group") is None:  # a file may name its own group
            item.add_marker(pytest.mark.xdist_group(ENGINE_GROUP if slow else item.path.stem))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: engine tests first
