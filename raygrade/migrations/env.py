"""Alembic environment for the job store.

The store passes its own connection (``config.attributes["connection"]``) inside the
transaction that holds the migration lock; the ``alembic`` command line gets one from
``sqlalchemy.url`` in ``alembic.ini``.
"""

from __future__ import annotations

from alembic import context

from raygrade.store.schema import VERSION_TABLE, metadata

config = context.config


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE,
                      render_as_batch=True)  # SQLite alters tables by copy (batch mode)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    from raygrade.store.schema import create_engine

    engine = create_engine(config.get_main_option("sqlalchemy.url") or "sqlite:///raygrade-alembic-dev.db")
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()
