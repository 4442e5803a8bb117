"""Per-tenant webhook signing secrets (issue 27): each tenant's deliveries are signed with its own
secret, so one tenant cannot forge another's; a tenant without one gets no delivery (an error
naming it), and the application's secret signs only the single-tenant (``default``) deliveries.
Real store (SQLite and PostgreSQL), real receiver on 127.0.0.1, the real sender."""

import asyncio
import types

import pytest

from raygrade.config import StoreConfig
from raygrade.serve.job_registry import JobRegistryImpl
from raygrade.serve.webhook_sender import WebhookSender
from raygrade.store import JobStore
from raygrade.webhooks import verify
from tests.integration.test_jobs_api import Receiver
from tests.integration.test_reviews_store import graded, grid_job
from tests.integration.test_store import Clock


class AsHandle:
    """A registry implementation called as a deployment handle (``h.method.remote(...)``)."""

    def __init__(self, impl):
        self._impl = impl

    def __getattr__(self, name):
        return types.SimpleNamespace(remote=getattr(self._impl, name))


class Counts:
    def __init__(self):
        self.n: dict[str, int] = {}

    def inc(self, name, value, tags):
        self.n[tags["outcome"]] = self.n.get(tags["outcome"], 0) + value


def test_each_tenants_webhooks_are_signed_with_its_own_secret(store_url, tmp_path, monkeypatch):
    monkeypatch.setenv("RAYGRADE_WEBHOOK_SECRET", "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=")
    rx = Receiver(fail_first=0)
    store = JobStore(store_url, clock=Clock(), blob_uri=str(tmp_path / "blobs"))
    try:
        secrets = {t: store.set_webhook_secret(t) for t in ("school-a", "school-b")}
        assert secrets["school-a"].startswith("whsec_") and secrets["school-a"] != secrets["school-b"]
        again = store.set_webhook_secret("school-b")      # rotating replaces the secret
        assert again != secrets["school-b"]
        secrets["school-b"] = again
        jobs = {t: graded(store, tenant=t, job=grid_job(2, webhook_url=rx.url))
                for t in ("school-a", "school-b", "school-c", "default")}
        cfg = StoreConfig(url=store_url, webhook_allowed_networks=["127.0.0.0/8"], webhook_max_attempts=1)
        counts = Counts()
        sender = WebhookSender(AsHandle(JobRegistryImpl(cfg, store=store)), cfg, "owner-1", counts, {})
        assert asyncio.run(sender.deliver_due()) == 4
        assert counts.n == {"delivered": 3, "failed": 1}
        by_job = {}
        for headers, body, _ in rx.deliveries:
            by_job[headers["webhook-id"].removeprefix("msg_")] = (headers, body)
        a_headers, a_body = by_job[jobs["school-a"]]
        assert verify(secrets["school-a"], a_headers, a_body)
        assert not verify(secrets["school-b"], a_headers, a_body), "another tenant's secret does not verify"
        assert not verify("whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=", a_headers, a_body), "nor the app's"
        assert verify(secrets["school-b"], *by_job[jobs["school-b"]])
        assert verify("whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=", *by_job[jobs["default"]]), "one tenant: the app's"
        assert jobs["school-c"] not in by_job
        err = store.webhook(jobs["school-c"])["last_error"]
        assert "no signing secret for tenant 'school-c'" in err and "webhook-secret --tenant school-c" in err
        with pytest.raises(Exception, match="tenant"):
            store.set_webhook_secret("not a tenant!")
    finally:
        rx.stop()
        store.close()
