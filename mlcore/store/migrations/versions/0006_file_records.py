"""file records: what each curated and features partition held when it was written

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``files`` (rows, bytes, SHA-256 per file) to batches and materializations; rows
    written before stay NULL (read unverified, with a warning)."""
    for table in ("batches", "materializations"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("files", sa.JSON(), nullable=True))


def downgrade() -> None:
    """Drop the records."""
    for table in ("batches", "materializations"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("files")
