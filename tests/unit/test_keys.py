"""API keys and tenants without Ray: the store's keys (hashed), the keys and quotas CLI, the authenticator."""

import asyncio

import pytest

from raygrade.config import ApiConfig
from raygrade.errors import AuthenticationError, InvalidRequestError, NotFoundError
from raygrade.serve.guard import Authenticator
from raygrade.store import JobStore
from raygrade.store.keys import hash_key


@pytest.fixture
def store(tmp_path):
    s = JobStore(f"sqlite:///{tmp_path}/jobs.db", blob_uri=str(tmp_path / "blobs"))
    yield s
    s.close()


def test_keys_are_stored_hashed_scoped_to_a_tenant_and_revocable(store):
    info, secret = store.create_key("school-a", name="gradebook sync")
    assert secret.startswith("rg_") and len(secret) == 46 and info.prefix == secret[:7]
    with store.engine.connect() as conn:
        dump = "\n".join(str(tuple(r)) for r in conn.exec_driver_sql("SELECT * FROM raygrade_api_keys"))
    assert secret not in dump and hash_key(secret) in dump
    assert store.tenant_for_key(hash_key(secret)) == "school-a"
    assert store.tenant_for_key(hash_key(secret + "x")) is None
    other, _ = store.create_key("school-b")
    assert [k.id for k in store.list_keys("school-a")] == [info.id]
    assert {k.id for k in store.list_keys()} == {info.id, other.id}
    assert store.revoke_key(info.id).revoked_at is not None
    assert store.tenant_for_key(hash_key(secret)) is None
    assert store.list_keys("school-a") == [] and len(store.list_keys("school-a", include_revoked=True)) == 1
    with pytest.raises(NotFoundError):
        store.revoke_key("key_nope")
    for bad in ("", "-a", "a b", "a/b", "x" * 129, "école"):
        with pytest.raises(InvalidRequestError):
            store.create_key(bad)


def test_keys_cli_prints_the_secret_once_and_lists_only_prefixes(tmp_path, capsys):
    from raygrade.cli import main

    url = f"sqlite:///{tmp_path}/jobs.db"
    JobStore(url, blob_uri=str(tmp_path / "blobs")).close()  # the app made its store
    # --store-url before the action or after it
    assert main(["keys", "create", "--store-url", url, "--tenant", "school-a", "--name", "lms"]) == 0
    out = capsys.readouterr()
    secret = out.out.strip()
    assert secret.startswith("rg_") and secret not in out.err and "shown once" in out.err
    assert main(["keys", "--store-url", url, "list"]) == 0
    listing = capsys.readouterr().out
    assert "school-a" in listing and secret[:7] in listing and secret not in listing
    key_id = listing.splitlines()[1].split()[0]
    assert main(["keys", "--store-url", url, "revoke", key_id]) == 0
    assert "revoked" in capsys.readouterr().out
    s = JobStore(url, blob_uri=str(tmp_path / "blobs"))
    assert s.tenant_for_key(hash_key(secret)) is None
    s.close()
    # the secret that signs the tenant's webhooks (per tenant: issue 27), printed once
    assert main(["keys", "webhook-secret", "--store-url", url, "--tenant", "school-a"]) == 0
    out = capsys.readouterr()
    whsec = out.out.strip()
    assert whsec.startswith("whsec_") and whsec not in out.err and "shown once" in out.err
    s = JobStore(url, blob_uri=str(tmp_path / "blobs"))
    other = s.set_webhook_secret("school-b")
    assert other != whsec
    s.close()


def test_quotas_cli_sets_lists_with_usage_and_clears(tmp_path, capsys):
    from pydantic import ValidationError

    from raygrade.cli import main

    url = f"sqlite:///{tmp_path}/jobs.db"
    JobStore(url, blob_uri=str(tmp_path / "blobs")).close()
    assert main(["quotas", "--store-url", url, "set", "school-b", "--file-bytes", "1000"]) == 0
    assert main(["quotas", "--store-url", url, "set", "school-a", "--max-active-jobs", "2",
                 "--items-per-day", "100"]) == 0
    capsys.readouterr()
    assert main(["quotas", "--store-url", url, "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = lines[1].split()
    assert lines[2].split() == ["school-b", "0/-", "0/-", "0/-", "0/1000"]
    assert row == ["school-a", "0/2", "0/100", "0/-", "0/-"]
    with pytest.raises(ValidationError):  # the console script prints it as one line (raygrade._cli)
        main(["quotas", "--store-url", url, "set", "school-a", "--items-per-day", "-1"])
    with pytest.raises(InvalidRequestError):
        main(["quotas", "--store-url", url, "set", "not a tenant"])
    assert main(["quotas", "--store-url", url, "clear", "school-a"]) == 0
    assert main(["quotas", "--store-url", url, "clear", "school-b"]) == 0
    assert "quota removed" in capsys.readouterr().out
    assert main(["quotas", "--store-url", url, "list"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == []


def test_a_retry_after_on_an_error_is_a_header_in_whole_seconds_and_a_missing_extra_is_a_501():
    import json

    from raygrade.errors import MissingDependencyError, QuotaExceededError
    from raygrade.serve.guard import error_response

    r = error_response(QuotaExceededError("over", code="items_per_day", retry_after_s=0.2))
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert error_response(QuotaExceededError("over", retry_after_s=3600.5)).headers["retry-after"] == "3601"
    assert "retry-after" not in error_response(QuotaExceededError("over")).headers
    missing = error_response(MissingDependencyError("answer groups need raygrade[baseline]"))
    assert missing.status_code == 501 and json.loads(missing.body)["error"]["type"] == "missing_dependency"


def test_authenticator_checks_keys_and_caches_valid_and_unknown_ones():
    calls = []
    known = {hash_key("rg_valid"): "school-a"}

    async def lookup(h):
        calls.append(h)
        return known.get(h)

    now = [0.0]
    auth = Authenticator(lookup, ApiConfig(key_cache_s=10), clock=lambda: now[0])

    async def run():
        for key, code in ((None, "missing_api_key"), ("", "missing_api_key"), ("sk-other", "invalid_api_key"),
                          ("rg_unknown", "invalid_api_key"), ("rg_" + "x" * 200, "invalid_api_key")):
            with pytest.raises(AuthenticationError) as ei:
                await auth.tenant(key)
            assert ei.value.status_code == 401 and ei.value.code == code
        assert calls == [hash_key("rg_unknown")]  # malformed keys never reach the store
        assert await auth.tenant("rg_valid") == "school-a"
        assert await auth.tenant("rg_valid") == "school-a"
        assert len(calls) == 2  # cached
        known.clear()  # revoked
        now[0] = 11.0
        with pytest.raises(AuthenticationError):
            await auth.tenant("rg_valid")
        assert len(calls) == 3
        for _ in range(5):  # an unknown key is answered from memory for unknown_key_cache_s (60 s)...
            with pytest.raises(AuthenticationError):
                await auth.tenant("rg_unknown")
        assert len(calls) == 3
        now[0] = 72.0  # ... then looked up again
        with pytest.raises(AuthenticationError):
            await auth.tenant("rg_unknown")
        assert len(calls) == 4
        assert await Authenticator(lookup, ApiConfig(auth="disabled")).tenant(None) == "default"

    asyncio.run(run())


def test_a_flood_of_made_up_keys_is_cut_off_per_client_without_store_look_ups():
    """One client sends distinct unknown keys: after ``failed_auth_burst`` look-ups it gets 429s
    (with when to retry) that cost the store nothing; its verified key and another client's keys
    still work; its budget refills at ``failed_auth_per_min``. Concurrent look-ups of one key share
    one store call."""
    from raygrade.errors import TooManyFailedAuthenticationsError

    calls = []
    known = {hash_key("rg_good"): "school-a", hash_key("rg_other"): "school-b"}
    gate = asyncio.Event()

    async def lookup(h):
        calls.append(h)
        if h == hash_key("rg_slow"):
            await gate.wait()
        return known.get(h)

    now = [0.0]
    auth = Authenticator(lookup, ApiConfig(failed_auth_per_min=30, failed_auth_burst=5), clock=lambda: now[0])

    async def run():
        assert await auth.tenant("rg_good", "10.0.0.1") == "school-a"
        for i in range(5):
            with pytest.raises(AuthenticationError):
                await auth.tenant(f"rg_fake{i}", "10.0.0.1")
        looked_up = len(calls)
        for i in range(5, 50):
            with pytest.raises(TooManyFailedAuthenticationsError) as ei:
                await auth.tenant(f"rg_fake{i}", "10.0.0.1")
        assert len(calls) == looked_up == 6, "the flood beyond the burst reached the store"
        err = ei.value
        assert err.status_code == 429 and err.error_type == "rate_limit_error" and 0 < err.retry_after_s <= 2.0
        assert await auth.tenant("rg_good", "10.0.0.1") == "school-a"  # verified recently: still served
        assert await auth.tenant("rg_other", "10.0.0.2") == "school-b"  # another client is not affected
        now[0] += err.retry_after_s  # 30 per minute: one more look-up every 2 s
        with pytest.raises(AuthenticationError) as ok:
            await auth.tenant("rg_fake99", "10.0.0.1")
        assert ok.value.status_code == 401
        with pytest.raises(TooManyFailedAuthenticationsError):
            await auth.tenant("rg_fake100", "10.0.0.1")
        # Ten callers at once with one key that is not cached yet: one look-up.
        before = len(calls)
        waiting = [asyncio.ensure_future(auth.tenant("rg_slow", "10.0.0.3")) for _ in range(10)]
        await asyncio.sleep(0)
        gate.set()
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        assert len(calls) == before + 1 and all(isinstance(o, AuthenticationError) for o in outcomes)

    asyncio.run(run())
