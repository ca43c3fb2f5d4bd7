"""Alembic environment: the URL comes from the caller (``upgrade``) or ``MLCORE_DATABASE_URL``."""

from __future__ import annotations

from alembic import context

from mlcore.store.models import Base
from mlcore.store.session import get_engine


def _url() -> str:
    url = context.config.attributes.get("connection_url")
    if url:
        return str(url)
    from mlcore.config import get_settings

    return get_settings().db_url


def run_migrations_online() -> None:
    """Run migrations on a live connection (SQLite batch mode so ALTERs work there too)."""
    engine = get_engine(_url())
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations_online()
