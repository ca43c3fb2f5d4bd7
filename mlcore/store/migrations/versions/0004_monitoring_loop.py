"""ground truth, performance reports, single-flight retrain leases, richer retrain requests and
drift reports

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the monitoring tables and columns."""
    op.create_table(
        "ground_truth",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("problem", sa.String(64), nullable=False),
        sa.Column("batch_id", sa.String(64), nullable=False),
        sa.Column("entity_key", sa.String(128), nullable=False),
        sa.Column("label", sa.Integer(), nullable=False),
        sa.Column("source_sha256", sa.String(64), nullable=False),
        sa.Column("arrived_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("problem", "batch_id", "entity_key"),
    )
    op.create_table(
        "performance_reports",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("problem", sa.String(64), nullable=False),
        sa.Column("batch_id", sa.String(64), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),  # champion | challenger
        sa.Column("metric", sa.String(32), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),  # None: too few matured labels
        sa.Column("predicted_rows", sa.BigInteger(), nullable=False),
        sa.Column("matured_rows", sa.BigInteger(), nullable=False),
        sa.Column("labelled_rows", sa.BigInteger(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("problem", "batch_id", "model_version"),
    )
    op.create_table(
        "retrain_leases",  # single-flight: at most one retrain per problem holds the lease
        sa.Column("problem", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(256), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("retrain_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("triggers", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("details", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("taken_by", sa.String(256), nullable=True))
        batch_op.add_column(sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("drift_reports", schema=None) as batch_op:
        batch_op.add_column(sa.Column("details", sa.JSON(), nullable=True))
    # De-duplication in the store: at most one pending request per problem (a partial unique
    # index; SQLite and PostgreSQL both have them), so two monitors at once cannot file two.
    op.create_index("one_pending_retrain_request", "retrain_requests", ["problem"], unique=True,
                    sqlite_where=sa.text("state = 'pending'"),
                    postgresql_where=sa.text("state = 'pending'"))


def downgrade() -> None:
    """Drop them."""
    op.drop_index("one_pending_retrain_request", table_name="retrain_requests")
    with op.batch_alter_table("drift_reports", schema=None) as batch_op:
        batch_op.drop_column("details")
    with op.batch_alter_table("retrain_requests", schema=None) as batch_op:
        batch_op.drop_column("resolved_at")
        batch_op.drop_column("taken_by")
        batch_op.drop_column("details")
        batch_op.drop_column("triggers")
    op.drop_table("retrain_leases")
    op.drop_table("performance_reports")
    op.drop_table("ground_truth")
