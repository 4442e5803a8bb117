"""The ingress's reads of the job store (``raygrade.serve.direct_store.DirectStore``), without Ray.

A real :class:`JobStore` on a temporary SQLite file plays the registry's store; the "registry"
is a handle-shaped double over the same store that records which reads reached it.
"""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
import sqlalchemy as sa
from support.clock import VirtualClock

from raygrade.config import StoreConfig
from raygrade.errors import NotFoundError, StorageError
from raygrade.protocol import GradingJob
from raygrade.serve.direct_store import REOPEN_S, DirectStore
from raygrade.store import JobStore, migrate
from raygrade.store.schema import create_engine

JOB = GradingJob.model_validate({
    "assessment": {"questions": [{"id": "q1", "prompt": "p", "max_score": 2}]},
    "submissions": [{"student_id": "s1", "pages": [{"type": "text", "text": "an answer"}]}]})


class Registry:
    """``registry.<read>.remote(*args)`` over ``store``, as the JobRegistry deployment answers them."""

    def __init__(self, store: JobStore | None = None):
        self.store, self.calls = store, []

    def __getattr__(self, name):
        registry = self

        class Method:
            @staticmethod
            def remote(*args):
                registry.calls.append(name)

                async def answer():
                    if registry.store is None:  # a registry whose store has no such job
                        raise NotFoundError("no such job", param="job_id")
                    if name == "list_jobs":
                        tenant, state, limit, after = args
                        return registry.store.list_jobs("raygrade", tenant, state=state, limit=limit, after=after)
                    return getattr(registry.store, name)(*args)

                return answer()

        return Method()


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path}/jobs.db"


@pytest.fixture
def store(url):
    s = JobStore(url)  # the registry's: created and migrated
    yield s
    s.close()


def on_its_node(store: JobStore, url: str):
    """A job of tenant ``t1`` in ``store``, the registry double over it, and reads on the store's node."""
    status, _ = store.create_job(JOB, None, "raygrade", "t1")
    registry = Registry(store)
    return status, registry, DirectStore(registry, StoreConfig(url=url), "raygrade", on_store_node=lambda: True)


def test_reads_go_to_the_store_on_its_node_and_answer_as_the_registry_does(store, url):
    status, registry, reads = on_its_node(store, url)

    async def main():
        got = await reads.status(status.id, "t1")
        listed, more = await reads.list_jobs("t1", None, 10, None)
        results = await reads.results(status.id, "t1")
        with pytest.raises(NotFoundError):  # another tenant's job: a 404, not a fallback
            await reads.status(status.id, "t2")
        return got, listed, more, results

    got, listed, more, results = asyncio.run(main())
    assert reads.direct and registry.calls == []
    assert got == store.status(status.id, "t1")
    assert [j.id for j in listed] == [status.id] and not more
    assert results == store.results(status.id, "t1")


@pytest.mark.parametrize("where", ["another node", "no file yet"])
def test_a_sqlite_file_this_process_cannot_see_is_read_through_the_registry(store, url, tmp_path, where):
    status, _ = store.create_job(JOB, None, "raygrade", "t1")
    registry = Registry(store)
    missing = f"sqlite:///{tmp_path}/elsewhere/jobs.db"
    reads = DirectStore(registry, StoreConfig(url=url if where == "another node" else missing), "raygrade",
                       on_store_node=lambda: where != "another node")
    assert asyncio.run(reads.status(status.id, "t1")).id == status.id
    assert registry.calls == ["status"] and not reads.direct
    assert not (tmp_path / "elsewhere" / "jobs.db").exists()  # nothing created where the store is not


def test_a_store_not_yet_migrated_is_read_through_the_registry_and_not_migrated_by_the_reader(tmp_path):
    path = tmp_path / "jobs.db"
    sqlite3.connect(path).close()  # the file exists; the registry has not created the schema yet
    url = f"sqlite:///{path}"
    clock = VirtualClock(start=0.0)
    registry = Registry()
    reads = DirectStore(registry, StoreConfig(url=url), "raygrade", on_store_node=lambda: True, clock=clock)

    with pytest.raises(NotFoundError):  # the registry's answer
        asyncio.run(reads.status("job_x", "t1"))
    assert registry.calls == ["status"] and not reads.direct
    assert sa.inspect(create_engine(url)).get_table_names() == []  # the reader wrote nothing

    store = JobStore(url)  # the registry starts and migrates
    status, _ = store.create_job(JOB, None, "raygrade", "t1")
    registry.store = store
    asyncio.run(reads.status(status.id, "t1"))
    assert registry.calls == ["status", "status"]  # not tried again before REOPEN_S
    clock.now += REOPEN_S
    assert asyncio.run(reads.status(status.id, "t1")).id == status.id
    assert reads.direct and registry.calls == ["status", "status"]
    store.close()


def test_a_failing_direct_read_is_answered_by_the_registry(store, url):
    status, registry, reads = on_its_node(store, url)

    async def main():
        await reads.status(status.id, "t1")
        assert reads.direct

        def broken(*args):
            raise sa.exc.OperationalError("SELECT", {}, Exception("disk I/O error"))

        reads._store.status = broken  # type: ignore[union-attr]  # the reader's connection fails
        return await reads.status(status.id, "t1")

    assert asyncio.run(main()).id == status.id
    assert registry.calls == ["status"]


def test_a_store_opened_without_migrating_refuses_a_schema_that_is_not_the_newest(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/old.db")
    migrate(engine)
    with engine.begin() as conn:  # a store left at an older revision
        conn.execute(sa.text("UPDATE raygrade_alembic_version SET version_num = '0001'"))
    engine.dispose()
    with pytest.raises(StorageError, match="revision 0001"):
        JobStore(f"sqlite:///{tmp_path}/old.db", migrate_schema=False)
    with create_engine(f"sqlite:///{tmp_path}/old.db").connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM raygrade_alembic_version")).scalar() == "0001"


def test_a_replay_and_a_quota_pre_check_are_read_from_the_store_and_refuse_as_the_registry_does(store, url):
    from raygrade.errors import QuotaExceededError
    from raygrade.protocol import TenantQuota

    sent = JOB.request_hash()
    first, _ = store.create_job(JOB, "key-1", "raygrade", "t1", request_hash=sent)
    store.set_quota("t1", TenantQuota(max_active_jobs=1))  # the job above is active
    registry = Registry(store)
    reads = DirectStore(registry, StoreConfig(url=url), "raygrade", on_store_node=lambda: True)

    async def main():
        replay = await reads.replay("key-1", sent, "t1")
        other = await reads.replay("key-1", "another request", "t1")
        await reads.check_quota("t1", 1, "key-1")  # its replay is never refused
        with pytest.raises(QuotaExceededError):  # a new job is: raised as the registry would, not retried there
            await reads.check_quota("t1", 1, None)
        await reads.check_quota("t2", 1, None)  # no quota
        return replay, other

    replay, other = asyncio.run(main())
    assert replay == store.status(first.id, "t1") and other is None
    assert reads.direct and registry.calls == []
