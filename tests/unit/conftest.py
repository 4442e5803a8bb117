"""The unit tier runs without Ray: a test that starts it (e.g. by building an application with
a self-hosted model, whose builder reads Ray's runtime context) fails here, and belongs in
tests/integration/, which shares one cluster."""

import sys

import pytest


@pytest.fixture(autouse=True)
def _no_ray():
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
        pytest.fail("this unit test started Ray; move it to tests/integration/")
