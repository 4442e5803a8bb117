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

#: Files with tests that start a real CPU vLLM engine (marker ``slow``, 6–7 GB and most of the
#: CPU each) run one after another on one pytest-xdist worker, with ``test_regrade.py`` (one of its
#: tests holds all but one of the cluster's CPUs); the two files that serve on the fixed port
#: 8000 share another group; every other file is a group of its own (its module fixtures and
#: Serve application names stay on one worker).
ENGINE_GROUP = "cpu-engine"
ENGINE_FILES = {"test_local_vllm.py", "test_vision_selfhosted.py",
                "test_benchmark_hosted_vs_self_hosted.py", "test_two_nodes.py", "test_regrade.py"}
PORT_8000_GROUP = "port-8000"
PORT_8000_FILES = {"test_quickstart.py", "test_serve_config_deploy.py"}


def group_of(nodeid: str) -> str:
    """The group a test runs in (``path::name`` → a group name or its file's path)."""
    path = nodeid.split("::", 1)[0]
    name = path.rsplit("/", 1)[-1]
    if name in ENGINE_FILES:
        return ENGINE_GROUP
    if name in PORT_8000_FILES:
        return PORT_8000_GROUP
    return path


@pytest.hookimpl(optionalhook=True)  # xdist's hook: pytest alone (tests/install's venv) has no such hook
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist schedules whole groups (:func:`group_of`), in collection order: a worker
    runs a group's tests one after another; groups go to whichever worker is free. (xdist's own
    ``loadgroup`` renames items' node ids, which pytest 9 no longer lets it do.)"""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return GroupScheduling(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Put the longest groups first (the CPU engines, then the install test, then port 8000),
    so that one worker starts on them while the other takes every other file; a ``slow`` test
    outside :data:`ENGINE_FILES` is an error (it would start an engine beside another)."""
    stray = sorted({it.path.name for it in items if it.get_closest_marker("slow") and it.path.name not in ENGINE_FILES})
    if stray:
        raise pytest.UsageError(f"tests marked slow outside ENGINE_FILES (tests/conftest.py): {stray}")
    rank = {ENGINE_GROUP: 0, PORT_8000_GROUP: 2}

    def order(item: pytest.Item) -> int:
        return rank.get(group_of(item.nodeid), 1 if item.get_closest_marker("install") else 3)

    items.sort(key=order)  # stable: each group keeps its order


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
