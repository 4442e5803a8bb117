"""The job store's tables, its engine, and the schema migrations (Alembic, :mod:`raygrade.migrations`)."""

from __future__ import annotations

import threading
from pathlib import Path

import sqlalchemy as sa

#: Job progress counters (revision 0002 added and backfilled them).
COUNTER_COLUMNS = ("items_graded", "items_failed", "items_cancelled", "items_needs_review", "batches_done",
                   "batches_redispatched")

metadata = sa.MetaData()

jobs = sa.Table(
    "raygrade_jobs", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("namespace", sa.String(128), nullable=False, server_default="raygrade"),
    sa.Column("tenant", sa.String(128), nullable=False, server_default="default"),  # the API key's (0003)
    sa.Column("idempotency_key", sa.String(256), nullable=True),
    sa.Column("body_hash", sa.String(64), nullable=False),  # the job as stored (pages resolved)
    sa.Column("request_hash", sa.String(64)),  # the job as sent, with an idempotency key (0011)
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("model", sa.String(256)),
    sa.Column("students", sa.Integer, nullable=False),
    sa.Column("items_total", sa.Integer, nullable=False),
    sa.Column("batches_total", sa.Integer, nullable=False, server_default="0"),
    sa.Column("prompt_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("completion_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("errors", sa.Text, nullable=False, server_default="[]"),  # job-wide GradingErrorItems
    sa.Column("warnings", sa.Text, nullable=False, server_default="[]"),  # JobWarnings (0005)
    # Progress counters, kept in the same transactions as the item and batch changes they
    # count, so status() reads one row whatever the job's size.
    *(sa.Column(c, sa.Integer, nullable=False, server_default="0") for c in COUNTER_COLUMNS),
    sa.Column("items_reviewed", sa.Integer, nullable=False, server_default="0"),  # teachers' reviews (0006)
    sa.Column("regrade_of", sa.String(64)),  # the job whose question this job regrades (0006)
    sa.Column("review_plan", sa.Text),  # a review target's choice, JSON ReviewPlan (0006)
    sa.Column("trace_context", sa.Text),  # the W3C trace context its submission joined, JSON (0009)
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
    sa.Column("updated_at", sa.Float, nullable=False),
    # Idempotency keys are per application and tenant (a NULL key never conflicts).
    sa.UniqueConstraint("namespace", "tenant", "idempotency_key", name="raygrade_jobs_tenant_key"),
    sa.Index("raygrade_jobs_namespace_state", "namespace", "state"),
    sa.Index("raygrade_jobs_tenant_created", "namespace", "tenant", "created_at"),  # GET /v1/jobs
    sa.Index("raygrade_jobs_tenant_usage", "tenant", "created_at"),  # quotas (0004): items, tokens per day
    sa.Index("raygrade_jobs_tenant_state", "tenant", "state"),  # quotas (0004): active jobs
)
# The job's body (questions, rubric, page references) apart from the row every status,
# lease and completion reads or updates: that row stays a few hundred bytes at any job size.
job_bodies = sa.Table(
    "raygrade_job_bodies", metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("body", sa.Text, nullable=False),
)
items = sa.Table(
    "raygrade_items", metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("student_id", sa.String(256), primary_key=True),
    sa.Column("question_id", sa.String(256), primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("batch_id", sa.String(96)),
    sa.Column("result", sa.Text),
    sa.Column("confidence", sa.Float),
    sa.Column("error_share", sa.Float),  # expected error ÷ max score: what review routing ranks by (0007)
    sa.Column("needs_review", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("error_type", sa.String(64)),
    sa.Column("error_message", sa.Text),
    # The review that stands (0006; the newest of the item's rows in raygrade_reviews).
    sa.Column("review_score", sa.Float),
    sa.Column("review_comment", sa.Text),
    sa.Column("reviewed_by", sa.String(32)),
    sa.Column("reviewed_at", sa.Float),
    sa.Column("review_revisions", sa.Integer, nullable=False, server_default="0"),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("raygrade_items_job_state", "job_id", "state"),
    sa.Index("raygrade_items_job_batch", "job_id", "batch_id", "state"),  # a batch's pending items
    sa.Index("raygrade_items_job_seq", "job_id", "seq"),  # an item by its id (reviews; 0006)
)
batches = sa.Table(
    "raygrade_batches", metadata,
    sa.Column("id", sa.String(96), primary_key=True),
    sa.Column("job_id", sa.String(64), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("owner", sa.String(96)),
    sa.Column("lease_expires_at", sa.Float),
    sa.Column("replica", sa.String(128)),
    sa.Column("duplicates_dropped", sa.Integer, nullable=False, server_default="0"),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("grader_losses", sa.Integer, nullable=False, server_default="0"),  # lost grader calls (0013)
    sa.Index("raygrade_batches_job_state", "job_id", "state"),
    sa.Index("raygrade_batches_job_state_seq", "job_id", "state", "seq"),
)
webhooks = sa.Table(
    "raygrade_webhooks", metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    # grading.job.completed (the terminal state), grading.job.reviewed (the review queue emptied; 0006)
    sa.Column("event", sa.String(32), primary_key=True, server_default="grading.job.completed"),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # pending → delivered | failed
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("last_error", sa.String(512)),
    sa.Column("owner", sa.String(96)),
    sa.Column("lease_expires_at", sa.Float),
)

# Teachers' reviews (0006): every review ever sent, the audit trail (a second review of an item
# replaces the first in raygrade_items; both stay here).
reviews = sa.Table(
    "raygrade_reviews", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(64), nullable=False),
    sa.Column("student_id", sa.String(256), nullable=False),
    sa.Column("question_id", sa.String(256), nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("model_score", sa.Float, nullable=False),
    sa.Column("comment", sa.Text),
    sa.Column("key_id", sa.String(32)),
    sa.Column("tenant", sa.String(128), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Index("raygrade_reviews_item", "job_id", "student_id", "question_id"),
)

# API keys (0003): only the SHA-256 of each secret is kept; ``prefix`` (its first characters)
# lets a person recognise a key in a listing.
api_keys = sa.Table(
    "raygrade_api_keys", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("tenant", sa.String(128), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("name", sa.String(256)),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
    sa.Index("raygrade_api_keys_tenant", "tenant"),
)


# Tenants' webhook signing secrets (0008): Standard Webhooks secrets (``whsec_`` + base64), kept
# to sign (an HMAC needs the key itself); shown once when set (``raygrade keys webhook-secret``).
webhook_secrets = sa.Table(
    "raygrade_webhook_secrets", metadata,
    sa.Column("tenant", sa.String(128), primary_key=True),
    sa.Column("secret", sa.String(128), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

# Files uploaded for their pages (Files API, 0010): the file and each page image in the blob store
# by SHA-256; ``pages`` holds the page images' references (JSON list of StoredImage).
files = sa.Table(
    "raygrade_files", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant", sa.String(128), nullable=False),
    sa.Column("filename", sa.String(512), nullable=False),
    sa.Column("purpose", sa.String(32), nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("media_type", sa.String(128), nullable=False),
    sa.Column("page_count", sa.Integer, nullable=False),
    sa.Column("pages", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Index("raygrade_files_tenant_created", "tenant", "created_at"),
)


# Tenants' quotas (0004): a limit left NULL is no limit. Usage is counted over every
# namespace of the database (a tenant's keys work in each of them).
tenant_quotas = sa.Table(
    "raygrade_tenant_quotas", metadata,
    sa.Column("tenant", sa.String(128), primary_key=True),
    sa.Column("max_active_jobs", sa.Integer),
    sa.Column("items_per_day", sa.BigInteger),
    sa.Column("tokens_per_day", sa.BigInteger),
    sa.Column("file_bytes", sa.BigInteger),  # bytes of stored files (0012)
    sa.Column("updated_at", sa.Float, nullable=False),
)

def _default_sqlite_path() -> Path:
    from raygrade.config import default_store_url

    return Path(sa.engine.make_url(default_store_url()).database or "").expanduser()


def check_store_url(url: str, *, must_exist: bool = False) -> sa.engine.URL:
    """Check a job store URL before anything is created or connected to.

    A SQLite file's folder must exist, except the default store's (``$RAYGRADE_HOME``,
    ``~/.raygrade``), which is made on first use: a mistyped path then fails instead of
    silently starting an empty store.

    Args:
        url: ``sqlite:///PATH`` or ``postgresql+psycopg://USER@HOST/DB``.
        must_exist: The store must be there already (``raygrade keys``/``quotas`` write into
            the app's store, which the app creates): a SQLite file that does not exist, other
            than the default one, is refused.

    Returns:
        The parsed URL.

    Raises:
        ConfigError: not a URL, a back end other than SQLite or PostgreSQL (``postgres://``
            names the spelling SQLAlchemy wants), a missing folder or file; every message is one
            line and never shows a password.
        MissingDependencyError: the URL's database driver is not installed.
    """
    from raygrade.errors import ConfigError, MissingDependencyError

    try:
        parsed = sa.engine.make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        raise ConfigError("the job store URL is not a database URL (sqlite:///PATH or "
                          "postgresql+psycopg://USER@HOST/DB)", param="store.url") from None
    shown = parsed.render_as_string(hide_password=True)
    backend = parsed.get_backend_name()
    if backend == "postgres":
        raise ConfigError(f"job store URL {shown}: write postgresql+psycopg:// (SQLAlchemy has no 'postgres' "
                          "dialect)", param="store.url")
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(f"job store URL {shown}: the job store runs on SQLite or PostgreSQL, not {backend!r}",
                          param="store.url")
    try:
        parsed.get_dialect().import_dbapi()
    except (sa.exc.NoSuchModuleError, ImportError) as exc:
        driver = parsed.get_driver_name()
        hint = "pip install 'raygrade[postgresql]'" if "psycopg" in driver else type(exc).__name__
        raise MissingDependencyError(f"job store URL {shown}: its driver {driver!r} is not installed ({hint})",
                                     param="store.url") from None
    if backend == "sqlite" and parsed.database and parsed.database != ":memory:":
        path = Path(parsed.database).expanduser()
        default = path.absolute() == _default_sqlite_path().absolute()
        if not default and not path.parent.is_dir():
            raise ConfigError(f"job store {shown}: no such folder {path.parent} (create it, or fix the store URL)",
                              param="store.url")
        if must_exist and not default and not path.is_file():
            raise ConfigError(f"no job store at {path}: the app creates its store when it starts; give the URL of "
                              "the store the app uses", param="store.url")
    return parsed


def create_engine(url: str) -> sa.Engine:
    """An engine for ``url`` (checked by :func:`check_store_url`); SQLite files get WAL and a
    busy timeout, the default store its folder.

    Raises:
        ConfigError: see :func:`check_store_url`.
    """
    parsed = check_store_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)  # only the default's can be missing
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(conn, _record):
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


#: Alembic's version table for the job store (named so that it cannot collide with an
#: application's own Alembic history in the same PostgreSQL database).
VERSION_TABLE = "raygrade_alembic_version"
#: The revision that stores made before the store used Alembic are stamped with.
_PRE_ALEMBIC_REVISION = "0001"
_MIGRATION_LOCK = 0x7261796772616465  # "raygrade": PostgreSQL advisory lock key
_migrating = threading.Lock()  # Alembic's op/context proxies are module globals: one upgrade per process


def migrate(engine: sa.Engine, *, upgrade: bool = True) -> list[str]:
    """Create or upgrade the job store's schema to the newest Alembic revision; returns the revisions applied.

    With ``upgrade=False`` nothing is written: a store whose schema is not the newest raises
    :class:`~raygrade.errors.StorageError` (a reader beside the store's writer, which migrates it).

    The revisions are in :mod:`raygrade.migrations`. A new database gets every revision in
    order; a store made before the store used Alembic (tables but no version table) is
    stamped with the first revision and upgraded from there. Safe to call from several
    processes at once: on PostgreSQL the upgrade runs under a transaction-scoped advisory
    lock, so the second caller finds the schema current and applies nothing; SQLite stores
    have one writer process (the registry replica on the head node), and threads of one
    process take turns.

    Raises:
        alembic.util.CommandError: the database carries a revision this raygrade does not
            know (it was upgraded by a newer raygrade).
        StorageError: with ``upgrade=False``, a schema that is not the newest.
    """
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", "raygrade:migrations")
    script = ScriptDirectory.from_config(cfg)
    if not upgrade:
        from raygrade.errors import StorageError

        with engine.connect() as conn:
            current = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
        if current != (head := script.get_current_head()):
            raise StorageError(f"the job store's schema is at revision {current or 'none'}, not {head}: the "
                               "registry creates or upgrades it when it starts")
        return []
    with _migrating, engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        current = context.get_current_revision()
        if current is None and jobs.name in sa.inspect(conn).get_table_names():
            context.stamp(script, _PRE_ALEMBIC_REVISION)
            current = _PRE_ALEMBIC_REVISION
        head = script.get_current_head()
        if current == head:
            return []
        pending = [r.revision for r in script.iterate_revisions(head, current)][::-1]
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return pending
