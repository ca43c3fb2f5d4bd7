"""stream ledger: the events the stream service took in and the micro-batches it sealed

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``stream_events`` (one row per event ID) and ``stream_segments``."""
    op.create_table(
        "stream_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("problem", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("segment", sa.Integer(), nullable=True),
        sa.Column("labelled", sa.Boolean(), nullable=False),
        sa.UniqueConstraint("problem", "event_id"),
    )
    op.create_index("ix_stream_events_open", "stream_events", ["problem", "segment"])
    op.create_table(
        "stream_segments",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("problem", sa.String(64), nullable=False),
        sa.Column("segment", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.String(64), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sealed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("notified_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("problem", "segment"),
    )


def downgrade() -> None:
    """Drop them."""
    op.drop_table("stream_segments")
    op.drop_index("ix_stream_events_open", "stream_events")
    op.drop_table("stream_events")
