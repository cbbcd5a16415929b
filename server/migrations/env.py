"""Alembic's entry point: migrations run on the connection the library hands over.

``server.voices`` passes its open connection in ``config.attributes["connection"]``
(inside its transaction and, on PostgreSQL, under an advisory lock, so two fronts
starting at once migrate one after the other). Run by Alembic's own CLI, the URL
comes from ``sqlalchemy.url`` instead.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

connection = context.config.attributes.get("connection")
if connection is not None:
    context.configure(connection=connection, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url (a synchronous driver URL) to run these migrations by hand")
    with create_engine(url).connect() as own:
        context.configure(connection=own, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
