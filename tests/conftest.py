"""Shared fixtures. Unit tests need none of these; integration tests share one local
Ray cluster, one Serve instance on 127.0.0.1 and one fake OpenAI server per session."""

import os
import tempfile

# Set before Ray starts: workers inherit the environment of the cluster's first driver.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAYGRADE_FAKE_KEY", "sk-test")
os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
# The job store's SQLite file (and anything else under RAYGRADE_HOME) goes to a temporary folder.
os.environ.setdefault("RAYGRADE_HOME", tempfile.mkdtemp(prefix="raygrade-tests-"))
os.environ.setdefault("RAYGRADE_WEBHOOK_SECRET", "whsec_" + "dGVzdC1zZWNyZXQtZm9yLXdlYmhvb2tz")

import pytest  # noqa: E402

#: Tests that start a real CPU vLLM engine (marker ``slow``, 6–7 GB and most of the CPU each) run
#: one after another on one pytest-xdist worker, with the file whose test holds all but one of
#: the cluster's CPUs; the two files that serve on the fixed port 8000 share another group.
ENGINE_GROUP = "cpu-engine"
ENGINE_FILES = {"test_regrade.py"}
PORT_8000_GROUP = "port-8000"
PORT_8000_FILES = {"test_quickstart.py", "test_serve_config_deploy.py"}


def _group(item: pytest.Item) -> str:
    name = item.path.name
    if item.get_closest_marker("slow") is not None or name in ENGINE_FILES:
        return ENGINE_GROUP
    if name in PORT_8000_FILES:
        return PORT_8000_GROUP
    return str(item.path.relative_to(item.config.rootpath))  # a file stays on one worker (its module fixtures)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Group tests for ``--dist loadgroup`` (pyproject's addopts) and put the longest groups
    first (the CPU engines, then the install test, then port 8000), so that one worker starts
    on them while the other takes every other file."""
    rank = {ENGINE_GROUP: 0, PORT_8000_GROUP: 2}
    xdist = config.pluginmanager.hasplugin("xdist")  # not in a venv with pytest alone (tests/install)
    for item in items:
        group = _group(item)
        if xdist:
            item.add_marker(pytest.mark.xdist_group(group))
        item.stash[_GROUP] = rank.get(group, 1 if item.get_closest_marker("install") else 3)
    items.sort(key=lambda it: it.stash[_GROUP])  # stable: each group keeps its order


_GROUP = pytest.StashKey[int]()


def pytest_configure(config):
    """On the pytest-xdist controller: a folder the workers share (the shared Ray cluster's
    address, :mod:`support.shared_cluster`), named in the environment they inherit."""
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        from support.shared_cluster import SHARED_DIR_ENV

        os.environ[SHARED_DIR_ENV] = tempfile.mkdtemp(prefix="raygrade-tests-shared-")


def pytest_unconfigure(config):
    """On the controller: stop the shared Ray cluster, if a worker started one."""
    from support.shared_cluster import SHARED_DIR_ENV, stop

    if not hasattr(config, "workerinput") and os.environ.get(SHARED_DIR_ENV):
        stop(os.environ[SHARED_DIR_ENV])
