"""batches: code version and the recorded decision (why a batch was rejected)

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add batches.code_version and batches.reason."""
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("code_version", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("reason", sa.Text(), nullable=True))


def downgrade() -> None:
    """Drop them."""
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_column("reason")
        batch_op.drop_column("code_version")
