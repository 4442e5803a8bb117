"""Every metric the Grafana dashboard charts exists on Ray's metrics endpoint after a job that
grades, fails an item, meets a provider 429 and delivers a webhook, a job a quota refuses, and a
call refused for a spent daily quota."""

import asyncio
import os
import re
import threading
import time
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from test_api import make_job  # rootdir-relative: pytest puts tests/integration on sys.path

from raygrade.client import Client
from raygrade.config import RateLimitConfig
from raygrade.errors import QuotaExceededError, QuotaExhaustedError
from raygrade.metrics import METRICS
from raygrade.protocol import TenantQuota
from raygrade.store import JobStore
from raygrade.testing.fake_openai import fake_provider_config


def _receiver():
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def scrape() -> str:
    port = os.environ["RAYGRADE_TEST_METRICS_PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def refuse_for_a_spent_day(ns: str) -> None:
    """A call refused because its key's requests per day are spent, through a shared limiter
    actor of namespace ``ns`` (the error crosses the actor boundary with its type)."""
    from raygrade.ratelimit.actor import ActorLimiter

    limiter = ActorLimiter(fake_provider_config("http://127.0.0.1:9/v1", rate_limit=RateLimitConfig(rpd=1)), ns)

    async def spend() -> None:
        await limiter.acquire("quota-probe", 10)
        with pytest.raises(QuotaExhaustedError) as refused:
            await limiter.acquire("quota-probe", 10, patience_s=0)
        assert refused.value.error_type == "quota_exhausted" and refused.value.reset_at > time.time()

    asyncio.run(spend())


def test_dashboard_metrics_exist_after_a_job(fake_app, fake, fake_store_url):
    import ray

    from raygrade.ratelimit.actor import get_rate_limiter

    rx, quota_ns = _receiver(), f"rg-quota-{uuid.uuid4().hex[:8]}"
    try:
        fake.script.append("429")  # one rate-limited answer, retried
        job = make_job(n_students=4, oversize=True)  # the oversize student fails: planning_error
        job.options.webhook_url = f"http://127.0.0.1:{rx.server_address[1]}/hook"
        with Client(fake_app) as client:
            st = client.wait(client.submit(job).id, timeout_s=120, poll_s=0.2)
            errors = ([(e.type, e.message[:200]) for e in client.results(st.id).errors]
                      if st.state.value != "partial" else [])
            assert st.state.value == "partial" and st.progress.items_failed > 0, errors
            store = JobStore(fake_store_url)  # the app's store (auth disabled: tenant "default")
            store.set_quota("default", TenantQuota(max_active_jobs=0))
            try:
                with pytest.raises(QuotaExceededError):
                    client.submit(make_job(n_students=1))
            finally:
                store.clear_quota("default")
                store.close()
        refuse_for_a_spent_day(quota_ns)
        want = {m.exported for m in METRICS.values()}
        deadline, missing, text = time.monotonic() + 60, want, ""
        while time.monotonic() < deadline and missing:
            text = scrape()
            series = {re.sub(r"_(bucket|sum|count)$", "", line.split("{")[0].split(" ")[0])
                      for line in text.splitlines() if line.startswith("ray_raygrade_")}
            missing = want - series
            if missing:
                time.sleep(2)  # Ray reports metrics every few seconds
        assert not missing, f"not exported: {sorted(missing)}"
        assert re.search(r'ray_raygrade_items_failed_total\{[^}]*error_type="planning_error"', text)
        assert re.search(r'ray_raygrade_webhook_deliveries_total\{[^}]*outcome="delivered"', text)
        assert re.search(r'ray_raygrade_jobs_refused_total\{[^}]*quota="max_active_jobs"', text)
    finally:
        rx.shutdown()
        ray.kill(get_rate_limiter(quota_ns))
    assert httpx.get(f"{fake_app}/healthz", timeout=10).status_code == 200
