"""model reproducibility record, evaluation outcome/details/run card; immutable versions and
append-only alias history enforced by the database

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Rows of these tables are written once: a model version never changes, the alias history
# only grows. The database refuses UPDATE and DELETE, so no code path (or hand-written SQL)
# can rewrite what a promotion was based on.
_FROZEN = {  # table -> how an INSERT clashes with an existing row (its unique keys)
    "model_versions": "id = NEW.id OR (problem = NEW.problem AND version = NEW.version)",
    "alias_history": "id = NEW.id",
}


def upgrade() -> None:
    """Add the columns and the write-once triggers."""
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reproducibility", sa.JSON(), nullable=True))
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("outcome", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("details", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("run_card_uri", sa.Text(), nullable=True))
    dialect = op.get_bind().dialect.name
    for table, clash in _FROZEN.items():
        if dialect == "sqlite":
            for verb in ("UPDATE", "DELETE"):
                op.execute(f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                           f"BEGIN SELECT RAISE(ABORT, '{table} rows are write-once'); END")
            # REPLACE / INSERT OR REPLACE deletes the clashing row without firing DELETE
            # triggers (recursive_triggers is off by default): refuse the insert itself.
            op.execute(f"CREATE TRIGGER {table}_no_replace BEFORE INSERT ON {table} "
                       f"WHEN EXISTS (SELECT 1 FROM {table} WHERE {clash}) "
                       f"BEGIN SELECT RAISE(ABORT, '{table} rows are write-once'); END")
        elif dialect == "postgresql":
            op.execute(f"""CREATE FUNCTION {table}_write_once() RETURNS trigger AS $$
                BEGIN RAISE EXCEPTION '{table} rows are write-once'; END $$ LANGUAGE plpgsql""")
            op.execute(f"CREATE TRIGGER {table}_write_once BEFORE UPDATE OR DELETE ON {table} "
                       f"FOR EACH ROW EXECUTE FUNCTION {table}_write_once()")
            # Row triggers do not fire on TRUNCATE.
            op.execute(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                       f"FOR EACH STATEMENT EXECUTE FUNCTION {table}_write_once()")


def downgrade() -> None:
    """Drop the triggers and columns."""
    dialect = op.get_bind().dialect.name
    for table in _FROZEN:
        if dialect == "sqlite":
            for verb in ("update", "delete", "replace"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_no_{verb}")
        elif dialect == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_write_once ON {table}")
            op.execute(f"DROP FUNCTION IF EXISTS {table}_write_once()")
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.drop_column("run_card_uri")
        batch_op.drop_column("details")
        batch_op.drop_column("outcome")
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_column("reproducibility")
