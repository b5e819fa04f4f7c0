"""Alembic environment for `backdate serve`'s store: always run from backdate.store.db.migrate
with an open connection (no alembic.ini, no URL of its own)."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None,
                  version_table=context.config.attributes.get("version_table",
                                                              "alembic_version"))
with context.begin_transaction():
    context.run_migrations()
