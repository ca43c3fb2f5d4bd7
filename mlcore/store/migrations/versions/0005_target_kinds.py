"""target kinds: learnt class lists, multiclass predictions, real-valued ground truth

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the class table and the multiclass prediction columns; labels become floats."""
    op.create_table(
        "target_classes",
        sa.Column("problem", sa.String(64), primary_key=True),
        sa.Column("classes", sa.JSON(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("label", sa.String(128), nullable=True))
        batch_op.add_column(sa.Column("probabilities", sa.Text(), nullable=True))
    with op.batch_alter_table("ground_truth", schema=None) as batch_op:
        batch_op.alter_column("label", existing_type=sa.Integer(), type_=sa.Float(),
                              existing_nullable=False)


def downgrade() -> None:
    """Drop them again (real-valued labels are truncated to integers)."""
    with op.batch_alter_table("ground_truth", schema=None) as batch_op:
        batch_op.alter_column("label", existing_type=sa.Float(), type_=sa.Integer(),
                              existing_nullable=False)
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_column("probabilities")
        batch_op.drop_column("label")
    op.drop_table("target_classes")
