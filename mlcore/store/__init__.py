"""The metadata store: SQLAlchemy models, sessions and Alembic migrations."""
