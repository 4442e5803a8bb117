"""Webhook destinations: parsed by the sending client, http(s) only, no credentials, and only
public addresses unless allow-listed, checked again at delivery, which connects to the checked
address. Receivers listen on 127.0.0.1 only."""

import asyncio
import http.server
import threading

import pytest

from raygrade.webhooks import address_allowed, check_url, deliver

SECRET = "whsec_dGVzdC1zZWNyZXQtZm9yLXdlYmhvb2tz"


@pytest.mark.parametrize("url, reason", [
    ("http://[::1", "cannot be parsed"),
    ("http://127.0.0.1:9/a\r\nX-Evil: 1", "control characters"),
    ("http://example.org/a b", "control characters"),
    ("ftp://example.org/x", "http(s)"),
    ("file:///etc/passwd", "http(s)"),
    ("http://user:pass@example.org/hook", "credentials"),
    ("http:///nohost", "http(s)"),
])
def test_urls_that_may_not_be_webhooks(url, reason):
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        check_url(url)


@pytest.mark.parametrize("address, allowed", [
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
    ("240.0.0.1", False), ("::1", False), ("fd00::1", False), ("fe80::1", False), ("::ffff:127.0.0.1", False),
    ("ff02::1", False), ("8.8.8.8", True), ("2606:4700:4700::1111", True),
])
def test_only_public_addresses_by_default(address, allowed):
    assert address_allowed(address) is allowed


def test_an_allow_list_admits_named_networks_only():
    assert address_allowed("10.1.2.3", ["10.0.0.0/8"]) and not address_allowed("192.168.1.1", ["10.0.0.0/8"])
    assert address_allowed("::ffff:10.0.0.5", ["10.0.0.0/8"])  # IPv4-mapped IPv6 counts as its IPv4 address


class _Receiver(http.server.BaseHTTPRequestHandler):
    hits: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["content-length"]))
        _Receiver.hits.append({k.lower(): v for k, v in self.headers.items()})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    _Receiver.hits = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()


@pytest.mark.parametrize("host", ["127.0.0.1", "2130706433", "0x7f.1", "localhost"])
def test_delivery_refuses_loopback_in_every_form_and_sends_nothing(receiver, host):
    error = asyncio.run(deliver(f"http://{host}:{receiver}/hook", SECRET, "msg_1", b"{}", timeout_s=5))
    assert error is not None and "may not reach" in error
    assert _Receiver.hits == []


def test_delivery_to_an_allowed_network_keeps_the_urls_host_header(receiver):
    error = asyncio.run(deliver(f"http://localhost:{receiver}/hook", SECRET, "msg_1", b"{}", timeout_s=5,
                                allowed_networks=["127.0.0.0/8", "::1/128"]))
    assert error is None and len(_Receiver.hits) == 1
    assert _Receiver.hits[0]["host"] == f"localhost:{receiver}" and "webhook-signature" in _Receiver.hits[0]


def test_an_unparseable_url_is_a_failed_attempt_not_an_exception():
    assert "cannot be parsed" in asyncio.run(deliver("http://[::1", SECRET, "m", b"{}"))


def test_a_slow_receiver_delays_no_other_delivery(monkeypatch):
    """Deliveries run concurrently: while one receiver holds its POST, another job's webhook is
    delivered and recorded."""
    from raygrade.config import StoreConfig
    from raygrade.protocol import JobState, JobStatus
    from raygrade.serve.webhook_sender import WebhookSender

    release, held = threading.Event(), threading.Event()

    class Slow(_Receiver):
        def do_POST(self):  # noqa: N802
            held.set()
            release.wait(30)
            super().do_POST()

    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), h) for h in (Slow, _Receiver)]
    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    recorded: list[tuple[str, bool]] = []

    class _Remote:
        def __init__(self, fn):
            self.remote = fn

    class Registry:
        async def _lease(self, owner, lease_s):
            return [("job_slow", "grading.job.completed", f"http://127.0.0.1:{servers[0].server_address[1]}/h", 1),
                    ("job_fast", "grading.job.completed", f"http://127.0.0.1:{servers[1].server_address[1]}/h", 1)]

        async def _status(self, job_id):
            return JobStatus(id=job_id, state=JobState.SUCCEEDED)

        async def _result(self, job_id, *, ok, **kw):
            recorded.append((job_id, ok))
            return "delivered" if ok else "pending"

        async def _secret(self, job_id):
            return "default", None   # one tenant, no secret of its own: the app's signs

        def __init__(self):
            self.lease_webhooks, self.status, self.webhook_result, self.signing_secret = (
                _Remote(self._lease), _Remote(self._status), _Remote(self._result), _Remote(self._secret))

    class Metrics:
        def inc(self, *a):
            pass

    monkeypatch.setenv("RAYGRADE_WEBHOOK_SECRET", SECRET)
    cfg = StoreConfig(url="sqlite:///unused.db", webhook_allowed_networks=["127.0.0.0/8"], webhook_timeout_s=30)
    sender = WebhookSender(Registry(), cfg, "owner", Metrics(), {})

    async def main():
        task = asyncio.create_task(sender.deliver_due())
        for _ in range(200):
            if recorded:
                break
            await asyncio.sleep(0.05)
        assert held.is_set() and recorded == [("job_fast", True)]  # while the slow receiver holds its POST
        release.set()
        assert await task == 2
        assert recorded == [("job_fast", True), ("job_slow", True)]

    try:
        asyncio.run(main())
    finally:
        release.set()
        for srv in servers:
            srv.shutdown()
