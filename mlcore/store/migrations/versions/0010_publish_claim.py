"""publish claim: the staged manifest's claim token (compare-and-set on publish)

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``batches.claim``: only the writer holding a staged manifest's token publishes it;
    rows written before stay NULL (they are no longer staged)."""
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claim", sa.String(length=32), nullable=True))


def downgrade() -> None:
    """Drop the token."""
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_column("claim")
