"""retrain request outcome: the Airflow run that answered a request and, if it failed, why

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``run_id`` (the retrain run that took the request) and ``error`` (why that run
    failed or timed out; state ``failed``) to retrain_requests; older rows stay NULL."""
    with op.batch_alter_table("retrain_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("run_id", sa.String(256), nullable=True))
        batch_op.add_column(sa.Column("error", sa.Text(), nullable=True))


def downgrade() -> None:
    """Drop them."""
    with op.batch_alter_table("retrain_requests", schema=None) as batch_op:
        batch_op.drop_column("error")
        batch_op.drop_column("run_id")
