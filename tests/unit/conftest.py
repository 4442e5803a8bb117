"""The unit tier runs without Ray: a test that starts it (e.g. by building an application with
a self-hosted model, whose builder reads Ray's runtime context) fails here, and belongs in
tests/integration/, which shares one cluster. (When the whole suite runs in one session, the
integration tier's cluster may already be up: only a test that started Ray itself fails.)"""

import sys

import pytest


def _ray_up() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


@pytest.fixture(autouse=True)
def _no_ray():
    before = _ray_up()
    yield
    if not before and _ray_up():
        sys.modules["ray"].shutdown()
        pytest.fail("this unit test started Ray; move it to tests/integration/")
