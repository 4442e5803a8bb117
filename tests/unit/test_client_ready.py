"""``Client.wait_ready`` / ``AsyncClient.wait_ready`` against a loopback HTTP server that plays a
raygrade app starting up: nothing listening, then ``/readyz`` 503 with a reason, then 200."""

import asyncio
import http.server
import json
import socket
import threading

import pytest

from raygrade.client import AsyncClient, Client
from raygrade.errors import RaygradeError


class _App:
    """``/readyz`` answers 503 ``not_ready`` for its first ``not_ready`` calls, then 200."""

    def __init__(self, not_ready: int, status_after: int = 200):
        self.calls, self.not_ready, self.status_after = 0, not_ready, status_after
        app = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                app.calls += 1
                if self.path != "/readyz":
                    status, body = 404, {"error": {"message": "Not Found", "type": "not_found_error",
                                                   "param": None, "code": None}}
                elif app.calls <= app.not_ready:
                    status, body = 503, {"status": "not_ready", "reason": "model smollm2 loading"}
                else:
                    status, body = app.status_after, {"status": "ready"}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def app_factory():
    apps = []

    def make(*a, **kw):
        apps.append(_App(*a, **kw))
        return apps[-1]

    yield make
    for a in apps:
        a.close()


def test_waits_out_503_then_returns(app_factory):
    app = app_factory(not_ready=3)
    Client(app.url).wait_ready(timeout_s=30, poll_s=0.01)
    assert app.calls == 4


def test_times_out_with_the_last_reason(app_factory):
    app = app_factory(not_ready=10**6)
    with pytest.raises(TimeoutError, match="model smollm2 loading"):
        Client(app.url).wait_ready(timeout_s=0.2, poll_s=0.01)


def test_no_server_yet_is_waited_out_not_raised():
    with socket.socket() as s:   # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TimeoutError, match="no connection"):
        Client(f"http://127.0.0.1:{port}", timeout_s=1).wait_ready(timeout_s=0.2, poll_s=0.01)


def test_a_server_that_is_not_raygrade_raises(app_factory):
    app = app_factory(not_ready=0, status_after=404)
    with pytest.raises(RaygradeError) as info:
        Client(app.url).wait_ready(timeout_s=5, poll_s=0.01)
    assert info.value.http_status == 404 and app.calls == 1


def test_async_client_waits_the_same_way(app_factory):
    app = app_factory(not_ready=2)

    async def run():
        async with AsyncClient(app.url) as c:
            await c.wait_ready(timeout_s=30, poll_s=0.01)

    asyncio.run(run())
    assert app.calls == 3
