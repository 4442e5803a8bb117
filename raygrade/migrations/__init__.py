"""Alembic revisions of the job store's schema (:mod:`raygrade.store`).

The store upgrades itself when it opens (:func:`raygrade.store.migrate`); the revisions
live here so that a schema change is one reviewed file, applied in order, recorded in the
database's ``raygrade_alembic_version`` table. To add one::

    alembic -c raygrade/migrations/alembic.ini revision -m "what changes"

then write its ``upgrade()`` with ``op.batch_alter_table`` (SQLite cannot alter most
columns in place) and add a test in ``tests/integration/test_store.py``.
"""
